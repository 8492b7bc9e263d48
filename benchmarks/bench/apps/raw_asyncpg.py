"""Raw asyncpg: a pool of 10 and hand-written SQL, the limit the others are measured against.

Single statements run in autocommit; the touch runs its SELECT and UPDATE in one
transaction.  The pool is used as asyncpg documents it, so each release runs asyncpg's
reset query (one round trip: ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
RESET ALL``).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sqlalchemy.engine import make_url

from .common import (
    new_app,
    new_user_fields,
    noop_response,
    not_found,
    page_limit,
    user_from_row,
)

GET = "SELECT id, name, email, visits FROM users WHERE id = $1"
PAGE = "SELECT id, name, email, visits FROM users ORDER BY id LIMIT $1"
INSERT = (
    "INSERT INTO users (name, email, visits) VALUES ($1, $2, 0) RETURNING id, name, email, visits"
)
UPDATE = "UPDATE users SET visits = $2 WHERE id = $1"


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    assert backend == "postgresql"
    parsed = make_url(url)
    app = new_app("raw_asyncpg")

    @app.before_server_start
    async def start(app: Sanic[Any, Any]) -> None:
        app.ctx.pool = await asyncpg.create_pool(
            host=parsed.host,
            port=parsed.port or 5432,
            user=parsed.username,
            password=parsed.password,
            database=parsed.database,
            min_size=10,
            max_size=10,
        )

    @app.after_server_stop
    async def stop(app: Sanic[Any, Any]) -> None:
        await app.ctx.pool.close()

    @app.get("/noop")
    async def noop(request: Request) -> HTTPResponse:
        return noop_response()

    @app.get("/users/<user_id:int>")
    async def get_user(request: Request, user_id: int) -> HTTPResponse:
        row = await request.app.ctx.pool.fetchrow(GET, user_id)
        if row is None:
            return not_found()
        return json(user_from_row(row))

    @app.get("/users")
    async def list_users(request: Request) -> HTTPResponse:
        rows = await request.app.ctx.pool.fetch(PAGE, page_limit(request))
        return json({"users": [user_from_row(row) for row in rows]})

    @app.post("/users")
    async def create_user(request: Request) -> HTTPResponse:
        name, email = new_user_fields(request)
        row = await request.app.ctx.pool.fetchrow(INSERT, name, email)
        return json(user_from_row(row), status=201)

    @app.post("/users/<user_id:int>/touch")
    async def touch_user(request: Request, user_id: int) -> HTTPResponse:
        async with request.app.ctx.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(GET, user_id)
            if row is None:
                return not_found()
            visits = row["visits"] + 1
            await connection.execute(UPDATE, user_id, visits)
        return json(user_from_row((row[0], row[1], row[2], visits)))

    return app
