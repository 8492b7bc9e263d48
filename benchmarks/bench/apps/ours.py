"""sanic-sqlalchemy through its public API only: ``Database()``, ``init_app``,
``db.read`` and ``db.write``, with every setting left at its default."""

from __future__ import annotations

from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sqlalchemy import select

from sanic_sqlalchemy import Database

from .common import (
    User,
    new_app,
    new_user_fields,
    noop_response,
    not_found,
    page_limit,
    user_from_orm,
)

db = Database()


def create_app(url: str, backend: str, **settings: Any) -> Sanic[Any, Any]:
    app = new_app("ours")
    db.init_app(app, url, **settings)

    @app.get("/noop")
    async def noop(request: Request) -> HTTPResponse:
        return noop_response()

    @app.get("/users/<user_id:int>")
    async def get_user(request: Request, user_id: int) -> HTTPResponse:
        user = await db.read.get(User, user_id)
        if user is None:
            return not_found()
        return json(user_from_orm(user))

    @app.get("/users")
    async def list_users(request: Request) -> HTTPResponse:
        result = await db.read.scalars(select(User).order_by(User.id).limit(page_limit(request)))
        return json({"users": [user_from_orm(user) for user in result]})

    @app.post("/users")
    async def create_user(request: Request) -> HTTPResponse:
        name, email = new_user_fields(request)
        user = User(name=name, email=email, visits=0)
        db.write.add(user)
        await db.write.flush()
        return json(user_from_orm(user), status=201)

    @app.post("/users/<user_id:int>/touch")
    async def touch_user(request: Request, user_id: int) -> HTTPResponse:
        user = await db.write.get(User, user_id)
        if user is None:
            return not_found()
        user.visits += 1
        return json(user_from_orm(user))

    return app
