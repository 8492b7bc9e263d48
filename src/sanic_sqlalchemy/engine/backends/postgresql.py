"""PostgreSQL (asyncpg): read connections read-only from their start-up packet."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, ExceptionContext
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from ...cluster.failover import with_write_target
from ...errors import PrimaryUnavailableError
from ...settings import Settings
from .base import (
    SAVEPOINT,
    Backend,
    Role,
    cancelled_driver,
    leave_savepoint,
    merge_connect_args,
    scope_statement,
)

_LOCKS_HELD = "sanic_sqlalchemy: advisory locks held"
#: One simple-protocol round trip after a unit the read guard was not sure of: settings
#: changed in the session and LISTENs are undone (RESET ALL keeps what the start-up packet
#: set, default_transaction_read_only included), and held advisory locks are reported.
#: Reading pg_settings instead would cost about 0.7 ms of server time per check.
_POSTGRESQL_RESET = (
    "RESET ALL; UNLISTEN *; "
    "DO $$BEGIN IF EXISTS (SELECT FROM pg_locks WHERE pid = pg_backend_pid() "
    "AND locktype = 'advisory') THEN RAISE EXCEPTION '" + _LOCKS_HELD + "'; END IF; END$$"
)


class PostgreSQL(Backend):
    name = "postgresql"
    # asyncpg opens cursors only inside a transaction: a streamed read gets one (made
    # read-only by the connection's default); the pool restores autocommit at check-in.
    streaming_options: Mapping[str, Any] = {"isolation_level": "READ COMMITTED"}

    def url(self, url: URL) -> URL:
        # Several hosts: connect only to one that accepts writes (the primary's read pool
        # asks for what it can, ``cluster.failover.PrimaryWatch``).
        return with_write_target(url)

    def engine_options(self, role: Role, settings: Settings) -> dict[str, Any]:
        options = super().engine_options(role, settings)
        if role is Role.READ:
            # asyncpg's rollback outside a transaction sends nothing already; asking the
            # connection whether it is in autocommit first would only cost time.
            del options["skip_autocommit_rollback"]
            options["connect_args"] = merge_connect_args(
                settings.engine_options,
                {"server_settings": {"default_transaction_read_only": "on"}},
            )
        return options

    def commit_carrying_args(self, options: Mapping[str, Any]) -> dict[str, Any] | None:
        connect_args: dict[str, Any] = dict(options.get("connect_args", {}))
        if "connection_class" in connect_args:
            return None  # the application's own class: statements go one by one
        # Imported here: asyncpg is an optional dependency, needed only by PostgreSQL.
        from .carried_commit import CarryingConnection

        connect_args["connection_class"] = CarryingConnection
        return connect_args

    def install(self, engine: AsyncEngine, role: Role) -> None:
        event.listen(engine.sync_engine, "handle_error", _postgresql_protocol_lost)
        if role is Role.READ:
            event.listen(engine.sync_engine, "handle_error", _postgresql_keep_cancelled_read)

    fails_over = True

    def is_read_only_violation(self, error: BaseException | None) -> bool:
        return getattr(error, "sqlstate", None) == _READ_ONLY_TRANSACTION

    def unavailable_reason(
        self, error: BaseException, driver_connection: Any, writes: bool
    ) -> str | None:
        if _is_protocol_lost(error):
            return _PROTOCOL_LOST
        sqlstate = getattr(error, "sqlstate", None) or ""
        if sqlstate in _SHUTTING_DOWN or sqlstate.startswith("08"):
            return _SHUTTING_DOWN.get(sqlstate, "the connection to it failed")
        if type(getattr(error, "orig", None)).__name__ == "TargetServerAttributeNotMatched":
            return "none of the servers the URL names is a primary that takes writes now"
        if writes and sqlstate == _READ_ONLY_TRANSACTION and _server_read_only(driver_connection):
            # Not our own read-only scope, nor a user's SET TRANSACTION READ ONLY: the
            # server itself stopped taking writes (demoted, or fenced by a failover).
            return "it no longer accepts writes (demoted by a failover or switchover)"
        return None

    def is_dead(self, driver_connection: Any) -> bool:
        return bool(driver_connection.is_closed())

    checks_leftover_state = True

    def leftover_state(self, dbapi_connection: Any) -> str | None:
        driver = dbapi_connection.driver_connection
        if self.read_only_lost(driver):
            # Reported for free (ParameterStatus); RESET ALL would restore it, but a
            # connection that was read-write is never reused (``liveness``).
            return "its read-only mode switched off"
        # The client hears of locks and of most settings only by asking (ParameterStatus
        # covers a fixed handful, none of the dangerous ones): the server is asked, once.
        try:
            await_only(driver.execute(_POSTGRESQL_RESET))
        except Exception as error:
            if getattr(error, "sqlstate", None) == "P0001" and _LOCKS_HELD in str(error):
                return "advisory locks (pg_advisory_lock)"
            raise
        return None

    def terminate(self, driver_connection: Any) -> None:
        driver_connection.terminate()

    def is_lost(self, error: BaseException) -> bool:
        return _is_protocol_lost(error)

    def is_unsafe_for(self, role: Role, driver_connection: Any) -> bool:
        if driver_connection.is_in_transaction():
            return True
        return role is Role.READ and self.read_only_lost(driver_connection)

    def read_only_lost(self, driver_connection: Any) -> bool:
        # PostgreSQL reports this setting to the client whenever it changes, so reading
        # it costs no round trip.
        setting = getattr(driver_connection.get_settings(), "default_transaction_read_only", "on")
        return bool(setting != "on")

    @contextlib.contextmanager
    def read_inside_write(self, connection: Connection) -> Iterator[None]:
        # Through SQLAlchemy, not the raw driver: a connection that died here must be
        # reported and invalidated like any other disconnect.
        scope_statement(connection, f"SAVEPOINT {SAVEPOINT}")
        scope_statement(connection, "SET TRANSACTION READ ONLY")
        try:
            yield
        except Exception:
            # A connection lost under the read has no savepoint left to leave, and
            # refuses statements until rolled back: the loss is what to report.
            if not connection.invalidated:
                leave_savepoint(connection)
            raise
        # A cancellation skips this: the connection is then invalidated anyway.
        leave_savepoint(connection)


_READ_ONLY_TRANSACTION = "25006"
#: Errors of a server that is going away or not there yet (class 57P), by SQLSTATE.
_SHUTTING_DOWN = {
    "57P01": "it is shutting down (administrator command)",
    "57P02": "it crashed",
    "57P03": "it is starting up or shutting down",
}
_PROTOCOL_LOST = (
    "connection was closed in the middle of operation: the server ended the session (a "
    "stop or restart, or pg_terminate_backend) while it was idle in the pool"
)


def _server_read_only(driver_connection: Any) -> bool:
    """Whether the server says, in the settings it reports to the client for free
    (PostgreSQL 14 and later), that it takes no writes: in hot standby, or read-only
    by default.  A server that reports neither is assumed to (it cannot say)."""
    if driver_connection is None:
        return True
    settings = driver_connection.get_settings()
    standby = getattr(settings, "in_hot_standby", None)
    read_only = getattr(settings, "default_transaction_read_only", None)
    if standby is None and read_only is None:
        return True
    return "on" in (standby, read_only)


def _postgresql_keep_cancelled_read(context: ExceptionContext) -> None:
    """Keep the connection of a read cancelled mid-statement instead of discarding it.

    SQLAlchemy discards any connection whose statement was interrupted.  For a read in
    autocommit that is never needed with asyncpg: it asks the server to cancel the
    statement, and the connection's next command waits until the server is done with
    the cancelled one, so nothing of it is left over.  A client time-out burst then
    costs no new connections.  A read inside a transaction (a streamed read) is still
    discarded: its transaction's state is unknown.
    """
    driver = cancelled_driver(context)
    if driver is None or driver.is_closed() or driver.is_in_transaction():
        return
    context.is_disconnect = False


def _is_protocol_lost(error: BaseException | None) -> bool:
    """Whether ``error`` is asyncpg refusing a command because its connection already
    received the server's last words.

    When the server ends a session (a fast or immediate stop, ``pg_terminate_backend``)
    it sends a FATAL error and closes the socket.  An idle asyncpg connection that has
    read the error but not yet the end of the stream is not "closed" yet, but its
    protocol waits forever for the end of an operation that never started, so its next
    command fails with ``InternalClientError: cannot switch to state N; another
    operation (2) is in progress`` (or ``… protocol is in the "failed" state``).  It is a
    lost connection, and must be handled as one: discarded, and the read retried.
    """
    # SQLAlchemy's adapted error reads "<class '…InternalClientError'>: cannot switch …".
    return type(error).__name__ == "InternalClientError" and "cannot switch to state" in str(error)


def _postgresql_protocol_lost(context: ExceptionContext) -> None:
    """Report a connection whose protocol was ended by the server (``_is_protocol_lost``)
    as the lost connection it is: SQLAlchemy invalidates it, a read in autocommit runs
    again on a fresh one, and the caller sees an ``OperationalError`` that says the
    connection was lost, not asyncpg's "another operation is in progress", which reads
    like two tasks sharing a connection."""
    original = context.original_exception
    # ``chained_exception`` is set only once an earlier handler returned an error (the
    # slot is empty otherwise, so read with a default).
    reported = getattr(context, "chained_exception", None)
    if not _is_protocol_lost(original) or isinstance(reported, PrimaryUnavailableError):
        return  # not lost, or reported already as the primary lost (``cluster.failover``)
    context.is_disconnect = True
    dbapi = context.dialect.loaded_dbapi
    lost = dbapi.InterfaceError(f"{_PROTOCOL_LOST}; asyncpg reported: {original}", original)
    raise OperationalError(
        context.statement, context.parameters, lost, connection_invalidated=True
    ) from original
