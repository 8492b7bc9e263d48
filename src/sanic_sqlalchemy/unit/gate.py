"""One task at a time on a session's connection.

A database connection runs one statement at a time.  Tasks of one unit that read at
once (``asyncio.gather`` over ``db.read`` queries) take turns here; a task that tries to
write while another task is writing gets a ``ConcurrentWriteError`` instead of a
corrupted session.  Runs inside SQLAlchemy's greenlet, hence ``await_only``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from sqlalchemy.util import await_only

from ..errors import ConcurrentWriteError


class Gate:
    """A re-entrant turn for one task, with waiting for readers and failing for writers."""

    __slots__ = ("_depth", "_owner", "_released", "_writing")

    def __init__(self) -> None:
        self._owner: asyncio.Task[object] | None = None
        self._depth = 0
        self._writing = False
        self._released: asyncio.Event | None = None

    def hold(self, *, writing: bool) -> _Hold:
        """``with gate.hold(writing=...):`` holds the turn for the current task."""
        return _Hold(self, writing)

    def _enter(self, writing: bool) -> None:
        task = asyncio.current_task()
        while self._owner is not None and self._owner is not task:
            if writing and self._writing:
                raise ConcurrentWriteError(
                    "db.write is already in use by another task of this unit. A session "
                    "runs one operation at a time: await the writes one after another, "
                    "or give each task its own unit by opening `async with db:` inside "
                    "the task."
                )
            if self._released is None:
                self._released = asyncio.Event()
            await_only(self._released.wait())
        self._owner = task
        self._writing = self._writing or writing
        self._depth += 1

    def _leave(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._writing = False
            if self._released is not None:
                self._released.set()
                self._released = None

    @property
    def free(self) -> bool:
        """Whether no task holds the turn."""
        return self._owner is None

    async def until_free(self) -> None:
        """Wait until no task holds the turn (a cancelled task may still be leaving)."""
        while self._owner is not None:
            if self._released is None:
                self._released = asyncio.Event()
            await self._released.wait()


class _Hold:
    """The context manager of ``Gate.hold`` (a slotted object, cheaper than a generator)."""

    __slots__ = ("_gate", "_writing")

    def __init__(self, gate: Gate, writing: bool) -> None:
        self._gate = gate
        self._writing = writing

    def __enter__(self) -> None:
        self._gate._enter(self._writing)

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._gate._leave()
