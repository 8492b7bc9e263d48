"""New database connections per 1,000 reads cancelled mid-statement (issue 12, item 7).

    .venv/bin/python benchmarks/cancelled_reads.py [--reads 1000]

A client that hangs up cancels its request's read while the server runs it.  The
baseline, measured in the same run, is a plain SQLAlchemy engine with the same pool (what
sanic-sqlalchemy did before: SQLAlchemy discards every connection whose statement was
interrupted).  Counted: connections the pool opened, and every database session this
process opened (the driver's connect, counted in the driver), which includes the ones
opened to ``KILL`` a statement on MariaDB/MySQL.  (asyncpg sends PostgreSQL's cancel
request over a short socket to the postmaster, which is not a session.)  Uses the local
servers (``postgres@127.0.0.1/test``, ``root@127.0.0.1/test``); prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sanic_sqlalchemy import Database

URLS = {
    "PostgreSQL": "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    "MariaDB": "mysql+asyncmy://root@127.0.0.1:3306/test",
}
# Long enough to be cancelled mid-statement; short enough that the statements a plain
# pool abandons on MariaDB (it sends no KILL) end before max_connections is reached.
SLOW = {"PostgreSQL": "SELECT pg_sleep(5)", "MariaDB": "SELECT SLEEP(0.5)"}


def counting(engine: AsyncEngine) -> list[int]:
    """A one-item list counting the connections ``engine``'s pool opens from now on."""
    opened = [0]

    def on_connect(*_args: Any) -> None:
        opened[0] += 1

    event.listen(engine.sync_engine.pool, "connect", on_connect)
    return opened


class SessionCounter:
    """Counts the database sessions this process opens, in the drivers themselves."""

    def __init__(self) -> None:
        self.count = 0
        import asyncmy.connection
        import asyncpg

        original_pg, original_my = asyncpg.connect, asyncmy.connection.Connection.connect

        async def pg_connect(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original_pg(*args, **kwargs)

        async def my_connect(connection: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original_my(connection, *args, **kwargs)

        asyncpg.connect = pg_connect
        asyncmy.connection.Connection.connect = my_connect  # type: ignore[method-assign]


SESSIONS = SessionCounter()


async def cancel_reads(read: Callable[[], Awaitable[Any]], reads: int) -> float:
    """Start ``reads`` slow reads one after another, cancelling each mid-statement."""
    started = time.perf_counter()
    for _ in range(reads):
        task = asyncio.ensure_future(read())
        await asyncio.sleep(0.01)  # the statement is running on the server
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return time.perf_counter() - started


async def plain_sqlalchemy(backend: str, reads: int) -> tuple[int, float]:
    engine = create_async_engine(URLS[backend], pool_size=1, max_overflow=0)
    async with engine.connect() as connection:  # the first connection is not counted
        await connection.execute(text("SELECT 1"))
    opened = counting(engine)

    async def read() -> None:
        async with engine.connect() as connection:
            await connection.execute(text(SLOW[backend]))

    try:
        elapsed = await cancel_reads(read, reads)
    finally:
        await engine.dispose()
    return opened[0], elapsed


async def ours(backend: str, reads: int) -> tuple[int, float]:
    db = Database(URLS[backend], pool_size=1)
    async with db:
        await db.read.execute(text("SELECT 1"))  # the first connection is not counted
    opened = counting(db.engines.read)

    async def read() -> None:
        async with db:
            await db.read.execute(text(SLOW[backend]))

    try:
        elapsed = await cancel_reads(read, reads)
    finally:
        await db.dispose()
    return opened[0], elapsed


async def main(reads: int) -> None:
    print(f"{reads} reads cancelled mid-statement, pool of 1 connection\n")
    print("| backend | variant | pool connections opened | sessions opened in all | time |")
    print("|---|---|---|---|---|")
    variants = (("plain SQLAlchemy (before)", plain_sqlalchemy), ("sanic-sqlalchemy", ours))
    for backend in URLS:
        for name, variant in variants:
            before = SESSIONS.count
            opened, elapsed = await variant(backend, reads)
            # Minus the first connection, opened before counting started.
            sessions = SESSIONS.count - before - 1
            print(f"| {backend} | {name} | {opened} | {sessions} | {elapsed:.1f} s |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=1000)
    asyncio.run(main(parser.parse_args().reads))
