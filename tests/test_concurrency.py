"""Concurrent units never share a session; one unit's tasks take turns or get told why."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from sanic import Request
from sanic.response import HTTPResponse, json
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.errors import ConcurrentWriteError
from sanic_sqlalchemy.testing import checked_out

from .conftest import make_app
from .models import User

SLOW = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000) "
    "SELECT count(*) FROM c",
    "postgresql": "SELECT pg_sleep(0.3)",
    "mysql": "SELECT SLEEP(0.3)",
}


@contextlib.contextmanager
def when_started(engine: AsyncEngine, statement: str) -> Iterator[asyncio.Event]:
    """An event set once ``statement`` is sent through ``engine``."""
    started = asyncio.Event()

    def on_execute(_conn: Any, _cursor: Any, sent: str, *_args: Any) -> None:
        if sent == statement:
            started.set()

    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        yield started
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_execute)


async def seed(db: Database, count: int = 3) -> None:
    async with db:
        for user_id in range(1, count + 1):
            db.write.add(User(id=user_id, name=f"user{user_id}", email=f"{user_id}@example.com"))


async def test_gather_reads_in_one_unit(db: Database) -> None:
    """``asyncio.gather`` over several ``db.read`` queries of one unit works (rule 10)."""
    await seed(db)
    async with db:
        results = await asyncio.gather(
            *(db.read.execute(select(User.name).where(User.id == i)) for i in (1, 2, 3))
        )
        assert [result.scalar_one() for result in results] == ["user1", "user2", "user3"]


async def test_gather_reads_after_writing(db: Database) -> None:
    """Gathered reads of a unit that has written take turns on its writing connection."""
    await seed(db)
    async with db:
        db.write.add(User(id=4, name="user4", email="4@example.com"))
        await db.write.flush()
        results = await asyncio.gather(
            *(db.read.execute(select(User.name).where(User.id == i)) for i in (1, 4, 2, 4))
        )
        assert [result.scalar_one() for result in results] == ["user1", "user4", "user2", "user4"]


async def test_concurrent_writes_in_one_unit_raise(db: Database, backend: str) -> None:
    """``db.write`` used by a second task while a first one's statement runs raises (rule 10)."""
    await seed(db, 1)
    with when_started(db.engines.write, SLOW[backend]) as started:
        async with db:
            await db.write.execute(text("UPDATE users SET name = 'first' WHERE id = 1"))
            running = asyncio.create_task(db.write.execute(text(SLOW[backend])))
            await asyncio.wait_for(started.wait(), 5)
            with pytest.raises(ConcurrentWriteError, match="another task") as caught:
                await db.write.execute(text("UPDATE users SET name = 'second' WHERE id = 1"))
            assert "async with db:" in str(caught.value)
            await running
        async with db:
            name = (await db.read.execute(select(User.name))).scalar_one()
        assert name == "first"


async def test_child_task_opens_its_own_unit(db: Database) -> None:
    """``async with db`` inside a child task opens a unit of its own that commits alone."""

    async def child(user_id: int) -> object:
        async with db as unit:
            db.write.add(User(id=user_id, name="child", email=f"{user_id}@example.com"))
            return unit

    async with db as parent:
        units = await asyncio.gather(child(1), child(2))
        assert all(unit is not parent for unit in units)
        assert units[0] is not units[1]
    async with db:
        assert len((await db.read.execute(select(User))).scalars().all()) == 2


async def test_concurrent_requests_never_share_sessions(db: Database, serve: Any) -> None:
    """Fifty overlapping requests each get their own sessions and read their own write."""
    app = make_app("concurrent")
    sessions: list[tuple[object, object]] = []

    @app.post("/users/<user_id:int>")
    async def create(_request: Request, user_id: int) -> HTTPResponse:
        db.write.add(User(id=user_id, name=f"user{user_id}", email=f"{user_id}@example.com"))
        await db.write.flush()
        await asyncio.sleep(0.01)
        mine = (await db.read.execute(select(User.id).where(User.id == user_id))).scalar_one()
        sessions.append((db.read, db.write))  # kept alive: ids stay unique
        return json({"id": mine})

    db.init_app(app)
    served = await serve(app)
    responses = await asyncio.gather(*(served.client.post(f"/users/{i}") for i in range(1, 51)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses[:3]]
    assert sorted(r.json()["id"] for r in responses) == list(range(1, 51))
    assert len({id(read) for read, _ in sessions}) == 50
    assert len({id(write) for _, write in sessions}) == 50
    async with db:
        assert len((await db.read.execute(select(User))).scalars().all()) == 50


async def test_write_and_read_while_a_sibling_reads(db: Database, backend: str) -> None:
    """A task writes then reads while a sibling's slow read runs: nothing is released early."""
    await seed(db, 1)

    async def slow_read() -> int:
        return len((await db.read.execute(text(SLOW[backend]))).all())

    async def write_then_read(started: asyncio.Event) -> list[str]:
        await started.wait()
        db.write.add(User(id=2, name="user2", email="2@example.com"))
        await db.write.flush()
        assert checked_out(db).read == 1  # the slow read still has its connection
        return list((await db.read.execute(select(User.name).order_by(User.id))).scalars())

    with when_started(db.engines.read, SLOW[backend]) as started:
        async with db:
            rows, names = await asyncio.wait_for(
                asyncio.gather(slow_read(), write_then_read(started)), 10
            )
    assert rows == 1
    assert names == ["user1", "user2"]
    assert checked_out(db).total == 0
