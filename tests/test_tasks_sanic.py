"""Durable tasks in Sanic: deferred in a request, stored with its commit, run after the
response by the worker, or by the dispatcher each worker starts and stops."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, json
from sqlalchemy import select, text

from sanic_sqlalchemy import Database, NoActiveUnitError
from sanic_sqlalchemy.testing import schema

from .conftest import make_app
from .test_tasks import Base, Receipt


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    database = Database(url, pool_size=5, pool_timeout=10, tasks_poll=0.1)
    async with schema(database, Base.metadata), schema(database, database.tasks.metadata):
        yield database
    await database.dispose()


def shop(db: Database) -> Sanic[Any, Any]:
    app = make_app("tasks")
    db.init_app(app)
    ran: list[int] = []
    app.ctx.ran = ran

    @db.task(name="shop.receipt")
    async def receipt(order_id: int, slow: bool = False) -> None:
        if slow:
            await asyncio.sleep(1.5)
        db.write.add(Receipt(order_id=order_id))
        ran.append(order_id)

    @app.post("/orders/<order_id:int>")
    async def order(request: Request, order_id: int) -> HTTPResponse:
        delay = float(request.args.get("delay", 0))
        slow = bool(request.args.get("slow"))
        task_id = receipt.configure(delay=delay).defer(order_id, slow)
        return json({"task": task_id}, status=int(request.args.get("status", 201)))

    return app


async def wait_for_receipts(db: Database, count: int, timeout: float = 5) -> list[int]:
    found: list[int] = []
    for _ in range(int(timeout / 0.05)):
        async with db:
            found = sorted((await db.read.scalars(select(Receipt.order_id))).all())
        if len(found) >= count:
            break
        await asyncio.sleep(0.05)
    return found


async def test_a_request_defers_and_the_worker_runs_it_after_the_response(
    db: Database, serve: Any
) -> None:
    served = await serve(shop(db))
    started = time.monotonic()
    response = await served.client.post("/orders/1?slow=1")
    answered = time.monotonic() - started
    assert response.status_code == 201 and isinstance(response.json()["task"], str)
    assert answered < 1.0, "the slow task delayed the response"
    assert await wait_for_receipts(db, 1) == [1]


@pytest.mark.parametrize("status", [400, 500])
async def test_an_error_response_leaves_no_task(db: Database, serve: Any, status: int) -> None:
    served = await serve(shop(db))
    response = await served.client.post(f"/orders/2?status={status}")
    assert response.status_code == status
    await asyncio.sleep(0.3)
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}
    assert await wait_for_receipts(db, 1, timeout=0.2) == []


async def test_each_worker_dispatches_delayed_tasks(db: Database, serve: Any) -> None:
    served = await serve(shop(db))
    assert db.tasks.running, "a database with tasks starts a dispatcher with the server"
    response = await served.client.post("/orders/3?delay=0.3")
    assert response.status_code == 201
    assert await wait_for_receipts(db, 1) == [3]


async def test_a_database_without_tasks_starts_no_dispatcher(url: str, serve: Any) -> None:
    database = Database(url)
    app = make_app("plain")
    database.init_app(app)

    @app.get("/")
    async def index(_request: Request) -> HTTPResponse:
        return json({})

    served = await serve(app)
    assert (await served.client.get("/")).status_code == 200
    assert not database.tasks.running
    await database.dispose()


async def test_a_run_here_starts_from_a_fresh_context_as_a_dispatchers_run_would(
    db: Database, url: str, serve: Any
) -> None:
    """What the handler's context held (a context variable, the request, another
    database's request unit) is not the task's: it runs as a dispatcher would run it."""
    other = Database(url, pool_size=2)
    app = make_app("fresh")
    db.init_app(app)
    other.init_app(app)
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    seen: dict[str, Any] = {}

    @db.task(name="fresh.look")
    async def look(order_id: int) -> None:
        seen["marker"] = marker.get()
        try:
            Request.get_current()
            seen["request"] = "found"
        except SanicException:
            seen["request"] = None
        try:
            await other.read.execute(text("SELECT 1"))
            seen["other"] = "the request's unit"
        except NoActiveUnitError:
            seen["other"] = NoActiveUnitError
        async with other:
            seen["other in its own unit"] = (await other.read.execute(text("SELECT 2"))).scalar()
        db.write.add(Receipt(order_id=order_id))

    @app.post("/look/<order_id:int>")
    async def handler(request: Request, order_id: int) -> HTTPResponse:
        marker.set("the handler's")
        await other.read.execute(text("SELECT 1"))  # the request has a unit of other
        look.defer(order_id)
        return json({}, status=201)

    served = await serve(app)
    assert (await served.client.post("/look/7")).status_code == 201
    assert await wait_for_receipts(db, 1) == [7]
    assert seen == {
        "marker": "unset",
        "request": None,
        "other": NoActiveUnitError,
        "other in its own unit": 2,
    }
    await other.dispose()
