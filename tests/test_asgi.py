"""Sanic as an ASGI application under uvicorn, and ``request.respond()`` followed by an error.

Under an ASGI server a client that hangs up is only reported by the ``http.disconnect``
message: the request's unit must roll back as on Sanic's own server (whose twin is
``test_cancellation.test_client_hanging_up_during_a_slow_query``), without the watcher
taking any of the body's messages from Sanic. uvicorn runs in this test's event loop on
a free loopback port; the clients are plain sockets that close when they hang up.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sqlalchemy import func, select

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.testing import checked_out

from .conftest import count_users, free_port, make_app
from .models import User
from .test_cancellation import PROMPT, SLOW_SECONDS, ServerView, _poll, server, slow_statement

__all__ = ["server"]  # the fixture, imported for these tests

ADA = {"id": 1, "name": "Ada", "email": "ada@example.com"}


class Uvicorn:
    """A Sanic app served by uvicorn on loopback, in this test's event loop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def send(self, raw: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a connection and send ``raw`` on it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(raw)
        await writer.drain()
        return reader, writer


@pytest.fixture
async def under_uvicorn() -> AsyncIterator[Callable[[Sanic[Any, Any]], Any]]:
    """``await under_uvicorn(app)`` serves ``app`` with uvicorn; it stops at teardown."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: Sanic[Any, Any]) -> Uvicorn:
        port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="on",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=SLOW_SECONDS + 1,
        )
        served = uvicorn.Server(config)
        task = asyncio.get_running_loop().create_task(served.serve())
        running.append((served, task))
        assert await _poll(lambda: served.started or task.done(), 10), "uvicorn did not start"
        assert served.started, "uvicorn did not start"
        return Uvicorn(port)

    yield start
    for served, task in reversed(running):
        served.should_exit = True
        await task


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def _request(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


@pytest.mark.parametrize(
    ("method", "waits"), [("POST", "event"), ("POST", "query"), ("GET", "event")]
)
async def test_client_hanging_up_under_uvicorn_rolls_back(
    db: Database,
    backend: str,
    server: ServerView,
    under_uvicorn: Any,
    caplog: pytest.LogCaptureFixture,
    method: str,
    waits: str,
) -> None:
    """Under uvicorn, a client that hangs up while its handler waits after writing gets
    the handler cancelled: nothing commits, no callback runs, nothing stays open."""
    app = make_app("asgi_hangup")
    db.init_app(app)
    statement, params = slow_statement(backend)
    reached = asyncio.Event()
    cancelled = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    async def write_then_wait(request: Request) -> HTTPResponse:
        name = request.json["name"] if method == "POST" else ADA["name"]
        db.write.add(User(id=1, name=name, email=ADA["email"]))
        await db.write.flush()
        db.on_commit(ran.append, "on_commit")
        reached.set()
        try:
            if waits == "event":
                await release.wait()
            else:
                await db.write.execute(statement, params)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return json({"finished": True})

    # GET routes ignore the body (Sanic's default); POST routes read it first.
    (app.post if method == "POST" else app.get)("/work")(write_then_wait)
    served = await under_uvicorn(app)
    body = b'{"name": "Ada"}' if method == "POST" else b""
    reader, writer = await served.send(_request(method, "/work", body))
    await asyncio.wait_for(reached.wait(), 5)
    await asyncio.sleep(0.2)  # the handler now waits
    loop = asyncio.get_running_loop()
    hung_up = loop.time()
    writer.close()
    await writer.wait_closed()

    handler_cancelled = await _poll(cancelled.is_set, SLOW_SECONDS + 0.5)
    seconds = loop.time() - hung_up
    # Without a cancellation the handler would go on, commit and run its callback now.
    release.set()
    pool_returned = await _poll(lambda: checked_out(db).total == 0, PROMPT)
    still_open = await server.open_transactions()
    await _poll(lambda: checked_out(db).total == 0, SLOW_SECONDS + 2)
    gc.collect()

    assert handler_cancelled, "the handler was not cancelled when its client hung up"
    assert seconds < PROMPT, f"the handler was cancelled {seconds:.2f}s after the hang-up"
    assert await reader.read() == b"", "a response was sent to a client that had hung up"
    assert pool_returned, f"still checked out {PROMPT}s after the hang-up: {checked_out(db)}"
    assert still_open == [], f"still open on the server: {still_open}"
    assert ran == [], "an on-commit callback ran for a client that hung up"
    assert await count_users(db) == 0
    assert _errors(caplog) == []


async def test_requests_under_uvicorn_commit_and_keep_their_bodies(
    db: Database, under_uvicorn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Under uvicorn, requests that touch db read their bodies whole (or an empty one on a
    route that ignores it), commit, run their callbacks and answer, one after the other
    on one kept-alive connection."""
    app = make_app("asgi_ok")
    db.init_app(app)
    ran: list[int] = []

    @app.post("/users")
    async def create(request: Request) -> HTTPResponse:
        user = User(**request.json)
        db.write.add(user)
        db.on_commit(ran.append, user.id)
        return json({"created": user.id}, status=201)

    @app.get("/users")
    async def count(request: Request) -> HTTPResponse:
        users = (await db.read.execute(select(func.count()).select_from(User))).scalar_one()
        await request.receive_body()  # a GET route ignores its body; reading it still works
        return json({"users": users, "body": request.body.decode()})

    @app.get("/plain")
    async def plain(_request: Request) -> HTTPResponse:
        return json({"db": False})

    served = await under_uvicorn(app)
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        for number in (1, 2):
            user = {"id": number, "name": f"user {number}", "email": f"{number}@example.com"}
            created = await client.post("/users", json=user)
            assert created.status_code == 201
            assert created.json() == {"created": number}
            listed = await client.get("/users")
            assert listed.json() == {"users": number, "body": ""}
            assert (await client.get("/plain")).json() == {"db": False}
    assert ran == [1, 2]
    assert await count_users(db) == 2
    assert checked_out(db).total == 0
    assert _errors(caplog) == []


async def test_client_hanging_up_during_request_middleware_under_uvicorn(
    db: Database, server: ServerView, under_uvicorn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Under uvicorn, a hang-up while request middleware that wrote still runs is acted on
    when it returns: the handler does not run and nothing commits."""
    app = make_app("asgi_middleware")
    db.init_app(app)
    reached = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    @app.on_request
    async def write_first(_request: Request) -> None:
        db.write.add(User(**ADA))
        await db.write.flush()
        db.on_commit(ran.append, "on_commit")
        reached.set()
        await release.wait()

    @app.post("/work")
    async def work(_request: Request) -> HTTPResponse:
        ran.append("handler")
        return json({"finished": True})

    served = await under_uvicorn(app)
    reader, writer = await served.send(_request("POST", "/work", b"{}"))
    await asyncio.wait_for(reached.wait(), 5)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.3)  # uvicorn reports the hang-up meanwhile
    release.set()

    assert await _poll(lambda: checked_out(db).total == 0, PROMPT), checked_out(db)
    assert await server.open_transactions() == []
    assert await reader.read() == b""
    assert ran == [], "the handler or an on-commit callback ran for a client that hung up"
    assert await count_users(db) == 0
    assert _errors(caplog) == []


async def test_streamed_request_body_under_uvicorn_is_left_to_the_handler(
    db: Database, under_uvicorn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Under uvicorn, a streaming handler that touches db before it reads its body still
    receives every chunk of it (such a request is not watched), and commits."""
    app = make_app("asgi_stream")
    db.init_app(app)

    @app.post("/upload", stream=True)
    async def upload(request: Request) -> HTTPResponse:
        before = (await db.read.execute(select(func.count()).select_from(User))).scalar_one()
        body = b"".join([chunk async for chunk in request.stream]).decode()
        db.write.add(User(id=1, name=body, email=ADA["email"]))
        return json({"before": before, "body": body})

    served = await under_uvicorn(app)
    head = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\n"
    reader, writer = await served.send(head + b"first")
    await asyncio.sleep(0.2)  # the handler has read the first chunk and waits
    writer.write(b"-last")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(1000), 5)
    writer.close()
    await writer.wait_closed()

    assert response.startswith(b"HTTP/1.1 200"), response
    assert b'{"before":0,"body":"first-last"}' in response, response
    async with db:
        assert (await db.read.execute(select(User.name))).scalar_one() == "first-last"
    assert checked_out(db).total == 0
    assert _errors(caplog) == []


async def test_streaming_handler_that_reads_only_while_it_streams_under_uvicorn(
    db: Database, under_uvicorn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Under uvicorn, a handler whose first db use comes while its response streams runs
    to its end after sending it: the end of the response is not taken for a hang-up."""
    app = make_app("asgi_streaming")
    db.init_app(app)
    finished = asyncio.Event()

    @app.get("/export")
    async def export(request: Request) -> None:
        response = await request.respond(content_type="text/plain")
        users = (await db.read.execute(select(func.count()).select_from(User))).scalar_one()
        await response.send(f"users: {users}")
        await response.eof()
        await asyncio.sleep(0.3)  # work after the response, still in the handler
        finished.set()

    served = await under_uvicorn(app)
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        response = await client.get("/export")
    assert response.text == "users: 0"
    assert await _poll(finished.is_set, 2), "the handler was cancelled after its response"
    assert await _poll(lambda: checked_out(db).total == 0, PROMPT), checked_out(db)
    assert _errors(caplog) == []


# -- request.respond() and then an exception (issue 8, item 7) -------------------------


async def test_an_error_after_respond_answers_500_for_committed_data(
    db: Database, serve: Any
) -> None:
    """A handler that raises after ``await request.respond(...)`` (before sending
    anything) has committed at ``respond()``: its data stays, its callbacks ran, and the
    client gets a 500 (the documented trade-off)."""
    app = make_app("respond_then_fail")
    db.init_app(app)
    ran: list[str] = []

    @app.post("/users")
    async def create(request: Request) -> None:
        db.write.add(User(**ADA))
        db.on_commit(ran.append, "on_commit")
        await request.respond(json({"created": 1}, status=201))
        raise RuntimeError("failed after respond()")

    served = await serve(app)
    response = await served.client.post("/users")
    assert response.status_code == 500
    assert ran == ["on_commit"]
    assert await count_users(db) == 1
    assert checked_out(db).total == 0
