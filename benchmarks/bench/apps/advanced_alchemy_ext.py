"""advanced-alchemy 1.12.0's Sanic extension, ``commit_mode="autocommit"``.

Workaround: in 1.12.0 the extension's request middleware stores
``SQLAlchemyAsyncConfig.get_session()`` in ``request.ctx``, and that method is an
``@asynccontextmanager``, so ``alchemy.get_async_session(request)`` hands the handler a
context manager instead of an ``AsyncSession`` (and the response middleware's commit then
fails silently: it only logs at DEBUG).  The subclass below makes ``get_session()``
return a session from the extension's own session maker; everything else (engine,
session maker, middleware, commit and close) is the extension's code.  The extension
also needs ``sanic-ext``, which it registers with ``Extend``.
"""

from __future__ import annotations

from typing import Any

from advanced_alchemy.extensions.sanic import (
    AdvancedAlchemy,
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
)
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

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


class SessionConfig(SQLAlchemyAsyncConfig):  # type: ignore[misc]
    """The workaround: ``get_session()`` returns a session, not a context manager."""

    def get_session(self) -> AsyncSession:  # type: ignore[override]
        return self.create_session_maker()()


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    app = new_app("advanced_alchemy")
    config = SessionConfig(
        connection_string=url,
        commit_mode="autocommit",
        engine_config=EngineConfig(**peer_pool_options()),
        session_config=AsyncSessionConfig(expire_on_commit=False),
    )
    alchemy = AdvancedAlchemy(sqlalchemy_config=config, sanic_app=app)

    def session(request: Request) -> AsyncSession:
        return alchemy.get_async_session(request)

    @app.get("/noop")
    async def noop(request: Request) -> HTTPResponse:
        return noop_response()

    @app.get("/users/<user_id:int>")
    async def get_user(request: Request, user_id: int) -> HTTPResponse:
        user = await session(request).get(User, user_id)
        if user is None:
            return not_found()
        return json(user_from_orm(user))

    @app.get("/users")
    async def list_users(request: Request) -> HTTPResponse:
        result = await session(request).scalars(
            select(User).order_by(User.id).limit(page_limit(request))
        )
        return json({"users": [user_from_orm(user) for user in result]})

    @app.post("/users")
    async def create_user(request: Request) -> HTTPResponse:
        name, email = new_user_fields(request)
        user = User(name=name, email=email, visits=0)
        session(request).add(user)
        await session(request).flush()
        return json(user_from_orm(user), status=201)

    @app.post("/users/<user_id:int>/touch")
    async def touch_user(request: Request, user_id: int) -> HTTPResponse:
        user = await session(request).get(User, user_id)
        if user is None:
            return not_found()
        user.visits += 1
        return json(user_from_orm(user))

    return app
