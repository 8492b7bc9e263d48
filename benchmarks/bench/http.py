"""A minimal HTTP/1.1 keep-alive client: enough for the checks, no extra dependency."""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
from dataclasses import dataclass
from typing import Any


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return jsonlib.loads(self.body)


class Client:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(
        self, method: str, path: str, body: Any = None, timeout: float = 10.0
    ) -> Response:
        return await asyncio.wait_for(self._request(method, path, body), timeout)

    async def _request(self, method: str, path: str, body: Any) -> Response:
        for attempt in (1, 2):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            payload = b"" if body is None else jsonlib.dumps(body).encode()
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            if body is not None:
                head += "Content-Type: application/json\r\n"
            head += f"Content-Length: {len(payload)}\r\n\r\n"
            try:
                assert self._reader is not None
                self._writer.write(head.encode() + payload)
                await self._writer.drain()
                status_line = await self._reader.readline()
                if not status_line:
                    raise ConnectionResetError("server closed the connection")
                status = int(status_line.split()[1])
                headers: dict[str, str] = {}
                while True:
                    line = await self._reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                data = await self._reader.readexactly(length) if length else b""
                if headers.get("connection", "").lower() == "close":
                    await self.close()
                return Response(status, headers, data)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")
