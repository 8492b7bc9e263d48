"""Counting and timing each statement of a unit, and watching for slow and repeated ones.

A unit's session marks every connection it begins on with the unit's ``UnitStats``
(``attach``).  A dialect ``do_execute`` event on each engine, installed after the read
guard, then runs the statement itself between two clock readings and adds it to the
statistics of the connection's unit; statements of connections no unit holds (probes,
``db.engine`` used directly) run as if it were not there.  The pool's ``connect`` is
timed the same way, and a unit takes the wait of each connection it begins on.

Slow statements are logged and repeated statements warned about on the
``sanic_sqlalchemy.insight`` logger, with the place in the application's code that
issued them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.sql.elements import (
    ReleaseSavepointClause,
    RollbackToSavepointClause,
    SavepointClause,
)

from .._keys import OVERHEAD_OPTION, READ_OPTION
from .callsite import application_call_site
from .stats import UnitStats

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..settings import InsightSettings

logger = logging.getLogger("sanic_sqlalchemy.insight")

#: The attribute of a SQLAlchemy ``Connection`` that holds its unit's statistics.
_STATS = "_sanic_sqlalchemy_stats"
#: The key of a pooled connection's ``info`` that holds how long its checkout took.
_WAIT = "sanic_sqlalchemy_checkout_wait"
#: … and how long the ``BEGIN`` run on it before the unit saw it took.
_BEGAN = "sanic_sqlalchemy_begin_time"
#: Transaction control SQLAlchemy sends as statements: time, not statements, like
#: BEGIN and COMMIT (the same in production and in a test's rolled-back transaction,
#: whose units are savepoints).
_CONTROL = frozenset({SavepointClause, ReleaseSavepointClause, RollbackToSavepointClause})
#: How much of a statement or of its parameters a log line shows.
_SHOWN = 2000

_NO_SITE = "outside the application's code (the commit at the unit's end, say)"

_Run = Callable[[Any, str, Any, Any], Any]


def attach(connection: Connection, stats: UnitStats) -> None:
    """Count what runs on ``connection`` (just begun on by a unit) in ``stats``."""
    setattr(connection, _STATS, stats)
    info = connection.info
    wait = info.pop(_WAIT, None)
    if wait is not None:
        stats.connection_wait += wait
    began = info.pop(_BEGAN, None)
    if began is not None:
        stats.write_time += began


def detach(connection: Connection, stats: UnitStats) -> None:
    """Stop counting ``connection`` in ``stats`` (a connection that outlives the unit:
    the test's outer connection in a rolled-back test)."""
    if getattr(connection, _STATS, None) is stats:
        delattr(connection, _STATS)


def note_begin(connection: Connection, seconds: float) -> None:
    """A ``BEGIN`` that ran before any unit took the connection (SQLite's
    ``BEGIN IMMEDIATE``, which waits for the write lock): the unit's write time.
    A connection a unit already counts had it timed as it ran."""
    if getattr(connection, _STATS, None) is None:
        connection.info[_BEGAN] = seconds


class StatementWatch:
    """Times the statements units send through one engine and reports the unusual."""

    def __init__(self, settings: InsightSettings) -> None:
        self._settings = settings
        slow_ms = settings.slow_query_ms
        self._slow = None if slow_ms is None else slow_ms / 1000
        self._repeated = settings.repeated_query_warn

    def install(self, engine: AsyncEngine, *, reads_only: bool) -> None:
        """Time the statements of ``engine`` (``reads_only``: a read or replica engine)."""
        sync_engine = engine.sync_engine
        dialect = sync_engine.dialect
        timed = self._timed(dialect.do_execute, reads_only)
        timed_many = self._timed(dialect.do_executemany, reads_only)
        no_params = dialect.do_execute_no_params

        def run_no_params(cursor: Any, statement: str, _parameters: Any, context: Any) -> Any:
            return no_params(cursor, statement, context)

        timed_no_params = self._timed(run_no_params, reads_only)

        def timed_without_params(cursor: Any, statement: str, context: Any) -> bool:
            return timed_no_params(cursor, statement, None, context)

        event.listen(sync_engine, "do_execute", timed)
        event.listen(sync_engine, "do_executemany", timed_many)
        event.listen(sync_engine, "do_execute_no_params", timed_without_params)
        _time_checkouts(engine)

    def _timed(self, run: _Run, reads_only: bool) -> Callable[[Any, str, Any, Any], bool]:
        watched = self._settings.watches_statements
        look_at = self._look_at

        def timed(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
            stats: UnitStats | None = getattr(context.root_connection, _STATS, None)
            if stats is None:
                return False  # not a unit's statement: SQLAlchemy runs it as usual
            options = context.execution_options
            overhead = options.get(OVERHEAD_OPTION)
            if overhead is None and not reads_only:
                compiled = context.compiled
                if compiled is not None and type(compiled.statement) in _CONTROL:
                    overhead = "write"
            # Transaction control and the library's own statements add time only.
            counted = overhead is None
            if counted:
                reading = reads_only or bool(options.get(READ_OPTION))
            else:
                reading = overhead == "read"
            started = perf_counter()
            try:
                run(cursor, statement, parameters, context)
            finally:
                elapsed = perf_counter() - started
                if reading:
                    stats.read_time += elapsed
                    stats.read_statements += counted
                else:
                    stats.write_time += elapsed
                    stats.write_statements += counted
                if watched and counted:
                    look_at(stats, statement, parameters, elapsed, reading)
            return True

        return timed

    def _look_at(
        self, stats: UnitStats, statement: str, parameters: Any, elapsed: float, reading: bool
    ) -> None:
        slow = self._slow
        if slow is not None and elapsed >= slow:
            self._log_slow(statement, parameters, elapsed, reading)
        repeated = self._repeated
        if repeated is None or stats.flushing:
            # A flush inserts or updates row by row where the backend cannot batch
            # (SQLite, for one): the ORM's doing, not a loop in the application.
            return
        if stats.repeats_of(statement) == repeated + 1:
            self._warn_repeated(statement, repeated + 1)

    def _log_slow(self, statement: str, parameters: Any, elapsed: float, reading: bool) -> None:
        settings = self._settings
        site = application_call_site()
        if settings.slow_query_params:
            shown = _shorten(repr(parameters))
        else:
            shown = f"hidden (set {settings.prefix}SLOW_QUERY_PARAMS to log them)"
        logger.warning(
            "slow statement: %.1f ms on db.%s (%sSLOW_QUERY_MS is %g), issued at %s: %s "
            "-- parameters: %s",
            elapsed * 1000,
            "read" if reading else "write",
            settings.prefix,
            settings.slow_query_ms,
            site or _NO_SITE,
            _shorten(statement),
            shown,
            extra={
                "sql": statement,
                "duration_ms": elapsed * 1000,
                "call_site": site,
                "parameters": parameters if settings.slow_query_params else None,
            },
        )

    def _warn_repeated(self, statement: str, count: int) -> None:
        settings = self._settings
        site = application_call_site()
        logger.warning(
            "the same statement ran %d times in one unit of work (%sREPEATED_QUERY_WARN "
            "is %d), the last time from %s: probably one query per row of an earlier "
            "result (N+1). Load those rows in one query instead (selectinload(), "
            "joinedload() or an IN list). Statement: %s",
            count,
            settings.prefix,
            count - 1,
            site or _NO_SITE,
            _shorten(statement),
            extra={"sql": statement, "count": count, "call_site": site},
        )


def _time_checkouts(engine: AsyncEngine) -> None:
    """Note on each pooled connection how long handing it out took (waiting for a free
    one, opening one, the checkout checks), for the unit that begins on it.

    The pool has no event before a checkout, so its ``connect`` is wrapped.
    """
    pool = engine.sync_engine.pool
    checkout = pool.connect

    def timed_checkout() -> Any:
        started = perf_counter()
        connection = checkout()
        connection.info[_WAIT] = perf_counter() - started
        return connection

    setattr(pool, "connect", timed_checkout)  # noqa: B010 (an instance, not the class)


def _shorten(text: str) -> str:
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"
