"""What a unit of work is handed: everything it needs of its database, in one object.

A ``Database`` makes one ``Environment`` and hands it to every unit it opens; units
never see the ``Database`` itself.  The test kit changes only what is meant for it here:
``outer`` (a rolled-back test's connection, which every unit joins), ``capture`` and
``isolation`` (what a server start and stop do meanwhile).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import UnitStateError
from ..hooks import CallbackCapture, CallbackErrorHook, Listeners, ServerIsolation
from .core import UnitCore, UnitState
from .scope import UnitScope
from .sessions import ReadSession, WriteSession

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..engine.engines import Engines


class OuterTransaction:
    """A connection in a transaction that every unit joins instead of using the pools
    (the test kit's rolled-back tests): both sessions are bound to it, and a unit's
    commit releases a savepoint."""

    __slots__ = ("connection", "open_units", "sync")

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.sync: Connection = connection.sync_connection  # type: ignore[assignment]
        #: The units joined so far that may still be working on the connection.
        self.open_units: list[UnitCore] = []

    def admit(self) -> None:
        """Let the running task open a unit on the connection (``joined`` then records
        it), or raise ``UnitStateError`` when a unit of another task is still active on
        it: checked before the unit is made, so that a refused unit is never begun.

        Units on one connection can only take turns: two at once interleave their
        statements (asyncpg: "another operation is in progress") and their savepoints
        (one's release ends the other's: "SAVEPOINT … does not exist").  A unit of the
        same task (nested, or a request answered inline) is inside the one before it.
        """
        task = asyncio.current_task()
        active = [
            other
            for other in self.open_units
            if other.state is UnitState.ACTIVE
            and other.owner is not None
            and not other.owner.done()
        ]
        for other in active:
            if other.owner is not task:
                raise UnitStateError(
                    "A unit of work was opened while another unit of this rolled-back "
                    "test is still open in another task (asyncio.gather over units, or a "
                    "task started inside a unit): every unit of a rolled-back test joins "
                    "the test's one connection, where units cannot run at the same time "
                    "(their statements and savepoints would interleave). Run the units "
                    "one after the other, or test concurrency with the transactional_db "
                    "fixture (real commits, each unit on a connection of its own, tables "
                    "emptied afterwards)."
                )
        self.open_units = active

    def joined(self, unit: UnitCore) -> None:
        """``unit`` (which ``admit`` let in) now works on the connection."""
        self.open_units.append(unit)


class Environment:
    """The engines, session classes, scope and hooks a database's units work with."""

    __slots__ = (
        "capture",
        "commit_on_exit",
        "engines",
        "isolation",
        "listeners",
        "on_callback_error",
        "outer",
        "read_session_class",
        "scope",
        "write_session_class",
    )

    def __init__(
        self,
        *,
        engines: Callable[[], Engines],
        scope: UnitScope[Any],
        read_session_class: type[ReadSession],
        write_session_class: type[WriteSession],
        on_callback_error: CallbackErrorHook | None,
    ) -> None:
        #: The engines of the running event loop (created on first use).
        self.engines = engines
        self.scope = scope
        self.read_session_class = read_session_class
        self.write_session_class = write_session_class
        #: Called as ``hook(error, callback)`` when an on-commit callback raises.
        self.on_callback_error = on_callback_error
        #: The listeners registered with ``db.listen``: ``None`` until the first, and
        #: units of a database without unit listeners are never told anything.
        self.listeners: Listeners | None = None
        #: Whether a unit that succeeds commits (``commit_on_exit``), once configured.
        self.commit_on_exit = True
        #: Sees each on-commit callback, and may keep it from running (tests only).
        self.capture: CallbackCapture | None = None
        self.outer: OuterTransaction | None = None
        #: What a server start and stop do instead of making and disposing engines
        #: while a test isolates the database (tests only).
        self.isolation: ServerIsolation | None = None

    def join(self, outer: OuterTransaction | None) -> None:
        """Make every unit opened from now on join ``outer`` (``None``: the pools)."""
        self.outer = outer

    @property
    def outer_sync(self) -> Connection | None:
        """The outer transaction's synchronous connection, which units' writes and reads
        share (``None``: the pools)."""
        outer = self.outer
        return None if outer is None else outer.sync
