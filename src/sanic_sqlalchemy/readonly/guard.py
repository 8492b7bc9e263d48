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

from .._keys import READ_OPTION
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


class ReadGuard:
    """Refuses, on one engine, every read statement that is not a plain query."""

    def __init__(self, backend: GuardedBackend) -> None:
        self._backend = backend
        self._dialect = Dialect(backend.name)

    def check(self, statement: str, context: Any) -> None:
        """Raise ``ReadOnlyError`` unless ``statement`` may run on the read path."""
        compiled = getattr(context, "compiled", None)
        if compiled is None:
            reason = refusal(statement, self._dialect)
        else:
            # The verdict kept on the compiled statement: "" for a query, None not yet.
            reason = getattr(compiled, _VERDICT, None)
            if reason is None:
                reason = refusal(_POSTCOMPILE.sub("NULL", compiled.string), self._dialect) or ""
                setattr(compiled, _VERDICT, reason)
        if reason:
            raise refused(reason)

    def install_on_read_engine(self, engine: AsyncEngine) -> None:
        """Check every statement of ``engine``, whose connections only ever read."""
        backend = self._backend

        def guard(_cursor: Any, statement: str, _parameters: Any, context: Any) -> bool:
            self.check(statement, context)
            connection = context.root_connection
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
