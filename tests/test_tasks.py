"""Durable tasks (PRODUCT.md, "Durable after-commit work"), rule by rule, on SQLite,
PostgreSQL and MariaDB: deferring with the unit's commit, running, retrying, dying,
requeueing, and the run's writes committed with its completion exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Integer, String, event, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import (
    ConfigurationError,
    Database,
    NoActiveUnitError,
    SanicSQLAlchemyError,
    current_task,
)
from sanic_sqlalchemy.errors import TaskArgumentError, TaskNotFoundError, TasksTableMissingError
from sanic_sqlalchemy.tasks import dispatcher, payload, sql, wake
from sanic_sqlalchemy.tasks.runner import DONE, LOST, run_claimed
from sanic_sqlalchemy.testing import StatementLog, checked_out, rolled_back, schema


class Base(DeclarativeBase):
    pass


class Receipt(Base):
    __tablename__ = "task_receipts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(String(100), default="")


class Order(Base):
    __tablename__ = "task_orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    amount: Mapped[int] = mapped_column(Integer)


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    """A database with the receipts and tasks tables; the fast path off (each test
    runs tasks itself unless it turns it on)."""
    database = Database(url, pool_size=5, pool_timeout=10)
    database.tasks.run_after_commit = False
    async with schema(database, Base.metadata), schema(database, database.tasks.metadata):
        yield database
        await database.tasks.stop(0)
    await database.dispose()


async def receipts(db: Database) -> list[int]:
    async with db:
        return sorted((await db.read.scalars(select(Receipt.order_id))).all())


def add_receipt_task(db: Database, **options: Any) -> Any:
    @db.task(name="test.receipt", **options)
    async def receipt(order_id: int, note: str = "") -> None:
        db.write.add(Receipt(order_id=order_id, note=note))

    return receipt


async def test_a_task_is_still_a_function_and_defer_is_stored_with_the_commit(
    db: Database,
) -> None:
    """``task(x)`` calls the function; ``defer`` returns an id at no round trip and the
    unit stores it with its commit, one statement for all the unit's tasks."""
    seen: list[int] = []

    @db.task
    def sync_task(n: int) -> int:
        seen.append(n)
        return n * 2

    receipt = add_receipt_task(db)
    assert sync_task(21) == 42 and seen == [21]
    log = StatementLog(db)
    async with db as unit:
        first = receipt.defer(1)
        second = receipt.defer(order_id=2, note="kw")
        third = sync_task.defer(3)
        assert unit.stats.statements == 0 and checked_out(db).total == 0
        assert log.statements == []
    log.detach()
    assert len({first, second, third}) == 3 and all(isinstance(i, str) for i in (first, third))
    inserts = [s for _, s in log.statements if "INSERT" in s.upper()]
    assert len(inserts) == 1, log.statements
    assert await db.tasks.counts() == {"pending": 3, "running": 0, "dead": 0}
    assert await db.tasks.run_pending() == 3
    assert await receipts(db) == [1, 2] and seen == [21, 3]
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}


async def test_defer_outside_a_unit_raises(db: Database) -> None:
    receipt = add_receipt_task(db)
    with pytest.raises(NoActiveUnitError, match=r"test.receipt.defer\(\)"):
        receipt.defer(1)


async def test_rollbacks_leave_nothing(db: Database) -> None:
    """A unit that rolls back, a savepoint that rolls back, a failed ``@db.retry``
    attempt: their tasks are never stored; a released savepoint's are."""
    receipt = add_receipt_task(db)
    with pytest.raises(RuntimeError):
        async with db:
            receipt.defer(1)
            raise RuntimeError("rolled back")
    async with db:
        receipt.defer(2)
        with pytest.raises(ValueError):
            async with db.write.begin():
                receipt.defer(3)
                raise ValueError("savepoint rolled back")
        async with db.write.begin():
            receipt.defer(4)

    class Conflict(Exception):
        sqlstate = "40001"

    attempts = []

    @db.retry(attempts=2, backoff=0)
    async def deferring() -> None:
        attempts.append(1)
        receipt.defer(10 + len(attempts))
        if len(attempts) == 1:
            raise DBAPIError("UPDATE", None, Conflict())

    await deferring()
    assert await db.tasks.run_pending() == 3
    assert await receipts(db) == [2, 4, 12]


async def test_tasks_deferred_by_the_commits_own_flush_are_stored(db: Database) -> None:
    """An ORM event of the flush that the commit runs defers a task (the row had no id
    before): it is stored with that commit, like one deferred in the handler."""
    receipt = add_receipt_task(db)

    def receipt_for(_mapper: Any, _connection: Any, order: Order) -> None:
        receipt.defer(order.id, note="from after_insert")

    event.listen(Order, "after_insert", receipt_for)
    try:
        async with db:
            db.write.add(Order(amount=5))  # flushed by the commit
    finally:
        event.remove(Order, "after_insert", receipt_for)
    assert await db.tasks.counts() == {"pending": 1, "running": 0, "dead": 0}
    assert await db.tasks.run_pending() == 1
    async with db:
        [order_id] = (await db.read.scalars(select(Order.id))).all()
    assert await receipts(db) == [order_id]


async def test_arguments_are_checked_as_json_at_defer(db: Database) -> None:
    receipt = add_receipt_task(db)
    async with db:
        with pytest.raises(TaskArgumentError, match="positional argument 1") as caught:
            receipt.defer(1, object())
        assert isinstance(caught.value, SanicSQLAlchemyError)
        with pytest.raises(TaskArgumentError, match=r"keyword argument 'note'\[0\]"):
            receipt.defer(1, note=[{1, 2}])
        with pytest.raises(TaskArgumentError, match="dict key 1"):
            receipt.defer({1: "a"})
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}


async def test_tuples_arrive_as_lists_and_current_task_says_which(db: Database) -> None:
    seen: list[Any] = []

    @db.task(name="test.info", max_attempts=3)
    async def info(values: Any) -> None:
        seen.append((values, current_task()))

    assert current_task() is None
    async with db:
        task_id = info.defer((1, 2))
    await db.tasks.run_pending()
    [(values, task)] = seen
    assert values == [1, 2]
    assert (task.id, task.name, task.attempt, task.max_attempts) == (task_id, "test.info", 1, 3)
    assert current_task() is None


async def test_delay_and_key(db: Database) -> None:
    """A delayed task waits; a key stores one task while it waits, the first call's
    arguments win, and once it ran the key is free again."""
    receipt = add_receipt_task(db)
    async with db:
        receipt.configure(delay=30).defer(1)
    assert await db.tasks.run_pending() == 0
    async with db:
        first = receipt.configure(key="order-7").defer(7)
        again = receipt.configure(key="order-7").defer(8)
    async with db:
        later = receipt.configure(key="order-7").defer(9)
    assert first == again == later
    assert await db.tasks.counts() == {"pending": 2, "running": 0, "dead": 0}
    assert await db.tasks.run_pending() == 1
    assert await receipts(db) == [7]
    async with db:
        receipt.configure(key="order-7").defer(10)
    assert await db.tasks.run_pending() == 1
    assert await receipts(db) == [7, 10]


async def test_a_key_is_free_while_its_task_runs_and_once_it_died(db: Database) -> None:
    """PRODUCT.md rule 1: a key stores nothing only while its task *waits*.  A defer
    while the keyed task runs stores a new task (the run may have read the data before
    the change that deferred again), and so does one after it died; the run itself has
    an id of its own, the key's id naming the waiting task."""
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[tuple[int, str]] = []

    @db.task(name="test.keyed", max_attempts=1)
    async def keyed(n: int) -> None:
        task = current_task()
        assert task is not None
        calls.append((n, task.id))
        if n == 1:
            started.set()
            await release.wait()
        if n == 3:
            raise ValueError("dies")

    async with db:
        waiting = keyed.configure(key="k").defer(1)
    run = asyncio.ensure_future(db.tasks.run_pending())
    await asyncio.wait_for(started.wait(), 5)
    async with db:
        assert keyed.configure(key="k").defer(2) == waiting
    async with db:
        assert keyed.configure(key="k").defer(2) == waiting  # waits: stores nothing
    assert await db.tasks.counts() == {"pending": 1, "running": 1, "dead": 0}
    release.set()
    assert await run == 2
    assert [n for n, _ in calls] == [1, 2]
    assert len({task_id for _, task_id in calls} | {waiting}) == 3
    async with db:
        keyed.configure(key="k").defer(3)
    assert await db.tasks.run_pending() == 1
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 1}
    async with db:
        assert keyed.configure(key="k").defer(4) == waiting
    assert await db.tasks.counts() == {"pending": 1, "running": 0, "dead": 1}
    assert await db.tasks.run_pending() == 1
    assert [n for n, _ in calls] == [1, 2, 3, 4]
    [dead] = await db.tasks.dead()
    assert dead.args == [3] and dead.id != waiting


async def test_a_missing_table_is_an_error_that_says_how_to_create_it(url: str) -> None:
    database = Database(url, tasks_table="t_never_created")

    @database.task(name="test.orphan")
    async def orphan() -> None:
        pass

    with pytest.raises(TasksTableMissingError, match=r"await db.tasks.create_table\(\)"):
        await database.tasks.counts()
    with pytest.raises(TasksTableMissingError, match=r"db\.tasks\.metadata"):
        async with database:
            orphan.defer()
    await database.dispose()


async def test_failures_retry_then_die_and_requeue_gives_attempts_back(db: Database) -> None:
    attempts: list[int] = []

    @db.task(name="test.failing", max_attempts=2, backoff=0)
    async def failing() -> None:
        task = current_task()
        assert task is not None
        attempts.append(task.attempt)
        db.write.add(Receipt(order_id=99))  # rolled back with the failure
        raise ValueError("the mail server said no")

    async with db:
        task_id = failing.defer()
    assert await db.tasks.run_pending() == 2
    assert attempts == [1, 2]
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 1}
    [dead] = await db.tasks.dead()
    assert (dead.id, dead.name, dead.args, dead.kwargs, dead.attempts) == (
        task_id,
        "test.failing",
        [],
        {},
        2,
    )
    assert dead.error is not None
    assert "Traceback" in dead.error and "the mail server said no" in dead.error
    await db.tasks.requeue(task_id)
    with pytest.raises(TaskNotFoundError):
        await db.tasks.requeue(task_id)
    assert await db.tasks.run_pending() == 2
    assert attempts == [1, 2, 1, 2]
    assert await receipts(db) == []


async def test_backoff_waits_and_timeout_counts_as_failure(db: Database) -> None:
    @db.task(name="test.slow", timeout=0.1, backoff=600, max_backoff=600)
    async def slow() -> None:
        await asyncio.sleep(5)

    async with db:
        slow.defer()
    started = time.monotonic()
    assert await db.tasks.run_pending() == 1
    assert time.monotonic() - started < 2
    assert await db.tasks.counts() == {"pending": 1, "running": 0, "dead": 0}
    table = db.tasks.table
    async with db.engines.write.connect() as connection:
        row = (await connection.execute(select(table.c.run_at, table.c.error))).one()
    assert row.run_at <= sql.now_ms() + 600_000
    assert "TimeoutError" in row.error


async def test_unknown_task_is_an_error_that_says_so(db: Database) -> None:
    other = Database(db.settings.url)
    other.tasks.run_after_commit = False

    @other.task(name="test.elsewhere", max_attempts=1)
    async def elsewhere() -> None:
        pass

    async with other:
        elsewhere.defer()
    await other.dispose()
    assert await db.tasks.run_pending() == 1
    [dead] = await db.tasks.dead()
    assert "no function is registered as task 'test.elsewhere'" in (dead.error or "")


async def test_a_run_whose_claim_was_taken_over_cannot_commit(db: Database) -> None:
    """Exactly once: the first run's claim expires, a second run takes over and
    commits; the first, finishing late, rolls back its writes."""
    receipt = add_receipt_task(db)
    async with db:
        receipt.defer(5)
    [stale] = await db.tasks.claim(1)
    table = db.tasks.table
    async with db.engines.write.begin() as connection:
        await connection.execute(update(table).values(lease_until=0))
    assert await db.tasks.run_pending() == 1
    assert await run_claimed(db.tasks, stale) == LOST
    assert await receipts(db) == [5]
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}


async def test_a_running_claim_is_kept_alive(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat renews a long run's claim: nobody takes it over meanwhile."""
    monkeypatch.setattr(sql, "LEASE", 1.0)
    monkeypatch.setattr(dispatcher, "HEARTBEAT", 0.2)
    started = asyncio.Event()

    @db.task(name="test.long")
    async def long() -> None:
        started.set()
        await asyncio.sleep(2.0)
        db.write.add(Receipt(order_id=1))

    async with db:
        long.defer()
    [claimed] = await db.tasks.claim(1)
    run = db.tasks.runs().start(claimed)
    await started.wait()
    for _ in range(8):
        await asyncio.sleep(0.25)
        assert await db.tasks.claim(1) == []
    assert await run == DONE
    assert await receipts(db) == [1]


async def test_the_committing_process_runs_its_tasks_after_the_commit(db: Database) -> None:
    db.tasks.run_after_commit = True
    receipt = add_receipt_task(db)
    async with db:
        receipt.defer(1)
        receipt.configure(delay=60).defer(2)
    for _ in range(100):
        if await receipts(db):
            break
        await asyncio.sleep(0.05)
    assert await receipts(db) == [1]
    assert await db.tasks.counts() == {"pending": 1, "running": 0, "dead": 0}


class Size(enum.IntEnum):
    LARGE = 3


class Colour(str, enum.Enum):
    RED = "red"


async def until_idle(db: Database) -> None:
    """Wait for the runs this process started after its commits to end."""
    for _ in range(200):
        if not db.tasks.running and await db.tasks.counts() == {
            "pending": 0,
            "running": 0,
            "dead": 0,
        }:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"tasks still under way: {await db.tasks.counts()}")


@pytest.mark.parametrize(
    ("args", "kwargs", "plain"),
    [
        ((1, "a", 2.5, True, None, -0.0, 2**80, "é\u2028\"\\\x00\udc80'"), {"é": 1e308}, True),
        ((), {}, True),
        ((Size.LARGE,), {}, False),
        ((Colour.RED,), {}, False),
        (((1, 2),), {"k": [3]}, False),
    ],
)
def test_the_fast_encoding_writes_what_the_encoder_writes(
    args: tuple[Any, ...], kwargs: dict[str, Any], plain: bool
) -> None:
    """Plain arguments are written without the JSON encoder, byte for byte as it would,
    and handed to the run as decoding gives them back; others go through it."""
    text, arguments = payload.encode_call("t", args, kwargs)
    assert text == payload.encode("t", args, kwargs)
    assert (arguments is not None) is plain
    if arguments is not None:
        assert repr(arguments) == repr(payload.decode(text))
    with pytest.raises(TaskArgumentError, match="positional argument 1"):
        payload.encode_call("t", (1, float("nan")), {})


async def test_the_committing_process_passes_arguments_as_a_dispatcher_would(
    db: Database,
) -> None:
    """The run after the commit gets plain arguments without decoding the payload, and
    exactly what a dispatcher's run decodes from it otherwise: the same values and
    types, an enum member as its plain value, a tuple as a list."""
    seen: list[tuple[Any, ...]] = []

    @db.task(name="test.arguments")
    async def arguments(*args: Any, **kwargs: Any) -> None:
        seen.append((args, kwargs))

    given = ((7, "seven", 7.5, -0.0, True, None), {"note": "\udc80 é", "big": 2**70})
    for fast in (True, False):
        db.tasks.run_after_commit = fast
        async with db:
            arguments.defer(*given[0], **given[1])
            arguments.defer(Size.LARGE, colour=Colour.RED)
            arguments.defer((1, 2), [3], {"k": (4,)})
        if not fast:
            await db.tasks.run_pending()
        await until_idle(db)
    by_path = [sorted(seen[:3], key=repr), sorted(seen[3:], key=repr)]
    assert by_path[0] == by_path[1]
    for args, kwargs in seen:
        for value in [*args, *kwargs.values()]:
            assert type(value) in (int, str, float, bool, type(None), list, dict)
    plain = [call for call in seen if call[0][:1] == (7,)]
    assert [repr(call) for call in plain] == [repr((given[0], given[1]))] * 2
    assert ((3,), {"colour": "red"}) in seen
    assert (([1, 2], [3], {"k": [4]}), {}) in seen


async def test_a_run_opens_its_unit_when_first_asked_even_from_a_child_task(
    db: Database,
) -> None:
    """A run's unit is opened only when the task asks for it: a task that writes from
    a child task it awaits, or inside ``async with db:``, commits those writes with its
    completion, once; one that never touches the database leaves nothing behind."""
    db.tasks.run_after_commit = True
    units: list[Any] = []

    @db.task(name="test.child_writes")
    async def child_writes(order_id: int) -> None:
        async def write() -> None:
            db.write.add(Receipt(order_id=order_id, note="child"))
            units.append(db.scope.current())

        await asyncio.create_task(write())
        async with db as unit:
            db.write.add(Receipt(order_id=order_id + 100, note="block"))
            units.append(unit)

    @db.task(name="test.no_database")
    async def no_database() -> None:
        units.append(None)

    async with db:
        child_writes.defer(1)
        no_database.defer()
    await until_idle(db)
    assert await receipts(db) == [1, 101]
    child, block, untouched = sorted(units, key=lambda unit: unit is None)
    assert child is block is not None and untouched is None
    assert child.owner is not asyncio.current_task() and child.ended


async def test_a_burst_of_commits_runs_here_a_few_at_a_time(db: Database) -> None:
    """More commits than run slots (``limit``, half the pool: 2 here): every task is
    stored claimed by the committing process (no claim, no dispatcher needed: none
    runs here), and at most ``limit`` run at once; those waiting for a slot that a
    stop finds are handed back without an attempt."""
    db.tasks.run_after_commit = True
    assert db.tasks.limit == 2
    release = asyncio.Event()
    running: list[int] = []
    peak = 0

    @db.task(name="test.held")
    async def held(n: int) -> None:
        nonlocal peak
        running.append(n)
        peak = max(peak, len(running))
        await release.wait()
        running.remove(n)

    for n in range(7):
        async with db:
            held.defer(n)
    await asyncio.sleep(0.2)
    assert peak == 2 and len(running) == 2
    assert await db.tasks.counts() == {"pending": 0, "running": 7, "dead": 0}
    release.set()
    for _ in range(100):
        if await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}:
            break
        await asyncio.sleep(0.05)
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}
    assert peak == 2
    release.clear()
    for n in range(3):
        async with db:
            held.defer(10 + n)
    await asyncio.sleep(0.2)
    await db.tasks.stop(0)  # 2 run, 1 waits for a slot: all handed back
    table = db.tasks.table
    async with db.engines.write.connect() as connection:
        rows = (await connection.execute(select(table.c.state, table.c.attempts))).all()
    assert sorted(rows) == [("pending", 0)] * 3


#: Set by the code that defers, in the test below.
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def test_a_run_here_does_not_see_the_deferring_codes_context(db: Database) -> None:
    """A run after the commit starts in a context of its own, as a dispatcher's run in
    another process would: what the deferring code set (a request id for the logs, say)
    is not there; a task gets what it needs as arguments."""
    db.tasks.run_after_commit = True
    seen: list[str] = []

    @db.task(name="test.context")
    async def look(request_id: str) -> None:
        seen.append(f"{_request_id.get()} / {request_id}")

    _request_id.set("r-17")
    async with db:
        look.defer(_request_id.get())
    await until_idle(db)
    assert seen == ["none / r-17"]


async def test_a_child_task_that_outlives_its_run_finds_no_unit(db: Database) -> None:
    """A task that leaves a child task behind: once the run ended, the child opens no
    unit of the run's (one would never be ended, holding a connection); it finds none,
    as outside any unit, and ``async with db:`` gives it a unit of its own."""
    db.tasks.run_after_commit = True
    run_over = asyncio.Event()
    outcome: list[Any] = []
    children: list[asyncio.Task[None]] = []

    async def child(order_id: int) -> None:
        await run_over.wait()
        try:
            db.write.add(Receipt(order_id=order_id, note="orphan"))
        except NoActiveUnitError as error:
            outcome.append(type(error))
        async with db:
            db.write.add(Receipt(order_id=order_id, note="own unit"))
        outcome.append("committed")

    @db.task(name="test.leaves_a_child")
    async def leaves_a_child(order_id: int) -> None:
        children.append(asyncio.create_task(child(order_id)))

    async with db:
        leaves_a_child.defer(5)
    await until_idle(db)
    run_over.set()
    await asyncio.gather(*children)
    assert outcome == [NoActiveUnitError, "committed"]
    assert await receipts(db) == [5]
    assert checked_out(db).write == 0


async def test_a_process_whose_runs_are_short_takes_a_longer_backlog(db: Database) -> None:
    """Past ``FAST_BACKLOG`` times ``limit`` runs, a process still takes the tasks it
    commits while a queued run would wait less than ``FAST_WAIT`` by the mean length
    of its recent runs: after short runs, a burst of 12 commits with ``limit`` 1 is all
    stored claimed here; after long runs, only the first ``FAST_BACKLOG``."""
    db.tasks.run_after_commit = True
    db.tasks.concurrency = 1
    release = asyncio.Event()
    release.set()

    @db.task(name="test.gated")
    async def gated(n: int) -> None:
        await release.wait()

    for n in range(20):  # short runs: the mean falls to a few milliseconds at most
        async with db:
            gated.defer(n)
        await until_idle(db)
    runs = db.tasks.runs()
    assert runs.mean_run < 0.02
    release.clear()
    for n in range(12):
        async with db:
            gated.defer(100 + n)
    assert await db.tasks.counts() == {"pending": 0, "running": 12, "dead": 0}
    release.set()
    await until_idle(db)

    runs.mean_run = 1.0  # as after runs of a second each
    release.clear()
    for n in range(12):
        async with db:
            gated.defer(200 + n)
    backlog = dispatcher.FAST_BACKLOG
    assert await db.tasks.counts() == {"pending": 12 - backlog, "running": backlog, "dead": 0}
    release.set()
    await db.tasks.run_pending()
    await until_idle(db)


async def test_stop_hands_running_tasks_back_without_an_attempt(db: Database) -> None:
    db.tasks.run_after_commit = True
    started = asyncio.Event()

    @db.task(name="test.forever")
    async def forever() -> None:
        started.set()
        await asyncio.sleep(60)

    async with db:
        forever.defer()
    await asyncio.wait_for(started.wait(), 5)
    assert (await db.tasks.counts())["running"] == 1
    await db.tasks.stop(0.1)
    table = db.tasks.table
    async with db.engines.write.connect() as connection:
        row = (await connection.execute(select(table.c.state, table.c.attempts))).one()
    assert (row.state, row.attempts) == ("pending", 0)


async def test_work_runs_delayed_tasks_as_they_fall_due(url: str, tmp_path: Any) -> None:
    database = Database(url, tasks_poll=0.1)
    database.tasks.run_after_commit = False
    async with schema(database, Base.metadata), schema(database, database.tasks.metadata):
        receipt = add_receipt_task(database)
        worker = asyncio.create_task(database.tasks.work(concurrency=2, grace=1))
        async with database:
            receipt.configure(delay=0.3).defer(1)
            receipt.defer(2)
        for _ in range(100):
            if len(await receipts(database)) == 2:
                break
            await asyncio.sleep(0.05)
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        assert await receipts(database) == [1, 2]
    await database.dispose()


@contextlib.asynccontextmanager
async def listening_dispatcher(url: str) -> AsyncIterator[tuple[Database, Database, Any]]:
    """A dispatcher polling once a minute (only a notification wakes it sooner), and a
    second database whose commits store tasks for it: both databases, and the task to
    defer through the second."""
    database = Database(url, tasks_poll=60)
    writer = Database(url, pool_size=2)
    writer.tasks.run_after_commit = False
    async with schema(database, Base.metadata), schema(database, database.tasks.metadata):
        add_receipt_task(database)
        receipt = add_receipt_task(writer)
        worker = asyncio.create_task(database.tasks.work())
        await asyncio.sleep(0.5)  # listening (and the first look done)
        try:
            yield database, writer, receipt
        finally:
            worker.cancel()
            with pytest.raises(asyncio.CancelledError):
                await worker
    await writer.dispose()
    await database.dispose()


async def until_receipts(database: Database, count: int) -> float:
    """Wait (up to 5 s) until ``count`` receipts are stored; how long it took."""
    started = time.monotonic()
    for _ in range(250):
        if len(await receipts(database)) >= count:
            break
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.backends("postgresql")
async def test_postgresql_dispatcher_wakes_on_notify(url: str) -> None:
    """With a poll of a minute, a task committed elsewhere still runs at once."""
    async with listening_dispatcher(url) as (database, writer, receipt):
        async with writer:
            receipt.defer(3)
        took = await until_receipts(database, 1)
        assert await receipts(database) == [3]
        assert took < 2


@pytest.mark.backends("postgresql")
async def test_a_burst_of_commits_notifies_once_and_every_task_still_runs_at_once(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forty commits in a row from one process, within one gap between notifications
    (half a second here): the first notifies, the rest owe one notification, sent once
    the gap is over; a dispatcher polling once a minute runs all forty by then."""
    monkeypatch.setattr(wake, "NOTIFY_GAP", 0.5)
    async with listening_dispatcher(url) as (database, writer, receipt):
        log = StatementLog(writer)
        started = time.monotonic()
        for n in range(40):
            async with writer:
                receipt.defer(n)
        took = time.monotonic() - started + await until_receipts(database, 40)
        log.detach()
        assert await receipts(database) == list(range(40))
        assert 0.5 <= took < 2, took
        notifications = [s for _, s in log.statements if "pg_notify" in s]
        assert len(notifications) == 2, notifications


@pytest.mark.backends("sqlite")
async def test_tasks_table_setting(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    database = Database(url, tasks_table="my_tasks")
    assert database.tasks.table.name == "my_tasks"
    assert "my_tasks" in database.tasks.metadata.tables
    assert Database().tasks.table.name == "sanic_sqlalchemy_tasks"
    with pytest.raises(ConfigurationError, match="DATABASE_TASKS_TABLE"):
        Database().configure_from({"DATABASE_URL": url, "DATABASE_TASKS_TABLE": "x; drop"})
    with pytest.raises(ConfigurationError, match="DATABASE_TASKS_POLL"):
        Database().configure_from({"DATABASE_URL": url, "DATABASE_TASKS_POLL": "0"})
    with pytest.raises(ConfigurationError, match="max_attempts"):
        database.task(max_attempts=0)(lambda: None)
    await database.dispose()


async def test_tasks_table_holds_one_row_per_task(db: Database) -> None:
    receipt = add_receipt_task(db)
    async with db:
        for n in range(30):
            receipt.defer(n)
    table = db.tasks.table
    async with db.engines.write.connect() as connection:
        assert (await connection.execute(select(func.count()).select_from(table))).scalar() == 30
    assert await db.tasks.run_pending() == 30
    assert await receipts(db) == list(range(30))


@pytest.mark.backends("postgresql")
async def test_with_replicas_a_run_reads_after_the_deferring_commit(url: str) -> None:
    """The run's unit is opened after a position token: the deferring commit's on the
    fast path, the primary's position at the run's start otherwise."""
    database = Database(url, read_urls=[url])
    opened: list[tuple[object, ...]] = []
    open_unit = database.open_unit

    def recording(after: tuple[object, ...] = ()) -> Any:
        opened.append(after)
        return open_unit(after)

    database.open_unit = recording  # type: ignore[method-assign]
    async with schema(database, Base.metadata), schema(database, database.tasks.metadata):
        receipt = add_receipt_task(database)
        async with database as unit:
            receipt.defer(1)
        token = unit.commit_token
        assert token is not None
        for _ in range(100):
            if await receipts(database):
                break
            await asyncio.sleep(0.05)
        assert (token,) in opened
        database.tasks.run_after_commit = False
        async with database:
            receipt.defer(2)
        opened.clear()
        assert await database.tasks.run_pending() == 1
        [after] = [tokens for tokens in opened if tokens]
        replicas = database.engines.replicas
        assert replicas is not None
        position = replicas.tokens.read(after[0])
        assert position is not None and position.covers(replicas.tokens.read(token))
        assert await receipts(database) == [1, 2]
    await database.dispose()


async def test_in_a_rolled_back_test_tasks_are_rows_of_its_transaction(db: Database) -> None:
    """The test kit: deferred tasks are stored in the test's transaction, where
    ``run_pending`` runs them; nothing is left once the test rolls back."""
    db.tasks.run_after_commit = True  # stays off in a rolled-back test anyway
    receipt = add_receipt_task(db)
    async with rolled_back(db):
        async with db:
            receipt.defer(1)
        assert await db.tasks.counts() == {"pending": 1, "running": 0, "dead": 0}
        assert await db.tasks.run_pending() == 1
        assert await receipts(db) == [1]
        assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}
        async with db:
            receipt.defer(2)
    assert await receipts(db) == []
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}


@pytest.mark.backends("postgresql")
async def test_postgresql_wakes_dispatchers_only_for_tasks_nobody_runs_yet(db: Database) -> None:
    """The insert notifies the dispatchers when the committing process will not run the
    due tasks itself; a commit whose tasks run here, or that are delayed, wakes none."""
    receipt = add_receipt_task(db)
    log = StatementLog(db)
    async with db:
        receipt.defer(1)  # the fast path is off: a dispatcher must run it
    db.tasks.run_after_commit = True
    async with db:
        receipt.defer(2)  # run right here after the commit
    async with db:
        receipt.configure(delay=60).defer(3)
    log.detach()
    table = db.tasks.table.name
    inserts = [s for _, s in log.statements if f"INSERT INTO {table}" in s]
    assert ["pg_notify" in s for s in inserts] == [True, False, False]
    await db.tasks.stop(5)


async def test_thousands_of_tasks_in_one_unit(db: Database) -> None:
    """More tasks than one statement can carry parameters for are stored in several."""
    receipt = add_receipt_task(db)
    async with db:
        for n in range(2500):
            receipt.defer(n)
    assert await db.tasks.counts() == {"pending": 2500, "running": 0, "dead": 0}
