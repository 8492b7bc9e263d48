"""Isolation for tests: rolled-back units, emptied tables and query counting.

* ``rolled_back(db, *others)``: every unit of each database opened inside the block
  joins that database's outer transaction (units commit and roll back savepoints);
  the outer transactions roll back at the end.  Units take turns on the connection: a
  unit opened while another task's unit is open is a ``UnitStateError``.  A server
  started in a loop of its own meanwhile (sanic-testing's synchronous ``test_client``:
  a loop per request) gets a transaction of its own in that loop, rolled back when it
  stops.
* ``emptied(db, metadata)``: real commits; every table of ``metadata`` is emptied on
  exit, children before parents.
* ``capture_on_commit(db, execute=False)``: the on-commit callbacks a block registered
  and whether they would have run (their unit committed) or were dropped.
* ``assert_num_queries(db, n)`` / ``assert_max_queries(db, n)``: count the statements a
  block sends through every engine of ``db`` (replicas included), listing them when the
  count is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import MetaData, delete
from sqlalchemy.ext.asyncio import AsyncConnection

from .._keys import DEFERRED_BEGIN
from ..database import DatabaseCore as Database
from ..engine.engines import Engines
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
async def rolled_back(db: Database, *others: Database) -> AsyncIterator[AsyncConnection]:
    """Join every unit of ``db`` (and of ``others``) opened in the block into one
    transaction per database, rolled back on exit; yield ``db``'s connection.

    Precondition: no other rolled-back block is open on these databases.  Units share
    their database's one connection, so they take turns: a unit opened while a unit of
    another task is open raises ``UnitStateError`` (test concurrency with real commits:
    ``emptied``/``transactional_db``).
    """
    async with contextlib.AsyncExitStack() as stack:
        connection = await stack.enter_async_context(_rolled_back(db))
        for other in dict.fromkeys(others):
            if other is not db:
                await stack.enter_async_context(_rolled_back(other))
        yield connection


@contextlib.asynccontextmanager
async def _rolled_back(db: Database) -> AsyncIterator[AsyncConnection]:
    environment = db.environment
    if environment.outer is not None or environment.isolation is not None:
        raise UnitStateError(
            "db is already inside a rolled-back block: nest units with `async with db:`, "
            "not rolled_back(db)."
        )
    async with db.engines.write.connect() as connection:
        await connection.execution_options(**{DEFERRED_BEGIN: True})
        transaction = await connection.begin()
        environment.join(OuterTransaction(connection))
        environment.isolation = _Isolation(db)
        try:
            yield connection
        finally:
            environment.isolation = None
            environment.join(None)
            if transaction.is_active:
                await transaction.rollback()


class _Isolation:
    """What a server start and stop do during a rolled-back block (``ServerIsolation``).

    A server in the test's loop keeps the test's engines and joins its transaction.  A
    server in a loop of its own cannot use the test's connection (a connection belongs
    to its loop): sanic-testing's synchronous ``app.test_client`` runs a server, in a
    new loop, per request, while the test's loop waits.  That server gets engines and a
    transaction of its own in its loop, rolled back when it stops: the request's writes
    never reach the database, and the test's engines come back afterwards.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._loop = asyncio.get_running_loop()
        self._server: _ServerTransaction | None = None

    async def server_starting(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            self._db.engines.check_loop()
            return
        if self._loop.is_running() or self._server is not None:
            raise UnitStateError(
                "A server started in another event loop while the rolled-back test's "
                "loop runs (a server in another thread?): its units cannot join the "
                "test's connection. Start the server in the test's loop (Sanic's "
                "app.asgi_client, or app.create_server in the test), or use the "
                "transactional_db fixture."
            )
        self._server = await _ServerTransaction.open(self._db)

    async def server_stopped(self) -> None:
        server = self._server
        if server is None or asyncio.get_running_loop() is self._loop:
            return
        self._server = None
        await server.close()


class _ServerTransaction:
    """The engines and rolled-back transaction of a server in a loop of its own, and
    the test's engines and outer transaction to put back when it stops."""

    def __init__(self, db: Database, saved: Engines | None, outer: OuterTransaction | None):
        self.db = db
        self.saved = saved
        self.saved_outer = outer
        self.connection: AsyncConnection | None = None

    @classmethod
    async def open(cls, db: Database) -> _ServerTransaction:
        environment = db.environment
        server = cls(db, db.replace_engines(None), environment.outer)
        try:
            connection = await db.engines.write.connect()
            server.connection = connection
            await connection.execution_options(**{DEFERRED_BEGIN: True})
            await connection.begin()
        except BaseException:
            await server.close()
            raise
        environment.join(OuterTransaction(connection))
        return server

    async def close(self) -> None:
        """Roll back and close the server's connection, dispose of its engines, and put
        the test's back."""
        db = self.db
        try:
            connection = self.connection
            if connection is not None:
                try:
                    transaction = connection.get_transaction()
                    if transaction is not None and transaction.is_active:
                        await transaction.rollback()
                finally:
                    await connection.close()
        finally:
            engines = db.replace_engines(self.saved)
            db.environment.join(self.saved_outer)
            if engines is not None:
                await engines.dispose()


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
