"""Handlers look unwrapped to whatever inspects them, sanic-ext's start-up routes run in
units, and a server start that fails leaves the Database usable by the next one."""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any

import pytest
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json, text
from sanic.views import HTTPMethodView
from sqlalchemy import select

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.testing import CommitRecorder

from .conftest import make_app
from .models import Base, User
from .test_sanic import drop_tables


class Users(HTTPMethodView):
    """A class-based view whose methods use the database."""

    db: Database

    async def get(self, request: Request) -> HTTPResponse:
        rows = (await self.db.read.execute(select(User).order_by(User.id))).scalars().all()
        return json([row.name for row in rows])

    async def post(self, request: Request) -> HTTPResponse:
        self.db.write.add(User(id=1, name="Ada", email="ada@example.com"))
        return text("created", status=201)


def ext_app(db: Database, recorder: CommitRecorder) -> Sanic[Any, Any]:
    """An app with a class-based view and a handler under postponed annotations."""
    app = make_app("ext", openapi=True)

    @app.before_server_start
    async def create(_app: Sanic[Any, Any]) -> None:
        async with db.engines.write.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)

    @app.get("/users/<user_id:int>")
    async def user(request: Request, user_id: int) -> HTTPResponse:
        found = await db.read.get(User, user_id)
        db.on_commit(recorder, user_id)
        return json({"name": found.name if found else None})

    view = type("BoundUsers", (Users,), {"db": db})
    app.add_route(view.as_view(), "/users")
    db.init_app(app)
    return app


@dataclass
class Greeting:
    """A dependency that sanic-ext injects into a handler."""

    text: str


def greeting_for(request: Request) -> Greeting:
    return Greeting(f"hello from {request.path}")


@pytest.mark.sanic_ext
def test_sanic_ext_app_serves_two_test_client_requests(url: str) -> None:
    """With sanic-ext loaded, one app starts once per sanic-testing request and serves its
    class-based view, its handlers under postponed annotations (one with a dependency
    sanic-ext injects) and sanic-ext's automatic HEAD and OPTIONS routes, each in a unit
    of work."""
    drop_tables(url)
    db = Database(url)
    recorder = CommitRecorder()
    app = ext_app(db, recorder)
    app.ext.add_dependency(Greeting, greeting_for)

    @app.get("/greet")
    async def greet_injected(request: Request, greeting: Greeting) -> HTTPResponse:
        count = len((await db.read.execute(select(User))).scalars().all())
        return text(f"{greeting.text} to {count}")

    try:
        for _ in range(2):
            _, response = app.test_client.get("/greet")
            assert (response.status, response.text) == (200, "hello from /greet to 0")
        _, response = app.test_client.post("/users")
        assert response.status == 201
        assert getattr(app, "_ext", None) is not None, "Sanic did not load sanic-ext"
        _, response = app.test_client.get("/users/1")
        assert response.status == 200
        assert response.json == {"name": "Ada"}
        _, response = app.test_client.get("/users")
        assert response.json == ["Ada"]
        # sanic-ext's automatic routes are functools.partial handlers added at start-up.
        _, response = app.test_client.head("/users/1")
        assert response.status == 200
        _, response = app.test_client.options("/users")
        assert response.status == 204
        assert recorder.args == [(1,), (1,)]  # the GET and the HEAD of /users/1
        # sanic-ext's OpenAPI document, made at start-up from the wrapped handlers.
        _, response = app.test_client.get("/docs/openapi.json")
        assert response.status == 200
        assert {"/users", "/users/{user_id}", "/greet"} <= set(response.json["paths"])
        handlers = {route.name: route.handler for route in app.router.routes}
        assert isinstance(handlers[f"{app.name}.user_head"], functools.partial)
        assert isinstance(handlers[f"{app.name}.BoundUsers_options"], functools.partial)
    finally:
        drop_tables(url)


async def greet(request: Request, greeting: str) -> HTTPResponse:
    """A handler registered as a ``functools.partial``."""
    await Users.db.read.execute(select(User))
    return text(greeting)


class Counter:
    """A handler that is a callable object."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def __call__(self, request: Request) -> HTTPResponse:
        return text(str(len((await self.db.read.execute(select(User))).scalars().all())))


class Resource:
    """A handler that is a bound method."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def show(self, request: Request) -> HTTPResponse:
        await self.db.read.execute(select(User))
        return text("shown")


def plain(request: Request) -> HTTPResponse:
    """A plain ``def`` handler."""
    return text("plain")


def hints(obj: Any) -> Any:
    try:
        return typing.get_type_hints(obj)
    except Exception as error:  # what a tool inspecting the handler would see
        return type(error)


async def test_wrapping_keeps_what_introspection_sees(db: Database, serve: Any) -> None:
    """Once the server has started, every route handler gives ``typing.get_type_hints`` and
    ``inspect.signature`` what the handler itself gives (functions under postponed
    annotations, plain functions, partials, bound methods, class-based views, callable
    objects), and each still answers in a unit of work."""
    app = make_app("introspection", openapi=True)
    Users.db = db

    @app.get("/async")
    async def postponed(request: Request) -> HTTPResponse:
        await db.read.execute(select(User))
        return text("async")

    app.add_route(plain, "/plain")
    app.add_route(functools.partial(greet, greeting="hello"), "/partial", name="partial")
    app.add_route(Resource(db).show, "/method")
    app.add_route(Counter(db), "/callable", name="callable")
    app.add_route(Users.as_view(), "/view")
    originals = {route.name: route.handler for route in app.router.routes}
    db.init_app(app)
    served = await serve(app)
    for route in app.router.routes:
        if route.name not in originals:
            continue  # added by sanic-ext at start-up, when it is installed
        handler, original = route.handler, originals[route.name]
        assert handler is not original, f"{route.name} was not wrapped"
        assert hints(handler) == hints(original), route.name
        assert inspect.signature(handler) == inspect.signature(original), route.name
        assert getattr(handler, "view_class", None) is getattr(original, "view_class", None)
    wrapped = {route.name: route.handler for route in app.router.routes}
    assert isinstance(wrapped[f"{app.name}.partial"], functools.partial)
    assert wrapped[f"{app.name}.partial"].func is greet
    for path, body in [
        ("/async", "async"),
        ("/plain", "plain"),
        ("/partial", "hello"),
        ("/method", "shown"),
        ("/callable", "0"),
        ("/view", "[]"),
    ]:
        response = await served.client.get(path)
        assert (response.status_code, response.text) == (200, body), path


def test_failed_start_leaves_the_database_usable(url: str) -> None:
    """A server start that fails after the engines were created and used disposes them at
    the next start, which then serves requests as usual."""
    drop_tables(url)
    db = Database(url)
    recorder = CommitRecorder()
    app = ext_app(db, recorder)
    starts: list[Any] = []

    @app.before_server_start
    async def fail_once(_app: Sanic[Any, Any]) -> None:
        starts.append(db._engines)
        if len(starts) == 1:
            async with db:
                await db.read.execute(select(User))  # a pooled connection in this loop
            raise RuntimeError("the first start fails")

    try:
        with pytest.raises(RuntimeError, match="the first start fails"):
            app.test_client.post("/users")
        abandoned = starts[0]
        assert abandoned is not None and abandoned.read.sync_engine.pool.checkedin() == 1
        _, response = app.test_client.post("/users")
        assert response.status == 201
        assert abandoned.read.sync_engine.pool.checkedin() == 0  # disposed, in its loop
        _, response = app.test_client.get("/users")
        assert response.json == ["Ada"]
    finally:
        drop_tables(url)
