"""An ORM session per request, opened and finished in middleware: what users write today.

A request middleware opens an ``AsyncSession``; a response middleware commits it when
the status is below 400 (rolls back otherwise) and closes it, before the response is
sent.  This is the pattern of Sanic's own SQLAlchemy guide.
"""

from __future__ import annotations

from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from .common import (
    User,
    new_app,
    new_user_fields,
    noop_response,
    not_found,
    page_limit,
    peer_pool_options,
    user_from_orm,
)


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    app = new_app("orm")

    @app.before_server_start
    async def start(app: Sanic[Any, Any]) -> None:
        app.ctx.engine = create_async_engine(url, **peer_pool_options())
        app.ctx.sessionmaker = async_sessionmaker(app.ctx.engine, expire_on_commit=False)

    @app.after_server_stop
    async def stop(app: Sanic[Any, Any]) -> None:
        await app.ctx.engine.dispose()

    @app.on_request
    async def open_session(request: Request) -> None:
        request.ctx.session = request.app.ctx.sessionmaker()

    @app.on_response
    async def close_session(request: Request, response: HTTPResponse) -> None:
        session: AsyncSession | None = getattr(request.ctx, "session", None)
        if session is None:
            return
        try:
            if response.status < 400:
                await session.commit()
            else:
                await session.rollback()
        finally:
            await session.close()

    @app.get("/noop")
    async def noop(request: Request) -> HTTPResponse:
        return noop_response()

    @app.get("/users/<user_id:int>")
    async def get_user(request: Request, user_id: int) -> HTTPResponse:
        user = await request.ctx.session.get(User, user_id)
        if user is None:
            return not_found()
        return json(user_from_orm(user))

    @app.get("/users")
    async def list_users(request: Request) -> HTTPResponse:
        result = await request.ctx.session.scalars(
            select(User).order_by(User.id).limit(page_limit(request))
        )
        return json({"users": [user_from_orm(user) for user in result]})

    @app.post("/users")
    async def create_user(request: Request) -> HTTPResponse:
        name, email = new_user_fields(request)
        user = User(name=name, email=email, visits=0)
        request.ctx.session.add(user)
        await request.ctx.session.flush()
        return json(user_from_orm(user), status=201)

    @app.post("/users/<user_id:int>/touch")
    async def touch_user(request: Request, user_id: int) -> HTTPResponse:
        user = await request.ctx.session.get(User, user_id)
        if user is None:
            return not_found()
        user.visits += 1
        return json(user_from_orm(user))

    return app
