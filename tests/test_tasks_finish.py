"""Finishing runs that wrote nothing (``tasks/finish.py``) on PostgreSQL: while units
that defer tasks keep committing, their statements also delete the rows of the runs
that ended before them (no statement of their own), several runs at a time; a commit
that fails hands them back, and they are deleted at once by a statement of their own.

Most tests here have every commit take the rows waiting (``RIDE_EVERY`` 0), to follow
one run's row; ``test_commits_take_finished_runs_along_in_batches`` checks the batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Integer, UniqueConstraint, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.tasks import finish
from sanic_sqlalchemy.tasks.sql import CLAIMS_PER_STATEMENT, Claimed, now_ms
from sanic_sqlalchemy.testing import StatementLog, schema

pytestmark = pytest.mark.backends("postgresql")


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    """A unique number checked at COMMIT (deferred), so that a commit can fail after
    its statements, the tasks' included, ran."""

    __tablename__ = "finish_tickets"
    __table_args__ = (UniqueConstraint("number", deferrable=True, initially="DEFERRED"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(Integer)


@pytest.fixture
async def db(url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Database]:
    monkeypatch.setattr(finish, "RIDE_EVERY", 0.0)  # every commit takes what waits
    database = Database(url, pool_size=5, pool_timeout=10)
    async with schema(database, Base.metadata), schema(database, database.tasks.metadata):
        yield database
        await database.tasks.stop(5)
    await database.dispose()


def own_deletes(log: StatementLog, table: str) -> list[str]:
    """The statements that deleted finished runs' rows on their own."""
    return [s for _, s in log.statements if s.lstrip().startswith(f"DELETE FROM {table}")]


def pairs_deleted(statement: str) -> int:
    """How many finished runs a carried statement deletes (one ``(id, claim)`` each)."""
    _, _, deletion = statement.partition("DELETE FROM")
    return deletion.count("(E'")


def carried(log: StatementLog) -> list[str]:
    """The statements storing tasks that also deleted finished runs' rows: one statement
    with a CTE, or (a unit that wrote before) SQL its COMMIT carried."""
    return [
        s
        for _, s in log.statements
        if "WITH finished AS" in s or (s.startswith("INSERT INTO") and "DELETE FROM" in s)
    ]


async def until_empty(db: Database, seconds: float) -> float:
    """Wait until the tasks table is empty; how long it took."""
    started = time.monotonic()
    while await db.tasks.counts() != {"pending": 0, "running": 0, "dead": 0}:
        if time.monotonic() - started > seconds:
            raise AssertionError(f"tasks left after {seconds} s: {await db.tasks.counts()}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def noted_task(db: Database) -> tuple[Any, list[int]]:
    """A task that writes nothing (its row is deleted by the finisher), and the
    numbers it ran with."""
    ran: list[int] = []

    @db.task(name="finish.noted")
    async def noted(n: int) -> None:
        ran.append(n)

    return noted, ran


async def one_run_waiting(db: Database, noted: Any, ran: list[int]) -> None:
    """Run task 0 (starting this loop's runs and finisher; its row is deleted now,
    without waiting for a ride), then commit task 1 and wait until its run ended: it
    now waits for the next commit to carry its row's deletion."""
    async with db:
        noted.defer(0)
    for _ in range(200):
        if ran == [0]:
            break
        await asyncio.sleep(0.01)
    await db.tasks.runs().finisher.drain()
    await until_empty(db, 10)
    async with db:
        noted.defer(1)
    for _ in range(200):
        if ran == [0, 1]:
            break
        await asyncio.sleep(0.01)
    assert ran == [0, 1]


async def test_commits_that_store_tasks_finish_the_runs_before_them(db: Database) -> None:
    noted, ran = noted_task(db)
    table = db.tasks.table.name
    async with db:
        noted.defer(-1)  # starts this loop's runs (and their finisher)
    await until_empty(db, 10)
    log = StatementLog(db)
    for n in range(30):
        async with db:
            db.write.add(Ticket(number=n))
            noted.defer(n)
        await asyncio.sleep(0.005)
    await until_empty(db, 10)
    log.detach()
    assert sorted(ran) == list(range(-1, 30))
    # Without the ride, each of the 30 runs deletes its row with a statement of its
    # own; with it, nearly every commit carries the runs that ended before it.
    assert len(carried(log)) >= 20, log.statements
    assert len(own_deletes(log, table)) <= 5, own_deletes(log, table)


async def test_commits_take_finished_runs_along_in_batches(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load a commit takes the finished runs along only once ``RIDE_BATCH`` wait
    (or the oldest waited ``RIDE_EVERY``): one deletion for several runs, not one per
    commit (each statement costs the database more than the row it deletes)."""
    monkeypatch.setattr(finish, "RIDE_BATCH", 5)
    monkeypatch.setattr(finish, "RIDE_EVERY", 30.0)
    monkeypatch.setattr(finish, "RIDE_WAIT", 30.0)
    noted, ran = noted_task(db)
    async with db:
        noted.defer(-1)  # starts this loop's runs and finisher
    await db.tasks.runs().finisher.drain()
    await until_empty(db, 10)
    log = StatementLog(db)
    for n in range(20):
        async with db:
            db.write.add(Ticket(number=n))  # begun on the server: its COMMIT carries
            noted.defer(n)
        for _ in range(200):  # this unit's run ended: its row waits
            if len(ran) == n + 2:
                break
            await asyncio.sleep(0.005)
    riding = carried(log)
    await db.tasks.runs().finisher.drain()  # the last few, which no commit took
    log.detach()
    assert sorted(ran) == list(range(-1, 20))
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}
    # 20 commits, one run ending after each: every fifth commit found five rows waiting.
    assert [pairs_deleted(statement) for statement in riding] == [5, 5, 5], riding
    assert len(own_deletes(log, db.tasks.table.name)) == 1


async def test_a_young_run_waits_for_a_later_commit(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row that waited less than ``RIDE_EVERY`` stays for a later commit; one that
    waited longer goes with the next."""
    monkeypatch.setattr(finish, "RIDE_EVERY", 0.5)
    monkeypatch.setattr(finish, "RIDE_WAIT", 30.0)
    noted, ran = noted_task(db)
    await one_run_waiting(db, noted, ran)  # task 1's row waits, just now
    log = StatementLog(db)
    async with db:
        db.write.add(Ticket(number=2))  # begun on the server: its COMMIT carries
        noted.defer(2)
    young = carried(log)
    await asyncio.sleep(0.6)  # task 2's run ended too; task 1's row is old now
    async with db:
        db.write.add(Ticket(number=3))
        noted.defer(3)
    log.detach()
    assert young == []
    [statement] = carried(log)
    assert pairs_deleted(statement) == 2
    assert await db.tasks.counts() == {"pending": 0, "running": 1, "dead": 0}  # task 3's


async def test_a_commit_that_fails_hands_its_finished_runs_back(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit carrying a finished run's deletion fails at COMMIT: the deletion is
    rolled back with it, so the run's row is deleted at once on its own, long before
    the wait for a ride would have ended."""
    monkeypatch.setattr(finish, "RIDE_WAIT", 30.0)
    noted, ran = noted_task(db)
    table = db.tasks.table.name
    await one_run_waiting(db, noted, ran)  # task 1's run waits (up to 30 s)
    assert await db.tasks.counts() == {"pending": 0, "running": 1, "dead": 0}
    log = StatementLog(db)
    with pytest.raises(IntegrityError):
        async with db:
            db.write.add_all([Ticket(number=2), Ticket(number=2)])  # fails at COMMIT
            noted.defer(2)
    took = await until_empty(db, 10)
    log.detach()
    assert len(carried(log)) == 1 and len(own_deletes(log, table)) == 1, log.statements
    assert took < 5 and ran == [0, 1]


async def test_a_commit_that_wakes_dispatchers_also_finishes_runs(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit whose tasks this process will not run (a dispatcher must be woken)
    still carries the deletion of the runs waiting: one statement stores, notifies and
    finishes."""
    monkeypatch.setattr(finish, "RIDE_WAIT", 30.0)
    noted, ran = noted_task(db)
    await one_run_waiting(db, noted, ran)
    db.tasks.run_after_commit = False  # the next commit's task is a dispatcher's
    log = StatementLog(db)
    async with db:
        noted.defer(2)
    log.detach()
    [statement] = carried(log)
    assert "pg_notify" in statement
    assert await db.tasks.counts() == {"pending": 1, "running": 0, "dead": 0}
    assert ran == [0, 1]


async def test_a_commit_storing_several_tasks_finishes_runs_too(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several tasks (stored from arrays) and the finished runs, in one statement (the
    last runs, with no commit after them, go alone after the wait)."""
    monkeypatch.setattr(finish, "RIDE_WAIT", 1.0)
    noted, ran = noted_task(db)
    await one_run_waiting(db, noted, ran)
    log = StatementLog(db)
    async with db:
        for n in (2, 3, 4):
            noted.defer(n)
    await until_empty(db, 10)
    log.detach()
    [statement] = carried(log)
    assert "unnest" in statement
    assert sorted(ran) == [0, 1, 2, 3, 4]


async def test_a_stop_deletes_the_rows_of_runs_that_wait_for_a_commit(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that wrote nothing ends at once, its row waiting for a commit to carry its
    deletion (here up to 30 s); a stop does not wait that long, nor leaves the row to
    run again: it deletes it."""
    monkeypatch.setattr(finish, "RIDE_WAIT", 30.0)
    noted, ran = noted_task(db)
    await one_run_waiting(db, noted, ran)
    assert db.tasks.running  # the row still waits for its deletion
    started = time.monotonic()
    await db.tasks.stop(5)
    assert time.monotonic() - started < 5
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}
    assert not db.tasks.running


async def held_rows(db: Database, count: int) -> list[Claimed]:
    """``count`` rows of task ``finish.noted``, each held by a run (its own claim)."""
    now = now_ms()
    payload = '{"args": [0], "kwargs": {}}'
    claims = [
        Claimed(
            f"{n:08x}-0000-4000-8000-000000000000", "finish.noted", payload, 1, 5, f"{n:032x}", None
        )
        for n in range(count)
    ]
    rows = [
        {
            "id": claimed.id,
            "name": claimed.name,
            "queue": "default",
            "payload": payload,
            "state": "running",
            "attempts": 1,
            "max_attempts": 5,
            "run_at": now,
            "lease_until": now + 5_000,
            "claim": claimed.claim,
            "created_at": now,
            "error": None,
        }
        for claimed in claims
    ]
    async with db.engines.write.begin() as connection:
        await connection.execute(insert(db.tasks.table), rows)
    return claims


#: More ended runs than PostgreSQL takes in one list of (id, claim) pairs (it fails
#: some 7,000 to 8,000 with "stack depth limit exceeded").
BACKLOG = 12_000


async def test_a_backlog_of_ended_runs_is_deleted_in_statements_the_database_takes(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Runs that ended while the database stalled pile up; their rows are deleted by
    several statements, each within what the database takes, not by one that fails (and
    leaves every one of those tasks to run again once its claim expires)."""
    claims = await held_rows(db, BACKLOG)
    finisher = db.tasks.runs().finisher
    log = StatementLog(db)
    for claimed in claims:
        finisher.finish(claimed)
    await finisher.drain()
    log.detach()
    assert "failed" not in caplog.text
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}
    deletes = own_deletes(log, db.tasks.table.name)
    assert len(deletes) == -(-BACKLOG // CLAIMS_PER_STATEMENT), len(deletes)


async def test_a_commit_carries_no_more_of_a_backlog_than_one_statement_takes(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit that defers a task commits beside a backlog of ended runs: its COMMIT
    carries the deletion of ``CLAIMS_PER_STATEMENT`` of them, not of all (which
    PostgreSQL would refuse, failing the unit's commit); the rest go later."""
    monkeypatch.setattr(finish, "RIDE_WAIT", 30.0)
    noted, ran = noted_task(db)
    claims = await held_rows(db, BACKLOG)
    finisher = db.tasks.runs().finisher
    finisher.ride()  # commits are coming: the ended runs wait for one
    for claimed in claims:
        finisher.finish(claimed)
    log = StatementLog(db)
    async with db:
        db.write.add(Ticket(number=1))  # begun on the server: its COMMIT carries
        noted.defer(1)
    [statement] = carried(log)
    log.detach()
    assert pairs_deleted(statement) == CLAIMS_PER_STATEMENT
    for _ in range(500):
        if ran:
            break
        await asyncio.sleep(0.01)
    assert ran == [1]
    await finisher.drain()  # the rest of the backlog, and task 1's run
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}


async def test_the_claims_of_a_crowd_of_runs_are_renewed_and_handed_back(db: Database) -> None:
    """More runs than one statement's parameters can name (asyncpg sends at most 32,767)
    keep their claims alive, and are handed back at a stop, in several statements."""
    claims = await held_rows(db, 17_000)
    table = db.tasks.table
    async with db.engines.write.connect() as connection:
        leases = select(func.min(table.c.lease_until), func.max(table.c.lease_until))
        before = (await connection.execute(leases)).one()
        await asyncio.sleep(0.01)
        await db.tasks.renew(claims)
        await connection.rollback()  # a new snapshot
        after = (await connection.execute(leases)).one()
    assert after[0] > before[1]
    await db.tasks.hand_back(claims)
    assert await db.tasks.counts() == {"pending": 17_000, "running": 0, "dead": 0}
