"""A Sanic app with durable tasks, served by ``sanic tests.apps.task_app:app`` in
``tests/test_tasks_processes.py`` (settings from ``SANIC_``-prefixed variables; the
test creates the tables).

* ``GET /``: ready;
* ``POST /defer/<number>?seconds=S``: defer a task that sleeps ``S`` seconds, then
  inserts a receipt for ``number``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from sanic_sqlalchemy import Database

from .task_worker import KillReceipt

app: Sanic[Any, Any] = Sanic("task_app")
db = Database()
db.init_app(app)


@db.task(name="app.sleepy")
async def sleepy(number: int, seconds: float) -> None:
    await asyncio.sleep(seconds)
    db.write.add(KillReceipt(order_id=number, doomed=0))


@app.get("/")
async def ready(_request: Request) -> HTTPResponse:
    return json({"ok": True})


@app.post("/defer/<number:int>")
async def defer(request: Request, number: int) -> HTTPResponse:
    seconds = float(request.args.get("seconds", 0))
    return json({"id": sleepy.defer(number, seconds)}, status=201)
