"""Preparing the ``bench`` databases and reading them back for the checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncmy
import asyncpg

ROWS = 10_000

# asyncmy logs the notes of "IF [NOT] EXISTS" statements as warnings.
logging.getLogger("asyncmy").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Target:
    """Where a backend's server is (the harness connects to it directly)."""

    backend: str  # "postgresql" or "mysql"
    host: str
    port: int
    user: str
    database: str

    def url(self, port: int | None = None) -> str:
        """The SQLAlchemy URL that the variants get (``port`` to go through the proxy)."""
        driver = "postgresql+asyncpg" if self.backend == "postgresql" else "mysql+asyncmy"
        query = "" if self.backend == "postgresql" else "?charset=utf8mb4"
        return f"{driver}://{self.user}@{self.host}:{port or self.port}/{self.database}{query}"


# -- PostgreSQL -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def pg_connect(target: Target, database: str | None = None) -> AsyncIterator[Any]:
    connection = await asyncpg.connect(
        host=target.host, port=target.port, user=target.user, database=database or target.database
    )
    try:
        yield connection
    finally:
        await connection.close()


async def prepare_postgresql(target: Target) -> dict[str, Any]:
    async with pg_connect(target, "postgres") as admin:
        exists = await admin.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", target.database
        )
        if not exists:
            await admin.execute(f'CREATE DATABASE "{target.database}"')
        info = {
            "version": await admin.fetchval("SHOW server_version"),
            "ssl": await admin.fetchval("SHOW ssl"),
            "max_connections": await admin.fetchval("SHOW max_connections"),
            "shared_buffers": await admin.fetchval("SHOW shared_buffers"),
            "synchronous_commit": await admin.fetchval("SHOW synchronous_commit"),
            "fsync": await admin.fetchval("SHOW fsync"),
        }
    async with pg_connect(target) as connection:
        await connection.execute(
            """
            DROP TABLE IF EXISTS users;
            CREATE TABLE users (
                id bigserial PRIMARY KEY,
                name varchar(100) NOT NULL,
                email varchar(200) NOT NULL,
                visits integer NOT NULL DEFAULT 0
            );
            """
        )
        await connection.execute(
            f"""
            INSERT INTO users (name, email, visits)
            SELECT 'user ' || i, 'user' || i || '@example.com', 0
            FROM generate_series(1, {ROWS}) AS i;
            """
        )
        await connection.execute("VACUUM ANALYZE users")
    return info


async def pg_user(target: Target, user_id: int) -> dict[str, Any] | None:
    async with pg_connect(target) as connection:
        row = await connection.fetchrow(
            "SELECT id, name, email, visits FROM users WHERE id = $1", user_id
        )
    return None if row is None else dict(row)


async def pg_page(target: Target, limit: int) -> list[dict[str, Any]]:
    async with pg_connect(target) as connection:
        rows = await connection.fetch(
            "SELECT id, name, email, visits FROM users ORDER BY id LIMIT $1", limit
        )
    return [dict(row) for row in rows]


class BackendWatch:
    """The PostgreSQL connections to the bench database opened while it runs, by start time.

    Polls ``pg_stat_activity`` (every ``interval`` seconds, from the ``postgres``
    database) and keeps each new backend's start time: a connection counts even if it is
    closed again before the window ends (the pool discards connections whose clients
    hung up).  ``pg_stat_database.sessions`` is no substitute: backends publish it
    lazily (skipped while its lock is contended, i.e. under load), so it lags by
    seconds.  Connections that live shorter than ``interval`` are missed here; the
    counting proxy's load phase sees every one of them.
    """

    def __init__(self, target: Target, interval: float = 0.1) -> None:
        self.target = target
        self.interval = interval
        self.started: dict[int, float] = {}
        self._known: set[int] = set()
        self._connection: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._connection = await asyncpg.connect(
            host=self.target.host, port=self.target.port, user=self.target.user,
            database="postgres",
        )  # fmt: skip
        self._known = set((await self._backends()).keys())
        self._task = asyncio.ensure_future(self._poll())

    async def stop(self) -> dict[int, float]:
        """Stop polling; new backends' start times (Unix seconds) by process id."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        try:
            self._record(await self._backends())
        finally:
            await self._connection.close()
        return self.started

    async def _poll(self) -> None:
        while True:
            self._record(await self._backends())
            await asyncio.sleep(self.interval)

    def _record(self, backends: dict[int, float]) -> None:
        for pid, started in backends.items():
            if pid not in self._known:
                self._known.add(pid)
                self.started[pid] = started

    async def _backends(self) -> dict[int, float]:
        rows = await self._connection.fetch(
            "SELECT pid, extract(epoch FROM backend_start)::float8 AS started "
            "FROM pg_stat_activity WHERE datname = $1",
            self.target.database,
        )
        return {row["pid"]: row["started"] for row in rows}


# -- MariaDB ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def my_connect(target: Target, database: str | None = None) -> AsyncIterator[Any]:
    kwargs: dict[str, Any] = {
        "host": target.host,
        "port": target.port,
        "user": target.user,
        "autocommit": True,
        "charset": "utf8mb4",
    }
    if database != "":
        kwargs["db"] = database or target.database
    connection = await asyncmy.connect(**kwargs)
    try:
        yield connection
    finally:
        connection.close()


async def _my_rows(target: Target, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with my_connect(target) as connection, connection.cursor() as cursor:
        await cursor.execute(sql, args)
        return list(await cursor.fetchall())


async def prepare_mysql(target: Target) -> dict[str, Any]:
    async with my_connect(target, "") as connection, connection.cursor() as cursor:
        await cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{target.database}`")
        await cursor.execute("SELECT VERSION()")
        (version,) = await cursor.fetchone()
    async with my_connect(target) as connection, connection.cursor() as cursor:
        await cursor.execute("DROP TABLE IF EXISTS users")
        await cursor.execute(
            """
            CREATE TABLE users (
                id bigint NOT NULL AUTO_INCREMENT PRIMARY KEY,
                name varchar(100) NOT NULL,
                email varchar(200) NOT NULL,
                visits int NOT NULL DEFAULT 0
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
            """
        )
        rows = [(f"user {i}", f"user{i}@example.com", 0) for i in range(1, ROWS + 1)]
        for start in range(0, ROWS, 1000):
            await cursor.executemany(
                "INSERT INTO users (name, email, visits) VALUES (%s, %s, %s)",
                rows[start : start + 1000],
            )
        await cursor.execute("ANALYZE TABLE users")
        await cursor.fetchall()
    return {"version": version}


async def my_user(target: Target, user_id: int) -> dict[str, Any] | None:
    rows = await _my_rows(
        target, "SELECT id, name, email, visits FROM users WHERE id = %s", (user_id,)
    )
    if not rows:
        return None
    id_, name, email, visits = rows[0]
    return {"id": id_, "name": name, "email": email, "visits": visits}


async def my_page(target: Target, limit: int) -> list[dict[str, Any]]:
    rows = await _my_rows(
        target, "SELECT id, name, email, visits FROM users ORDER BY id LIMIT %s", (limit,)
    )
    return [{"id": r[0], "name": r[1], "email": r[2], "visits": r[3]} for r in rows]


async def my_connections(target: Target) -> int:
    """MariaDB's ``Connections`` status: connection attempts server-wide (all databases)."""
    rows = await _my_rows(target, "SHOW GLOBAL STATUS LIKE 'Connections'")
    return int(rows[0][1]) - 1  # minus the one that asked


async def user(target: Target, user_id: int) -> dict[str, Any] | None:
    return await (pg_user if target.backend == "postgresql" else my_user)(target, user_id)


async def page(target: Target, limit: int) -> list[dict[str, Any]]:
    return await (pg_page if target.backend == "postgresql" else my_page)(target, limit)


async def prepare(target: Target) -> dict[str, Any]:
    if target.backend == "postgresql":
        return await prepare_postgresql(target)
    return await prepare_mysql(target)
