"""Behind PgBouncer in transaction mode (``transaction_pooling=True``): every guarantee
holds as it does directly, with no session state relied upon.

The PgBouncer (``tests/pgbouncer.py``) lends each transaction the next of two server
connections, so consecutive transactions of one client land on different ones, and
asyncpg's named prepared statements or a start-up setting would break at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from sanic import Request
from sanic.response import HTTPResponse, json
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from sanic_sqlalchemy import ConfigurationError, Database, ReadOnlyError
from sanic_sqlalchemy.cli.check import check_database
from sanic_sqlalchemy.testing import checked_out, schema

from .conftest import make_app
from .models import Base, User
from .pgbouncer import PgBouncer
from .test_round_trips import EXPECTED, round_trips_per_request

pytestmark = [pytest.mark.backends("postgresql"), pytest.mark.server]

#: Direct figures are EXPECTED; through the pooler a read unit adds BEGIN READ ONLY and
#: ROLLBACK around its statement, and nothing else changes.
EXPECTED_POOLED = {**EXPECTED, ("GET", "/users/1"): 3}


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
async def db(pgbouncer: PgBouncer, url: str) -> AsyncIterator[Database]:
    """A Database through the PgBouncer, with fresh tables; checks nothing leaked."""
    database = Database(pgbouncer.url, transaction_pooling=True, pool_size=10, pool_timeout=30)
    async with schema(database, Base.metadata):
        yield database
        assert checked_out(database).total == 0, "a connection was not returned to the pool"
    await database.dispose()


@pytest.fixture
def direct(url: str) -> Iterator[str]:
    """The asyncpg DSN of the test database itself, past the pooler."""
    yield _dsn(url)


async def _server_activity(direct: str, condition: str) -> int:
    """Backends of the test database (other than this one) that match ``condition``."""
    connection = await asyncpg.connect(direct)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            f"AND pid <> pg_backend_pid() AND ({condition})"
        )
        return count
    finally:
        await connection.close()


async def test_units_read_only_per_transaction(db: Database) -> None:
    """Reads run in read-only transactions and writes commit, through the pooler, while
    consecutive transactions land on different server connections."""
    for number in range(4):
        async with db:
            db.write.add(User(id=number, name=f"u{number}", email=f"{number}@example.com"))
    pids = set()
    for _ in range(4):
        async with db:
            row = (
                await db.read.execute(
                    text(
                        "SELECT pg_backend_pid() AS pid, "
                        "current_setting('transaction_read_only') AS ro"
                    )
                )
            ).one()
            pids.add(row.pid)
            assert row.ro == "on"
    assert len(pids) > 1, "the pooler lent one server connection to every transaction"
    async with db:
        assert await db.read.scalar(select(func.count()).select_from(User)) == 4
        # A streamed read: a server-side cursor, in a read-only transaction as well.
        streamed = await db.read.stream_scalars(select(User.id).order_by(User.id))
        assert [number async for number in streamed] == [0, 1, 2, 3]
        assert await db.read.scalar(text("SELECT current_setting('transaction_read_only')")) == "on"


async def test_savepoints_and_callbacks(db: Database) -> None:
    """A released savepoint's callbacks run after the commit, a rolled-back savepoint
    drops its writes and callbacks, and a failed unit runs none."""
    ran: list[str] = []
    async with db:
        async with db.write.begin_nested():
            db.write.add(User(id=1, name="kept", email="kept@example.com"))
            db.on_commit(ran.append, "kept")
        try:
            async with db.write.begin_nested():
                db.write.add(User(id=2, name="dropped", email="dropped@example.com"))
                db.on_commit(ran.append, "dropped")
                await db.write.flush()
                raise LookupError
        except LookupError:
            pass
        assert ran == []
        assert await db.read.scalar(select(func.count()).select_from(User)) == 1
    assert ran == ["kept"]
    with pytest.raises(KeyError):
        async with db:
            db.write.add(User(id=3, name="failed", email="failed@example.com"))
            db.on_commit(ran.append, "failed")
            await db.write.flush()
            raise KeyError
    async with db:
        assert list(await db.read.scalars(select(User.name))) == ["kept"]
    assert ran == ["kept"]


async def test_read_only_ignores_state_left_by_other_clients(
    db: Database, pgbouncer: PgBouncer, direct: str
) -> None:
    """Server connections whose sessions another client left read-write by default
    (``default_transaction_read_only=off``, ``SET SESSION CHARACTERISTICS``) cannot make
    ``db.read`` write: the server refuses the write, which ``ReadOnlyError`` reports."""
    setup = await asyncpg.connect(direct)
    try:
        await setup.execute(
            "CREATE OR REPLACE FUNCTION h_pool_write() RETURNS int LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO users (id, name, email) VALUES (99, 'x', 'x@x'); "
            "RETURN 1; END $$"
        )
    finally:
        await setup.close()
    other = await asyncpg.connect(_dsn(pgbouncer.url), statement_cache_size=0)
    try:
        for _ in range(2 * pgbouncer.pool_size):  # round robin: every server connection
            await other.execute(
                "SET default_transaction_read_only = off; "
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"
            )
    finally:
        await other.close()
    for _ in range(2 * pgbouncer.pool_size):
        async with db:
            with pytest.raises(ReadOnlyError, match="read-only"):
                await db.read.execute(text("SELECT h_pool_write()"))
            # Neither autocommit nor postgresql_readonly=False opens a writing transaction.
            connection = await db.read.connection(
                execution_options={"isolation_level": "AUTOCOMMIT", "postgresql_readonly": False}
            )
            with pytest.raises(ReadOnlyError, match="read-only"):
                await connection.execute(text("SELECT h_pool_write()"))
            # The library's statement guard refuses a plain write before sending it.
            with pytest.raises(ReadOnlyError, match=r"db\.write"):
                await db.read.execute(text("DELETE FROM users"))
    async with db:
        assert await db.read.scalar(select(func.count()).select_from(User)) == 0


async def test_session_lock_released_in_its_transaction(
    db: Database, direct: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A session advisory lock taken by a read the guard could not judge is released
    before its transaction ends, so no server connection of the pooler keeps it."""
    setup = await asyncpg.connect(direct)
    try:
        await setup.execute(
            "CREATE OR REPLACE FUNCTION h_pool_lock() RETURNS int LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_advisory_lock(417019); RETURN 1; END $$"
        )
    finally:
        await setup.close()
    with caplog.at_level(logging.WARNING, logger="sanic_sqlalchemy"):
        async with db:
            assert await db.read.scalar(text("SELECT h_pool_lock()")) == 1
            assert await db.read.scalar(text("SELECT 2")) == 2
    assert (
        "a statement sent through db.read took session advisory locks (pg_advisory_lock): "
        "they were released before its transaction ended" in caplog.text
    )
    held = await _server_activity(
        direct,
        "pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 417019)",
    )
    assert held == 0


async def test_concurrent_requests_through_sanic(db: Database, serve: Any) -> None:
    """200 concurrent requests (reads, inserts, a statement per request that no other
    request sends) all succeed: no prepared statement 'already exists' or 'does not
    exist' behind the pooler."""
    app = make_app("pooled")
    db.init_app(app)

    @app.get("/users/<user_id:int>")
    async def read(_request: Request, user_id: int) -> HTTPResponse:
        user = await db.read.get(User, user_id)
        unique = await db.read.scalar(text(f"SELECT {user_id} + :one"), {"one": 1})
        return json({"found": user is not None, "next": unique})

    @app.post("/users/<user_id:int>")
    async def create(_request: Request, user_id: int) -> HTTPResponse:
        db.write.add(User(id=user_id, name="new", email=f"{user_id}@example.com"))
        await db.write.flush()
        total = await db.read.scalar(select(func.count()).select_from(User))
        return json({"total": total}, status=201)

    served = await serve(app)
    client = served.client
    responses = await asyncio.gather(
        *(
            client.post(f"/users/{number}") if number % 2 else client.get(f"/users/{number}")
            for number in range(200)
        )
    )
    assert [r.status_code for r in responses] == [201 if n % 2 else 200 for n in range(200)]
    assert all(r.json()["next"] == n + 1 for n, r in enumerate(responses) if n % 2 == 0)
    async with db:
        assert await db.read.scalar(select(func.count()).select_from(User)) == 100


async def test_cancelled_units_leave_nothing_open(db: Database, direct: str) -> None:
    """A read and a write cancelled mid-statement roll back and give their connections
    back: no server connection is left in a transaction or still running them."""
    async with db:
        db.write.add(User(id=1, name="a", email="a@example.com"))

    async def slow_read() -> None:
        async with db:
            await db.read.execute(text("SELECT pg_sleep(5)"))

    async def slow_write() -> None:
        async with db:
            db.write.add(User(id=2, name="b", email="b@example.com"))
            await db.write.flush()
            await db.write.execute(text("SELECT pg_sleep(5)"))

    for work in (slow_read, slow_write):
        task = asyncio.create_task(work())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert checked_out(db).total == 0
    for _ in range(50):
        busy = await _server_activity(
            direct,
            "state LIKE 'idle in transaction%' "
            "OR (state = 'active' AND query LIKE '%pg_sleep(5)%')",
        )
        if not busy:
            break
        await asyncio.sleep(0.05)
    assert busy == 0
    async with db:
        assert list(await db.read.scalars(select(User.name))) == ["a"]


async def test_dead_server_connections(db: Database, direct: str) -> None:
    """Server connections killed behind the pooler cost no unit: reads and writes that
    follow succeed."""
    async with db:
        db.write.add(User(id=1, name="a", email="a@example.com"))
    killer = await asyncpg.connect(direct)
    try:
        await killer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    finally:
        await killer.close()
    async with db:
        assert list(await db.read.scalars(select(User.name))) == ["a"]
        db.write.add(User(id=2, name="b", email="b@example.com"))
    async with db:
        assert await db.read.scalar(select(func.count()).select_from(User)) == 2


async def test_nullpool(pgbouncer: PgBouncer, url: str) -> None:
    """``poolclass=NullPool`` (here from app.config) works behind the pooler too."""
    app = make_app("pooled_nullpool")
    app.config.DATABASE_URL = pgbouncer.url
    app.config.DATABASE_TRANSACTION_POOLING = "true"
    app.config.DATABASE_POOLCLASS = "NullPool"
    db = Database()
    db.init_app(app)
    try:
        async with schema(db, Base.metadata):
            assert isinstance(db.engines.read.sync_engine.pool, NullPool)
            async with db:
                db.write.add(User(id=1, name="a", email="a@example.com"))
            async with db:
                assert list(await db.read.scalars(select(User.name))) == ["a"]
                with pytest.raises(ReadOnlyError):
                    await db.read.execute(text("DELETE FROM users"))
    finally:
        await db.dispose()


async def test_check_command(db: Database) -> None:
    """``sanic-sqlalchemy check`` finds the read connections read-only behind the
    pooler (each of their transactions is), and reports no problem."""
    result = await check_database(db, timeout=10)
    assert result["problems"] == []
    assert [server["read_only"] for server in result["servers"]] == [True]


def test_bad_values_are_refused() -> None:
    """A value that is not a boolean, or pooling asked of a database that is not
    PostgreSQL, is a ``ConfigurationError`` naming the key."""
    app = make_app("pooling_bad_value")
    app.config.DATABASE_URL = "postgresql+asyncpg://app@db/shop"
    app.config.DATABASE_TRANSACTION_POOLING = "maybe"
    with pytest.raises(ConfigurationError) as caught:
        Database().init_app(app)
    assert str(caught.value) == "DATABASE_TRANSACTION_POOLING: expected true or false, got 'maybe'."
    with pytest.raises(ConfigurationError) as caught:
        Database("sqlite+aiosqlite://", transaction_pooling=True)
    assert str(caught.value) == (
        "transaction_pooling= (argument): transaction pooling is supported for "
        "PostgreSQL (PgBouncer, PgCat, Supavisor, RDS Proxy), not sqlite. Remove the "
        "setting, or point the URL at PostgreSQL."
    )


async def test_round_trips_through_the_pooler(pgbouncer: PgBouncer, url: str, serve: Any) -> None:
    """Through the pooler a single-row read unit costs 3 round trips (BEGIN READ ONLY,
    the statement, ROLLBACK) and a write unit as many as directly: every statement is
    unnamed, and sent with its Parse in one message."""
    direct = await round_trips_per_request(url, serve)
    pooled = await round_trips_per_request(pgbouncer.url, serve, transaction_pooling=True)
    for request, per_request in pooled.items():
        print(f"{' '.join(request)}: {direct[request]:g} direct, {per_request:g} through PgBouncer")
    # The direct figures are test_round_trips.py's to check.
    assert pooled == EXPECTED_POOLED


async def test_tasks_run_by_polling(pgbouncer: PgBouncer, url: str, direct: str) -> None:
    """Durable tasks deferred behind the pooler are stored with their unit's commit and
    run by a dispatcher that polls: it never sends LISTEN through the pooler."""
    database = Database(pgbouncer.url, transaction_pooling=True, pool_size=4, tasks_poll=0.1)
    database.tasks.run_after_commit = False
    done: list[int] = []

    @database.task(name="pooled.record")
    async def record(number: int) -> None:
        done.append(number)

    try:
        async with schema(database, database.tasks.metadata):
            worker = asyncio.create_task(database.tasks.work())
            try:
                for number in range(3):
                    async with database:
                        record.defer(number)
                listening = 0
                for _ in range(100):
                    listening += await _server_activity(direct, "query ILIKE 'LISTEN%'")
                    if len(done) == 3:
                        break
                    await asyncio.sleep(0.05)
                assert sorted(done) == [0, 1, 2]
                assert listening == 0
                assert await database.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}
            finally:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
    finally:
        await database.dispose()
