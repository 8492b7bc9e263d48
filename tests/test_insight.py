"""Query insight against real statements: ``unit.stats``, ``Server-Timing``, the slow
statement log and the repeated-statement (N+1) warning, on every backend."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sanic import Request
from sanic.response import HTTPResponse, json
from sqlalchemy import insert, select, text
from sqlalchemy.exc import DBAPIError

from sanic_sqlalchemy import ConfigurationError, Database, NoActiveUnitError, ReadOnlyError
from sanic_sqlalchemy.testing import rolled_back, schema

from .conftest import make_app
from .models import Base, Order, User

INSIGHT = "sanic_sqlalchemy.insight"

#: A read that takes at least ~50 ms on each backend, with one bound parameter.
SLOW_READ = {
    "postgresql": "SELECT pg_sleep(:seconds)",
    "mysql": "SELECT SLEEP(:seconds)",
    # No sleep function: a recursive count long enough on any machine.
    "sqlite": (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
        "WHERE x < 400000 + :seconds) SELECT count(*) FROM c"
    ),
}


def _insight(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == INSIGHT]


async def _add_users(db: Database, count: int) -> list[int]:
    async with db:
        users = [User(name=f"u{i}", email=f"u{i}@example.com") for i in range(count)]
        db.write.add_all(users)
        await db.write.flush()
        ids = [user.id for user in users]
        db.write.add_all(Order(user_id=user_id, item="book") for user_id in ids)
    return ids


async def test_stats_count_reads_and_writes_apart(db: Database) -> None:
    async with db as unit:
        assert unit.stats.statements == 0
        await db.read.execute(select(User))
        await db.read.execute(text("SELECT 1"))
        assert (unit.stats.read_statements, unit.stats.write_statements) == (2, 0)
        assert unit.stats.read_time > 0 and unit.stats.write_time == 0
        db.write.add(User(name="Ada", email="ada@example.com"))
        await db.write.flush()
        assert unit.stats.write_statements == 1
        # A read once the unit writes runs on the writing connection: still a read.
        await db.read.execute(select(User))
        assert (unit.stats.read_statements, unit.stats.write_statements) == (3, 1)
        before_commit = unit.stats.write_time
        assert before_commit > 0
    # The COMMIT is time in the database too (but not a statement).
    assert unit.stats.write_time > before_commit
    assert unit.stats.statements == 4
    assert unit.stats.db_time == unit.stats.read_time + unit.stats.write_time
    assert unit.stats.connection_wait > 0
    assert "4 statements (3 read, 1 write)" in repr(unit.stats)


@pytest.mark.parametrize("commit_on_exit", [True, False])
async def test_write_time_never_exceeds_the_units_time(url: str, commit_on_exit: bool) -> None:
    """Every way a transaction commits times its COMMIT from its own start: a
    ``db.write.begin()`` block that only executes (nothing to flush) included."""
    database = Database(url, commit_on_exit=commit_on_exit)
    async with schema(database, Base.metadata):
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with database as unit:
            async with database.write.begin():
                await database.write.execute(insert(User).values(name="A", email="a@x.org"))
            await database.write.execute(insert(User).values(name="B", email="b@x.org"))
            await database.write.commit()
        elapsed = loop.time() - started
        assert 0 < unit.stats.write_time <= elapsed
        assert unit.stats.write_statements >= 2
    await database.dispose()


async def test_a_refused_read_is_not_counted(db: Database) -> None:
    async with db as unit:
        with pytest.raises(ReadOnlyError):
            await db.read.execute(text("DELETE FROM users"))
        assert unit.stats.statements == 0


async def test_a_failing_statement_is_counted(db: Database) -> None:
    async with db as unit:
        with pytest.raises(DBAPIError):
            await db.read.execute(text("SELECT * FROM no_such_table"))
        assert unit.stats.read_statements == 1


async def test_read_time_is_the_time_in_the_database(db: Database, backend: str) -> None:
    async with db as unit:
        started = asyncio.get_running_loop().time()
        await db.read.execute(text(SLOW_READ[backend]), {"seconds": 0.05})
        elapsed = asyncio.get_running_loop().time() - started
    if backend != "sqlite":
        assert unit.stats.read_time >= 0.05
    # Waiting for a connection (a new SQLite connection's thread on a busy machine took
    # 0.46 s once) is not time in the database: the rest is mostly the statement.
    in_database = elapsed - unit.stats.connection_wait
    assert 0.5 * in_database < unit.stats.read_time <= elapsed


async def test_executemany_is_one_statement(db: Database) -> None:
    async with db as unit:
        await db.write.execute(
            insert(User), [{"name": f"n{i}", "email": f"n{i}@example.com"} for i in range(5)]
        )
    assert unit.stats.write_statements >= 1
    assert unit.stats.write_statements < 5


async def test_connection_wait_is_the_time_a_pool_kept_the_unit_waiting(url: str) -> None:
    database = Database(url, pool_size=1, max_overflow=0, pool_timeout=5)
    async with schema(database, Base.metadata):
        holding = asyncio.Event()

        async def hold_the_only_read_connection() -> None:
            async with database:
                connection = await database.read.connection()
                await connection.execute(text("SELECT 1"))
                holding.set()
                await asyncio.sleep(0.3)

        holder = asyncio.create_task(hold_the_only_read_connection())
        await holding.wait()
        async with database as unit:
            await database.read.execute(text("SELECT 1"))
        await holder
        assert unit.stats.connection_wait >= 0.2
        async with database as unhurried:
            await database.read.execute(text("SELECT 1"))
        assert unhurried.stats.connection_wait < 0.1
    await database.dispose()


async def test_statements_outside_units_are_not_counted(db: Database) -> None:
    async with db as unit:
        async with db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        assert unit.stats.statements == 0


# -- Server-Timing --------------------------------------------------------------

_METRIC = re.compile(r'^db;dur=(\d+\.\d\d);desc="(\d+) (query|queries)"$')


def _timing_app(url: str, **settings: Any) -> tuple[Any, Database]:
    app = make_app("insight")
    app.config.update(settings)
    database = Database()
    database.init_app(app, url=url)

    @app.get("/users")
    async def users(_request: Request) -> HTTPResponse:
        rows = (await database.read.execute(select(User))).scalars().all()
        await database.read.execute(select(Order))
        return json({"users": len(rows)})

    @app.post("/users")
    async def create(_request: Request) -> HTTPResponse:
        database.write.add(User(name="Ada", email="ada@example.com"))
        return json({}, status=201, headers={"Server-Timing": 'app;dur=1.0;desc="handler"'})

    @app.get("/nothing")
    async def nothing(_request: Request) -> HTTPResponse:
        return json({})

    return app, database


async def _prepare(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)


async def test_server_timing_reports_the_requests_database_time(url: str, serve: Any) -> None:
    app, database = _timing_app(url, DATABASE_SERVER_TIMING=True)
    served = await serve(app)
    await _prepare(database)
    response = await served.client.get("/users")
    assert response.status_code == 200
    (value,) = response.headers.get_list("server-timing")
    metric = _METRIC.match(value.split(", ")[0])
    assert metric is not None, value
    assert metric.group(2) == "2" and metric.group(3) == "queries"
    assert float(metric.group(1)) > 0

    # The application's own metrics stay; the database's come on a line of their own.
    created = await served.client.post("/users")
    assert created.status_code == 201
    values = created.headers.get_list("server-timing")
    assert values[0] == 'app;dur=1.0;desc="handler"'
    assert _METRIC.match(values[1].split(", ")[0]), values
    assert '"1 query"' in values[1]

    nothing = await served.client.get("/nothing")
    assert nothing.headers.get_list("server-timing") == []


async def test_server_timing_is_off_by_default(url: str, serve: Any) -> None:
    app, database = _timing_app(url)
    served = await serve(app)
    await _prepare(database)
    response = await served.client.get("/users")
    assert response.status_code == 200
    assert "server-timing" not in response.headers


async def test_server_timing_configured_after_init_app(url: str, serve: Any) -> None:
    """A database configured anew between ``init_app`` and the server's start (its
    Server-Timing switched on) is served as configured: which databases tell the client
    something is decided at server start, not only at ``init_app``."""
    app, database = _timing_app(url)
    database.configure_from(app.config, url=url, server_timing=True)
    served = await serve(app)
    await _prepare(database)
    response = await served.client.get("/users")
    assert response.status_code == 200
    (value,) = response.headers.get_list("server-timing")
    assert _METRIC.match(value.split(", ")[0]), value


async def test_server_timing_names_each_database(tmp_path: Path, serve: Any) -> None:
    app = make_app("insight_two")
    app.config.update(
        DATABASE_SERVER_TIMING=True,
        ANALYTICS_DATABASE_SERVER_TIMING=True,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'main.db'}",
        ANALYTICS_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'analytics.db'}",
    )
    main, analytics = Database(), Database(config_prefix="ANALYTICS_DATABASE_")
    main.init_app(app)
    analytics.init_app(app)

    @app.get("/both")
    async def both(_request: Request) -> HTTPResponse:
        await main.read.execute(text("SELECT 1"))
        await analytics.read.execute(text("SELECT 1"))
        await analytics.read.execute(text("SELECT 2"))
        return json({})

    served = await serve(app)
    values = (await served.client.get("/both")).headers.get_list("server-timing")
    names = sorted(value.split(";")[0] for value in values)
    assert names == ["analytics-db", "db"]
    assert any(v.startswith("analytics-db;") and '"2 queries"' in v for v in values)


# -- the slow-statement log -----------------------------------------------------


async def test_a_slow_statement_is_logged_without_its_parameters(
    url: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(url, slow_query_ms=20)
    caplog.set_level(logging.WARNING, logger=INSIGHT)
    async with database:
        await database.read.execute(text("SELECT 1 WHERE 1 = :secret"), {"secret": 424242})
        assert not _insight(caplog)  # a fast statement is not logged
        await database.read.execute(text(SLOW_READ[backend]), {"seconds": 0.05})
    await database.dispose()
    (record,) = _insight(caplog)
    message = record.getMessage()
    assert message.startswith("slow statement: ")
    assert "on db.read (DATABASE_SLOW_QUERY_MS is 20)" in message
    assert SLOW_READ[backend].split("(")[0] in message
    assert "parameters: hidden (set DATABASE_SLOW_QUERY_PARAMS to log them)" in message
    assert "0.05" not in message
    assert record.duration_ms >= 20  # type: ignore[attr-defined]
    assert record.call_site.filename == __file__  # type: ignore[attr-defined]
    assert f"{Path(__file__).name}:" in message


async def test_the_slow_statement_log_shows_parameters_when_asked(
    url: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(url, slow_query_ms=20, slow_query_params=True)
    caplog.set_level(logging.WARNING, logger=INSIGHT)
    async with database:
        await database.read.execute(text(SLOW_READ[backend]), {"seconds": 0.05})
    await database.dispose()
    (record,) = _insight(caplog)
    assert "0.05" in record.getMessage()


# -- repeated statements (N+1) --------------------------------------------------


@pytest.fixture
async def watched(url: str, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Database]:
    """A Database that warns about more than 10 runs of a statement, with tables."""
    database = Database(url, repeated_query_warn=10)
    caplog.set_level(logging.WARNING, logger=INSIGHT)
    async with schema(database, Base.metadata):
        yield database
    await database.dispose()


async def test_an_n_plus_one_loop_is_warned_about_once_with_its_place(
    watched: Database, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await _add_users(watched, 15)
    async with watched:
        users = (await watched.read.execute(select(User))).scalars().all()
        for user in users:
            orders = select(Order).where(Order.user_id == user.id)
            line = _line_of_next_statement()
            await watched.read.execute(orders)
    assert len(users) == len(ids)
    (record,) = _insight(caplog)
    message = record.getMessage()
    assert "ran 11 times in one unit of work (DATABASE_REPEATED_QUERY_WARN is 10)" in message
    assert "FROM orders" in message and "N+1" in message
    assert record.call_site.filename == __file__  # type: ignore[attr-defined]
    assert record.call_site.lineno == line  # type: ignore[attr-defined]
    assert record.call_site.function == (  # type: ignore[attr-defined]
        "test_an_n_plus_one_loop_is_warned_about_once_with_its_place"
    )


def _line_of_next_statement() -> int:
    """The line after the caller's current one."""
    import sys

    return sys._getframe(1).f_lineno + 1


async def test_one_query_and_up_to_the_limit_are_not_warned_about(
    watched: Database, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await _add_users(watched, 10)
    async with watched:
        rows = (await watched.read.execute(select(Order))).scalars().all()
        assert len(rows) == len(ids)
        for user_id in ids:  # exactly the limit: fine
            await watched.read.execute(select(Order).where(Order.user_id == user_id))
    # The count is per unit: the next one starts from zero.
    async with watched:
        for user_id in ids:
            await watched.read.execute(select(Order).where(Order.user_id == user_id))
    assert not _insight(caplog)


async def test_repeats_are_warned_about_in_a_sanic_request(
    url: str, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app("n_plus_one")
    app.config.DATABASE_REPEATED_QUERY_WARN = 3
    database = Database()
    database.init_app(app, url=url)

    @app.get("/orders")
    async def orders(_request: Request) -> HTTPResponse:
        users = (await database.read.execute(select(User))).scalars().all()
        counts: dict[int, int] = {}
        for user in users:
            orders = await database.read.scalars(select(Order).filter_by(user_id=user.id))
            counts[user.id] = len(orders.all())
        return json(counts)

    served = await serve(app)
    async with schema(database, Base.metadata):
        await _add_users(database, 5)
        caplog.set_level(logging.WARNING, logger=INSIGHT)
        response = await served.client.get("/orders")
        assert response.status_code == 200
    (record,) = _insight(caplog)
    assert record.call_site.function == "orders"  # type: ignore[attr-defined]
    assert "ran 4 times" in record.getMessage()


# -- settings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "complaint"),
    [
        ("DATABASE_SLOW_QUERY_MS", "fast", "expected a number of milliseconds"),
        ("DATABASE_SLOW_QUERY_MS", 0, "must be more than 0 milliseconds"),
        ("DATABASE_REPEATED_QUERY_WARN", 0, "must be at least 1"),
        ("DATABASE_REPEATED_QUERY_WARN", "many", "expected a whole number"),
        ("DATABASE_SERVER_TIMING", "perhaps", "expected true or false"),
        ("DATABASE_SLOW_QUERY_PARAMS", "perhaps", "expected true or false"),
    ],
)
def test_bad_insight_settings_are_refused_at_init(
    tmp_path: Path, key: str, value: Any, complaint: str
) -> None:
    app = make_app("insight_settings")
    app.config[key] = value
    with pytest.raises(ConfigurationError, match=f"{key}: {complaint}"):
        Database().init_app(app, url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")


async def test_db_stats_is_the_current_units(url: str, serve: Any) -> None:
    app = make_app("db_stats")
    database = Database()
    database.init_app(app, url=url)

    @app.get("/count")
    async def count(_request: Request) -> HTTPResponse:
        await database.read.execute(text("SELECT 1"))
        await database.read.execute(text("SELECT 2"))
        stats = database.stats
        return json({"reads": stats.read_statements, "writes": stats.write_statements})

    served = await serve(app)
    assert (await served.client.get("/count")).json() == {"reads": 2, "writes": 0}
    with pytest.raises(NoActiveUnitError, match=r"db\.stats was used outside a unit"):
        database.stats  # noqa: B018


# -- transaction control: time, not statements ------------------------------------


async def test_savepoints_are_time_not_statements(db: Database) -> None:
    """A ``db.write.begin()`` block (a savepoint) counts its INSERT, not its SAVEPOINT
    and RELEASE, the same as a test's rolled-back transaction will."""
    async with db as unit, db.write.begin():
        db.write.add(User(name="Ada", email="ada@example.com"))
    assert (unit.stats.statements, unit.stats.write_statements) == (1, 1)


async def test_stats_are_the_same_in_a_rolled_back_test(db: Database) -> None:
    async with db as production:
        db.write.add(User(name="Ada", email="ada@example.com"))
    async with rolled_back(db) as connection:
        async with db as joined:
            db.write.add(User(name="Bob", email="bob@example.com"))
        assert joined.stats.statements == production.stats.statements == 1
        # The test's own statements on the shared connection belong to no unit.
        await connection.execute(text("SELECT 1"))
        assert joined.stats.statements == 1


@pytest.mark.backends("sqlite")
async def test_sqlites_wait_for_the_write_lock_is_write_time(url: str) -> None:
    """``BEGIN IMMEDIATE`` runs before the unit sees its connection; its wait for the
    database's write lock (held here by another connection for 0.3 s) is the unit's."""
    database = Database(url)
    async with schema(database, Base.metadata):
        path = url.removeprefix("sqlite+aiosqlite:///")
        ready = threading.Event()

        def hold_the_write_lock() -> None:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            ready.set()
            time.sleep(0.3)
            other.execute("COMMIT")
            other.close()

        holder = threading.Thread(target=hold_the_write_lock)
        holder.start()
        ready.wait()
        async with database as unit:
            database.write.add(User(name="Ada", email="ada@example.com"))
        holder.join()
        assert unit.stats.write_time >= 0.25
    await database.dispose()
