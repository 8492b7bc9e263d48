"""SQLAlchemy Core by hand: ``engine.connect()`` / ``engine.begin()`` in each handler."""

from __future__ import annotations

from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .common import (
    new_app,
    new_user_fields,
    noop_response,
    not_found,
    page_limit,
    peer_pool_options,
    user_from_row,
    users,
)

GET = select(users.c.id, users.c.name, users.c.email, users.c.visits).where(
    users.c.id == bindparam("id")
)
PAGE = (
    select(users.c.id, users.c.name, users.c.email, users.c.visits)
    .order_by(users.c.id)
    .limit(bindparam("limit"))
)
UPDATE = update(users).where(users.c.id == bindparam("user_id")).values(visits=bindparam("v"))


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    app = new_app("core")

    @app.before_server_start
    async def start(app: Sanic[Any, Any]) -> None:
        app.ctx.engine = create_async_engine(url, **peer_pool_options())

    @app.after_server_stop
    async def stop(app: Sanic[Any, Any]) -> None:
        await app.ctx.engine.dispose()

    def engine() -> AsyncEngine:
        return app.ctx.engine

    @app.get("/noop")
    async def noop(request: Request) -> HTTPResponse:
        return noop_response()

    @app.get("/users/<user_id:int>")
    async def get_user(request: Request, user_id: int) -> HTTPResponse:
        async with engine().connect() as connection:
            row = (await connection.execute(GET, {"id": user_id})).first()
        if row is None:
            return not_found()
        return json(user_from_row(row))

    @app.get("/users")
    async def list_users(request: Request) -> HTTPResponse:
        async with engine().connect() as connection:
            rows = (await connection.execute(PAGE, {"limit": page_limit(request)})).all()
        return json({"users": [user_from_row(row) for row in rows]})

    @app.post("/users")
    async def create_user(request: Request) -> HTTPResponse:
        name, email = new_user_fields(request)
        async with engine().begin() as connection:
            result = await connection.execute(
                insert(users).returning(users.c.id, users.c.name, users.c.email, users.c.visits),
                {"name": name, "email": email, "visits": 0},
            )
            row = result.one()
        return json(user_from_row(row), status=201)

    @app.post("/users/<user_id:int>/touch")
    async def touch_user(request: Request, user_id: int) -> HTTPResponse:
        async with engine().begin() as connection:
            row = (await connection.execute(GET, {"id": user_id})).first()
            if row is None:
                return not_found()
            visits = row.visits + 1
            await connection.execute(UPDATE, {"user_id": user_id, "v": visits})
        return json(user_from_row((row[0], row[1], row[2], visits)))

    return app
