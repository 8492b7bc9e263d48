"""A counting TCP proxy in front of PostgreSQL or MariaDB.

It forwards bytes unchanged and counts, per direction change, the *round trips*: a
burst of bytes from the client that follows bytes from the server (or opens the
connection) and carries at least one command is one round trip, because the client
then waits for the server's answer.  Pipelined messages sent in one burst (asyncpg's
Bind/Execute/Sync, a multi-statement simple query) count once, as they cost one wait.

PostgreSQL's client stream is also parsed into messages: ``Q`` (simple query) and ``S``
(Sync, the end of an extended-protocol exchange) are counted separately, the start-up
packet and authentication (``p``) are not commands, and ``X`` (Terminate) expects no
answer.  MariaDB packets carry a sequence id that is 0 exactly when the client starts
a new command, so the hand-shake is told apart the same way; ``COM_QUIT`` is not
counted.  New sessions are counted too (on PostgreSQL by their start-up packet, so
that the connection a driver opens to send a cancel request is counted apart; on
MariaDB a connection that sends ``KILL`` is counted as a cancel, not a session).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from dataclasses import dataclass, field

_SSL_REQUEST = 80877103
_GSS_REQUEST = 80877104
_CANCEL_REQUEST = 80877102


@dataclass
class Counts:
    #: New sessions (PostgreSQL: start-up packets; MariaDB: accepted connections).
    connections: int = 0
    #: Cancel requests, which arrive on a connection of their own (PostgreSQL's
    #: CancelRequest, MariaDB's ``KILL``).
    cancels: int = 0
    round_trips: int = 0
    queries: int = 0  # PostgreSQL simple-query messages (Q)
    syncs: int = 0  # PostgreSQL Sync messages (S)
    by_type: dict[str, int] = field(default_factory=dict)
    #: SQL text sent (PostgreSQL Q and Parse, MariaDB COM_QUERY), literals masked.
    statements: dict[str, int] = field(default_factory=dict)

    def copy(self) -> Counts:
        return Counts(
            self.connections,
            self.cancels,
            self.round_trips,
            self.queries,
            self.syncs,
            dict(self.by_type),
            dict(self.statements),
        )

    def statement(self, kind: str, raw: bytes) -> None:
        text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        key = f"{kind} {mask(text)}"
        self.statements[key] = self.statements.get(key, 0) + 1

    def minus(self, other: Counts) -> Counts:
        by_type = {
            key: value - other.by_type.get(key, 0)
            for key, value in self.by_type.items()
            if value - other.by_type.get(key, 0)
        }
        statements = {
            key: value - other.statements.get(key, 0)
            for key, value in self.statements.items()
            if value - other.statements.get(key, 0)
        }
        return Counts(
            self.connections - other.connections,
            self.cancels - other.cancels,
            self.round_trips - other.round_trips,
            self.queries - other.queries,
            self.syncs - other.syncs,
            by_type,
            statements,
        )


_LITERALS = re.compile(r"'(?:[^']|'')*'|\b\d+\b")
_SPACE = re.compile(r"\s+")


def mask(sql: str, width: int = 90) -> str:
    """``sql`` on one line, literals replaced by ``?``, cut to ``width`` characters."""
    text = _SPACE.sub(" ", _LITERALS.sub("?", sql)).strip()
    return text if len(text) <= width else text[: width - 1] + "…"


class _PostgresClientStream:
    """Splits the client→server byte stream of one PostgreSQL connection into messages."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = bytearray()
        self.started = False  # start-up packet seen
        self.encrypted = False
        self.awaiting_ssl_answer = False

    def feed(self, data: bytes) -> bool:
        """Consume ``data``; True when it held a command (a message that is answered)."""
        if self.encrypted:
            return True
        self.buffer += data
        command = False
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    break
                length, code = struct.unpack("!ii", self.buffer[:8])
                if len(self.buffer) < length:
                    break
                del self.buffer[:length]
                if code in (_SSL_REQUEST, _GSS_REQUEST):
                    self.awaiting_ssl_answer = True
                elif code == _CANCEL_REQUEST:
                    self.counts.cancels += 1
                else:
                    self.started = True
                    self.counts.connections += 1
                continue
            if len(self.buffer) < 5:
                break
            kind = chr(self.buffer[0])
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                break
            body = bytes(self.buffer[5 : 1 + length])
            del self.buffer[: 1 + length]
            self.counts.by_type[kind] = self.counts.by_type.get(kind, 0) + 1
            if kind == "Q":
                self.counts.queries += 1
                self.counts.statement("Q", body)
            elif kind == "P":
                # Parse: statement name, then the SQL text.
                self.counts.statement("Parse", body.split(b"\0", 1)[1] if b"\0" in body else body)
            elif kind == "S":
                self.counts.syncs += 1
            if kind not in ("p", "X"):
                command = True
        return command

    def server_data(self, data: bytes) -> None:
        if self.awaiting_ssl_answer and data:
            self.awaiting_ssl_answer = False
            if data[:1] in (b"S", b"G"):
                self.encrypted = True


class _MySQLClientStream:
    """Finds the command packets (sequence id 0) in the client→server stream."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = bytearray()
        self.killer = False

    def feed(self, data: bytes) -> bool:
        self.buffer += data
        command = False
        while len(self.buffer) >= 4:
            length = self.buffer[0] | self.buffer[1] << 8 | self.buffer[2] << 16
            if len(self.buffer) < 4 + length:
                break
            sequence = self.buffer[3]
            kind = self.buffer[4] if length else -1
            body = bytes(self.buffer[5 : 4 + length])
            del self.buffer[: 4 + length]
            if sequence == 0 and kind != 0x01:  # 0x01: COM_QUIT
                name = f"0x{kind:02x}"
                self.counts.by_type[name] = self.counts.by_type.get(name, 0) + 1
                if kind == 0x03:  # COM_QUERY
                    self.counts.queries += 1
                    self.counts.statement("query", body)
                    if not self.killer and body[:5].upper() == b"KILL ":
                        # MariaDB's cancel request: a connection opened to KILL the
                        # statement of a cancelled request, not a pooled session.
                        self.killer = True
                        self.counts.connections -= 1
                        self.counts.cancels += 1
                command = True
        return command

    def server_data(self, data: bytes) -> None:
        pass


class CountingProxy:
    """``127.0.0.1:listen_port`` → ``127.0.0.1:upstream_port``, counting as it forwards."""

    def __init__(self, listen_port: int, upstream_port: int, protocol: str) -> None:
        self.listen_port = listen_port
        self.upstream_port = upstream_port
        self.protocol = protocol
        self.counts = Counts()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def snapshot(self) -> Counts:
        return self.counts.copy()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port
            )
        except OSError:
            client_writer.close()
            self._tasks.discard(task)
            return
        stream: _PostgresClientStream | _MySQLClientStream
        if self.protocol == "postgresql":
            stream = _PostgresClientStream(self.counts)  # counts start-up packets
        else:
            self.counts.connections += 1
            stream = _MySQLClientStream(self.counts)
        # "s": the server spoke last (or nobody yet), so the next client bytes open a burst.
        state = {"last": "s", "burst_counted": False}

        async def client_to_server() -> None:
            while data := await client_reader.read(65536):
                if state["last"] == "s":
                    state["last"] = "c"
                    state["burst_counted"] = False
                if stream.feed(data) and not state["burst_counted"]:
                    state["burst_counted"] = True
                    self.counts.round_trips += 1
                server_writer.write(data)
                await server_writer.drain()

        async def server_to_client() -> None:
            while data := await server_reader.read(65536):
                state["last"] = "s"
                stream.server_data(data)
                client_writer.write(data)
                await client_writer.drain()

        up = asyncio.ensure_future(client_to_server())
        down = asyncio.ensure_future(server_to_client())
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is stopping: close both sides below
        finally:
            for part in (up, down):
                part.cancel()
            for writer in (client_writer, server_writer):
                with contextlib.suppress(Exception):
                    writer.close()
            for part in (up, down):
                with contextlib.suppress(BaseException):
                    await part
            self._tasks.discard(task)
