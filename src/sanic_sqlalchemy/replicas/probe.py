"""Asking a server how far it is, with short time limits: the probe's queries.

Each server gets a connection of its own for probing (a pool of one, outside the pools
that serve units), opened with a short connect timeout and a statement timeout, so
that a replica that hangs cannot stall the probe or a unit.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from .positions import Position, parse_position

#: Seconds to connect to a server, and to answer one probe query.
CONNECT_TIMEOUT = 2.0
QUERY_TIMEOUT = 1.0

_PRIMARY = {
    "postgresql": "SELECT pg_current_wal_insert_lsn()::text",
    "mysql": "SELECT @@gtid_binlog_pos",
}
_REPLICA = {
    # A "replica" that is not in recovery (promoted) reports its own position.
    "postgresql": (
        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
        "ELSE pg_current_wal_lsn() END)::text"
    ),
    "mysql": "SELECT @@gtid_slave_pos",
}
#: Run on the unit's writing connection right after its COMMIT: a position at or after
#: the commit record (PostgreSQL) or the GTID of the transaction just committed.
COMMIT_POSITION = {
    "postgresql": "SELECT pg_current_wal_insert_lsn()::text",
    "mysql": "SELECT @@last_gtid",
}


def connect_options(backend: str) -> dict[str, Any]:
    """``connect_args`` that bound how long connecting to a server may take."""
    if backend == "postgresql":
        return {"timeout": CONNECT_TIMEOUT}
    return {"connect_timeout": int(CONNECT_TIMEOUT)}


def probe_engine(url: URL, backend: str) -> AsyncEngine:
    """A pool of one connection to ``url`` for probe queries."""
    connect_args = connect_options(backend)
    if backend == "postgresql":
        connect_args["server_settings"] = {
            "statement_timeout": str(int(QUERY_TIMEOUT * 1000)),
            "application_name": "sanic-sqlalchemy probe",
        }
    else:
        connect_args["init_command"] = f"SET SESSION max_statement_time = {QUERY_TIMEOUT:g}"
    return create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=CONNECT_TIMEOUT,
        isolation_level="AUTOCOMMIT",
        connect_args=connect_args,
    )


async def position_of(engine: AsyncEngine, backend: str, *, primary: bool) -> Position | None:
    """The server's current position (primary) or replayed position (replica)."""
    query = (_PRIMARY if primary else _REPLICA)[backend]

    async def ask() -> Any:
        async with engine.connect() as connection:
            return (await connection.exec_driver_sql(query)).scalar()

    value = await asyncio.wait_for(ask(), CONNECT_TIMEOUT + QUERY_TIMEOUT)
    return parse_position(None if value is None else str(value), backend)


def commit_position(connection: Connection, backend: str) -> Position | None:
    """The position of the commit just made on ``connection`` (inside SQLAlchemy's
    greenlet, right after COMMIT, before the connection goes back to the pool).

    One round trip on the connection itself, outside any transaction: no BEGIN, and
    nothing for the pool to roll back.
    """
    driver: Any = connection.connection.driver_connection
    query = COMMIT_POSITION[backend]
    if backend == "postgresql":
        value = await_only(driver.fetchval(query))
    else:
        cursor = driver.cursor()
        try:
            await_only(cursor.execute(query))
            row = await_only(cursor.fetchone())
        finally:
            await_only(cursor.close())
        value = row[0] if row else None
    return parse_position(None if value is None else str(value), backend)
