"""Each Sanic request is a unit of work: commit before the response, roll back on errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sanic import Request, Sanic
from sanic.application.constants import Mode
from sanic.exceptions import NotFound, SanicException
from sanic.response import HTTPResponse, json, redirect, text
from sqlalchemy import ForeignKey, Integer, String, select
from sqlalchemy import text as sql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import Database, NoActiveUnitError
from sanic_sqlalchemy.errors import UnitStateError
from sanic_sqlalchemy.testing import (
    CheckoutCounter,
    CommitRecorder,
    checked_out,
    schema,
    wait_until_idle,
)

from .conftest import count_users, make_app
from .models import Base, User


def shop(db: Database, recorder: CommitRecorder) -> Sanic[Any, Any]:
    """An app whose handlers cover every way a request can end."""
    app = make_app("shop")

    @app.get("/noop")
    async def noop(_request: Request) -> HTTPResponse:
        return text("ok")

    @app.post("/users/<user_id:int>")
    async def create(request: Request, user_id: int) -> HTTPResponse:
        db.write.add(User(id=user_id, name="Ada", email=f"{user_id}@example.com"))
        await db.write.flush()
        db.on_commit(recorder, user_id)
        status = int(request.args.get("status", 201))
        return json({"id": user_id}, status=status)

    @app.post("/fail/<user_id:int>")
    async def fail(_request: Request, user_id: int) -> HTTPResponse:
        db.write.add(User(id=user_id, name="Ada", email=f"{user_id}@example.com"))
        await db.write.flush()
        db.on_commit(recorder, user_id)
        raise RuntimeError("the handler failed after writing")

    @app.post("/notfound/<user_id:int>")
    async def not_found(_request: Request, user_id: int) -> HTTPResponse:
        db.write.add(User(id=user_id, name="Ada", email=f"{user_id}@example.com"))
        raise NotFound("nothing here")

    @app.post("/redirect/<user_id:int>")
    async def redirected(_request: Request, user_id: int) -> HTTPResponse:
        db.write.add(User(id=user_id, name="Ada", email=f"{user_id}@example.com"))
        db.on_commit(recorder, user_id)
        return redirect("/noop")

    @app.post("/raise-redirect/<user_id:int>")
    async def raise_redirect(_request: Request, user_id: int) -> HTTPResponse:
        db.write.add(User(id=user_id, name="Ada", email=f"{user_id}@example.com"))
        db.on_commit(recorder, user_id)
        raise SanicException("see other", status_code=303, headers={"Location": "/noop"})

    @app.post("/sync/<user_id:int>")
    def create_in_sync_handler(request: Request, user_id: int) -> HTTPResponse:
        db.write.add(User(id=user_id, name="Ada", email=f"{user_id}@example.com"))
        db.on_commit(recorder, user_id)
        if request.args.get("raise"):
            raise RuntimeError("the sync handler failed after writing")
        return json({"id": user_id}, status=int(request.args.get("status", 201)))

    @app.get("/users")
    async def users(_request: Request) -> HTTPResponse:
        rows = (await db.read.execute(select(User).order_by(User.id))).scalars().all()
        return json([row.id for row in rows])

    db.init_app(app)
    return app


@pytest.fixture
async def recorder() -> CommitRecorder:
    return CommitRecorder()


async def test_success_commits_before_response(
    db: Database, serve: Any, recorder: CommitRecorder
) -> None:
    """A 2xx response commits and runs the callbacks before the client gets it."""
    served = await serve(shop(db, recorder))
    response = await served.client.post("/users/1")
    assert response.status_code == 201
    assert recorder.args == [(1,)]
    assert await count_users(db) == 1


@pytest.mark.parametrize("status", [400, 422, 500])
async def test_error_status_rolls_back(
    db: Database, serve: Any, recorder: CommitRecorder, status: int
) -> None:
    """A response of status 400 or more rolls back and drops the callbacks."""
    served = await serve(shop(db, recorder))
    response = await served.client.post(f"/users/1?status={status}")
    assert response.status_code == status
    assert recorder.calls == []
    assert await count_users(db) == 0


async def test_unhandled_exception_rolls_back(
    db: Database, serve: Any, recorder: CommitRecorder
) -> None:
    """An unhandled exception gives a 500, rolls back and runs no callback."""
    served = await serve(shop(db, recorder))
    response = await served.client.post("/fail/1")
    assert response.status_code == 500
    assert "the handler failed" not in response.text
    assert recorder.calls == []
    assert await count_users(db) == 0


async def test_sanic_exception_rolls_back(
    db: Database, serve: Any, recorder: CommitRecorder
) -> None:
    """A raised ``NotFound`` answers 404 and rolls back."""
    served = await serve(shop(db, recorder))
    assert (await served.client.post("/notfound/1")).status_code == 404
    assert await count_users(db) == 0


async def test_sync_handlers_are_units_too(
    db: Database, serve: Any, recorder: CommitRecorder
) -> None:
    """A plain ``def`` handler's writes commit on success and roll back on an error status
    or an exception, like an ``async def`` handler's."""
    served = await serve(shop(db, recorder))
    assert (await served.client.post("/sync/1")).status_code == 201
    assert (await served.client.post("/sync/2?status=422")).status_code == 422
    assert (await served.client.post("/sync/3?raise=1")).status_code == 500
    assert recorder.args == [(1,)]
    assert await count_users(db) == 1
    assert (await wait_until_idle(db)).total == 0


async def test_redirects_commit(db: Database, serve: Any, recorder: CommitRecorder) -> None:
    """A returned redirect and a raised 3xx exception both commit and run their callbacks."""
    served = await serve(shop(db, recorder))
    assert (await served.client.post("/redirect/1")).status_code == 302
    assert (await served.client.post("/raise-redirect/2")).status_code == 303
    assert await count_users(db) == 2
    assert recorder.args == [(1,), (2,)]


async def test_request_without_database_takes_no_connection(
    db: Database, serve: Any, recorder: CommitRecorder
) -> None:
    """A request that never touches the database takes no pooled connection."""
    served = await serve(shop(db, recorder))
    counter = CheckoutCounter(db)
    try:
        for _ in range(5):
            assert (await served.client.get("/noop")).status_code == 200
        assert counter.count == 0
        assert (await served.client.get("/users")).status_code == 200
        assert counter.count == 1
    finally:
        counter.detach()
    assert checked_out(db).total == 0


async def test_request_middleware_shares_the_unit(db: Database, serve: Any) -> None:
    """Request middleware runs inside the request's unit: its writes commit with it."""
    app = make_app("middleware")

    @app.on_request
    async def audit(request: Request) -> None:
        db.write.add(User(id=99, name="audit", email="audit@example.com"))

    @app.get("/")
    async def index(_request: Request) -> HTTPResponse:
        await db.write.flush()
        count = len((await db.read.execute(select(User))).scalars().all())
        return json({"seen": count})

    db.init_app(app)
    served = await serve(app)
    response = await served.client.get("/")
    assert response.json() == {"seen": 1}
    assert await count_users(db) == 1


async def test_response_middleware_writes_commit(db: Database, serve: Any) -> None:
    """Response middleware still belongs to the unit: its writes commit too."""
    app = make_app("response_middleware")

    @app.on_response
    async def stamp(request: Request, response: HTTPResponse) -> None:
        db.write.add(User(id=7, name="stamp", email="stamp@example.com"))

    @app.get("/")
    async def index(_request: Request) -> HTTPResponse:
        return text("ok")

    db.init_app(app)
    served = await serve(app)
    assert (await served.client.get("/")).status_code == 200
    assert await count_users(db) == 1


async def test_response_middleware_changing_status_decides(db: Database, serve: Any) -> None:
    """The final status decides: middleware that turns a 200 into a 409 rolls back."""
    app = make_app("veto")

    @app.on_response
    async def veto(request: Request, response: HTTPResponse) -> HTTPResponse:
        return text("conflict", status=409)

    @app.post("/")
    async def index(_request: Request) -> HTTPResponse:
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))
        return text("ok")

    db.init_app(app)
    served = await serve(app)
    assert (await served.client.post("/")).status_code == 409
    assert await count_users(db) == 0


class DeferredBase(DeclarativeBase):
    pass


class Parent(DeferredBase):
    __tablename__ = "deferred_parents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class Child(DeferredBase):
    __tablename__ = "deferred_children"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(
        ForeignKey("deferred_parents.id", deferrable=True, initially="DEFERRED")
    )
    name: Mapped[str] = mapped_column(String(20))


@pytest.mark.backends("sqlite", "postgresql")
async def test_failing_commit_answers_500(
    db: Database, serve: Any, recorder: CommitRecorder
) -> None:
    """A commit refused by the database answers 500, never 2xx, and runs no callback."""
    app = make_app("deferred")

    @app.post("/")
    async def index(_request: Request) -> HTTPResponse:
        db.write.add(Child(id=1, parent_id=12345, name="orphan"))
        await db.write.flush()  # accepted: the foreign key is only checked at COMMIT
        db.on_commit(recorder, "orphan")
        return json({"created": 1}, status=201)

    db.init_app(app)
    async with schema(db, DeferredBase.metadata):
        served = await serve(app)
        response = await served.client.post("/")
        assert response.status_code == 500
        assert "deferred_children" not in response.text
        assert recorder.calls == []
        async with db:
            assert (await db.read.execute(select(Child))).scalars().all() == []
        assert checked_out(db).total == 0


@pytest.mark.backends("sqlite", "postgresql")
async def test_a_failing_commit_rolls_back_the_other_databases_unit(
    db: Database, serve: Any, tmp_path: Any
) -> None:
    """With two databases in one request, a commit refused by the first rolls back the
    second database's unit instead of committing half the request."""
    other = Database(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    app = make_app("two_databases")

    @app.post("/")
    async def index(_request: Request) -> HTTPResponse:
        db.write.add(Child(id=1, parent_id=12345, name="orphan"))  # refused at COMMIT
        other.write.add(User(id=1, name="Ada", email="ada@example.com"))
        return json({"created": 2}, status=201)

    db.init_app(app)
    other.init_app(app)
    async with schema(db, DeferredBase.metadata), schema(other, Base.metadata):
        served = await serve(app)
        assert (await served.client.post("/")).status_code == 500
        async with other:
            assert (await other.read.execute(select(User))).scalars().all() == []
        assert checked_out(other).total == 0


@pytest.mark.backends("postgresql")
async def test_database_error_details_only_in_debug(db: Database, serve: Any) -> None:
    """A database error's text reaches the client only when the app runs in debug mode."""
    app = make_app("details")

    @app.get("/")
    async def index(_request: Request) -> HTTPResponse:
        await db.read.execute(sql("SELECT * FROM no_such_table_xyz"))
        return text("unreachable")

    db.init_app(app)
    served = await serve(app)
    response = await served.client.get("/")
    assert response.status_code == 500
    assert "no_such_table_xyz" not in response.text
    app.state.mode = Mode.DEBUG
    response = await served.client.get("/")
    assert response.status_code == 500
    assert "no_such_table_xyz" in response.text


async def test_streaming_commits_before_headers(
    db: Database, serve: Any, recorder: CommitRecorder
) -> None:
    """A streaming response commits before its first byte; reads work while it streams."""
    app = make_app("stream")
    seen: dict[str, Any] = {}

    @app.post("/stream")
    async def stream(request: Request) -> None:
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))
        db.on_commit(recorder, "streamed")
        response = await request.respond(content_type="text/plain")
        # Committed before the headers: another unit already sees the row.
        seen["other_unit"] = await asyncio.create_task(count_users(db))
        seen["callbacks"] = list(recorder.args)
        await response.send("rows:")
        rows = (await db.read.execute(select(User))).scalars().all()
        await response.send(str(len(rows)))
        try:
            _ = db.write
        except UnitStateError as error:
            seen["write_error"] = str(error)
        await response.eof()

    db.init_app(app)
    served = await serve(app)
    response = await served.client.post("/stream")
    assert response.status_code == 200
    assert response.text == "rows:1"
    assert seen["other_unit"] == 1
    assert seen["callbacks"] == [("streamed",)]
    assert "already committed" in seen["write_error"]
    assert (await wait_until_idle(db)).total == 0


@pytest.mark.backends("sqlite", "postgresql")
async def test_streaming_failing_commit_sends_500(db: Database, serve: Any) -> None:
    """A streaming response whose commit fails answers 500 instead of streaming a 200."""
    app = make_app("stream_fail")
    reached: list[str] = []

    @app.post("/stream")
    async def stream(request: Request) -> None:
        db.write.add(Child(id=1, parent_id=12345, name="orphan"))
        await db.write.flush()
        response = await request.respond(content_type="text/plain")
        reached.append("streaming")
        await response.send("should not be sent")
        await response.eof()

    db.init_app(app)
    async with schema(db, DeferredBase.metadata):
        served = await serve(app)
        response = await served.client.post("/stream")
        assert response.status_code == 500
        assert reached == []
    assert checked_out(db).total == 0


async def test_pool_exhaustion_answers_503(url: str, serve: Any) -> None:
    """Waiting longer than the pool timeout answers 503 with Retry-After, promptly."""
    db = Database(url, pool_size=1, max_overflow=0, pool_timeout=0.5)
    app = make_app("exhausted")
    release = asyncio.Event()

    @app.get("/hold")
    async def hold(_request: Request) -> HTTPResponse:
        await db.read.connection()  # held until the unit ends
        await release.wait()
        return text("held")

    @app.get("/read")
    async def read(_request: Request) -> HTTPResponse:
        await db.read.execute(select(User))
        return text("read")

    db.init_app(app)
    async with schema(db, Base.metadata):
        served = await serve(app)
        holding = asyncio.create_task(served.client.get("/hold"))
        for _ in range(100):
            if checked_out(db).read == 1:
                break
            await asyncio.sleep(0.02)
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await served.client.get("/read")
        elapsed = loop.time() - started
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert 0.4 < elapsed < 2.0
        release.set()
        assert (await holding).status_code == 200
        assert (await served.client.get("/read")).status_code == 200
        assert checked_out(db).total == 0
    await db.dispose()


def sanic_testing_app(db: Database, recorder: CommitRecorder) -> Sanic[Any, Any]:
    """An app for sanic-testing's clients: it creates its tables when it starts."""
    app = make_app("testing_client")

    @app.before_server_start
    async def create(_app: Sanic[Any, Any]) -> None:
        async with db.engines.write.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)

    @app.post("/")
    async def create_user(_request: Request) -> HTTPResponse:
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))
        db.on_commit(recorder, "done")
        return text("created", status=201)

    @app.get("/")
    async def read_users(_request: Request) -> HTTPResponse:
        rows = (await db.read.execute(select(User))).scalars().all()
        return json([row.name for row in rows])

    db.init_app(app)
    return app


def drop_tables(url: str) -> None:
    async def drop() -> None:
        db = Database(url)
        async with schema(db, Base.metadata):
            pass
        await db.dispose()

    asyncio.run(drop())


def test_sanic_test_client(url: str) -> None:
    """The unit of work works through sanic-testing's HTTP test client (a server per call)."""
    drop_tables(url)
    db = Database(url)
    recorder = CommitRecorder()
    app = sanic_testing_app(db, recorder)
    try:
        _, response = app.test_client.post("/")
        assert response.status == 201
        assert recorder.args == [("done",)]
        _, response = app.test_client.get("/")
        assert response.json == ["Ada"]
    finally:
        drop_tables(url)


async def test_sanic_asgi_client(url: str) -> None:
    """The unit of work works through sanic-testing's ASGI client too."""
    db = Database(url)
    async with schema(db, Base.metadata):
        recorder = CommitRecorder()
        app = sanic_testing_app(db, recorder)
        _, response = await app.asgi_client.post("/")
        assert response.status == 201
        _, response = await app.asgi_client.get("/")
        assert response.json == ["Ada"]
        assert recorder.args == [("done",)]
    await db.dispose()


async def test_engines_are_created_per_server_start(db: Database, serve: Any) -> None:
    """``init_app`` creates the engines when the server starts and disposes them at stop."""
    app = make_app("lifecycle")

    @app.get("/")
    async def index(_request: Request) -> HTTPResponse:
        return text("ok")

    db.init_app(app)
    before = db.engines
    server = await app.create_server(
        host="127.0.0.1", port=0, return_asyncio_server=True, access_log=False
    )
    assert server is not None
    await server.startup()
    await server.before_start()
    started = db._engines
    assert started is not None and started is not before
    await server.before_stop()
    server.close()
    await server.wait_closed()
    await server.after_stop()
    assert db._engines is None  # disposed when the server stopped


async def test_websocket_handlers_open_their_own_units(db: Database, serve: Any) -> None:
    """A websocket gets no request-long unit; ``async with db`` inside it commits per message."""
    from websockets.asyncio.client import connect

    app = make_app("websocket")

    @app.websocket("/ws")
    async def feed(_request: Request, ws: Any) -> None:
        try:
            _ = db.read
        except NoActiveUnitError:
            await ws.send("no unit")
        async for message in ws:
            async with db:
                db.write.add(User(id=int(message), name="ws", email=f"{message}@example.com"))
            await ws.send(f"saved {message}")

    db.init_app(app)
    served = await serve(app)
    async with connect(served.url.replace("http", "ws") + "/ws") as ws:
        assert await ws.recv() == "no unit"
        await ws.send("1")
        assert await ws.recv() == "saved 1"
        assert await count_users(db) == 1


async def test_request_middleware_of_a_websocket_says_why_it_has_no_unit(
    db: Database, serve: Any
) -> None:
    """Request middleware runs for websocket upgrades too, which get no request unit: its
    ``NoActiveUnitError`` says so and how to open one, and ``async with db:`` there works."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    app = make_app("websocket_middleware")
    errors: list[str] = []

    @app.on_request
    async def load_user(request: Request) -> None:
        if request.path == "/wrapped":
            async with db:
                request.ctx.users = await count_users_in_unit(db)
            return
        try:
            await db.read.execute(select(User.id))
        except NoActiveUnitError as error:
            errors.append(str(error))
            raise

    @app.websocket("/ws")
    async def feed(_request: Request, ws: Any) -> None:
        await ws.send("open")

    @app.websocket("/wrapped")
    async def wrapped(request: Request, ws: Any) -> None:
        await ws.send(f"users {request.ctx.users}")

    db.init_app(app)
    served = await serve(app)
    with pytest.raises(InvalidStatus) as raised:
        async with connect(served.url.replace("http", "ws") + "/ws"):
            pass
    assert raised.value.response.status_code == 500
    [message] = errors
    assert message.startswith(
        "db.read was used in a websocket request (its request middleware or its handler), "
        "which gets no request unit of work"
    ), message
    assert "async with db:" in message
    async with connect(served.url.replace("http", "ws") + "/wrapped") as ws:
        assert await ws.recv() == "users 0"


async def count_users_in_unit(db: Database) -> int:
    return len((await db.read.execute(select(User.id))).all())
