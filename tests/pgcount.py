"""A loopback proxy in front of PostgreSQL that counts round trips.

In PostgreSQL's protocol a client waits for the server after a ``Sync`` message
(extended protocol: prepared statements), a ``Query`` message (simple protocol:
``BEGIN``, ``COMMIT``) or a ``Flush`` (asyncpg prepares a statement with ``Parse``,
``Describe`` and ``Flush``, and waits for the description); counting those counts round
trips exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104


class RoundTripCounter:
    """Counts client ``Sync``/``Query``/``Flush`` messages through every proxied
    connection."""

    def __init__(self) -> None:
        self.round_trips = 0
        self.connections = 0

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buffer = b""
        started = False
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            buffer += data
            while True:
                if not started:  # start-up messages have no type byte
                    if len(buffer) < 8:
                        break
                    (length,) = struct.unpack("!I", buffer[:4])
                    if len(buffer) < length:
                        break
                    (code,) = struct.unpack("!I", buffer[4:8])
                    buffer = buffer[length:]
                    started = code not in (_SSL_REQUEST, _GSS_REQUEST)
                    continue
                if len(buffer) < 5:
                    break
                (length,) = struct.unpack("!I", buffer[1:5])
                if len(buffer) < length + 1:
                    break
                if buffer[:1] in (b"S", b"Q", b"H"):
                    self.round_trips += 1
                buffer = buffer[length + 1 :]
        writer.close()

    @staticmethod
    async def _server_to_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        server_reader, server_writer = await asyncio.open_connection(self._host, self._port)
        await asyncio.gather(
            self._client_to_server(client_reader, server_writer),
            self._server_to_client(server_reader, client_writer),
            return_exceptions=True,
        )

    @contextlib.asynccontextmanager
    async def serve(self, host: str, port: int) -> AsyncIterator[int]:
        """Proxy to ``host:port``; yields the loopback port to connect to instead."""
        self._host, self._port = host, port
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            await server.wait_closed()
