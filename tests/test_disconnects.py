"""Connections killed by the server: the application never pays for them twice.

A second connection kills connections of the Database's pools (``pg_terminate_backend``
on PostgreSQL, ``KILL`` on MariaDB/MySQL) and waits until the server no longer lists
them.

* Killed while idle in the pool: the very next unit, or HTTP request, succeeds, both
  right away (inside ``LIVENESS_WINDOW``, where only the free closed-socket check runs)
  and after the connections sat idle longer than that (where a ping may run too).
* Killed while a unit uses it: the unit fails with SQLAlchemy's disconnect error (or
  with its own error, when it fails for another reason), returns its connections and
  commits nothing; the next unit succeeds.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json
from sqlalchemy import bindparam, event, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.engine import liveness
from sanic_sqlalchemy.testing import checked_out, schema

from .conftest import make_app
from .models import Base, User

pytestmark = pytest.mark.backends("postgresql", "mysql")

#: Units (or requests) that hold their connections at the same time, so that each
#: pool ends up with this many idle connections to kill.
CONCURRENT = 3
#: Bound on every wait for the server to drop the killed connections.
KILL_TIMEOUT = 10.0

_emails = itertools.count(1)


def _email() -> str:
    return f"user{next(_emails)}@example.com"


# -- the server side: which connection is this, kill it, is it gone ---------------


def _own_id_sql(backend: str) -> str:
    return "SELECT pg_backend_pid()" if backend == "postgresql" else "SELECT CONNECTION_ID()"


async def _kill(admin: AsyncConnection, backend: str, ids: Iterable[int]) -> None:
    for connection_id in ids:
        if backend == "postgresql":
            killed = await admin.scalar(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": connection_id}
            )
            assert killed, f"pg_terminate_backend({connection_id}) found no such backend"
        else:
            # KILL takes no bound parameter; the id is an int we read from the server.
            await admin.exec_driver_sql(f"KILL {int(connection_id)}")


async def _still_listed(admin: AsyncConnection, backend: str, ids: set[int]) -> set[int]:
    if backend == "postgresql":
        query = text("SELECT pid FROM pg_stat_activity WHERE pid IN :ids")
    else:
        query = text("SELECT ID FROM information_schema.processlist WHERE ID IN :ids")
    query = query.bindparams(bindparam("ids", expanding=True))
    rows = await admin.execute(query, {"ids": sorted(ids)})
    return {int(row[0]) for row in rows}


async def kill_and_wait(url: str, backend: str, ids: set[int]) -> None:
    """Kill the connections ``ids`` from a separate connection; wait until they are gone."""
    admin_engine: AsyncEngine = create_async_engine(
        url, poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        async with admin_engine.connect() as admin:
            assert await _still_listed(admin, backend, ids) == ids, "a pooled connection is gone"
            await _kill(admin, backend, ids)
            deadline = time.monotonic() + KILL_TIMEOUT
            while remaining := await _still_listed(admin, backend, ids):
                assert time.monotonic() < deadline, f"connections {remaining} were not killed"
                await asyncio.sleep(0.01)
    finally:
        await admin_engine.dispose()


class Rendezvous:
    """Holds ``count`` tasks until all of them arrived (a Barrier that Python 3.10 has)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.arrived = 0
        self.all_here = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.count:
            self.all_here.set()
        await asyncio.wait_for(self.all_here.wait(), timeout=10)


def _idle_pool_sizes(db: Database) -> tuple[int, int]:
    write_pool: Any = db.engines.write.sync_engine.pool
    read_pool: Any = db.engines.read.sync_engine.pool
    return int(write_pool.checkedin()), int(read_pool.checkedin())


async def let_connections_idle(last_use: float, idle: bool) -> None:
    """Wait out the liveness window (idle) or prove it has not passed yet (immediately)."""
    if idle:
        # The idleness is the condition under test: nothing else to poll for.
        await asyncio.sleep(max(0.0, last_use + liveness.LIVENESS_WINDOW + 0.2 - time.monotonic()))
        assert time.monotonic() - last_use > liveness.LIVENESS_WINDOW
    else:
        elapsed = time.monotonic() - last_use
        assert elapsed < liveness.LIVENESS_WINDOW, (
            f"killing the connections took {elapsed:.2f} s: the 'immediately' case "
            "must run inside the liveness window"
        )


TIMINGS = pytest.mark.parametrize("idle", [False, True], ids=["immediately", "after-idle"])


# -- units of work ---------------------------------------------------------------


@pytest.fixture
async def database(url: str) -> AsyncIterator[Database]:
    """A Database with the test tables whose pools may hold several connections."""
    database = Database(url, pool_size=CONCURRENT + 2, max_overflow=0, pool_timeout=5)
    try:
        async with schema(database, Base.metadata):
            yield database
    finally:
        await database.dispose()


async def _unit_ids(db: Database, backend: str, rendezvous: Rendezvous | None) -> tuple[int, int]:
    """In one unit: the read connection's id, a row inserted, the write connection's id."""
    async with db:
        read_id = int((await db.read.execute(text(_own_id_sql(backend)))).scalar_one())
        email = _email()
        db.write.add(User(name="Ada", email=email))
        write_id = int((await db.write.execute(text(_own_id_sql(backend)))).scalar_one())
        found = (await db.read.execute(select(User.email).where(User.email == email))).scalar_one()
        assert found == email
        if rendezvous is not None:
            await rendezvous.wait()
    return read_id, write_id


async def _fill_pools(db: Database, backend: str) -> tuple[set[int], set[int]]:
    """Run ``CONCURRENT`` units at once; return the ids of the pooled connections."""
    rendezvous = Rendezvous(CONCURRENT)
    results = await asyncio.gather(*(_unit_ids(db, backend, rendezvous) for _ in range(CONCURRENT)))
    read_ids = {read_id for read_id, _ in results}
    write_ids = {write_id for _, write_id in results}
    assert len(read_ids) == len(write_ids) == CONCURRENT
    assert checked_out(db).total == 0
    # Every idle pooled connection is one whose id we know: we kill them all.
    assert _idle_pool_sizes(db) == (len(write_ids), len(read_ids))
    return read_ids, write_ids


async def _count_users(db: Database) -> int:
    async with db:
        return len((await db.read.execute(select(User.id))).all())


@TIMINGS
async def test_next_unit_succeeds_after_idle_connections_are_killed(
    database: Database, backend: str, url: str, idle: bool
) -> None:
    """Once the server killed every idle pooled connection, the next units succeed."""
    db = database
    read_ids, write_ids = await _fill_pools(db, backend)
    last_use = time.monotonic()

    await kill_and_wait(url, backend, read_ids | write_ids)
    await let_connections_idle(last_use, idle)

    # The very next unit: one connection from each pool, both replaced.
    read_id, write_id = await _unit_ids(db, backend, None)
    assert read_id not in read_ids | write_ids
    assert write_id not in read_ids | write_ids
    # Then as many units at once as there were killed connections in each pool.
    await asyncio.gather(*(_unit_ids(db, backend, None) for _ in range(CONCURRENT)))

    assert await _count_users(db) == 2 * CONCURRENT + 1
    assert checked_out(db).total == 0


# -- HTTP requests through Sanic -----------------------------------------------------


def _pid_app(db: Database, url: str, backend: str) -> tuple[Sanic[Any, Any], Callable[[int], None]]:
    """An app whose ``POST /users`` reads, inserts and reports its connection ids."""
    app = make_app("disconnects")
    db.init_app(app, url, pool_size=CONCURRENT + 2, max_overflow=0, pool_timeout=5)
    rendezvous: list[Rendezvous] = []

    @app.post("/users")
    async def create_user(request: Request) -> HTTPResponse:
        read_id = int((await db.read.execute(text(_own_id_sql(backend)))).scalar_one())
        email = _email()
        db.write.add(User(name="Ada", email=email))
        write_id = int((await db.write.execute(text(_own_id_sql(backend)))).scalar_one())
        if rendezvous:
            await rendezvous[0].wait()
        return json({"read": read_id, "write": write_id, "email": email}, status=201)

    def hold_together(count: int) -> None:
        rendezvous[:] = [Rendezvous(count)] if count else []

    return app, hold_together


@TIMINGS
async def test_next_request_succeeds_after_idle_connections_are_killed(
    backend: str, url: str, idle: bool, serve: Callable[[Sanic[Any, Any]], Any]
) -> None:
    """Once the server killed every idle pooled connection, the next requests get 201."""
    db = Database()
    app, hold_together = _pid_app(db, url, backend)
    served = await serve(app)
    client = served.client
    async with schema(db, Base.metadata):
        hold_together(CONCURRENT)
        responses = await asyncio.gather(*(client.post("/users") for _ in range(CONCURRENT)))
        hold_together(0)
        assert [response.status_code for response in responses] == [201] * CONCURRENT
        read_ids = {response.json()["read"] for response in responses}
        write_ids = {response.json()["write"] for response in responses}
        assert len(read_ids) == len(write_ids) == CONCURRENT
        await _wait_for_checkins(db)
        last_use = time.monotonic()
        assert _idle_pool_sizes(db) == (len(write_ids), len(read_ids))

        await kill_and_wait(url, backend, read_ids | write_ids)
        await let_connections_idle(last_use, idle)

        first = await client.post("/users")
        assert first.status_code == 201, first.text
        assert first.json()["read"] not in read_ids | write_ids
        assert first.json()["write"] not in read_ids | write_ids
        more = await asyncio.gather(*(client.post("/users") for _ in range(CONCURRENT)))
        assert [response.status_code for response in more] == [201] * CONCURRENT

        emails = {response.json()["email"] for response in [*responses, first, *more]}
        async with db:
            stored = set((await db.read.execute(select(User.email))).scalars())
        assert stored == emails
        await _wait_for_checkins(db)


async def _wait_for_checkins(db: Database) -> None:
    """Wait (bounded) until the requests' units returned their connections to the pools.

    Sanic closes a request's unit right after sending the response, so the client can
    see the response a moment before the connection is back in the pool.
    """
    deadline = time.monotonic() + 5
    while checked_out(db).total:
        assert time.monotonic() < deadline, f"connections still checked out: {checked_out(db)}"
        await asyncio.sleep(0.01)


# -- a connection killed while a unit is using it ---------------------------------


async def test_read_connection_killed_between_reads_does_not_fail_the_unit(
    database: Database, backend: str, url: str
) -> None:
    """Each read takes a connection for its own duration, so a read-only unit whose
    connection is killed between two reads goes on, on a live connection."""
    db = database
    async with db:
        first = int((await db.read.execute(text(_own_id_sql(backend)))).scalar_one())
        await kill_and_wait(url, backend, {first})
        # The pool judges a connection by its socket: give the event loop a moment to
        # process the server's closing of it (README, "Connections that died").
        await asyncio.sleep(0.1)
        second = int((await db.read.execute(text(_own_id_sql(backend)))).scalar_one())
        assert second != first
        assert await db.read.scalar(text("SELECT 1")) == 1
    assert checked_out(db).total == 0


async def test_read_on_a_connection_that_died_as_it_was_taken_is_retried(
    backend: str, url: str
) -> None:
    """A connection killed so shortly before a read takes it that the event loop has not
    yet seen it close passes the checkout check; the read fails on it and runs once
    more on a fresh connection, so the unit never sees the failure."""
    db = Database(url, pool_size=1, max_overflow=0)
    try:
        async with db:
            first = int((await db.read.execute(text(_own_id_sql(backend)))).scalar_one())
            # Killed from another thread while this event loop is blocked: the loop has
            # not processed the server's closing of the socket when the read runs.
            killer = threading.Thread(
                target=asyncio.run, args=(kill_and_wait(url, backend, {first}),)
            )
            killer.start()
            killer.join()
            failures: list[bool] = []
            event.listen(
                db.engines.read.sync_engine,
                "handle_error",
                lambda context: failures.append(context.is_disconnect),
            )
            second = int((await db.read.execute(text(_own_id_sql(backend)))).scalar_one())
            assert second != first
            # The read did fail on the dead connection (this is the case under test).
            assert failures == [True]
        assert checked_out(db).total == 0
    finally:
        await db.dispose()


@pytest.mark.parametrize("statement_through", ["write", "read-after-write"])
async def test_connection_killed_during_a_unit_fails_it_with_a_disconnect_error(
    database: Database, backend: str, url: str, statement_through: str
) -> None:
    """A connection killed in the middle of a unit fails it with SQLAlchemy's disconnect error."""
    db = database
    raised: list[BaseException] = []
    with pytest.raises(BaseException) as left:
        async with db:
            db.write.add(User(name="Ada", email=_email()))
            await db.write.flush()
            used = db.read if statement_through == "read-after-write" else db.write
            connection_id = int((await used.execute(text(_own_id_sql(backend)))).scalar_one())
            await kill_and_wait(url, backend, {connection_id})
            try:
                await used.execute(select(User.id))
            except BaseException as error:
                raised.append(error)
                raise
    # The statement failed with an error SQLAlchemy recognised as a disconnect (the
    # connection was discarded), and that error is the one the unit let through.
    assert len(raised) == 1
    statement_error = raised[0]
    assert isinstance(statement_error, DBAPIError), repr(statement_error)
    assert statement_error.connection_invalidated, statement_error
    assert left.value is statement_error, f"the unit raised {left.value!r} instead"
    assert checked_out(db).total == 0
    # Nothing was committed, and the next unit works on fresh connections.
    await _unit_ids(db, backend, None)
    assert await _count_users(db) == 1


class _HandlerFailed(Exception):
    """An application error raised inside a unit."""


async def test_unit_failing_after_its_connection_died_raises_the_application_error(
    database: Database, backend: str, url: str
) -> None:
    """A unit that fails while its killed connection is unnoticed raises its own error."""
    db = database
    with pytest.raises(_HandlerFailed):
        async with db:
            db.write.add(User(name="Ada", email=_email()))
            await db.write.flush()
            connection_id = int((await db.write.execute(text(_own_id_sql(backend)))).scalar_one())
            await kill_and_wait(url, backend, {connection_id})
            # The rollback that follows runs on a dead connection: it must not replace
            # this error with its own.
            raise _HandlerFailed()
    assert checked_out(db).total == 0
    await _unit_ids(db, backend, None)
    assert await _count_users(db) == 1
