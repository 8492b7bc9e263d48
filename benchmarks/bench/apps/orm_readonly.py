"""Diagnostic, not a peer: ours's design written by hand, without its guard rails.

Sessions are created on first use; reads go through a second engine whose connections
are read-only (``default_transaction_read_only``) and in autocommit, so a read is one
round trip; the write session commits in a response middleware.  No unit object, no
callbacks, no gates, no statement guard, no shielding, no liveness checks.  The
difference between this and ``ours`` is the library's own cost; what both share is
SQLAlchemy's (and Sanic's).  PostgreSQL only.
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
    user_from_orm,
)


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    assert backend == "postgresql"
    app = new_app("orm_readonly")

    @app.before_server_start
    async def start(app: Sanic[Any, Any]) -> None:
        app.ctx.write_engine = create_async_engine(url, pool_size=10, max_overflow=0)
        app.ctx.read_engine = create_async_engine(
            url,
            pool_size=10,
            max_overflow=0,
            isolation_level="AUTOCOMMIT",
            connect_args={"server_settings": {"default_transaction_read_only": "on"}},
        )
        app.ctx.writer = async_sessionmaker(app.ctx.write_engine, expire_on_commit=False)
        app.ctx.reader = async_sessionmaker(
            app.ctx.read_engine, expire_on_commit=False, autoflush=False
        )

    @app.after_server_stop
    async def stop(app: Sanic[Any, Any]) -> None:
        await app.ctx.write_engine.dispose()
        await app.ctx.read_engine.dispose()

    def read(request: Request) -> AsyncSession:
        session = getattr(request.ctx, "read", None)
        if session is None:
            session = request.ctx.read = request.app.ctx.reader()
        return session

    def write(request: Request) -> AsyncSession:
        session = getattr(request.ctx, "write", None)
        if session is None:
            session = request.ctx.write = request.app.ctx.writer()
        return session

    @app.on_response
    async def finish(request: Request, response: HTTPResponse) -> None:
        writer: AsyncSession | None = getattr(request.ctx, "write", None)
        reader: AsyncSession | None = getattr(request.ctx, "read", None)
        if writer is not None:
            try:
                if response.status < 400:
                    await writer.commit()
                else:
                    await writer.rollback()
            finally:
                await writer.close()
        if reader is not None:
            await reader.close()

    @app.get("/noop")
    async def noop(request: Request) -> HTTPResponse:
        return noop_response()

    @app.get("/users/<user_id:int>")
    async def get_user(request: Request, user_id: int) -> HTTPResponse:
        user = await read(request).get(User, user_id)
        if user is None:
            return not_found()
        return json(user_from_orm(user))

    @app.get("/users")
    async def list_users(request: Request) -> HTTPResponse:
        result = await read(request).scalars(
            select(User).order_by(User.id).limit(page_limit(request))
        )
        return json({"users": [user_from_orm(user) for user in result]})

    @app.post("/users")
    async def create_user(request: Request) -> HTTPResponse:
        name, email = new_user_fields(request)
        user = User(name=name, email=email, visits=0)
        write(request).add(user)
        await write(request).flush()
        return json(user_from_orm(user), status=201)

    @app.post("/users/<user_id:int>/touch")
    async def touch_user(request: Request, user_id: int) -> HTTPResponse:
        user = await write(request).get(User, user_id)
        if user is None:
            return not_found()
        user.visits += 1
        return json(user_from_orm(user))

    return app
