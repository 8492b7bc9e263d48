"""A PostgreSQL restart in the middle of a load of HTTP requests.

A private server (``tests/pgserver.py``) serves a Sanic app whose requests insert rows
through ``db.write`` and read them back through ``db.read``.  Workers send a bounded
load; once some requests have succeeded the server is restarted.  Requests caught by
the outage must fail cleanly (5xx, quickly), requests sent once the server is back must
succeed, no row whose insert got a 2xx may be missing, and no connection may stay
checked out.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.testing import checked_out

from .conftest import make_app
from .models import Base, User
from .pgserver import PostgresServer, postgres_server_sync

pytestmark = pytest.mark.server

#: Concurrent clients.
WORKERS = 8
#: Successful requests before the restart begins.
BEFORE_RESTART = 150
#: Requests sent after the restart completed before the load stops.
AFTER_RESTART = 150
#: Hard bounds on the load, whatever happens.
MAX_REQUESTS = 1500
LOAD_DEADLINE = 20.0
#: No request may take longer than this (the pool timeout is well below it).
REQUEST_TIMEOUT = 10.0
#: Pause of each worker between two requests, to keep the load to a few hundred
#: requests per second (the outage answers in microseconds otherwise).
PACE = 0.01


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    """One private server for this module, stopped and deleted at the end."""
    with postgres_server_sync() as server:
        yield server


async def _server_started_at(url: str) -> Any:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            return await connection.scalar(text("SELECT pg_postmaster_start_time()"))
    finally:
        await engine.dispose()


@pytest.fixture
async def fresh_tables(pg_server: PostgresServer) -> AsyncIterator[PostgresServer]:
    """The private server with empty test tables."""
    engine = create_async_engine(pg_server.url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.drop_all)
            await connection.run_sync(Base.metadata.create_all)
    finally:
        await engine.dispose()
    yield pg_server


def _app(db: Database, url: str) -> Sanic[Any, Any]:
    app = make_app("pg_restart")
    db.init_app(app, url, pool_size=5, max_overflow=5, pool_timeout=3)

    @app.post("/users")
    async def create_user(request: Request) -> HTTPResponse:
        email = request.json["email"]
        user = User(name="Ada", email=email)
        db.write.add(user)
        await db.write.flush()
        # The unit reads its own write through db.read before it commits.
        found = (await db.read.execute(select(User.id).where(User.email == email))).scalar_one()
        assert found == user.id
        return json({"id": user.id}, status=201)

    @app.get("/users")
    async def find_user(request: Request) -> HTTPResponse:
        email = request.args.get("email")
        rows = (await db.read.execute(select(User.id).where(User.email == email))).all()
        return json({"found": len(rows) == 1})

    return app


@dataclass
class Outcome:
    """One request of the load and what became of it."""

    kind: str
    email: str
    started: float
    ended: float = 0.0
    status: int | None = None
    error: str | None = None
    found: bool | None = None


@dataclass
class Load:
    """Workers sending inserts and reads until the restart is well behind them."""

    client: httpx.AsyncClient
    outcomes: list[Outcome] = field(default_factory=list)
    succeeded: int = 0
    enough_before: asyncio.Event = field(default_factory=asyncio.Event)
    restart_began: float | None = None
    restart_ended: float | None = None
    deadline: float = field(default_factory=lambda: time.monotonic() + LOAD_DEADLINE)

    def sent_after_restart(self) -> int:
        ended = self.restart_ended
        return 0 if ended is None else sum(o.started > ended for o in self.outcomes)

    def finished(self) -> bool:
        return (
            len(self.outcomes) >= MAX_REQUESTS
            or time.monotonic() > self.deadline
            or self.sent_after_restart() >= AFTER_RESTART
        )

    async def _send(self, kind: str, email: str) -> Outcome:
        outcome = Outcome(kind, email, started=time.monotonic())
        self.outcomes.append(outcome)
        try:
            if kind == "insert":
                response = await self.client.post(
                    "/users", json={"email": email}, timeout=REQUEST_TIMEOUT
                )
            else:
                response = await self.client.get(
                    "/users", params={"email": email}, timeout=REQUEST_TIMEOUT
                )
            outcome.status = response.status_code
            if kind == "read" and response.status_code == 200:
                outcome.found = response.json()["found"]
        except httpx.HTTPError as error:
            outcome.error = repr(error)
        outcome.ended = time.monotonic()
        if outcome.status is not None and outcome.status < 300:
            self.succeeded += 1
            if self.succeeded >= BEFORE_RESTART:
                self.enough_before.set()
        return outcome

    async def worker(self, number: int) -> None:
        for sequence in itertools.count():
            if self.finished():
                return
            email = f"worker{number}-{sequence}@example.com"
            inserted = await self._send("insert", email)
            if inserted.status == 201 and not self.finished():
                # Another request must find the committed row.
                await self._send("read", email)
            await asyncio.sleep(PACE)

    async def restart(self, server: PostgresServer, mode: str) -> None:
        await asyncio.wait_for(self.enough_before.wait(), timeout=LOAD_DEADLINE)
        self.restart_began = time.monotonic()
        await server.restart_async(mode)
        self.restart_ended = time.monotonic()


async def _wait_for_checkins(db: Database) -> None:
    """Bounded wait for the last requests' units to return their connections."""
    deadline = time.monotonic() + 5
    while checked_out(db).total:
        assert time.monotonic() < deadline, f"connections still checked out: {checked_out(db)}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_restart_under_load_loses_no_committed_row(
    fresh_tables: PostgresServer, serve: Callable[[Sanic[Any, Any]], Any], mode: str
) -> None:
    """Through a restart under load, requests fail with 5xx or succeed, and no 2xx row is lost."""
    server = fresh_tables
    started_at = await _server_started_at(server.url)
    db = Database()
    served = await serve(_app(db, server.url))
    load = Load(served.client)

    restart = asyncio.create_task(load.restart(server, mode))
    await asyncio.gather(*(load.worker(number) for number in range(WORKERS)))
    await restart

    assert load.restart_began is not None and load.restart_ended is not None
    assert await _server_started_at(server.url) != started_at, "the server did not restart"
    outcomes = load.outcomes
    began, ended = load.restart_began, load.restart_ended
    assert len(outcomes) <= MAX_REQUESTS

    # Every request got an answer in time: a success or a server error, no hang.
    assert [o for o in outcomes if o.error is not None] == []
    assert all(o.ended - o.started < REQUEST_TIMEOUT for o in outcomes)
    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 201, 503}, statuses
    # The load did overlap the restart.
    assert any(o.started < ended and o.ended > began for o in outcomes)

    # Before the restart everything succeeded; once it is over, everything does again,
    # starting with the very first request.
    assert all(o.status in (200, 201) for o in outcomes if o.ended < began)
    after = sorted((o for o in outcomes if o.started > ended), key=lambda o: o.started)
    assert len(after) >= AFTER_RESTART, f"only {len(after)} requests after the restart"
    assert after[0].status in (200, 201), after[0]
    failed_after = [o for o in after if o.status not in (200, 201)]
    assert failed_after == [], failed_after[:5]

    # A committed insert is visible to the next request and survives the restart.
    committed = {o.email for o in outcomes if o.kind == "insert" and o.status == 201}
    assert [o for o in outcomes if o.kind == "read" and o.found is False] == []
    async with db:
        stored = set((await db.read.execute(select(User.email))).scalars())
    assert committed <= stored, f"committed rows lost: {sorted(committed - stored)[:5]}"
    # A row may exist for a 5xx (the commit got through, its answer did not), never
    # for an insert that was not attempted.
    attempted = {o.email for o in outcomes if o.kind == "insert"}
    assert stored <= attempted

    await _wait_for_checkins(db)
