"""A request's unit belongs to the task that runs its handler; other tasks get their own,
and whatever ctx object the application gives its requests, units work."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json, text
from sqlalchemy import select
from sqlalchemy import text as sql

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.errors import UnitStateError
from sanic_sqlalchemy.testing import CommitRecorder, checked_out, wait_until_idle

from .conftest import count_users, make_app
from .models import User

# app.add_task(coro) schedules at once only in a running app (app.run() or ASGI); under
# create_server, which the serve fixture uses, Sanic defers it to the next start. Its
# requests go through sanic-testing's ASGI client.
SPAWNERS = ["create_task", "signal", "add_task"]


async def spawn(request: Request, how: str, work: Any) -> None:
    """Start ``work()`` in a task of its own, the way a handler would."""
    if how == "create_task":
        request.app.ctx.tasks.append(asyncio.create_task(work()))
    elif how == "add_task":
        request.app.ctx.tasks.append(request.app.add_task(work()))
    else:
        request.app.ctx.work = work
        # Dispatched without inline=True, a signal's handlers run in a task of their own.
        request.app.ctx.tasks.append(await request.app.dispatch("test.task.spawn"))


def background_app(db: Database, how: str) -> Sanic[Any, Any]:
    """An app whose handler starts a task that works after the response is sent."""
    app = make_app("background")
    app.ctx.tasks = []
    app.ctx.answered = asyncio.Event()
    app.ctx.outcome = []

    @app.signal("test.task.spawn")
    async def run_spawned_work() -> None:
        await app.ctx.work()

    @app.post("/write/<user_id:int>")
    async def write_later(request: Request, user_id: int) -> HTTPResponse:
        async def work() -> None:
            await app.ctx.answered.wait()
            async with db:
                db.write.add(User(id=user_id, name="later", email=f"{user_id}@example.com"))
            app.ctx.outcome.append("written")

        await spawn(request, how, work)
        return text("accepted", status=202)

    @app.get("/read-outside-a-block")
    async def read_later(request: Request) -> HTTPResponse:
        async def work() -> None:
            await app.ctx.answered.wait()
            try:
                await db.read.execute(select(User))
            except UnitStateError as error:
                app.ctx.outcome.append(str(error))

        await spawn(request, how, work)
        return text("accepted", status=202)

    db.init_app(app)
    return app


async def status_of(app: Sanic[Any, Any], serve: Any, how: str, method: str, path: str) -> int:
    """The status of one request to ``app``, over ASGI for ``add_task``, else over HTTP."""
    if how == "add_task":
        _, response = await getattr(app.asgi_client, method)(path)
        status: int = response.status
        return status
    served = await serve(app)
    status = (await getattr(served.client, method)(path)).status_code
    return status


async def idle_in_transaction(db: Database, backend: str) -> list[str]:
    """Sessions of the test database left idle inside a transaction (PostgreSQL), each
    as its last statement.  A session that something else has mid-transaction at that
    instant is not left behind: asked again for 4 s, only one that stays counts."""
    if backend != "postgresql":
        return []
    query = sql(
        "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
        "AND state LIKE 'idle in transaction%'"
    )
    for _ in range(40):
        async with db:
            left = [str(row) for row in (await db.read.scalars(query)).all()]
        if not left:
            return left
        await asyncio.sleep(0.1)
    return left


@pytest.mark.parametrize("how", SPAWNERS)
async def test_a_task_started_by_the_handler_gets_its_own_unit(
    db: Database, serve: Any, backend: str, how: str
) -> None:
    """A task started by a handler that never touched ``db`` commits its own
    ``async with db:`` block after the response, and leaves no connection or open
    transaction behind."""
    app = background_app(db, how)
    assert await status_of(app, serve, how, "post", "/write/1") == 202
    app.ctx.answered.set()
    await asyncio.wait_for(asyncio.gather(*app.ctx.tasks), 10)
    assert app.ctx.outcome == ["written"]
    assert await count_users(db) == 1
    assert (await wait_until_idle(db)).total == 0
    assert await idle_in_transaction(db, backend) == []


@pytest.mark.parametrize("how", SPAWNERS)
async def test_a_task_using_db_after_the_response_gets_a_clear_error(
    db: Database, serve: Any, how: str
) -> None:
    """Outside an ``async with db:`` block, a task that uses ``db`` after its request was
    answered gets a ``UnitStateError`` saying to open a unit of its own, never a unit
    created after the response."""
    app = background_app(db, how)
    assert await status_of(app, serve, how, "get", "/read-outside-a-block") == 202
    app.ctx.answered.set()
    await asyncio.wait_for(asyncio.gather(*app.ctx.tasks), 10)
    [message] = app.ctx.outcome
    assert "the request has been answered" in message
    assert "async with db:" in message
    assert checked_out(db).total == 0


async def test_a_late_task_leaves_the_next_request_on_its_connection_alone(
    db: Database, serve: Any
) -> None:
    """A task of an answered request that touches ``db`` while the next request on the
    same keep-alive connection is running gets its error and leaves that request's unit
    alone: the next request still commits."""
    app = background_app(db, "create_task")
    app.ctx.waiting = asyncio.Event()
    app.ctx.go_on = asyncio.Event()

    @app.post("/slow-write/<user_id:int>")
    async def slow_write(request: Request, user_id: int) -> HTTPResponse:
        db.write.add(User(id=user_id, name="next", email=f"{user_id}@example.com"))
        await db.write.flush()
        app.ctx.waiting.set()
        await app.ctx.go_on.wait()
        return text("created", status=201)

    served = await serve(app)
    assert (await served.client.get("/read-outside-a-block")).status_code == 202
    following = asyncio.create_task(served.client.post("/slow-write/2"))
    await asyncio.wait_for(app.ctx.waiting.wait(), 10)
    app.ctx.answered.set()
    await asyncio.wait_for(asyncio.gather(*app.ctx.tasks), 10)
    assert "the request has been answered" in app.ctx.outcome[0]
    app.ctx.go_on.set()
    assert (await following).status_code == 201
    assert await count_users(db) == 1
    assert (await wait_until_idle(db)).total == 0


async def test_first_use_in_a_gather_child_keeps_the_unit_with_the_handler(
    db: Database, serve: Any, backend: str
) -> None:
    """When the handler first touches ``db`` in an ``asyncio.gather`` child, a later
    ``async with db:`` in the handler joins the request's unit: an error response rolls it
    back, a success commits it once, with its callbacks."""
    app = make_app("gather_first")
    recorder = CommitRecorder()

    async def count() -> int:
        return len((await db.read.execute(select(User))).scalars().all())

    @app.post("/users/<user_id:int>")
    async def create(request: Request, user_id: int) -> HTTPResponse:
        [before] = await asyncio.gather(count())
        async with db:
            db.write.add(User(id=user_id, name="Ada", email=f"{user_id}@example.com"))
            db.on_commit(recorder, user_id)
        return json({"before": before}, status=int(request.args.get("status", 201)))

    db.init_app(app)
    served = await serve(app)
    assert (await served.client.post("/users/1?status=500")).status_code == 500
    assert await count_users(db) == 0
    assert recorder.calls == []
    assert (await served.client.post("/users/2")).status_code == 201
    assert await count_users(db) == 1
    assert recorder.args == [(2,)]
    assert await idle_in_transaction(db, backend) == []


@dataclass(slots=True)
class TypedContext:
    """A request context with a fixed set of fields, as ``make_context`` may return."""

    user: str | None = None


class TypedRequest(Request):
    @classmethod
    def make_context(cls) -> TypedContext:  # type: ignore[override]
        return TypedContext()


async def test_a_slotted_request_context_works(db: Database, serve: Any) -> None:
    """An app whose requests get a slotted dataclass as ``ctx`` (``make_context``) serves
    requests that never touch ``db``, that read and that write."""
    app = Sanic(f"typed_ctx_{uuid.uuid4().hex[:12]}", request_class=TypedRequest)

    @app.on_request
    async def authenticate(request: Request) -> None:
        request.ctx.user = "ada"

    @app.get("/noop")
    async def noop(request: Request) -> HTTPResponse:
        return text(request.ctx.user)

    @app.post("/users")
    async def create(request: Request) -> HTTPResponse:
        db.write.add(User(id=1, name=request.ctx.user, email="ada@example.com"))
        return text("created", status=201)

    @app.get("/users")
    async def users(request: Request) -> HTTPResponse:
        rows = (await db.read.execute(select(User))).scalars().all()
        return json([row.name for row in rows])

    db.init_app(app)
    served = await serve(app)
    assert (await served.client.get("/noop")).text == "ada"
    assert (await served.client.post("/users")).status_code == 201
    assert (await served.client.get("/users")).json() == ["ada"]
    assert (await wait_until_idle(db)).total == 0
