"""Injected sessions with sanic-ext: a handler parameter annotated with ``ReadSession`` or
``WriteSession`` (or a database's own subclasses) receives the request's ``db.read`` or
``db.write``, and nothing changes without sanic-ext."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from typing import Any

import pytest
from sanic import Request, Sanic, Websocket
from sanic.response import HTTPResponse, json, text
from sqlalchemy import select

from sanic_sqlalchemy import ConfigurationError, Database, ReadSession, WriteSession
from sanic_sqlalchemy.errors import UnitStateError
from sanic_sqlalchemy.testing import checked_out, schema

from .conftest import count_users, make_app
from .models import Base, User
from .test_asgi import _request, under_uvicorn  # noqa: F401 - the fixture
from .test_cancellation import _poll
from .test_several_databases import second_url  # noqa: F401 - the fixture


class AnalyticsRead(ReadSession):
    """The read session of the analytics database."""


class AnalyticsWrite(WriteSession):
    """The write session of the analytics database."""


def ada(user_id: int = 1) -> User:
    return User(id=user_id, name="Ada", email=f"ada{user_id}@example.com")


@pytest.mark.sanic_ext
async def test_injected_sessions_are_the_units_own(db: Database, serve: Any) -> None:
    """A handler's ``ReadSession`` and ``WriteSession`` parameters are ``db.read`` and
    ``db.write`` of its request's unit, and what it adds through the injected write
    session is committed with the request."""
    app = make_app("inject", openapi=True)
    seen: list[bool] = []

    @app.post("/users")
    async def create(request: Request, read: ReadSession, write: WriteSession) -> HTTPResponse:
        seen.append(read is db.read and write is db.write)
        write.add(ada())
        await write.flush()
        found = (await read.execute(select(User.name))).scalars().all()
        return json(found, status=201)

    db.init_app(app)
    served = await serve(app)
    response = await served.client.post("/users")
    assert (response.status_code, response.json()) == (201, ["Ada"])
    assert seen == [True]
    assert await count_users(db) == 1


class Users:
    """A repository that sanic-ext builds per request from the injected read session."""

    def __init__(self, session: ReadSession) -> None:
        self.session = session

    async def names(self) -> list[str]:
        return list((await self.session.execute(select(User.name))).scalars())


def users_repository(session: ReadSession) -> Users:
    return Users(session)


@pytest.mark.sanic_ext
async def test_a_dependency_constructor_gets_the_read_session(db: Database, serve: Any) -> None:
    """A dependency whose constructor takes a ``ReadSession`` gets the request's
    ``db.read``, which then sees what the handler wrote through ``db.write``."""
    app = make_app("inject_repository", openapi=True)
    app.ext.add_dependency(Users, users_repository)
    seen: list[bool] = []

    @app.post("/users")
    async def create(request: Request, users: Users) -> HTTPResponse:
        seen.append(users.session is db.read)
        db.write.add(ada())
        return json(await users.names(), status=201)

    db.init_app(app)
    served = await serve(app)
    response = await served.client.post("/users")
    assert (response.status_code, response.json()) == (201, ["Ada"])
    assert seen == [True]
    assert await count_users(db) == 1


@pytest.mark.sanic_ext
async def test_an_injected_write_session_rolls_back_with_the_request(
    db: Database, serve: Any
) -> None:
    """What a handler adds through an injected ``WriteSession`` rolls back when the
    request answers 400 or above, or raises."""
    app = make_app("inject_rollback", openapi=True)

    @app.post("/refused")
    async def refused(request: Request, write: WriteSession) -> HTTPResponse:
        write.add(ada(1))
        await write.flush()
        return text("invalid", status=422)

    @app.post("/raises")
    async def raises(request: Request, write: WriteSession) -> HTTPResponse:
        write.add(ada(2))
        await write.flush()
        raise RuntimeError("the handler fails")

    db.init_app(app)
    served = await serve(app)
    assert (await served.client.post("/refused")).status_code == 422
    assert (await served.client.post("/raises")).status_code == 500
    assert await count_users(db) == 0


@pytest.mark.sanic_ext
async def test_unused_injected_sessions_take_no_connection(db: Database, serve: Any) -> None:
    """A handler that takes a ``ReadSession`` and a ``WriteSession`` but never queries
    holds no connection while it runs, and none is taken for it."""
    app = make_app("inject_lazy", openapi=True)
    during: list[int] = []

    @app.get("/idle")
    async def idle(request: Request, read: ReadSession, write: WriteSession) -> HTTPResponse:
        during.append(checked_out(db).total)
        return text("idle")

    db.init_app(app)
    served = await serve(app)
    engines = db.engines
    before = (engines.write.sync_engine.pool.checkedin(), engines.read.sync_engine.pool.checkedin())
    response = await served.client.get("/idle")
    assert (response.status_code, response.text) == (200, "idle")
    assert during == [0]
    # No connection was opened for it either: the pools hold what they held before.
    after = (engines.write.sync_engine.pool.checkedin(), engines.read.sync_engine.pool.checkedin())
    assert after == before


@pytest.mark.sanic_ext
async def test_an_injected_write_session_refuses_work_once_the_response_streams(
    db: Database, serve: Any
) -> None:
    """Once a streaming handler has started its response, adding through its injected
    ``WriteSession`` raises the error ``db.write`` raises then, while its injected
    ``ReadSession`` keeps reading; nothing it added is committed."""
    app = make_app("inject_streaming", openapi=True)

    @app.get("/stream")
    async def stream(request: Request, read: ReadSession, write: WriteSession) -> None:
        response = await request.respond(content_type="text/plain")
        try:
            write.add(ada())
        except UnitStateError as error:
            await response.send(f"held: {error}\n")
        try:
            db.write  # noqa: B018 - the property raises
        except UnitStateError as error:
            await response.send(f"db.write: {error}\n")
        count = len((await read.execute(select(User))).scalars().all())
        await response.send(f"read: {count}\n")
        await response.eof()

    db.init_app(app)
    served = await serve(app)
    response = await served.client.get("/stream")
    held, current, read = response.text.splitlines()[:3]
    assert held.startswith("held: db.write cannot be used: this unit has already committed")
    assert held.removeprefix("held: ") == current.removeprefix("db.write: ")
    assert read == "read: 0"
    assert await count_users(db) == 0


@pytest.mark.sanic_ext
async def test_a_hang_up_under_uvicorn_rolls_back_an_injected_write(
    db: Database,
    under_uvicorn: Any,  # noqa: F811 - the fixture
) -> None:
    """Under uvicorn, a POST whose handler takes a ``WriteSession`` (injected when the
    route is found, before Sanic reads the body) is watched once the handler starts: a
    client that hangs up while it waits gets it cancelled, and nothing commits."""
    app = make_app("inject_asgi", openapi=True)
    db.init_app(app)
    reached, cancelled, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @app.post("/work")
    async def work(request: Request, write: WriteSession) -> HTTPResponse:
        write.add(User(id=1, name=request.json["name"], email="ada@example.com"))
        await write.flush()
        reached.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return text("finished")

    served = await under_uvicorn(app)
    _, writer = await served.send(_request("POST", "/work", b'{"name": "Ada"}'))
    await asyncio.wait_for(reached.wait(), 5)
    await asyncio.sleep(0.2)  # the handler now waits
    writer.close()
    await writer.wait_closed()
    handler_cancelled = await _poll(cancelled.is_set, 2)
    release.set()  # without a cancellation the handler would now commit
    assert await _poll(lambda: checked_out(db).total == 0, 5)
    assert handler_cancelled, "the handler was not cancelled when its client hung up"
    assert await count_users(db) == 0


@pytest.mark.sanic_ext
async def test_a_handler_picks_a_database_by_its_session_classes(
    url: str,
    second_url: str,  # noqa: F811 - the fixture
    serve: Any,
) -> None:
    """With a second database whose session classes are its own, plain ``ReadSession``
    and ``WriteSession`` name the default database and ``AnalyticsRead`` and
    ``AnalyticsWrite`` the other; each commits its writes to its own database."""
    db = Database(url)
    analytics = Database(
        second_url,
        config_prefix="ANALYTICS_DATABASE_",
        read_session_class=AnalyticsRead,
        write_session_class=AnalyticsWrite,
    )
    app = make_app("inject_two", openapi=True)
    seen: list[bool] = []

    @app.post("/both")
    async def both(
        request: Request,
        write: WriteSession,
        read: ReadSession,
        stats: AnalyticsWrite,
        stats_read: AnalyticsRead,
    ) -> HTTPResponse:
        seen.append(
            write is db.write
            and read is db.read
            and stats is analytics.write
            and stats_read is analytics.read
            and type(stats_read) is AnalyticsRead
            and type(read) is ReadSession
        )
        write.add(ada(1))
        stats.add(ada(2))
        return text("ok", status=201)

    db.init_app(app)
    analytics.init_app(app)
    async with schema(db, Base.metadata), schema(analytics, Base.metadata):
        served = await serve(app)
        assert (await served.client.post("/both")).status_code == 201
        assert seen == [True]
        async with db:
            assert list((await db.read.execute(select(User.id))).scalars()) == [1]
        async with analytics:
            assert list((await analytics.read.execute(select(User.id))).scalars()) == [2]
    await db.dispose()
    await analytics.dispose()


async def start_error(app: Sanic[Any, Any]) -> BaseException:
    """What starting ``app``'s server (as the ``serve`` fixture does) raised."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        server = await app.create_server(sock=sock, return_asyncio_server=True, access_log=False)
        assert server is not None
        try:
            await server.startup()
            await server.before_start()
        except ConfigurationError as error:
            return error
        finally:
            server.serve_coro.close()  # never served
    pytest.fail("the server started")


def two_plain_databases(tmp_path: Any) -> tuple[Sanic[Any, Any], Database, Database]:
    app = make_app("inject_ambiguous", openapi=True)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'main.db'}")
    analytics = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'analytics.db'}", config_prefix="ANALYTICS_DATABASE_"
    )
    return app, db, analytics


@pytest.mark.sanic_ext
@pytest.mark.backends("sqlite")
async def test_a_plain_annotation_that_two_databases_give_fails_at_start(
    backend: str, tmp_path: Any
) -> None:
    """When two databases of an app both give plain ``ReadSession``, a handler that asks
    for one makes the server start fail with a ``ConfigurationError`` that says how to
    tell them apart."""
    app, db, analytics = two_plain_databases(tmp_path)

    @app.get("/report")
    async def report(request: Request, read: ReadSession) -> HTTPResponse:
        return text("never")

    db.init_app(app)
    analytics.init_app(app)
    message = str(await start_error(app))
    await db.dispose()
    await analytics.dispose()
    assert message == (
        f"The handler '{app.name}.report' (parameter read: ReadSession): 2 databases of "
        "this app give ReadSession (config_prefix='DATABASE_', "
        "config_prefix='ANALYTICS_DATABASE_'), so it does not say which one. Give every "
        "database but one session classes of its own, and annotate with the one you "
        "want:\n\n"
        "    class AnalyticsRead(ReadSession): ...\n"
        '    analytics = Database(config_prefix="ANALYTICS_DATABASE_", '
        "read_session_class=AnalyticsRead)\n"
    )


@pytest.mark.sanic_ext
@pytest.mark.backends("sqlite")
async def test_a_session_class_no_database_gives_fails_at_start(
    backend: str, tmp_path: Any
) -> None:
    """A handler asking for a session class that no database of the app gives makes the
    server start fail with a ``ConfigurationError`` naming the classes they give."""
    app = make_app("inject_unknown", openapi=True)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'main.db'}")

    @app.get("/report")
    async def report(request: Request, read: AnalyticsRead) -> HTTPResponse:
        return text("never")

    db.init_app(app)
    message = str(await start_error(app))
    await db.dispose()
    assert message == (
        f"The handler '{app.name}.report' (parameter read: AnalyticsRead): no database "
        "of this app gives AnalyticsRead (they give ReadSession). Annotate with the "
        "class of the database you want, or pass read_session_class=AnalyticsRead to "
        "the Database(...) it belongs to."
    )


@pytest.mark.sanic_ext
@pytest.mark.backends("sqlite")
async def test_a_websocket_handler_asking_for_a_session_fails_at_start(
    backend: str, tmp_path: Any
) -> None:
    """A websocket handler gets no request unit, so one that asks for a ``ReadSession``
    makes the server start fail with a ``ConfigurationError`` saying to open a unit."""
    app = make_app("inject_websocket", openapi=True)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'main.db'}")

    @app.websocket("/feed")
    async def feed(request: Request, ws: Websocket, read: ReadSession) -> None:
        await ws.send("never")

    db.init_app(app)
    message = str(await start_error(app))
    await db.dispose()
    assert message.startswith(
        f"The handler '{app.name}.feed' (parameter read: ReadSession) is a websocket "
        "handler, which gets no request unit of work"
    )
    assert "async with db:" in message


@pytest.mark.backends("sqlite")
async def test_two_plain_databases_serve_handlers_that_ask_for_no_session(
    backend: str, tmp_path: Any, serve: Any
) -> None:
    """Two databases with the same session classes serve an app whose handlers take no
    session parameter, with sanic-ext or without it: only a handler that asks for an
    ambiguous class is refused."""
    app, db, analytics = two_plain_databases(tmp_path)

    @app.get("/both")
    async def both(request: Request) -> HTTPResponse:
        await db.read.execute(select(1))
        await analytics.read.execute(select(1))
        return text("ok")

    db.init_app(app)
    analytics.init_app(app)
    served = await serve(app)
    response = await served.client.get("/both")
    assert (response.status_code, response.text) == (200, "ok")
    await db.dispose()
    await analytics.dispose()


def test_session_classes_must_be_subclasses() -> None:
    """A ``read_session_class`` that is not a ``ReadSession`` subclass (a write one, say)
    is a ``ConfigurationError`` naming the argument."""
    with pytest.raises(ConfigurationError) as raised:
        Database(read_session_class=AnalyticsWrite)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "read_session_class= (argument): expected ReadSession or a subclass of it (class "
        f"AnalyticsRead(ReadSession): ...), got {AnalyticsWrite!r}."
    )


def test_the_library_does_not_import_sanic_ext() -> None:
    """Importing the library and ``init_app`` import nothing of sanic-ext (Sanic alone
    loads it, when the server starts and it is installed)."""
    code = (
        "import sys\n"
        "from sanic import Sanic\n"
        "from sanic_sqlalchemy import Database\n"
        "Database('sqlite+aiosqlite://').init_app(Sanic('no_ext'))\n"
        "assert 'sanic_ext' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.sanic_ext
@pytest.mark.backends("sqlite")
async def test_a_retried_handler_asking_for_a_session_fails_at_start(
    backend: str, tmp_path: Any
) -> None:
    """``@db.retry`` runs each attempt in a unit of its own; a session injected once from
    the request's unit would not follow them, so asking for one is refused at start."""
    app = make_app("inject_retry", openapi=True)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'main.db'}")

    @app.post("/withdraw")
    @db.retry
    async def withdraw(request: Request, write: WriteSession) -> HTTPResponse:
        return text("never")

    db.init_app(app)
    message = str(await start_error(app))
    await db.dispose()
    assert message.startswith(
        f"The handler '{app.name}.withdraw' (parameter write: WriteSession) is decorated "
        "with @db.retry"
    )
    assert "use db.read and db.write" in message
