"""A PostgreSQL session ended by the server (a stop, ``pg_terminate_backend``) is a lost
connection, whenever the client notices it (issue 17, item 17).

The server sends a FATAL error, then closes the socket.  An idle asyncpg connection that
has read the error but not yet the end of the stream is not "closed", but its protocol
waits for the end of an operation that never started: its next command fails with
``InternalClientError: cannot switch to state …``.  Under a primary stop that window is
short and was hit about once per stop; a proxy that holds the end of the stream back
makes it certain here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from sanic_sqlalchemy import Database

from .conftest import backend_url, free_port


class EndHoldingProxy:
    """A TCP proxy to the server that forwards everything but the server's end of stream,
    which it holds until ``release()``: the client reads the FATAL error and then waits."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server_ended = asyncio.Event()
        self._release = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_server: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if from_server:
                self.server_ended.set()
                await self._release.wait()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        self._tasks.update(
            (
                asyncio.create_task(self._pipe(reader, server_writer, from_server=False)),
                asyncio.create_task(self._pipe(server_reader, writer, from_server=True)),
            )
        )

    @contextlib.asynccontextmanager
    async def serving(self, port: int) -> AsyncIterator[None]:
        server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        try:
            yield
        finally:
            self.release()
            server.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    def release(self) -> None:
        self._release.set()


@pytest.mark.backends("postgresql")
async def test_a_read_on_a_connection_the_server_ended_runs_on_a_fresh_one(
    backend: str, tmp_path: Any
) -> None:
    """The read's connection was ended by the server while idle in the pool, and only
    its FATAL error arrived: the read fails on it with asyncpg's "cannot switch to
    state", which is a lost connection, so the read runs again on a fresh connection
    (without the fix: an ``InternalError`` that SQLAlchemy did not see as a disconnect)."""
    real = make_url(backend_url(backend, tmp_path))
    await _read_again_after_the_server_ended_it(
        real, lambda proxied: Database(proxied, pool_size=1, max_overflow=0)
    )


@pytest.mark.backends("postgresql")
async def test_a_write_on_a_connection_the_server_ended_fails_as_a_lost_connection(
    backend: str, tmp_path: Any
) -> None:
    """A write cannot run again by itself: it fails, as a lost connection (an
    invalidated ``OperationalError`` saying so), never as asyncpg's "cannot switch to
    state", which reads like two tasks sharing one connection; the next unit works."""
    real = make_url(backend_url(backend, tmp_path))
    port = free_port()
    proxy = EndHoldingProxy(real.host or "127.0.0.1", real.port or 5432)
    admin = create_async_engine(real, poolclass=NullPool)
    db = Database(real.set(host="127.0.0.1", port=port), pool_size=1, max_overflow=0)
    try:
        async with proxy.serving(port):
            async with db:
                first = (await db.write.execute(select(text("pg_backend_pid()")))).scalar_one()
            async with admin.connect() as connection:
                await connection.execute(text(f"SELECT pg_terminate_backend({int(first)})"))
            await asyncio.wait_for(proxy.server_ended.wait(), 5)
            await asyncio.sleep(0.05)  # the client reads the FATAL error
            with pytest.raises(OperationalError) as raised:
                async with db:
                    await db.write.execute(select(text("pg_backend_pid()")))
            error = raised.value
            assert error.connection_invalidated
            assert "connection was closed in the middle of operation" in str(error)
            assert "another operation" in str(error)  # asyncpg's words, kept for the record
            proxy.release()
            async with db:
                second = (await db.write.execute(select(text("pg_backend_pid()")))).scalar_one()
            assert second != first
    finally:
        await db.dispose()
        await admin.dispose()


@pytest.mark.backends("postgresql")
async def test_a_read_on_a_replica_connection_the_server_ended_runs_on_a_fresh_one(
    backend: str, pg_cluster: Any
) -> None:
    """The same on a replica's pool, which has no failover handler before the lost
    connection's (it once read a slot that only that handler fills, and the read failed
    with an ``AttributeError``, a 500 in Sanic)."""
    await _read_again_after_the_server_ended_it(
        make_url(pg_cluster.replica_urls[0]),
        lambda proxied: Database(
            pg_cluster.primary_url,
            read_urls=[proxied.render_as_string(hide_password=False)],
            pool_size=1,
            max_overflow=0,
        ),
    )


async def _read_again_after_the_server_ended_it(
    real: URL, database: Callable[[URL], Database]
) -> None:
    """Read once through a proxy to ``real`` (``database`` is made for the proxy's URL),
    have the server end that session with only its FATAL error reaching the client, and
    read again: served, by another server session."""
    port = free_port()
    proxy = EndHoldingProxy(real.host or "127.0.0.1", real.port or 5432)
    admin = create_async_engine(real, poolclass=NullPool)
    db = database(real.set(host="127.0.0.1", port=port))
    try:
        async with proxy.serving(port):
            async with db:
                first = (await db.read.execute(select(text("pg_backend_pid()")))).scalar_one()
            async with admin.connect() as connection:
                await connection.execute(text(f"SELECT pg_terminate_backend({int(first)})"))
            await asyncio.wait_for(proxy.server_ended.wait(), 5)
            await asyncio.sleep(0.05)  # the client reads the FATAL error
            async with db:
                # A replica's read may go to the primary while the replica is out of the
                # rotation for a moment: served either way, on a fresh session.
                second = (await db.read.execute(select(text("pg_backend_pid()")))).scalar_one()
            assert second != first
    finally:
        await db.dispose()
        await admin.dispose()
