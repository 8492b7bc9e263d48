"""What a unit of work is handed: everything it needs of its database, in one object.

A ``Database`` makes one ``Environment`` and hands it to every unit it opens; units
never see the ``Database`` itself.  The test kit changes only what is meant for it here:
``outer`` (a rolled-back test's connection, which every unit joins) and ``capture``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..hooks import CallbackCapture, CallbackErrorHook
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

    __slots__ = ("connection", "sync")

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection
        self.sync: Connection = connection.sync_connection  # type: ignore[assignment]


class Environment:
    """The engines, session classes, scope and hooks a database's units work with."""

    __slots__ = (
        "_engines",
        "capture",
        "commit_on_exit",
        "on_callback_error",
        "outer",
        "outer_sync",
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
        self._engines = engines
        self.scope = scope
        self.read_session_class = read_session_class
        self.write_session_class = write_session_class
        #: Called as ``hook(error, callback)`` when an on-commit callback raises.
        self.on_callback_error = on_callback_error
        #: Whether a unit that succeeds commits (``commit_on_exit``), once configured.
        self.commit_on_exit = True
        #: Sees each on-commit callback, and may keep it from running (tests only).
        self.capture: CallbackCapture | None = None
        self.outer: OuterTransaction | None = None
        self.outer_sync: Connection | None = None

    def engines(self) -> Engines:
        """The engines of the running event loop (created on first use)."""
        return self._engines()

    def join(self, outer: OuterTransaction | None) -> None:
        """Make every unit opened from now on join ``outer`` (``None``: the pools)."""
        self.outer = outer
        self.outer_sync = None if outer is None else outer.sync
