"""Liveness: a pooled connection is checked as it is handed out, mostly without I/O.

Each checkout asks the driver, at no cost, whether the socket is still open and whether
the connection is still in the state its pool expects (read-only, outside any
transaction); only a connection that sat idle longer than ``LIVENESS_WINDOW`` is pinged.
Under load no request pays for a ping, and a connection killed while idle (server
restart, ``pg_terminate_backend``, ``KILL``) is replaced before a request sees it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, PoolResetState

from .._keys import UNVERIFIED_READ
from .backends import Backend, PooledPostgreSQL, Role, install_check_before_rollback

logger = logging.getLogger("sanic_sqlalchemy")

#: A connection checked out within this many seconds is trusted without a ping.
LIVENESS_WINDOW = 1.0
_LAST_USED = "sanic_sqlalchemy_last_used"


def install_liveness(engine: AsyncEngine, backend: Backend, role: Role) -> None:
    """Check each connection of ``engine`` as the pool hands it out (see the module)."""
    dialect = engine.sync_engine.dialect

    def mark_connected(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_LAST_USED] = time.monotonic()

    def on_checkout(
        dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        driver = dbapi_connection.driver_connection
        if backend.is_dead(driver):
            raise DisconnectionError("connection closed while idle in the pool")
        if backend.is_unsafe_for(role, driver):
            raise DisconnectionError("connection left its read-only or idle state")
        # Idle time counts from the last checkout, not the last check-in: never
        # shorter than the truth, and one pool event less per statement.
        now = time.monotonic()
        info = record.info
        last_used = info.get(_LAST_USED, 0.0)
        info[_LAST_USED] = now
        if now - last_used > LIVENESS_WINDOW:
            # Raises DisconnectionError (the pool then opens a new connection)
            # when the server no longer answers.
            try:
                alive = dialect.do_ping(dbapi_connection)
            except dialect.loaded_dbapi.Error as error:
                if dialect.is_disconnect(error, dbapi_connection, None) or backend.is_lost(error):
                    raise DisconnectionError("connection did not answer a ping") from error
                raise
            if not alive:
                raise DisconnectionError("connection did not answer a ping")

    event.listen(engine.sync_engine.pool, "connect", mark_connected)
    event.listen(engine.sync_engine.pool, "checkout", on_checkout)


def install_leftover_check(engine: AsyncEngine, backend: Backend) -> None:
    """Check, as it goes back to the pool, each read connection of ``engine`` that ran a
    statement the read guard was not sure of (``readonly.guard``), and close it when it
    still holds a session lock or a changed setting.

    The guard reads SQL as the server does, but SQL text and functions it does not know
    (a PL/pgSQL function may take a lock) are where a miss would hide: whatever the
    guard missed must not reach the next unit.  Only those units pay, one round trip at
    check-in (``benchmarks/leftover_check.py``); ORM and Core statements built from known
    constructs never do.  Settings are reset in that round trip where the server allows
    it (PostgreSQL); a connection found holding a lock (or, on MySQL, a changed setting)
    is closed at once, with a warning, so that the server releases it, and the pool
    opens a new one when it is next needed.
    """
    if not backend.checks_leftover_state:
        return
    if isinstance(backend, PooledPostgreSQL):
        # Behind a transaction pooler the check must come before the read's rollback.
        install_check_before_rollback(engine, backend)
        return

    def on_reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
        info = record.record_info
        if info is None or not info.pop(UNVERIFIED_READ, False):
            return
        if state.terminate_only or not state.asyncio_safe:
            return  # being closed anyway
        driver = dbapi_connection.driver_connection
        if backend.is_dead(driver):
            return
        leftover = backend.leftover_state(dbapi_connection)
        if leftover is not None:
            logger.warning(
                "a read connection came back from its unit with %s (a statement sent "
                "through db.read took or changed it); the connection is closed, so that "
                "the server releases what it held, and never handed out again",
                leftover,
            )
            backend.terminate(driver)

    event.listen(engine.sync_engine.pool, "reset", on_reset)
