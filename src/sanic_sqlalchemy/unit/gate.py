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
    """A re-entrant turn for one task, with waiting for readers and failing for writers.

    ``with gate:`` takes a turn that does not write (a read); ``WritingTurn(gate)`` takes
    one that writes.
    """

    __slots__ = ("_depth", "_owner", "_released", "_writing")

    def __init__(self) -> None:
        self._owner: asyncio.Task[object] | None = None
        self._depth = 0
        self._writing = False
        self._released: asyncio.Event | None = None

    def __enter__(self) -> None:
        self._take(False)

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._writing = False
            if self._released is not None:
                self._released.set()
                self._released = None

    def _take(self, writing: bool) -> None:
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


class WritingTurn:
    """``with turn:`` takes a turn of its gate to write, which fails at once
    (``ConcurrentWriteError``) while another task writes.  Made once per unit, so that
    taking a turn allocates nothing; it points at the gate, never the reverse (no cycle
    for the garbage collector)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        self._gate._take(True)

    def __exit__(
        self,
        type_: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._gate.__exit__(type_, error, traceback)
