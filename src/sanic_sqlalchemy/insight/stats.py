"""``unit.stats``: what one unit of work asked of the database, and how long it took."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any


class UnitStats:
    """Statements, time in the database (reads and writes apart) and pool waits.

    Times are in seconds, measured around each statement sent to the driver (the
    round trip and the rows it returns) and around ``COMMIT``/``ROLLBACK``, which are
    time in the database but not statements.  ``connection_wait`` is the time spent
    getting a usable connection from the pool: waiting for one to be free, opening a
    new one, or checking a stale one.
    """

    __slots__ = (
        "_mark",
        "_mark_write",
        "_repeats",
        "connection_wait",
        "flushing",
        "read_statements",
        "read_time",
        "write_statements",
        "write_time",
    )

    def __init__(self) -> None:
        self.read_statements = 0
        self.write_statements = 0
        self.read_time = 0.0
        self.write_time = 0.0
        self.connection_wait = 0.0
        #: How often each statement ran, kept only when repeats are watched.
        self._repeats: dict[str, int] | None = None
        #: Whether db.write is flushing (its statements are the ORM's, not a loop's).
        self.flushing = False
        #: When the unit last stopped sending statements before a COMMIT.
        self._mark = 0.0
        self._mark_write = 0.0

    @property
    def statements(self) -> int:
        """Every statement the unit sent, reads and writes."""
        return self.read_statements + self.write_statements

    @property
    def db_time(self) -> float:
        """Seconds spent in the database, reads and writes."""
        return self.read_time + self.write_time

    def repeats_of(self, statement: str) -> int:
        """Count one more run of ``statement`` and return how many this unit made."""
        repeats = self._repeats
        if repeats is None:
            repeats = self._repeats = {}
        count = repeats.get(statement, 0) + 1
        repeats[statement] = count
        return count

    def absorb(self, other: UnitStats) -> None:
        """Add what ``other`` (a unit run inside this one's request) asked and took."""
        self.read_statements += other.read_statements
        self.write_statements += other.write_statements
        self.read_time += other.read_time
        self.write_time += other.write_time
        self.connection_wait += other.connection_wait

    def flushed(self, flush: Callable[[Any], None], objects: Any) -> None:
        """Run ``flush(objects)``: its statements are the ORM's (row by row where the
        backend cannot batch), not repeats of the application's."""
        self.flushing = True
        try:
            flush(objects)
        finally:
            self.flushing = False

    def rolled_back(self, rollback: Callable[[], None]) -> None:
        """Run ``rollback()``, its time counted as writing: ``ROLLBACK (TO SAVEPOINT)`` is
        time in the database, and a statement timed on its own inside it (a savepoint's)
        is part of that time, not added to it."""
        before, started = self.write_time, perf_counter()
        try:
            rollback()
        finally:
            self.write_time = before + (perf_counter() - started)

    def mark(self) -> None:
        """Note the time: a commit is starting, or the flush before it just ended."""
        self._mark = perf_counter()
        self._mark_write = self.write_time

    def committed(self) -> None:
        """Count the time since the last ``mark()`` as writing: the ``COMMIT``, and what
        was timed inside it already (a test's ``RELEASE SAVEPOINT``) only once."""
        self.write_time = max(self.write_time, self._mark_write + perf_counter() - self._mark)

    def __repr__(self) -> str:
        return (
            f"<UnitStats {self.statements} statements ({self.read_statements} read, "
            f"{self.write_statements} write), {self.read_time * 1000:.2f} ms reading, "
            f"{self.write_time * 1000:.2f} ms writing, "
            f"{self.connection_wait * 1000:.2f} ms waiting for connections>"
        )
