"""PostgreSQL (asyncpg): read connections read-only from their start-up packet."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

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


class PostgreSQL(Backend):
    name = "postgresql"
    # asyncpg opens cursors only inside a transaction: a streamed read gets one (made
    # read-only by the connection's default); the pool restores autocommit at check-in.
    streaming_options: Mapping[str, Any] = {"isolation_level": "READ COMMITTED"}

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

    def install(self, engine: AsyncEngine, role: Role) -> None:
        if role is Role.READ:
            event.listen(engine.sync_engine, "handle_error", _postgresql_keep_cancelled_read)

    def is_read_only_violation(self, error: BaseException | None) -> bool:
        return getattr(error, "sqlstate", None) == "25006"

    def is_dead(self, driver_connection: Any) -> bool:
        return bool(driver_connection.is_closed())

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
            leave_savepoint(connection)
            raise
        # A cancellation skips this: the connection is then invalidated anyway.
        leave_savepoint(connection)


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
