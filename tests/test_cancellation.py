"""Cancellation at every await point of a unit's life (rules 9 and 11 of PRODUCT.md).

A task cancelled while a statement runs, while the unit flushes or commits, or while its
on-commit callbacks run must return every connection to the pool, leave no transaction
open on the server and nothing for the garbage collector to warn about, and never commit
part of its work; once a commit has succeeded, its callbacks all run.

The server is inspected through a plain connection of its own, outside the pools under
test: ``pg_stat_activity`` on PostgreSQL, ``information_schema.processlist`` and
``innodb_trx`` on MariaDB/MySQL; on SQLite a new writer must get ``BEGIN IMMEDIATE`` at
once and a ``TRUNCATE`` checkpoint must find no reader holding a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sqlite3
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sanic import Request
from sanic.response import HTTPResponse, json
from sqlalchemy import Engine, delete, event, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.sql.elements import TextClause

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.testing import checked_out

from .conftest import make_app
from .models import Order, User

#: How long the slow statements would run if nobody cancelled them.
SLOW_SECONDS = 2.0
#: How long a cancelled task may take to finish once cancelled mid-statement.
PROMPT = 0.75
#: How long the server may take to notice that a connection was closed.
SETTLE = 0.75
#: Rows per second the recursive CTE that keeps SQLite busy counts (fewer on a slow CPU).
SQLITE_ROWS_PER_SECOND = 7_500_000

ADA = {"id": 1, "name": "Ada", "email": "ada@example.com"}


def slow_statement(
    backend: str, seconds: float = SLOW_SECONDS
) -> tuple[TextClause, dict[str, Any]]:
    """A read-only query that keeps the server busy for about ``seconds``."""
    if backend == "postgresql":
        return text("SELECT pg_sleep(:seconds)"), {"seconds": seconds}
    if backend == "mysql":
        return text("SELECT SLEEP(:seconds)"), {"seconds": seconds}
    return (
        text(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < :rows) "
            "SELECT count(*) FROM c"
        ),
        {"rows": int(seconds * SQLITE_ROWS_PER_SECOND)},
    )


def is_slow_statement(sql: str) -> bool:
    lowered = sql.lower()
    return "sleep(" in lowered or "recursive" in lowered


# -- the server's side -------------------------------------------------------------


class ServerView:
    """A plain connection to the test database that reports transactions left open."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = make_url(url)
        self._connection: Any = None

    async def open(self) -> None:
        url = self.url
        if self.backend == "postgresql":
            import asyncpg

            self._connection = await asyncpg.connect(
                host=url.host,
                port=url.port or 5432,
                user=url.username,
                password=url.password,
                database=url.database,
            )
        elif self.backend == "mysql":
            import asyncmy

            self._connection = await asyncmy.connect(
                host=url.host or "127.0.0.1",
                port=url.port or 3306,
                user=url.username or "root",
                password=url.password or "",
                database=url.database,
                autocommit=True,
            )

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self.backend == "postgresql":
            await connection.close()
        else:
            await connection.ensure_closed()

    async def snapshot(self) -> list[Any]:
        """What is open on the server right now (other than this connection)."""
        if self.backend == "postgresql":
            rows = await self._connection.fetch(
                "SELECT pid, state, left(query, 80) AS query FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend' "
                "AND (state <> 'idle' OR xact_start IS NOT NULL)"
            )
            return [tuple(row) for row in rows]
        if self.backend == "mysql":
            async with self._connection.cursor() as cursor:
                await cursor.execute(
                    "SELECT p.id, p.command, p.state, LEFT(p.info, 80), t.trx_state "
                    "FROM information_schema.processlist p "
                    "LEFT JOIN information_schema.innodb_trx t "
                    "ON t.trx_mysql_thread_id = p.id "
                    "WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID() "
                    "AND (p.command NOT IN ('Sleep', 'Daemon') OR t.trx_id IS NOT NULL)"
                )
                return list(await cursor.fetchall())
        return self._sqlite_snapshot()

    def _sqlite_snapshot(self) -> list[Any]:
        found: list[Any] = []
        connection = sqlite3.connect(self.url.database or "", timeout=0, isolation_level=None)
        try:
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("ROLLBACK")
            except sqlite3.OperationalError as error:
                found.append(f"a new writer cannot BEGIN IMMEDIATE: {error}")
            busy, _log, _done = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                found.append("a TRUNCATE checkpoint is blocked: a reader holds a snapshot")
        finally:
            connection.close()
        return found

    async def open_transactions(self, within: float = SETTLE) -> list[Any]:
        """What is still open once the server had ``within`` seconds to clean up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            found = await self.snapshot()
            if not found or loop.time() >= deadline:
                return found
            await asyncio.sleep(0.02)


@pytest.fixture
async def server(db: Database, backend: str, url: str) -> AsyncIterator[ServerView]:
    """A plain connection that looks at the server; collects garbage at the end."""
    view = ServerView(backend, url)
    await view.open()
    try:
        yield view
    finally:
        await view.close()
        # Surface "non-checked-in connection" and unclosed-connection warnings now,
        # while the test is still running (pytest runs with -W error).
        gc.collect()


# -- tasks and what they leave behind ----------------------------------------------


@dataclass
class Aftermath:
    """What a cancelled unit left behind, observed while its task object still exists."""

    seconds: float
    outcome: str
    checked_out: int
    open_transactions: list[Any]

    def assert_clean(self) -> None:
        assert self.outcome == "cancelled", f"the task did not end cancelled: {self.outcome}"
        assert self.checked_out == 0, f"{self.checked_out} connection(s) still checked out"
        assert self.open_transactions == [], (
            f"still open on the server {SETTLE}s later: {self.open_transactions}"
        )

    def assert_prompt(self) -> None:
        assert self.seconds < PROMPT, (
            f"the cancelled task took {self.seconds:.2f}s to finish: the statement it was "
            "waiting for kept running"
        )


def _outcome(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    if error is None:
        return "finished"
    return "raised " + "".join(traceback.format_exception(error))


async def aftermath(
    db: Database, server: ServerView, task: asyncio.Task[Any], *, cancel: bool = True
) -> Aftermath:
    """Cancel ``task`` (unless it cancels itself), wait for it, inspect pool and server."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    if cancel:
        task.cancel()
    await asyncio.wait([task])
    seconds = loop.time() - start
    return Aftermath(
        seconds=seconds,
        outcome=_outcome(task),
        checked_out=checked_out(db).total,
        open_transactions=await server.open_transactions(),
    )


class TaskHandle:
    """The task under test, for the listeners and callbacks that cancel it from inside."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        self.task = asyncio.create_task(work)
        return self.task

    def cancel(self) -> None:
        assert self.task is not None
        self.task.cancel()

    def forget(self) -> None:
        """Drop the task, and with it the frames its cancellation holds on to."""
        self.task = None


@contextlib.contextmanager
def listening(target: Any, name: str, listener: Callable[..., Any]) -> Iterator[None]:
    event.listen(target, name, listener)
    try:
        yield
    finally:
        event.remove(target, name, listener)


def sync_engines(db: Database) -> list[tuple[str, Engine]]:
    return [("write", db.engines.write.sync_engine), ("read", db.engines.read.sync_engine)]


@contextlib.contextmanager
def on_slow_statement(db: Database, reached: asyncio.Event) -> Iterator[None]:
    """Set ``reached`` when a slow statement is about to be sent, on either engine."""

    def before_execute(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if is_slow_statement(statement):
            reached.set()

    with contextlib.ExitStack() as stack:
        for _role, engine in sync_engines(db):
            stack.enter_context(listening(engine, "before_cursor_execute", before_execute))
        yield


async def stored(db: Database) -> tuple[list[tuple[int, str]], int]:
    """The users (id, name) and the number of orders, read on a plain pooled connection."""
    async with db.engines.read.connect() as connection:
        users = (await connection.execute(select(User.id, User.name).order_by(User.id))).all()
        orders = (await connection.execute(select(func.count()).select_from(Order))).scalar_one()
    return [tuple(row) for row in users], orders  # type: ignore[misc]


async def clear(db: Database) -> None:
    async with db.engines.write.begin() as connection:
        await connection.execute(delete(Order))
        await connection.execute(delete(User))


async def _async_append(ran: list[str], name: str) -> None:
    await asyncio.sleep(0)
    ran.append(name)


# -- (a) (b) a slow statement ------------------------------------------------------


@pytest.mark.parametrize("where", ["read", "write", "read_after_write"])
async def test_cancel_during_a_slow_statement(
    db: Database, backend: str, server: ServerView, where: str
) -> None:
    """A unit cancelled while db.read or db.write runs a slow statement rolls back at once."""
    statement, params = slow_statement(backend)
    reached = asyncio.Event()

    async def unit() -> None:
        async with db:
            if where != "read":
                db.write.add(User(**ADA))
                await db.write.flush()
            session = db.write if where == "write" else db.read
            await session.execute(statement, params)

    with on_slow_statement(db, reached):
        task = asyncio.create_task(unit())
        await asyncio.wait_for(reached.wait(), 5)
        await asyncio.sleep(0.2)  # the server is now inside the statement
        after = await aftermath(db, server, task)
    del task
    after.assert_clean()
    after.assert_prompt()
    assert await stored(db) == ([], 0)


async def test_cancel_while_reads_wait_for_each_other(
    db: Database, backend: str, server: ServerView
) -> None:
    """Cancelling gathered reads (one running, one waiting for its turn) cleans up both."""
    statement, params = slow_statement(backend)
    reached = asyncio.Event()

    async def unit() -> None:
        async with db:
            await asyncio.gather(
                db.read.execute(statement, params), db.read.execute(statement, params)
            )

    with on_slow_statement(db, reached):
        task = asyncio.create_task(unit())
        await asyncio.wait_for(reached.wait(), 5)
        await asyncio.sleep(0.2)
        after = await aftermath(db, server, task)
    del task
    after.assert_clean()
    after.assert_prompt()


async def test_cancel_while_waiting_for_a_pooled_connection(
    db: Database, url: str, server: ServerView
) -> None:
    """A unit cancelled while it waits for a connection from an exhausted pool takes none."""
    small = Database(url, pool_size=1, max_overflow=0, pool_timeout=1)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with small:
            await small.read.connection()  # held until the unit ends
            holding.set()
            await release.wait()

    async def waiter() -> None:
        async with small:
            await small.read.execute(select(User))

    held = asyncio.create_task(holder())
    try:
        await asyncio.wait_for(holding.wait(), 5)
        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.2)
        assert not task.done()
        after = await aftermath(small, server, task)
        del task
        assert after.outcome == "cancelled", after.outcome
        after.assert_prompt()
        release.set()
        await held
        assert checked_out(small).total == 0
        assert await server.open_transactions() == []
        # The one pooled connection is still usable: no slot was lost to the waiter.
        async with small:
            assert (await small.read.execute(select(func.count()).select_from(User))).scalar() == 0
        assert checked_out(small).total == 0
    finally:
        release.set()
        await asyncio.wait([held])
        await small.dispose()


# -- (c) flush ---------------------------------------------------------------------


@pytest.mark.parametrize("at", ["first_flush", "second_flush"])
async def test_cancel_during_flush(db: Database, server: ServerView, at: str) -> None:
    """A unit cancelled while db.write flushes an INSERT commits none of its work."""
    inserts = 0
    ran: list[str] = []
    task = TaskHandle()
    target = 1 if at == "first_flush" else 2

    def before_execute(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        nonlocal inserts
        if statement.lstrip().upper().startswith("INSERT"):
            inserts += 1
            if inserts == target:
                task.cancel()

    async def unit() -> None:
        async with db:
            db.on_commit(ran.append, "callback")
            db.write.add(User(**ADA))
            await db.write.flush()
            db.write.add(Order(user_id=1, item="book"))
            await db.write.flush()

    with listening(db.engines.write.sync_engine, "before_cursor_execute", before_execute):
        after = await aftermath(db, server, task.start(unit()), cancel=False)
    task.forget()
    after.assert_clean()
    assert await stored(db) == ([], 0)
    assert ran == []


# -- (d) the commit ----------------------------------------------------------------


async def test_cancel_during_commit_at_unit_exit(db: Database, server: ServerView) -> None:
    """A cancel that arrives while the unit commits lets the commit and its callbacks finish."""
    ran: list[str] = []
    task = TaskHandle()

    def on_commit(_conn: Any) -> None:
        task.cancel()

    async def unit() -> None:
        async with db:
            db.write.add(User(**ADA))
            await db.write.flush()
            db.write.add(Order(user_id=1, item="book"))
            db.on_commit(ran.append, "first")
            db.on_commit(_async_append, ran, "second")

    with listening(db.engines.write.sync_engine, "commit", on_commit):
        after = await aftermath(db, server, task.start(unit()), cancel=False)
    task.forget()
    after.assert_clean()
    assert await stored(db) == ([(1, "Ada")], 1)
    assert ran == ["first", "second"]


@pytest.mark.backends("postgresql")
async def test_cancel_during_a_slow_deferred_constraint_commit(
    db: Database, server: ServerView
) -> None:
    """A cancel during a slow COMMIT (a deferred constraint trigger) waits for its outcome."""
    async with db.engines.write.begin() as connection:
        await connection.execute(
            text(
                "CREATE OR REPLACE FUNCTION test_cancellation_slow_check() RETURNS trigger "
                "LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.6); RETURN NULL; END $$"
            )
        )
        await connection.execute(
            text(
                "CREATE CONSTRAINT TRIGGER slow_check AFTER INSERT ON users "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                "EXECUTE FUNCTION test_cancellation_slow_check()"
            )
        )
    ran: list[str] = []
    committing = asyncio.Event()

    async def unit() -> None:
        async with db:
            db.write.add(User(**ADA))
            db.on_commit(ran.append, "callback")

    try:
        with listening(db.engines.write.sync_engine, "commit", lambda _conn: committing.set()):
            task = asyncio.create_task(unit())
            await asyncio.wait_for(committing.wait(), 5)
            await asyncio.sleep(0.2)  # the server is running the deferred trigger
            after = await aftermath(db, server, task)
        del task
        after.assert_clean()
        # The commit was not abandoned half-way: the task waited for it.
        assert after.seconds > 0.2
        assert await stored(db) == ([(1, "Ada")], 0)
        assert ran == ["callback"]
    finally:
        async with db.engines.write.begin() as connection:
            await connection.execute(text("DROP TRIGGER IF EXISTS slow_check ON users"))
            await connection.execute(text("DROP FUNCTION IF EXISTS test_cancellation_slow_check()"))


async def test_cancel_during_an_explicit_commit(db: Database, server: ServerView) -> None:
    """Cancelled during ``await db.write.commit()``, callbacks run if and only if it committed."""
    ran: list[str] = []
    task = TaskHandle()

    def on_commit(_conn: Any) -> None:
        task.cancel()

    async def unit() -> None:
        async with db:
            db.write.add(User(**ADA))
            db.on_commit(ran.append, "callback")
            await db.write.commit()
            ran.append("code after commit()")

    with listening(db.engines.write.sync_engine, "commit", on_commit):
        after = await aftermath(db, server, task.start(unit()), cancel=False)
    task.forget()
    after.assert_clean()
    users, _orders = await stored(db)
    assert users in ([], [(1, "Ada")])
    committed = users == [(1, "Ada")]
    assert ran == (["callback"] if committed else []), (
        f"committed={committed} but the callbacks that ran were {ran}"
    )


# -- (e) on-commit callbacks -------------------------------------------------------


@pytest.mark.parametrize("wrote", [True, False], ids=["after_a_commit", "unit_never_wrote"])
async def test_callbacks_all_run_when_cancelled_while_they_run(
    db: Database, server: ServerView, wrote: bool
) -> None:
    """Cancelled (twice) while its callbacks run, a committed unit still runs them all."""
    ran: list[str] = []
    task = TaskHandle()

    async def cancelling(name: str) -> None:
        ran.append(f"{name} started")
        task.cancel()
        await asyncio.sleep(0.05)
        ran.append(name)

    async def unit() -> None:
        async with db:
            if wrote:
                db.write.add(User(**ADA))
            db.on_commit(ran.append, "first")
            db.on_commit(cancelling, "second")
            db.on_commit(cancelling, "third")
            db.on_commit(_async_append, ran, "fourth")

    after = await aftermath(db, server, task.start(unit()), cancel=False)
    task.forget()
    after.assert_clean()
    assert ran == ["first", "second started", "second", "third started", "third", "fourth"]
    assert await stored(db) == (([(1, "Ada")] if wrote else []), 0)


async def test_explicit_commit_callbacks_all_run_when_cancelled_while_they_run(
    db: Database, server: ServerView
) -> None:
    """Cancelled while the callbacks of ``db.write.commit()`` run, they all run, then it raises."""
    ran: list[str] = []
    task = TaskHandle()

    async def cancelling() -> None:
        task.cancel()
        await asyncio.sleep(0.05)
        ran.append("first")

    async def unit() -> None:
        async with db:
            db.write.add(User(**ADA))
            db.on_commit(cancelling)
            db.on_commit(_async_append, ran, "second")
            await db.write.commit()
            ran.append("code after commit()")

    after = await aftermath(db, server, task.start(unit()), cancel=False)
    task.forget()
    after.assert_clean()
    assert ran == ["first", "second"]
    assert await stored(db) == ([(1, "Ada")], 0)


# -- (f) every await point: all or nothing -----------------------------------------

NOTHING: tuple[list[tuple[int, str]], int] = ([], 0)
EVERYTHING: tuple[list[tuple[int, str]], int] = ([(1, "Ada Lovelace")], 1)
ALL_CALLBACKS = ["first", "second"]


class AwaitPoints:
    """Names the await points a unit reaches and cancels its task at a chosen one.

    A point is reached just before the driver is awaited (connecting, checking out,
    beginning, executing, committing, resetting a connection) or when a callback runs;
    cancelling the task there makes that await raise ``CancelledError``.
    """

    def __init__(self, db: Database) -> None:
        self.trace: list[str] = []
        self.cancel_at: int | None = None
        self.task: asyncio.Task[None] | None = None
        #: Index in ``trace`` of the first point reached after the unit's body ended.
        self.body_ended: int | None = None
        for role, engine in sync_engines(db):
            self._listen(engine, "do_connect", f"{role} connect")
            self._listen(engine, "checkout", f"{role} checkout")
            self._listen(engine, "begin", f"{role} begin")
            self._listen(engine, "commit", f"{role} commit")
            self._listen(engine, "reset", f"{role} reset")

            def before_execute(
                _conn: Any, _cursor: Any, statement: str, *_rest: Any, role: str = role
            ) -> None:
                self.reach(f"{role} execute {statement.split()[0].upper()}")

            event.listen(engine, "before_cursor_execute", before_execute)

    def _listen(self, engine: Engine, name: str, label: str) -> None:
        def listener(*_args: Any) -> None:
            self.reach(label)

        event.listen(engine, name, listener)

    def start(self, work: Coroutine[Any, Any, None], cancel_at: int | None) -> asyncio.Task[None]:
        self.trace = []
        self.cancel_at = cancel_at
        self.body_ended = None
        self.task = asyncio.create_task(work)
        return self.task

    def reach(self, label: str) -> None:
        if self.task is None:
            return
        index = len(self.trace)
        self.trace.append(label)
        if index == self.cancel_at:
            self.task.cancel()

    def end_of_body(self) -> None:
        self.body_ended = len(self.trace)

    def stop(self) -> None:
        self.task = None


async def unit_life(
    db: Database, ran: list[str], reach: Callable[[str], None], end_of_body: Callable[[], None]
) -> None:
    """A unit that goes through every kind of await point: read, write, flush, commit."""
    async with db:
        (await db.read.execute(select(User))).all()
        db.write.add(User(**ADA))
        await db.write.flush()
        names = (await db.read.execute(select(User.name))).scalars().all()
        assert names == ["Ada"]
        await db.write.execute(update(User).where(User.id == 1).values(name="Ada Lovelace"))
        db.write.add(Order(user_id=1, item="book"))

        def first() -> None:
            reach("callback first")
            ran.append("first")

        async def second() -> None:
            reach("callback second")
            await asyncio.sleep(0)
            ran.append("second")

        db.on_commit(first)
        db.on_commit(second)
        end_of_body()


def _nothing() -> None:
    pass


def _ignore(_label: str) -> None:
    pass


async def _cold_pools(db: Database) -> None:
    await db.engines.write.dispose()
    await db.engines.read.dispose()


async def test_cancel_at_every_await_point_of_a_unit(db: Database, server: ServerView) -> None:
    """Cancelled at each await point in turn, a unit commits all or nothing and cleans up."""
    points = AwaitPoints(db)
    ran: list[str] = []
    # Warm up: the dialects' first-connect queries are not part of a unit's life.
    await unit_life(db, ran, _ignore, _nothing)
    await clear(db)
    await _cold_pools(db)
    ran.clear()

    dry = points.start(unit_life(db, ran, points.reach, points.end_of_body), None)
    await dry
    points.stop()
    reference, body_ended = list(points.trace), points.body_ended
    assert body_ended is not None
    assert await stored(db) == EVERYTHING
    assert ran == ALL_CALLBACKS
    assert any(label.endswith("commit") for label in reference[body_ended:])

    for index, label in enumerate(reference):
        await clear(db)
        await _cold_pools(db)
        ran.clear()
        task = points.start(unit_life(db, ran, points.reach, points.end_of_body), index)
        after = await aftermath(db, server, task, cancel=False)
        points.stop()
        del task
        where = f"cancelled at point {index} ({label}) of {reference}"
        assert points.trace[: index + 1] == reference[: index + 1], f"{where}: {points.trace}"
        assert after.outcome == "cancelled", f"{where}: {after.outcome}"
        assert after.checked_out == 0, f"{where}: {after.checked_out} checked out"
        assert after.open_transactions == [], f"{where}: {after.open_transactions}"
        state = await stored(db)
        if index < body_ended:
            assert (state, ran) == (NOTHING, []), f"{where}: {state} {ran}"
        else:
            # The unit's end had begun: the commit and its callbacks run to completion.
            assert (state, ran) == (EVERYTHING, ALL_CALLBACKS), f"{where}: {state} {ran}"


async def test_cancel_after_any_number_of_loop_iterations(db: Database, server: ServerView) -> None:
    """Cancelled after k event-loop iterations, for k across a unit's life, nothing half-done."""
    ran: list[str] = []
    calibration = asyncio.create_task(unit_life(db, ran, _ignore, _nothing))
    iterations = 0
    while not calibration.done():
        await asyncio.sleep(0)
        iterations += 1
    await calibration
    step = max(1, iterations // 30)
    outcomes: set[str] = set()
    k = 0
    while "finished committed" not in outcomes:
        assert k <= 10 * iterations + step, f"no run finished within {k} loop iterations"
        await clear(db)
        ran.clear()
        task = asyncio.create_task(unit_life(db, ran, _ignore, _nothing))
        for _ in range(k):
            await asyncio.sleep(0)
        after = await aftermath(db, server, task, cancel=not task.done())
        del task
        where = f"cancelled after {k} of ~{iterations} loop iterations"
        assert after.outcome in ("cancelled", "finished"), f"{where}: {after.outcome}"
        assert after.checked_out == 0, f"{where}: {after.checked_out} checked out"
        assert after.open_transactions == [], f"{where}: {after.open_transactions}"
        state = await stored(db)
        assert (state, ran) in ((NOTHING, []), (EVERYTHING, ALL_CALLBACKS)), (
            f"{where}: {state} {ran}"
        )
        outcomes.add(f"{after.outcome} {'committed' if state == EVERYTHING else 'nothing'}")
        k += step
    # The sweep started before the unit's first await and went on past its end.
    assert "cancelled nothing" in outcomes


# -- in Sanic: a client that hangs up ----------------------------------------------


async def _poll(condition: Callable[[], bool], within: float) -> bool:
    """Whether ``condition()`` became true within ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.parametrize("where", ["write", "read_after_write"])
async def test_client_hanging_up_during_a_slow_query(
    db: Database, backend: str, server: ServerView, serve: Any, where: str
) -> None:
    """A client that disconnects mid-request leaves no connection, transaction or row behind."""
    app = make_app("hangup")
    db.init_app(app)
    statement, params = slow_statement(backend)
    reached = asyncio.Event()
    cancelled = asyncio.Event()

    @app.post("/slow")
    async def slow(_request: Request) -> HTTPResponse:
        db.write.add(User(**ADA))
        await db.write.flush()
        reached.set()
        session = db.write if where == "write" else db.read
        try:
            await session.execute(statement, params)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return json({"finished": True})

    @app.get("/users")
    async def users(_request: Request) -> HTTPResponse:
        count = (await db.read.execute(select(func.count()).select_from(User))).scalar_one()
        return json({"users": count})

    served = await serve(app)
    port = int(served.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /slow HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(reached.wait(), 5)
    await asyncio.sleep(0.2)  # the server is now inside the slow statement
    loop = asyncio.get_running_loop()
    hung_up = loop.time()
    writer.close()
    await writer.wait_closed()

    def pool_is_empty() -> bool:
        return checked_out(db).total == 0

    handler_cancelled = await _poll(cancelled.is_set, SLOW_SECONDS + 0.5)
    seconds = loop.time() - hung_up
    pool_returned = await _poll(pool_is_empty, PROMPT)
    still_open = await server.open_transactions()
    # Let a slow clean-up finish, and free what only the garbage collector would,
    # before asserting: the teardown then does not trip over what a failure left.
    await _poll(pool_is_empty, SLOW_SECONDS + 2)
    gc.collect()

    assert handler_cancelled, "Sanic did not cancel the handler when its client hung up"
    assert await reader.read() == b"", "a response was sent to a client that had hung up"
    assert pool_returned, f"still checked out {PROMPT}s after the cancellation: {checked_out(db)}"
    assert still_open == [], f"still open on the server {SETTLE}s later: {still_open}"
    assert seconds < PROMPT, f"the handler was cancelled {seconds:.2f}s after the client hung up"
    response = await served.client.get("/users")
    assert response.status_code == 200
    assert response.json() == {"users": 0}
    assert checked_out(db).total == 0


def _whoami(backend: str) -> TextClause:
    return text("SELECT pg_backend_pid()" if backend == "postgresql" else "SELECT CONNECTION_ID()")


@pytest.mark.backends("postgresql", "mysql")
async def test_cancelled_reads_keep_their_connection(url: str, backend: str) -> None:
    """A read cancelled mid-statement (a client timing out) gives its connection back in a
    usable state: twenty cancelled reads open no new connection, and the next read runs
    at once on the same one."""
    db = Database(url, pool_size=1)
    statement, params = slow_statement(backend)
    try:
        async with db:
            before = (await db.read.execute(_whoami(backend))).scalar_one()

        async def read_slowly() -> None:
            async with db:
                await db.read.execute(statement, params)

        for _ in range(20):
            task = asyncio.ensure_future(read_slowly())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with db:
            after = (await db.read.execute(_whoami(backend))).scalar_one()
        assert loop.time() - started < PROMPT
        assert after == before
        assert checked_out(db).total == 0
    finally:
        await db.dispose()
