"""Raw asyncmy on MariaDB: a pool of 10 in autocommit and hand-written SQL.

Single statements run in autocommit; the touch runs its SELECT and UPDATE between
``BEGIN`` and ``COMMIT``.  asyncmy's pool sends nothing when a connection is released.
"""

from __future__ import annotations

from typing import Any

import asyncmy
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

GET = "SELECT id, name, email, visits FROM users WHERE id = %s"
PAGE = "SELECT id, name, email, visits FROM users ORDER BY id LIMIT %s"
INSERT = (
    "INSERT INTO users (name, email, visits) VALUES (%s, %s, 0) RETURNING id, name, email, visits"
)
UPDATE = "UPDATE users SET visits = %s WHERE id = %s"


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    assert backend == "mysql"
    parsed = make_url(url)
    app = new_app("raw_asyncmy")

    @app.before_server_start
    async def start(app: Sanic[Any, Any]) -> None:
        app.ctx.pool = await asyncmy.create_pool(
            host=parsed.host,
            port=parsed.port or 3306,
            user=parsed.username,
            password=parsed.password or "",
            db=parsed.database,
            charset="utf8mb4",
            autocommit=True,
            minsize=10,
            maxsize=10,
        )

    @app.after_server_stop
    async def stop(app: Sanic[Any, Any]) -> None:
        app.ctx.pool.close()
        await app.ctx.pool.wait_closed()

    async def fetch(sql: str, *args: Any, many: bool = False) -> Any:
        async with app.ctx.pool.acquire() as connection, connection.cursor() as cursor:
            await cursor.execute(sql, args)
            return await (cursor.fetchall() if many else cursor.fetchone())

    @app.get("/noop")
    async def noop(request: Request) -> HTTPResponse:
        return noop_response()

    @app.get("/users/<user_id:int>")
    async def get_user(request: Request, user_id: int) -> HTTPResponse:
        row = await fetch(GET, user_id)
        if row is None:
            return not_found()
        return json(user_from_row(row))

    @app.get("/users")
    async def list_users(request: Request) -> HTTPResponse:
        rows = await fetch(PAGE, page_limit(request), many=True)
        return json({"users": [user_from_row(row) for row in rows]})

    @app.post("/users")
    async def create_user(request: Request) -> HTTPResponse:
        name, email = new_user_fields(request)
        row = await fetch(INSERT, name, email)
        return json(user_from_row(row), status=201)

    @app.post("/users/<user_id:int>/touch")
    async def touch_user(request: Request, user_id: int) -> HTTPResponse:
        async with app.ctx.pool.acquire() as connection:
            await connection.begin()
            try:
                async with connection.cursor() as cursor:
                    await cursor.execute(GET, (user_id,))
                    row = await cursor.fetchone()
                    if row is None:
                        await connection.rollback()
                        return not_found()
                    visits = row[3] + 1
                    await cursor.execute(UPDATE, (visits, user_id))
                await connection.commit()
            except BaseException:
                await connection.rollback()
                raise
        return json(user_from_row((row[0], row[1], row[2], visits)))

    return app
