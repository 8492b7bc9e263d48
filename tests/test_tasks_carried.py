"""On PostgreSQL a unit's tasks ride its COMMIT (``engine/backends/carried_commit.py``,
``tasks/carried.py``): stored in the same message, at no round trip of their own; a
carried statement that fails rolls the whole unit back and leaves a clean connection;
hostile values arrive intact whatever ``standard_conforming_strings`` says."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import JSON, Integer, String, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.errors import TasksTableMissingError
from sanic_sqlalchemy.tasks import wake
from sanic_sqlalchemy.testing import StatementLog, schema

from .pgcount import RoundTripCounter

pytestmark = pytest.mark.backends("postgresql")


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "carried_orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note: Mapped[str] = mapped_column(String(50))


class Seen(Base):
    """What a task was called with, as it received it."""

    __tablename__ = "carried_seen"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    args: Mapped[Any] = mapped_column(JSON)


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    database = Database(url, pool_size=1, max_overflow=0, pool_timeout=5)
    database.tasks.run_after_commit = False  # only the units' own round trips
    async with schema(database, Base.metadata), schema(database, database.tasks.metadata):
        yield database
        await database.tasks.stop(0)
    await database.dispose()


def seen_task(db: Database) -> Any:
    @db.task(name="carried.seen")
    async def seen(*args: Any, **kwargs: Any) -> None:
        db.write.add(Seen(args={"args": list(args), "kwargs": kwargs}))

    return seen


async def commit_order_deferring(
    database: Database, seen: Any, *args: Any, **kwargs: Any
) -> list[str]:
    """Commit a unit that inserts an order, flushed (the transaction begins), and
    defers ``seen(*args, **kwargs)``; the statements the unit sent, in order."""
    log = StatementLog(database)
    async with database:
        database.write.add(Order(note="with a task"))
        await database.write.flush()
        seen.defer(*args, **kwargs)
    log.detach()
    return [statement for _, statement in log.statements]


async def round_trips_of_units(url: str, tasks_per_unit: int, flush: bool) -> float:
    """Round trips per unit, counted on the wire, of units that insert an order and
    defer ``tasks_per_unit`` tasks (``flush``: the order is flushed in the unit, for its
    id, else by the commit)."""
    counter = RoundTripCounter()
    target = make_url(url)
    async with counter.serve(target.host or "127.0.0.1", target.port or 5432) as port:
        database = Database(target.set(host="127.0.0.1", port=port), pool_size=1)
        database.tasks.run_after_commit = False
        seen = seen_task(database)
        async with schema(database, Base.metadata), schema(database, database.tasks.metadata):

            async def unit(n: int) -> None:
                async with database:
                    database.write.add(Order(note=f"order {n}"))
                    if flush:
                        await database.write.flush()
                    for _ in range(tasks_per_unit):
                        seen.defer(n)

            await unit(-1)  # warm: connection opened, statements prepared
            before = counter.round_trips
            for n in range(10):
                await unit(n)
            per_unit = (counter.round_trips - before) / 10
            stored = await database.tasks.counts()
            assert stored["pending"] == 11 * tasks_per_unit, stored
        await database.dispose()
    return per_unit


@pytest.mark.parametrize("tasks_per_unit", [0, 1, 5])
@pytest.mark.parametrize("flush", [True, False], ids=["flushed", "flushed-by-commit"])
async def test_a_writing_unit_stores_its_tasks_at_no_round_trip(
    url: str, tasks_per_unit: int, flush: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BEGIN, INSERT, COMMIT: three round trips whether the unit defers no task, one or
    five (without the COMMIT carrying them, a fourth stored them).  The notification
    the units owe the dispatchers (one per ``NOTIFY_GAP``) comes after the count."""
    monkeypatch.setattr(wake, "NOTIFY_GAP", 60.0)
    assert await round_trips_of_units(url, tasks_per_unit, flush) == 3


async def test_the_statement_log_shows_what_the_commit_carried(db: Database) -> None:
    statements = await commit_order_deferring(db, seen_task(db), 1)
    table = db.tasks.table.name
    assert statements[-1] == "COMMIT"
    assert statements[-2].startswith(f"INSERT INTO {table} ")
    assert "pg_notify" in statements[-2]  # no process runs it now: dispatchers are woken


async def test_only_keyed_tasks_are_stored_with_a_conflict_check(db: Database) -> None:
    """A random id cannot be stored already: its INSERT skips ``ON CONFLICT`` (work
    for the server on every commit); a keyed one keeps it, and stores one task."""
    seen = seen_task(db)
    plain = await commit_order_deferring(db, seen, 1)
    assert "ON CONFLICT" not in plain[-2]
    keyed = seen.configure(key="k")
    for _ in range(2):
        statements = await commit_order_deferring(db, keyed, 2)
        assert "ON CONFLICT (id) DO NOTHING" in statements[-2]
    table = db.tasks.table
    async with db.engines.write.connect() as connection:
        ids = (await connection.execute(select(table.c.id))).scalars().all()
    assert len(ids) == 2
    for task_id in ids:
        assert str(uuid.UUID(task_id)) == task_id
        assert uuid.UUID(task_id).variant == uuid.RFC_4122
    assert sorted(uuid.UUID(task_id).version for task_id in ids) == [4, 5]


async def test_a_carried_statement_that_fails_rolls_the_unit_back_and_the_connection_is_clean(
    url: str,
) -> None:
    """The tasks' table is missing: the COMMIT's message fails at the INSERT, before
    COMMIT; the order is not committed, the error says what to do, and the pool's one
    connection, whose aborted transaction was ended, serves the next unit (a connection
    left in it would be discarded by the pool's check, and a new one opened)."""
    database = Database(url, pool_size=1, max_overflow=0, tasks_table="carried_never_created")
    seen = seen_task(database)
    backend_pid = text("SELECT pg_backend_pid()")
    async with schema(database, Base.metadata):
        async with database:
            pid = await database.write.scalar(backend_pid)
        with pytest.raises(TasksTableMissingError, match=r"db\.tasks\.metadata"):
            async with database:
                database.write.add(Order(note="lost with its task"))
                await database.write.flush()
                seen.defer(1)
        async with database:
            database.write.add(Order(note="next"))
        async with database:
            notes = (await database.read.scalars(select(Order.note))).all()
            assert notes == ["next"]
            assert await database.write.scalar(backend_pid) == pid
    await database.dispose()


HOSTILE: list[Any] = [
    "it's",
    "back\\slash \\' \\\\ \\x41 \\u0041",
    "E'escaped' $$dollar$$ $tag$x$tag$",
    "'); DELETE FROM carried_orders; --",
    "new\nline\ttab\r\u2028",
    "\u00e9\u6f22\U0001f600",
    "nul \x00 inside",
    {"nested": ["'", "\\", None, True, 1.5, -(2**63)]},
]


@pytest.mark.parametrize("conforming", ["on", "off"])
async def test_hostile_arguments_arrive_intact(url: str, conforming: str) -> None:
    """Quotes, backslashes, dollar quotes, SQL, control characters, NUL (escaped by
    JSON) and non-ASCII, with ``standard_conforming_strings`` on and off: the task
    receives exactly what was deferred, and nothing else ran."""
    database = Database(
        url,
        pool_size=1,
        connect_args={"server_settings": {"standard_conforming_strings": conforming}},
    )
    database.tasks.run_after_commit = False
    seen = seen_task(database)
    async with schema(database, Base.metadata), schema(database, database.tasks.metadata):
        statements = await commit_order_deferring(database, seen, *HOSTILE, key_arg=HOSTILE[3])
        assert statements[-2].startswith("INSERT INTO"), statements  # carried by COMMIT
        assert await database.tasks.run_pending() == 1
        async with database:
            [received] = (await database.read.scalars(select(Seen.args))).all()
            orders = await database.read.scalar(select(func.count()).select_from(Order))
        assert received == {"args": HOSTILE, "kwargs": {"key_arg": HOSTILE[3]}}
        assert orders == 1  # the unit's order; the SQL in an argument never ran
    await database.dispose()


class OwnConnection(asyncpg.Connection):  # type: ignore[misc]
    """An application's own asyncpg connection class."""


async def test_an_application_connection_class_is_kept_and_tasks_go_on_their_own(
    url: str,
) -> None:
    database = Database(url, pool_size=1, connect_args={"connection_class": OwnConnection})
    database.tasks.run_after_commit = False
    seen = seen_task(database)
    async with schema(database, Base.metadata), schema(database, database.tasks.metadata):
        async with database:
            connection = (await database.write.connection()).sync_connection
            assert connection is not None
            assert type(connection.connection.driver_connection) is OwnConnection
        statements = await commit_order_deferring(database, seen, "x")
        assert statements[-1] == "COMMIT" and "INSERT INTO" in statements[-2]
        assert "$1" in statements[-2]  # a statement of its own, with parameters
        assert await database.tasks.run_pending() == 1
    await database.dispose()
