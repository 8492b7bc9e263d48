"""The unit class of a database with unit listeners: it tells them when it begins, when
it ends (and how), and which of its on-commit callbacks raised.

A database uses it only once ``db.listen`` registered a ``unit_begin``, ``unit_end`` or
``callback_error`` listener; until then its units are plain ``UnitOfWork``\\ s, which
check nothing and tell nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ..hooks import UnitOutcome
from ..insight import UnitStats
from ..unit import Environment, UnitOfWork, UnitState

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


class _CountedCommits(UnitStats):
    """``unit.stats`` that also counts the unit's commits (its savepoints' releases
    aside), so that the unit can tell how its last write transaction ended."""

    __slots__ = ("commits",)

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    def committed(self) -> None:
        super().committed()
        self.commits += 1


class ObservedUnit(UnitOfWork):
    """A unit of work that tells its database's listeners what happens to it."""

    __slots__ = (
        "_began_at",
        "_commits",
        "_commits_before",
        "_dropped_changes",
        "_error",
        "_told_end",
        "beginning",
    )

    def __init__(self, env: Environment, after: tuple[object, ...] = ()) -> None:
        super().__init__(env, after)
        self.stats = self._commits = _CountedCommits()
        #: The commits counted when its last write transaction began.
        self._commits_before = 0
        #: The first exception the unit was ended with or failed to settle with.
        self._error: BaseException | None = None
        #: Whether db.write held changes never sent when the unit settled.
        self._dropped_changes = False
        self._told_end = False
        self._began_at = perf_counter()
        self.beginning = None
        listeners = env.listeners
        if listeners is not None:
            self.beginning = listeners.unit_began(self)

    async def begin_heard(self) -> None:
        beginning = self.beginning
        if beginning is None:
            return
        self.beginning = None
        try:
            await beginning
        except BaseException as error:
            # Cancelled meanwhile (a listener's own errors are logged, never raised): the
            # opener will not get the unit, so it ends here.
            await self.end(False, error)
            raise

    def work_raised(self, error: BaseException) -> None:
        if self._error is None and self.state is not UnitState.ENDED:
            self._error = error

    @property
    def outcome(self) -> UnitOutcome:
        """How its write side ended (or stands): whether its last write transaction
        committed (changes given to ``db.write`` and dropped unsent count as one rolled
        back); ``"no_write"`` when it opened none."""
        if not self.wrote:
            return "rolled_back" if self._dropped_changes else "no_write"
        return "committed" if self._commits.commits > self._commits_before else "rolled_back"

    def write_began(self, connection: Connection) -> None:
        super().write_began(connection)
        self._commits_before = self._commits.commits

    async def settle(self, success: bool, error: BaseException | None = None) -> None:
        if self.state is UnitState.ACTIVE:
            if self._error is None:
                self._error = error
            # Sent at the commit (then a write transaction begins), or dropped.
            self._dropped_changes = self.holds_writes
        try:
            await super().settle(success, error)
        except BaseException as failure:
            # Its commit failed (or db.read held changes): that ended it.
            if self._error is None:
                self._error = failure
            raise

    async def end(self, success: bool, error: BaseException | None = None) -> None:
        if self._error is None and self.state is not UnitState.ENDED:
            self._error = error
        try:
            await super().end(success, error)
        except BaseException as failure:
            if self._error is None:
                self._error = failure
            await self._tell_end()
            raise
        await self._tell_end()

    async def _tell_end(self) -> None:
        # Once, by whichever call ended it (a request's units may be ended twice).
        if self._told_end or self.state is not UnitState.ENDED:
            return
        self._told_end = True
        duration = perf_counter() - self._began_at
        # A unit opened in synchronous code (a request's, on first use of db) had its
        # async unit_begin listeners awaited by nobody yet: before the unit_end ones.
        await self.begin_heard()
        listeners = self._needs.listeners
        if listeners is not None:
            await listeners.unit_ended(self, self.outcome, self._error, duration)

    async def callback_failed(self, error: BaseException, callback: Callable[..., Any]) -> None:
        await super().callback_failed(error, callback)
        listeners = self._needs.listeners
        if listeners is not None:
            await listeners.callback_failed(self, callback, error)
