"""Isolation for tests: rolled-back units, emptied tables and query counting.

* ``rolled_back(db)``: every unit opened inside the block joins one outer transaction
  (units commit and roll back savepoints); the outer transaction rolls back at the end.
* ``emptied(db, metadata)``: real commits; every table of ``metadata`` is emptied on
  exit, children before parents.
* ``capture_on_commit(db, execute=False)``: the on-commit callbacks a block registered
  and whether they would have run (their unit committed) or were dropped.
* ``assert_num_queries(db, n)`` / ``assert_max_queries(db, n)``: count the statements a
  block sends through the engines of ``db``, listing them when the count is wrong.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import MetaData, delete
from sqlalchemy.ext.asyncio import AsyncConnection

from .._keys import DEFERRED_BEGIN
from ..database import DatabaseCore as Database
from ..errors import SanicSQLAlchemyError, UnitStateError
from ..hooks import RegisteredCallback
from ..unit import OuterTransaction
from .tools import StatementLog

__all__ = [
    "CapturedCallback",
    "QueryCountError",
    "assert_max_queries",
    "assert_num_queries",
    "capture_on_commit",
    "emptied",
    "rolled_back",
]


class QueryCountError(SanicSQLAlchemyError, AssertionError):
    """A block sent more (or other than the expected number of) statements."""


@contextlib.asynccontextmanager
async def rolled_back(db: Database) -> AsyncIterator[AsyncConnection]:
    """Join every unit opened in the block into one transaction, rolled back on exit.

    Precondition: no other rolled-back block is open on ``db``.  Units share the one
    connection, so concurrent units of the block take turns on it only as far as the
    driver allows (asyncpg refuses two statements at once): await them one by one.
    """
    environment = db.environment
    if environment.outer is not None:
        raise UnitStateError(
            "db is already inside a rolled-back block: nest units with `async with db:`, "
            "not rolled_back(db)."
        )
    async with db.engines.write.connect() as connection:
        await connection.execution_options(**{DEFERRED_BEGIN: True})
        transaction = await connection.begin()
        environment.join(OuterTransaction(connection))
        try:
            yield connection
        finally:
            environment.join(None)
            if transaction.is_active:
                await transaction.rollback()


@contextlib.asynccontextmanager
async def emptied(db: Database, metadata: MetaData) -> AsyncIterator[None]:
    """Let the block commit for real, then delete every row of ``metadata``'s tables."""
    try:
        yield
    finally:
        async with db.engines.write.begin() as connection:
            for table in reversed(metadata.sorted_tables):
                await connection.execute(delete(table))


# Statements the library sends around a unit's own (savepoints of reads on the writer,
# the read-only scope): not the application's queries.
_HOUSEKEEPING = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET TRANSACTION", "PRAGMA")


class QueryCount:
    """The statements sent so far in an ``assert_num_queries`` block."""

    def __init__(self, db: Database) -> None:
        self._log = StatementLog(db)

    @property
    def statements(self) -> list[str]:
        """The application's statements, in order (no BEGIN, COMMIT, savepoints)."""
        return [
            statement
            for _role, statement in self._log.statements
            if not statement.lstrip().upper().startswith(_HOUSEKEEPING)
        ]

    def __len__(self) -> int:
        return len(self.statements)

    def detach(self) -> None:
        self._log.detach()

    def check(self, expected: int, exact: bool) -> None:
        statements = self.statements
        count = len(statements)
        if (count != expected) if exact else (count > expected):
            listed = "\n".join(f"  {i}. {s}" for i, s in enumerate(statements, 1))
            wanted = f"{expected}" if exact else f"at most {expected}"
            raise QueryCountError(f"expected {wanted} queries, {count} were sent:\n{listed}")


@contextlib.contextmanager
def assert_num_queries(db: Database, expected: int) -> Iterator[QueryCount]:
    """Fail (``QueryCountError``) unless the block sends exactly ``expected`` statements."""
    count = QueryCount(db)
    try:
        yield count
    finally:
        count.detach()
    count.check(expected, exact=True)


@contextlib.contextmanager
def assert_max_queries(db: Database, maximum: int) -> Iterator[QueryCount]:
    """Fail (``QueryCountError``) if the block sends more than ``maximum`` statements."""
    count = QueryCount(db)
    try:
        yield count
    finally:
        count.detach()
    count.check(maximum, exact=False)


@dataclass
class CapturedCallback:
    """One ``db.on_commit`` call seen by ``capture_on_commit``."""

    func: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Whether its unit committed, so that it would run (or ran, with ``execute=True``).
    committed: bool = False

    @property
    def dropped(self) -> bool:
        """Whether it would not run: its unit (or savepoint) rolled back, or is still open."""
        return not self.committed


class _Capture:
    def __init__(self, execute: bool) -> None:
        self.execute = execute
        self.seen: list[CapturedCallback] = []
        self._by_callback: dict[int, CapturedCallback] = {}

    def registered(self, callback: RegisteredCallback, /) -> None:
        captured = CapturedCallback(callback.func, callback.args, callback.kwargs)
        self.seen.append(captured)
        self._by_callback[id(callback)] = captured

    def ready(self, callbacks: Sequence[RegisteredCallback], /) -> bool:
        for callback in callbacks:
            captured = self._by_callback.get(id(callback))
            if captured is not None:
                captured.committed = True
        return self.execute


@contextlib.contextmanager
def capture_on_commit(db: Database, *, execute: bool = False) -> Iterator[list[CapturedCallback]]:
    """The on-commit callbacks registered in the block, each marked ``committed`` when
    its unit committed; they run only with ``execute=True`` (Django's
    ``captureOnCommitCallbacks``)."""
    environment = db.environment
    if environment.capture is not None:
        raise UnitStateError("capture_on_commit blocks on one Database cannot be nested.")
    capture = _Capture(execute)
    environment.capture = capture
    try:
        yield capture.seen
    finally:
        environment.capture = None
