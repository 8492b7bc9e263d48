"""Asking a server how far it is, with short time limits: the probe's queries.

Each server gets a connection of its own for probing (a pool of one, outside the pools
that serve units), opened with a short connect timeout and a statement timeout, so
that a replica that hangs cannot stall the probe or a unit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from .positions import LSN, Position, parse_position, wal_record_end

#: Seconds to connect to a server, and to answer one probe query.
CONNECT_TIMEOUT = 2.0
QUERY_TIMEOUT = 1.0

# PostgreSQL's insert position comes with the WAL's page and segment sizes, so that a
# position right after a page header counts as the page's start (wal_record_end).
_PG_INSERT_POSITION = (
    "SELECT pg_current_wal_insert_lsn()::text, current_setting('wal_block_size')::int, "
    "pg_size_bytes(current_setting('wal_segment_size'))"
)
_PRIMARY = {
    "postgresql": _PG_INSERT_POSITION,
    "mysql": "SELECT @@gtid_binlog_pos",
}
_REPLICA = {
    # A "replica" that is no longer in recovery was promoted (``Promoted``).
    "postgresql": "SELECT pg_last_wal_replay_lsn()::text, pg_is_in_recovery()",
    "mysql": "SELECT @@gtid_slave_pos",
}
#: Run on the unit's writing connection right after its COMMIT: a position at or after
#: the end of the commit record (PostgreSQL) or the GTID of the transaction just
#: committed.
COMMIT_POSITION = {
    "postgresql": _PG_INSERT_POSITION,
    "mysql": "SELECT @@last_gtid",
}


class Promoted(Exception):
    """A replica's server is no longer in recovery: a failover made it a primary, and
    its data may now differ from the primary's this database writes to."""


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

    async def ask() -> Sequence[Any] | None:
        async with engine.connect() as connection:
            return (await connection.exec_driver_sql(query)).first()

    row = await asyncio.wait_for(ask(), CONNECT_TIMEOUT + QUERY_TIMEOUT)
    if not primary and row is not None and len(row) == 2 and row[1] is False:
        raise Promoted(
            "it is no longer a replica (promoted by a failover); it serves no reads "
            "until it follows the primary again"
        )
    return _position(row, backend)


def _position(row: Sequence[Any] | None, backend: str) -> Position | None:
    """The position in a probe query's row; a PostgreSQL insert position (with the WAL's
    page and segment sizes) as the end of the last record."""
    if row is None or row[0] is None:
        return parse_position(None, backend)
    position = parse_position(str(row[0]), backend)
    if isinstance(position, LSN) and len(row) == 3:
        position = wal_record_end(position, int(row[1]), int(row[2]))
    return position


def commit_position(connection: Connection, backend: str) -> Position | None:
    """The position of the commit just made on ``connection`` (inside SQLAlchemy's
    greenlet, right after COMMIT, before the connection goes back to the pool).

    One round trip on the connection itself, outside any transaction: no BEGIN, and
    nothing for the pool to roll back.
    """
    driver: Any = connection.connection.driver_connection
    query = COMMIT_POSITION[backend]
    row: Sequence[Any] | None
    if backend == "postgresql":
        row = await_only(driver.fetchrow(query))
    else:
        cursor = driver.cursor()
        try:
            await_only(cursor.execute(query))
            row = await_only(cursor.fetchone())
        finally:
            await_only(cursor.close())
    return _position(row, backend)
