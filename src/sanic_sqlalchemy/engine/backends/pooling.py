"""PostgreSQL behind a pooler in transaction mode (``DATABASE_TRANSACTION_POOLING``).

Such a pooler (PgBouncer, PgCat, Supavisor, RDS Proxy) lends a server connection for one
transaction at a time, so nothing may rely on session state:

* No connection settings: a read connection is not made read-only by its start-up packet
  (the pooler refuses or drops that parameter).  Every read runs in a transaction that
  asyncpg opens with ``BEGIN READ ONLY``, pinned on the client connection (asking for
  autocommit or read-write there changes nothing), and rolled back after the read.  The
  guarantee comes with each transaction, never from what a server connection was left
  with by another client.
* No named prepared statements: statements are unnamed (``prepared_statement_name_func``
  gives ``""``) and asyncpg's own cache is off, so asyncpg sends the ``Parse`` again in the
  same message as ``Bind``/``Execute``/``Sync``.  SQLAlchemy's per-connection cache keeps
  the statement's description, so a cached statement costs one round trip, as a named
  one does directly: a single-row read unit costs 3 (``BEGIN READ ONLY``, the statement,
  ``ROLLBACK``) instead of 4 (unnamed, described every time) or 5 (unique names).
* No session locks: a read the guard was not sure of is checked for session advisory
  locks before its transaction ends (a rollback does not release them), and any found
  are released there, on the server connection that took them.
* No ``LISTEN``: durable task dispatchers poll (``tasks.dispatcher``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from ..._keys import UNVERIFIED_READ
from ...settings import Settings
from .base import Role, merge_connect_args
from .postgresql import PostgreSQL

logger = logging.getLogger("sanic_sqlalchemy")

#: Released at once, in the read's own transaction: 1 when session advisory locks were
#: held (and are now released), else 0.
_RELEASE_SESSION_LOCKS = (
    "SELECT count(*) FROM (SELECT pg_advisory_unlock_all() FROM pg_locks "
    "WHERE pid = pg_backend_pid() AND locktype = 'advisory' LIMIT 1) AS released"
)


def _unnamed() -> str:
    """The name of every prepared statement: the unnamed one, which lives only until
    the next ``Parse`` on the server connection and is sent again with each ``Bind``."""
    return ""


#: asyncpg connect arguments that keep every statement unnamed (see the module).
POOLED_CONNECT_ARGS: Mapping[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_name_func": _unnamed,
}


class PooledPostgreSQL(PostgreSQL):
    """PostgreSQL through a transaction pooler: no session state (see the module)."""

    transaction_pooling = True

    def engine_options(self, role: Role, settings: Settings) -> dict[str, Any]:
        # Neither autocommit nor start-up settings for reads: read-only comes with each
        # transaction (``install``).
        return {"connect_args": merge_connect_args(settings.engine_options, POOLED_CONNECT_ARGS)}

    def install(self, engine: AsyncEngine, role: Role) -> None:
        super().install(engine, role)
        if role is Role.READ:
            event.listen(engine.sync_engine.pool, "connect", _pin_read_only)

    def is_unsafe_for(self, role: Role, driver_connection: Any) -> bool:
        return bool(driver_connection.is_in_transaction())

    def read_only_lost(self, driver_connection: Any) -> bool:
        # Read-only is pinned on the client connection (``_pin_read_only``); what a
        # server connection reports of its defaults says nothing about our transactions.
        return False

    def leftover_state(self, dbapi_connection: Any) -> str | None:
        # Settings changed and LISTENs in a read's transaction end with its rollback;
        # session advisory locks do not, so they are released before it.
        released = await_only(dbapi_connection.driver_connection.fetchval(_RELEASE_SESSION_LOCKS))
        return "session advisory locks (pg_advisory_lock)" if released else None


_pinned_classes: dict[type[Any], type[Any]] = {}


def _pin_read_only(dbapi_connection: Any, _record: Any) -> None:
    """Make every transaction of this read connection ``BEGIN READ ONLY``, for good.

    SQLAlchemy's asyncpg adapter begins each transaction with the connection's
    ``readonly`` and ``isolation_level``; the adapter's class is swapped for a subclass
    whose ``readonly`` is always true and which never runs in autocommit, so that no
    execution option (``postgresql_readonly=False``, ``isolation_level="AUTOCOMMIT"``)
    can open a transaction that may write.
    """
    cls = type(dbapi_connection)
    pinned = _pinned_classes.get(cls)
    if pinned is None:
        pinned = _pinned_classes[cls] = _pinned_subclass(cls)
    dbapi_connection.__class__ = pinned


def _pinned_subclass(cls: type[Any]) -> type[Any]:
    isolation_slot = cls.isolation_level  # the adapter's own slot

    def get_readonly(_self: Any) -> bool:
        return True

    def set_readonly(_self: Any, _value: bool) -> None:
        """Ignored: db.read's transactions are always read-only."""

    def get_isolation(self: Any) -> Any:
        level = isolation_slot.__get__(self, cls)
        # Autocommit would send statements with no BEGIN READ ONLY around them.
        return None if level == "autocommit" else level

    def set_isolation(self: Any, value: Any) -> None:
        isolation_slot.__set__(self, value)

    return type(
        f"ReadOnly{cls.__name__}",
        (cls,),
        {
            "__slots__": (),
            "__doc__": "An asyncpg connection whose transactions are all READ ONLY.",
            "readonly": property(get_readonly, set_readonly),
            "isolation_level": property(get_isolation, set_isolation),
        },
    )


def install_check_before_rollback(engine: AsyncEngine, backend: PooledPostgreSQL) -> None:
    """Check each read of ``engine`` the read guard was not sure of right after it runs,
    in its own transaction: after the rollback the pooler may already have lent the
    server connection (and any session lock it holds) to another client.

    A dialect event, registered after the guard's (which marks such reads): only those
    reads pay, two round trips (the check's statement is unnamed, so described first).
    """

    def run_then_check(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        record = context.root_connection.connection
        info = record.record_info
        if info is None or not info.pop(UNVERIFIED_READ, False):
            return False
        if parameters is None:
            cursor.execute(statement)
        else:
            cursor.execute(statement, parameters)
        leftover = backend.leftover_state(record.dbapi_connection)
        if leftover is not None:
            logger.warning(
                "a statement sent through db.read took %s: they were released before its "
                "transaction ended, since behind a transaction pooler they would stay with "
                "a server connection that other clients borrow",
                leftover,
            )
        return True

    def run_then_check_no_params(cursor: Any, statement: str, context: Any) -> bool:
        return run_then_check(cursor, statement, None, context)

    target = engine.sync_engine
    event.listen(target, "do_execute", run_then_check)
    event.listen(target, "do_execute_no_params", run_then_check_no_params)
