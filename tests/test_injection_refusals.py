"""Handlers that ask for a session nothing would give are refused at server start, with
a ``ConfigurationError`` that says what to do, instead of answering 500 on every request:
a ``ReadSession``/``WriteSession`` parameter without sanic-ext's injection (issue 17,
item 15), and a parameter annotated with SQLAlchemy's own ``AsyncSession`` (item 20)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from sanic import Request
from sanic.response import HTTPResponse, text
from sqlalchemy.ext.asyncio import AsyncSession

from sanic_sqlalchemy import Database, ReadSession, WriteSession

from .conftest import _sanic_ext_importable, make_app
from .test_injection import start_error


@pytest.mark.backends("sqlite")
async def test_an_injected_session_without_sanic_ext_fails_at_start(
    backend: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without sanic-ext (absent in one pass, hidden from the import in the other), a
    handler asking for a ``ReadSession`` does not start: the error says sanic-ext is
    needed and that it is not installed."""
    monkeypatch.setitem(sys.modules, "sanic_ext", None)
    app = make_app("no_ext", openapi=True)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'main.db'}")

    @app.get("/users")
    async def users(request: Request, read: ReadSession) -> HTTPResponse:
        return text("never")

    db.init_app(app)
    message = str(await start_error(app))
    await db.dispose()
    assert message.startswith(
        f"The handler '{app.name}.users' (parameter read: ReadSession) asks for an injected "
        "session, which needs sanic-ext, and sanic-ext is not installed: pip install sanic-ext"
    ), message
    assert "db.read / db.write" in message


@pytest.mark.sanic_ext
@pytest.mark.backends("sqlite")
async def test_an_injected_session_without_pydantic_names_the_missing_module(
    backend: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sanic-ext installed without pydantic is skipped by Sanic without a word: the
    refusal says that it cannot be imported, and what is missing."""
    for name in [name for name in sys.modules if name.split(".")[0] == "sanic_ext"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pydantic", None)
    app = make_app("no_pydantic", openapi=True)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'main.db'}")

    @app.get("/users")
    async def users(request: Request, write: WriteSession) -> HTTPResponse:
        return text("never")

    db.init_app(app)
    message = str(await start_error(app))
    await db.dispose()
    assert "sanic-ext is installed but cannot be imported" in message, message
    assert "install 'pydantic'" in message


@pytest.mark.backends("sqlite")
async def test_an_injected_session_with_auto_extend_off_fails_at_start(
    backend: str, tmp_path: Any
) -> None:
    """``AUTO_EXTEND=False`` keeps sanic-ext out, installed or not: a handler asking for
    a ``WriteSession`` with a default (which would silently get ``None``) is refused."""
    app = make_app("auto_extend_off", openapi=True)
    app.config.AUTO_EXTEND = False
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'main.db'}")

    @app.post("/users")
    async def create(request: Request, write: WriteSession | None = None) -> HTTPResponse:
        return text("never")

    # The annotation is a union: a class annotation is what sanic-ext injects.
    @app.post("/orders")
    async def order(request: Request, write: WriteSession = None) -> HTTPResponse:  # type: ignore[assignment]
        return text("never")

    db.init_app(app)
    message = str(await start_error(app))
    await db.dispose()
    assert message.startswith(
        f"The handler '{app.name}.order' (parameter write: WriteSession) asks for an "
        "injected session, which needs sanic-ext, and sanic-ext is not loaded because the "
        "app's AUTO_EXTEND setting is False"
    ), message


@pytest.mark.backends("sqlite")
async def test_a_handler_asking_for_sqlalchemys_async_session_fails_at_start(
    backend: str, tmp_path: Any
) -> None:
    """A handler still annotated with SQLAlchemy's ``AsyncSession`` (how apps injected
    sessions with sanic-ext themselves) is refused at start, naming the handler and the
    parameter and saying to annotate with ``WriteSession`` or ``ReadSession``, with
    sanic-ext or without it."""
    app = make_app("plain_async_session", openapi=True)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'main.db'}")

    @app.get("/users")
    async def users(request: Request, session: AsyncSession) -> HTTPResponse:
        return text("never")

    db.init_app(app)
    message = str(await start_error(app))
    await db.dispose()
    assert message.startswith(
        f"The handler '{app.name}.users' (parameter session: AsyncSession) asks for a "
        "SQLAlchemy AsyncSession, which nothing gives"
    ), message
    assert "Annotate it with WriteSession (the request's db.write) or ReadSession" in message
    if not _sanic_ext_importable():
        assert "Injecting a session needs sanic-ext, which is not installed" in message


@pytest.mark.sanic_ext
async def test_an_async_session_the_app_registers_itself_is_left_alone(
    db: Database, serve: Any
) -> None:
    """An app that registers its own ``AsyncSession`` dependency with sanic-ext keeps it:
    only a session nothing gives is refused."""
    app = make_app("own_async_session", openapi=True)
    given: list[object] = []

    def own_session() -> object:
        session = object()
        given.append(session)
        return session

    app.ext.add_dependency(AsyncSession, own_session)

    @app.get("/users")
    async def users(request: Request, session: AsyncSession) -> HTTPResponse:
        return text(str(session is given[-1]))

    db.init_app(app)
    served = await serve(app)
    response = await served.client.get("/users")
    assert (response.status_code, response.text) == (200, "True")
