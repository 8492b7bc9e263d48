"""``ours``'s ``POST /users`` that also schedules after-commit work (issue 18): a
durable task (``ours-defer``) or an in-memory ``db.on_commit`` callback
(``ours-on-commit``), both doing nothing, ``BENCH_TASKS_PER_REQUEST`` times per request
(default 1).  Also ``GET /noop`` (the harness's readiness probe).

``BENCH_TASKS_FAST=0`` turns the committing process's own run of its tasks and its
dispatcher off (to count the round trips of the request's unit alone); the tasks table
is created at start-up.
"""

from __future__ import annotations

import os
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from sanic_sqlalchemy import Database

from .common import User, new_app, new_user_fields, noop_response, user_from_orm

db = Database()


@db.task(name="bench.noop")
async def noop_task(user_id: int) -> None:
    return None


async def noop_callback(user_id: int) -> None:
    return None


def build(url: str, mode: str) -> Sanic[Any, Any]:
    per_request = int(os.environ.get("BENCH_TASKS_PER_REQUEST", "1"))
    app = new_app(f"ours_{mode.replace('-', '_')}")
    db.init_app(app, url)
    fast = os.environ.get("BENCH_TASKS_FAST", "1") != "0"
    db.tasks.run_after_commit = fast

    @app.before_server_start
    async def create_tasks_table(_app: Sanic[Any, Any]) -> None:
        await db.tasks.create_table()

    if not fast or mode != "defer":

        async def no_dispatcher(_app: Sanic[Any, Any]) -> None:
            # The unit's own round trips only: nothing runs the tasks in this process
            # (a worker process elsewhere would), and db.on_commit has no dispatcher
            # looking for tasks.
            await db.tasks.stop(0)

        # After the library's own listener, which starts the dispatcher last of all.
        app.register_listener(no_dispatcher, "after_server_start", priority=-2_000_000)

    @app.get("/noop")
    async def noop(request: Request) -> HTTPResponse:
        return noop_response()

    @app.post("/users")
    async def create_user(request: Request) -> HTTPResponse:
        name, email = new_user_fields(request)
        user = User(name=name, email=email, visits=0)
        db.write.add(user)
        await db.write.flush()
        for _ in range(per_request):
            if mode == "defer":
                noop_task.defer(user.id)
            else:
                db.on_commit(noop_callback, user.id)
        return json(user_from_orm(user), status=201)

    return app
