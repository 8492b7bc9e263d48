"""SQLite (aiosqlite): query_only read connections, our own BEGIN IMMEDIATE, WAL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from ..._keys import DEFERRED_BEGIN
from ...insight import note_begin
from ...settings import Settings
from .base import (
    BEGIN,
    SAVEPOINT,
    Backend,
    Role,
    leave_savepoint,
    merge_connect_args,
    scope_statement,
)

#: Seconds to keep retrying the one-time switch of a new SQLite file to WAL mode.
_WAL_SWITCH_TIMEOUT = 10.0


class SQLite(Backend):
    name = "sqlite"

    def __init__(self) -> None:
        self._ephemeral: str | None = None

    def url(self, url: URL) -> URL:
        database = url.database or ""
        if database in ("", ":memory:") or url.query.get("mode") == "memory":
            # Separate read and write pools cannot share one in-memory database, so
            # "in memory" becomes a private file that is deleted at dispose().
            if self._ephemeral is None:
                handle, self._ephemeral = tempfile.mkstemp(prefix="sanic-sqlalchemy-", suffix=".db")
                os.close(handle)
            return url.set(database=self._ephemeral, query={})
        return url

    def engine_options(self, role: Role, settings: Settings) -> dict[str, Any]:
        options = super().engine_options(role, settings)
        # sqlite3's busy timeout: how long a writer waits for another to finish.
        options["connect_args"] = merge_connect_args(
            settings.engine_options, {"timeout": settings.pool_timeout}
        )
        return options

    def install(self, engine: AsyncEngine, role: Role) -> None:
        sync_engine = engine.sync_engine
        if role is Role.READ:
            event.listen(sync_engine, "connect", _sqlite_read_connection)
        else:
            event.listen(sync_engine, "connect", _sqlite_set_up)
            # The driver's own BEGIN handling breaks savepoints; emit BEGIN ourselves.
            # IMMEDIATE takes the write lock at once, so a transaction that read first
            # cannot fail later when it upgrades to writing.
            event.listen(sync_engine, "begin", _sqlite_begin_immediate)
        event.listen(sync_engine, "handle_error", _sqlite_interrupt_cancelled)
        # A COMMIT refused by a deferred constraint leaves SQLite's transaction open
        # (and its write lock held) while SQLAlchemy considers it over.
        event.listen(sync_engine.pool, "checkin", _sqlite_end_leftover_transaction)

    def is_unsafe_for(self, role: Role, driver_connection: Any) -> bool:
        return bool(driver_connection.in_transaction)

    def is_read_only_violation(self, error: BaseException | None) -> bool:
        return getattr(error, "sqlite_errorcode", None) == 8 or "readonly database" in str(error)

    @contextlib.contextmanager
    def read_inside_write(self, connection: Connection) -> Iterator[None]:
        scope_statement(connection, f"SAVEPOINT {SAVEPOINT}")
        scope_statement(connection, "PRAGMA query_only = 1")
        try:
            yield
        finally:
            # After a cancellation the connection is invalidated: nothing to restore,
            # and a statement on it would replace the CancelledError.
            if not connection.invalidated:
                scope_statement(connection, "PRAGMA query_only = 0")
                leave_savepoint(connection)

    def cleanup(self) -> None:
        if self._ephemeral is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._ephemeral + suffix)
            self._ephemeral = None


def _sqlite_set_up(dbapi_connection: Any, _record: Any = None) -> None:
    """Every SQLite connection: our own BEGIN, foreign keys enforced, WAL journal."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() != "wal":
            _switch_to_wal(cursor)
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    # The journal mode is stored in the database file, so this runs once per file.
    # Switching needs a moment without other connections (two workers starting on a
    # new file), and SQLite answers "locked" at once instead of waiting: retry.
    delay, waited = 0.01, 0.0
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as error:
            if "locked" not in str(error) or waited > _WAL_SWITCH_TIMEOUT:
                raise
        await_only(asyncio.sleep(delay))
        waited += delay
        delay = min(delay * 2, 0.5)


def _sqlite_read_connection(dbapi_connection: Any, _record: Any) -> None:
    _sqlite_set_up(dbapi_connection)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA query_only = ON")
    finally:
        cursor.close()


def _sqlite_end_leftover_transaction(dbapi_connection: Any, _record: Any) -> None:
    if dbapi_connection is not None and dbapi_connection.driver_connection.in_transaction:
        dbapi_connection.rollback()


def _sqlite_interrupt_cancelled(context: ExceptionContext) -> None:
    """Stop a cancelled statement at once and let its connection really close.

    aiosqlite runs it in a thread that a cancellation does not stop: closing the
    connection would wait behind it.  And SQLAlchemy leaves the cursor of a cancelled
    statement open, so the closed connection stays a zombie that holds its lock until
    the garbage collector finalises the cursor.
    """
    if not isinstance(context.original_exception, asyncio.CancelledError):
        return
    connection = context.connection
    if connection is None or connection.invalidated:
        return
    driver = connection.connection.driver_connection
    sqlite_connection = getattr(driver, "_connection", None)
    if sqlite_connection is not None:
        sqlite_connection.interrupt()
    # (ExceptionContext.cursor is never set in SQLAlchemy 2.1: use the execution's.)
    cursor = getattr(context.execution_context, "cursor", None)
    if cursor is not None:
        cursor.close()


def _sqlite_begin_immediate(connection: Connection) -> None:
    started = time.perf_counter()
    if connection.get_execution_options().get(DEFERRED_BEGIN):
        connection.exec_driver_sql("BEGIN", execution_options=BEGIN)
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE", execution_options=BEGIN)
    # The wait for the write lock, for the unit that begins on this connection next.
    note_begin(connection, time.perf_counter() - started)
