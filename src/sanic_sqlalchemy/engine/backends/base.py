"""What every backend shares: the ``Backend`` interface, engine roles, and the
read-only scope's statements."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any

from sqlalchemy.engine import URL, Connection, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..._keys import OVERHEAD_OPTION
from ...errors import PrimaryUnavailableError, ReadOnlyError
from ...readonly.refusals import server_refused
from ...settings import Settings

SAVEPOINT = "sanic_sqlalchemy_read"


class Role(Enum):
    """What an engine is for: the unit's writes or its reads."""

    WRITE = "write"
    READ = "read"


class Backend:
    """Behaviour shared by every backend; subclasses fill in the differences."""

    name = ""
    #: Behind a pooler in transaction mode: no session state survives a transaction.
    transaction_pooling = False
    #: Execution options of a read connection that streams rows (server-side cursor).
    streaming_options: Mapping[str, Any] = {}

    def url(self, url: URL) -> URL:
        """The URL to connect to, with this backend's defaults filled in."""
        return url

    def engine_options(self, role: Role, settings: Settings) -> dict[str, Any]:
        """Keyword arguments for ``create_async_engine`` specific to this backend."""
        if role is Role.WRITE:
            return {}
        # Reads run in autocommit: there is never a transaction to roll back, and
        # MySQL drivers would otherwise send ROLLBACK twice per unit (session close
        # and pool check-in), two round trips for nothing.
        return {"isolation_level": "AUTOCOMMIT", "skip_autocommit_rollback": True}

    def commit_carrying_args(self, options: Mapping[str, Any]) -> dict[str, Any] | None:
        """The write engine's ``connect_args`` with connections whose ``COMMIT`` can carry
        statements (``carried_commit``), from ``create_async_engine``'s ``options``; or
        ``None`` where the driver cannot (the statements then go one by one)."""
        return None

    def install(self, engine: AsyncEngine, role: Role) -> None:
        """Attach this backend's connection set-up to ``engine`` (and to it only)."""

    def is_read_only_violation(self, error: BaseException | None) -> bool:
        """True when the driver error says a write was refused as read-only."""
        return False

    def is_dead(self, driver_connection: Any) -> bool:
        """True when the connection is known dead without asking the server."""
        return False

    #: Whether ``leftover_state`` can tell anything (SQLite keeps no session state that
    #: outlives a unit and another connection would notice).
    checks_leftover_state = False

    def leftover_state(self, dbapi_connection: Any) -> str | None:
        """What a read connection still holds after its unit that only closing it can
        undo (session locks; on MySQL a changed setting), in words, or ``None``, having
        undone what can be undone in the same round trip (PostgreSQL: ``RESET ALL``,
        ``UNLISTEN *``).  Run in the pool's check-in (SQLAlchemy's greenlet) after a
        statement the read guard could not be sure of."""
        return None

    def terminate(self, driver_connection: Any) -> None:
        """Close ``driver_connection`` at once, without a round trip: the server ends
        its session, and whatever the session held with it."""
        driver_connection.close()

    def is_lost(self, error: BaseException) -> bool:
        """True when the driver error means the connection is gone, where the dialect's
        own ``is_disconnect`` does not see it."""
        return False

    #: Whether a lost or demoted primary is reported as ``PrimaryUnavailableError``
    #: (``cluster.failover``), with ``unavailable_reason`` saying which errors mean it.
    fails_over = False

    def unavailable_reason(
        self, error: BaseException, driver_connection: Any, writes: bool
    ) -> str | None:
        """Why the driver error ``error`` means that the primary is gone for this
        connection (``writes``: on a write connection, demoted counts too), or ``None``."""
        return None

    def is_unsafe_for(self, role: Role, driver_connection: Any) -> bool:
        """True when a pooled connection left its expected state (read-only, idle)."""
        return False

    def read_only_lost(self, driver_connection: Any) -> bool:
        """True when a statement switched a read connection's read-only mode off."""
        return False

    @contextlib.contextmanager
    def read_inside_write(self, connection: Connection) -> Iterator[None]:
        """Run one read on the unit's writing connection without letting it write."""
        yield

    def cleanup(self) -> None:
        """Release what the backend made for itself (a temporary database file)."""


def merge_connect_args(options: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(options.get("connect_args", {}))
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**value, **merged[key]}
        else:
            merged.setdefault(key, value)
    return merged


def cancelled_driver(context: ExceptionContext) -> Any:
    """The driver connection whose statement was cancelled, if it is still in use."""
    if not isinstance(context.original_exception, asyncio.CancelledError):
        return None
    connection = context.connection
    if connection is None or connection.invalidated:
        return None
    return connection.connection.driver_connection


def leave_savepoint(connection: Connection) -> None:
    scope_statement(connection, f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
    scope_statement(connection, f"RELEASE SAVEPOINT {SAVEPOINT}")


#: The read-only scope's own statements are part of the read's time in ``unit.stats``,
#: not statements of the unit (nor repeats of one another).
READ_SCOPE = {OVERHEAD_OPTION: "read"}
BEGIN = {OVERHEAD_OPTION: "write"}


def scope_statement(connection: Connection, statement: str) -> None:
    connection.exec_driver_sql(statement, execution_options=READ_SCOPE)


def refused_as_read_only(backend: Backend, error: DBAPIError) -> ReadOnlyError | None:
    """The ``ReadOnlyError`` to raise when ``error`` is the database refusing a write
    because the connection or transaction is read-only; ``None`` otherwise."""
    if isinstance(error, PrimaryUnavailableError) or not backend.is_read_only_violation(error.orig):
        return None
    return server_refused()


def leftover_description(dbapi_connection: Any, query: str) -> str | None:
    """Run ``query`` (one row of texts, ``NULL`` for nothing) on the pool's DBAPI
    connection and join what it found, or ``None``."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(query)
        row = cursor.fetchone()
    finally:
        cursor.close()
    found = [str(value) for value in row or () if value]
    return "; ".join(found) or None
