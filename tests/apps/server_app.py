"""A small Sanic app served by ``sanic tests.apps.server_app:app`` in the tests.

Its settings come from the environment (``SANIC_DATABASE_URL``, ``SANIC_DATABASE_POOL_SIZE``
and friends).  Each worker creates the tables at start-up if they are missing, under a
lock (an advisory lock on PostgreSQL, ``GET_LOCK`` on MariaDB/MySQL, ``BEGIN IMMEDIATE``
on SQLite) so that several workers starting at once do not race.

Endpoints:

* ``GET /users/<id>``: one user, read through ``db.read``;
* ``POST /users``: insert ``{"name", "email"}`` through ``db.write`` (409 on a duplicate
  e-mail address);
* ``GET /pid``: this worker's pid, how many connections its pools have lent out and the
  states of Sanic's workers;
* ``GET /slow?seconds=S&via=read|write``: hold a connection of the read or write pool
  for ``S`` seconds, to exhaust the pool.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import time
from typing import Any

from sanic import Request, Sanic
from sanic.exceptions import BadRequest, NotFound
from sanic.response import HTTPResponse, json
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.testing import checked_out

from .schema import metadata, server_users

#: Any number, the same in every worker: the key of the schema lock.
_SCHEMA_LOCK = 7_114_771

# A test that times out sends SIGUSR1 to see where each process is stuck.
faulthandler.register(signal.SIGUSR1, all_threads=True)

app: Sanic[Any, Any] = Sanic("server_app")
db = Database()
db.init_app(app)


@app.before_server_start
async def create_tables(_app: Sanic[Any, Any]) -> None:
    """Create the tables if they are missing; safe when several workers start together."""
    engine = db.engines.write
    backend = engine.dialect.name
    if backend == "mysql":
        async with engine.connect() as connection:
            await _mysql_locked_create(connection)
        return
    async with engine.begin() as connection:
        if backend == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK}
            )
        # SQLite: the library's write engine begins with BEGIN IMMEDIATE, which already
        # makes the other workers wait here.
        await connection.run_sync(metadata.create_all, checkfirst=True)


async def _mysql_locked_create(connection: AsyncConnection) -> None:
    name = f"server_app_schema_{_SCHEMA_LOCK}"
    got = (await connection.execute(text("SELECT GET_LOCK(:name, 30)"), {"name": name})).scalar()
    if got != 1:
        raise RuntimeError("could not take the schema lock within 30 seconds")
    try:
        await connection.run_sync(metadata.create_all, checkfirst=True)
        await connection.commit()
    finally:
        await connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
        await connection.commit()


@app.on_request
async def start_clock(request: Request) -> None:
    request.ctx.started = time.monotonic()


@app.on_response
async def report_time(request: Request, response: HTTPResponse) -> None:
    started = getattr(request.ctx, "started", None)
    if started is not None:
        response.headers["X-Server-Time"] = f"{time.monotonic() - started:.3f}"


def _user(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "email": row.email, "pid": row.pid}


@app.get("/users/<user_id:int>")
async def get_user(request: Request, user_id: int) -> HTTPResponse:
    row = (
        await db.read.execute(select(server_users).where(server_users.c.id == user_id))
    ).one_or_none()
    if row is None:
        raise NotFound(f"no user {user_id}")
    return json({**_user(row), "served_by": os.getpid()})


@app.post("/users")
async def create_user(request: Request) -> HTTPResponse:
    body = request.json
    if not isinstance(body, dict) or not {"name", "email"} <= body.keys():
        raise BadRequest("expected a JSON object with name and email")
    values = {"name": str(body["name"]), "email": str(body["email"]), "pid": os.getpid()}
    try:
        result = await db.write.execute(insert(server_users).values(**values))
    except IntegrityError:
        # The unique e-mail address (a retried insert that had in fact been stored).
        return json({"error": "conflict"}, status=409)
    (user_id,) = result.inserted_primary_key or (None,)
    return json({"id": user_id, **values, "served_by": os.getpid()}, status=201)


@app.get("/pid")
async def pid(request: Request) -> HTTPResponse:
    use = checked_out(db)
    multiplexer = getattr(request.app, "multiplexer", None)
    workers = (
        {}
        if multiplexer is None
        else {
            name: state.get("state")
            for name, state in multiplexer.workers.items()
            if state.get("server")
        }
    )
    return json(
        {
            "pid": os.getpid(),
            "checked_out": {"write": use.write, "read": use.read},
            # Sanic's worker states: the main process must see every worker ACKED
            # before it handles SIGINT well.
            "workers": workers,
        }
    )


@app.get("/slow")
async def slow(request: Request) -> HTTPResponse:
    seconds = float(request.args.get("seconds", "1"))
    via = request.args.get("via", "read")
    if via not in ("read", "write") or not 0 <= seconds <= 10:
        raise BadRequest("via must be read or write, seconds between 0 and 10")
    session: AsyncSession = db.read if via == "read" else db.write
    backend = db.engines.write.dialect.name
    if backend == "postgresql":
        await session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": seconds})
    elif backend == "mysql":
        await session.execute(text("SELECT SLEEP(:seconds)"), {"seconds": seconds})
    else:
        # SQLite cannot sleep in SQL: the session holds a connection until the unit ends.
        await session.connection()
        await asyncio.sleep(seconds)
    return json({"slept": seconds, "via": via, "pid": os.getpid()})
