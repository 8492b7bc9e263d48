"""The read path's last check, right before a statement reaches the driver.

Installed on the engines' dialects (SQLAlchemy's ``do_execute`` dialect events), so it
sees every statement a read runs, whatever built it: SQL text, Core and ORM constructs
(``with_for_update()``, ``func.pg_advisory_lock()``, ``suffix_with(…)``), driver SQL on a
held ``db.read.connection()``, and the ORM's own loads.  On the read engine it checks
every statement; on the write engine only the reads a unit runs on its writing
connection (rule 12), marked with an execution option.  A compiled construct is judged
once and the verdict kept on SQLAlchemy's cached ``Compiled`` object, so the ORM's
statements cost one attribute look-up each in the steady state.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import event
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import ColumnClause, TextClause
from sqlalchemy.sql.functions import Function, GenericFunction
from sqlalchemy.sql.selectable import TextualSelect

from .._keys import READ_OPTION, UNVERIFIED_READ
from .lexer import Dialect
from .policy import refusal
from .refusals import read_only_lost, refused

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


class GuardedBackend(Protocol):
    """What the guard needs of a backend (``engine.backends``): its name, and whether a
    statement switched a read connection's read-only mode off."""

    @property
    def name(self) -> str: ...

    def read_only_lost(self, driver_connection: Any) -> bool: ...


_VERDICT = "_sanic_sqlalchemy_read_refusal"
#: SQLAlchemy's placeholder for a parameter expanded when the statement runs (an ``IN``
#: list: ``__[POSTCOMPILE_id_1]``): not SQL the server reads, and its ``[`` would start a
#: quoted name in MariaDB's MSSQL mode, so it is judged as the value it stands for.
_POSTCOMPILE = re.compile(r"__\[POSTCOMPILE_[\w~]*\]")
#: Set on a read connection once a statement ran on it since its checkout.
_RAN = "_sanic_sqlalchemy_ran"
#: Verdicts of accepted queries (compared by identity: a refusal's reason is never them).
_SURE = "sure"
_UNSURE = "unsure"


def _built_by_sqlalchemy(compiled: Any) -> bool:
    """Whether SQLAlchemy wrote every word of ``compiled`` from constructs whose meaning
    it knows: no SQL text (``text()``, ``literal_column()``, a textual select) and no
    function outside SQLAlchemy's known ones (``func.my_function()`` may run anything,
    ``func.count()`` does not).  Only such statements are certainly what the lexer read;
    for the others the connection is checked after the unit (``engine.liveness``)."""
    statement = getattr(compiled, "statement", None)
    if statement is None:
        return False
    for element in visitors.iterate(statement):
        if isinstance(element, (TextClause, TextualSelect)):
            return False
        if isinstance(element, ColumnClause) and element.is_literal and element.name != "*":
            return False
        if isinstance(element, Function) and not isinstance(element, GenericFunction):
            return False
    return True


class ReadGuard:
    """Refuses, on one engine, every read statement that is not a plain query."""

    def __init__(self, backend: GuardedBackend) -> None:
        self._backend = backend
        self._dialect = Dialect(backend.name)

    def check(self, statement: str, context: Any) -> bool:
        """Raise ``ReadOnlyError`` unless ``statement`` may run on the read path; return
        whether the guard is sure of it (see ``_built_by_sqlalchemy``)."""
        compiled = getattr(context, "compiled", None)
        if compiled is None:
            reason = refusal(statement, self._dialect)
            if reason:
                raise refused(reason)
            return False
        # The verdict kept on the compiled statement: _SURE or _UNSURE for a query, the
        # reason of a refusal, None not yet judged.
        verdict = getattr(compiled, _VERDICT, None)
        if verdict is None:
            verdict = refusal(_POSTCOMPILE.sub("NULL", compiled.string), self._dialect) or (
                _SURE if _built_by_sqlalchemy(compiled) else _UNSURE
            )
            setattr(compiled, _VERDICT, verdict)
        if verdict is _SURE:
            return True
        if verdict is _UNSURE:
            return False
        raise refused(verdict)

    def install_on_read_engine(self, engine: AsyncEngine) -> None:
        """Check every statement of ``engine``, whose connections only ever read."""
        backend = self._backend

        def guard(_cursor: Any, statement: str, _parameters: Any, context: Any) -> bool:
            connection = context.root_connection
            if not self.check(statement, context):
                # Text the lexer read, or a function it does not know: the connection
                # is checked for session locks and settings before it is pooled again.
                # (record_info, not info: the dialect's first connect runs on an ad-hoc
                # proxy, which has only that one.)
                info = connection.connection.record_info
                if info is not None:
                    info[UNVERIFIED_READ] = True
            if not getattr(connection, _RAN, False):
                # The first statement since the pool handed the connection out, which it
                # checked then (``engine.liveness``): nothing has run on it since.
                setattr(connection, _RAN, True)
            elif backend.read_only_lost(connection.connection.driver_connection):
                # A previous statement on this held connection switched read-only off
                # (which the checks above exist to prevent): nothing more runs on it.
                connection.invalidate()
                raise read_only_lost()
            return False

        self._listen(engine, guard)

    def install_on_write_engine(self, engine: AsyncEngine) -> None:
        """Check the reads that units run on ``engine``'s writing connections."""

        def guard(_cursor: Any, statement: str, _parameters: Any, context: Any) -> bool:
            if context.execution_options.get(READ_OPTION):
                self.check(statement, context)
            return False

        # Only dialect events: a connection event (after_cursor_execute, say) would send
        # every statement of the engine through SQLAlchemy's event dispatch.
        self._listen(engine, guard)

    @staticmethod
    def _listen(engine: AsyncEngine, guard: Any) -> None:
        def guard_no_params(cursor: Any, statement: str, context: Any) -> bool:
            return bool(guard(cursor, statement, None, context))

        target = engine.sync_engine
        event.listen(target, "do_execute", guard)
        event.listen(target, "do_executemany", guard)
        event.listen(target, "do_execute_no_params", guard_no_params)
