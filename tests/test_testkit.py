"""The test kit's isolation and counting on every backend: several databases rolled
back together, sanic-testing's synchronous client in a rolled-back test, concurrent
units refused, a URL without an app, and query counts that include replica reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

# Imported here, not first inside a test: ``pytester`` removes the modules a test
# imported from sys.modules afterwards, and importing a driver's C extension a second
# time in one process crashes it (see test_pytest_plugin.py).
import aiosqlite  # noqa: F401
import asyncmy  # noqa: F401
import asyncpg  # noqa: F401
import pytest

# The same for SQLAlchemy's dialects: imported again, they register their SQL functions
# again, which SQLAlchemy warns about (an error under filterwarnings).
import sqlalchemy.dialects.mysql.asyncmy
import sqlalchemy.dialects.postgresql.asyncpg
import sqlalchemy.dialects.sqlite.aiosqlite  # noqa: F401
from sqlalchemy import select, text

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.errors import UnitStateError
from sanic_sqlalchemy.testing import (
    QueryCountError,
    assert_max_queries,
    assert_num_queries,
    rolled_back,
    schema,
)

from .models import Base, User

pytest_plugins = ["pytester"]

_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
sanic_sqlalchemy_database = conftest:db
filterwarnings =
    error
    ignore:websockets.legacy is deprecated:DeprecationWarning
    ignore:.*Passing the loop argument to listeners is deprecated:DeprecationWarning
"""

# Two databases on one app (on SQLite, two files: one file has one writer at a time).
_TWO_DATABASES = """
import os
import uuid

import pytest
from sanic import Sanic
from sanic.response import json
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import Database


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "kit_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


class Event(Base):
    __tablename__ = "kit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


db = Database()
events = Database(config_prefix="EVENTS_DATABASE_")
Sanic.test_mode = True
app = Sanic(f"kit_{uuid.uuid4().hex[:12]}")
app.config.DATABASE_URL = os.environ["KIT_URL"]
app.config.EVENTS_DATABASE_URL = os.environ["KIT_EVENTS_URL"]
db.init_app(app)
events.init_app(app)


@app.post("/notes")
async def add(request):
    db.write.add(Note(text=request.json["text"]))
    events.write.add(Event(text="added " + request.json["text"]))
    await db.write.flush()
    await events.write.flush()
    return json(await both())


@app.get("/notes")
async def notes(request):
    return json(await both())


async def both():
    return [
        list(await db.read.scalars(select(Note.text).order_by(Note.id))),
        list(await events.read.scalars(select(Event.text).order_by(Event.id))),
    ]


@pytest.fixture(autouse=True)
async def tables():
    await db.create_all(Base.metadata, tables=[Note.__table__])
    await events.create_all(Base.metadata, tables=[Event.__table__])
    yield
    await db.dispose()
    await events.dispose()


async def rows():
    async with db, events:
        return await both()
"""

_TWO_DATABASES_TESTS = """
from conftest import Event, Note, app, db, events, rows


# First: Sanic's synchronous client cannot be made once an app has been served.
def test_the_synchronous_client(rolled_back_db):
    # Each request is a server, in an event loop, of its own: it joins a transaction
    # of that loop, rolled back when the server stops.
    _, response = app.test_client.post("/notes", json={"text": "sync"})
    assert response.status == 200
    assert response.json == [["sync"], ["added sync"]]
    _, response = app.test_client.get("/notes")
    assert response.json == [[], []]


async def test_both_databases_join_the_test(rolled_back_db):
    async with events:
        events.write.add(Event(text="in a unit"))
    _, response = await app.asgi_client.post("/notes", json={"text": "a"})
    assert response.json == [["a"], ["in a unit", "added a"]]
    assert await rows() == [["a"], ["in a unit", "added a"]]


async def test_nothing_leaked_from_either_database(rolled_back_db):
    assert await rows() == [[], []]


async def test_asynchronous_again(rolled_back_db):
    _, response = await app.asgi_client.post("/notes", json={"text": "b"})
    assert response.json == [["b"], ["added b"]]
"""


def _second_url(url: str, pytester: pytest.Pytester) -> str:
    if url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{pytester.path / 'events.db'}"
    return url


async def _drop(url: str, *tables: str) -> None:
    db = Database(url)
    try:
        async with db.engine.begin() as connection:
            for table in tables:
                await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    finally:
        await db.dispose()


def _run(pytester: pytest.Pytester) -> pytest.RunResult:
    # In this process (a second one would spend a second starting): the tests that call
    # this are synchronous, so the inner session's event loops, and the synchronous
    # test client's signal handlers, are in the main thread, alone.
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")


@pytest.fixture
async def no_kit_tables(url: str, pytester: pytest.Pytester) -> AsyncIterator[None]:
    """None of the inner sessions' tables before the test, nor after it."""
    events_url = _second_url(url, pytester)
    await _drop(url, "kit_notes", "kit_events", "kit_plain_notes")
    yield
    await _drop(url, "kit_notes", "kit_events", "kit_plain_notes")
    await _drop(events_url, "kit_events")


@pytest.mark.server
def test_every_database_and_the_sync_client_roll_back(
    pytester: pytest.Pytester, url: str, monkeypatch: pytest.MonkeyPatch, no_kit_tables: None
) -> None:
    """``rolled_back_db`` rolls back every Database installed on the app (nothing of the
    second one leaks into the next test), and sanic-testing's synchronous
    ``app.test_client`` works inside it, its writes rolled back, the test's engines
    restored afterwards."""
    monkeypatch.setenv("KIT_URL", url)
    monkeypatch.setenv("KIT_EVENTS_URL", _second_url(url, pytester))
    pytester.makeini(_INI)
    pytester.makeconftest(_TWO_DATABASES)
    pytester.makepyfile(test_inner=_TWO_DATABASES_TESTS)
    _run(pytester).assert_outcomes(passed=4)


_WITHOUT_APP = """
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import pytest
from sanic_sqlalchemy import Database


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "kit_plain_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


db = Database()


@pytest.fixture(autouse=True)
async def tables(sanic_sqlalchemy_database):
    await db.create_all(Base.metadata)
    yield
    await db.dispose()
"""

_WITHOUT_APP_TESTS = """
import os

from sqlalchemy import select

from conftest import Note, db


async def test_the_url_comes_from_the_plugin(rolled_back_db):
    assert str(db.settings.url) == os.environ["KIT_URL"]
    async with db:
        db.write.add(Note(text="x"))
    async with db:
        assert list(await db.read.scalars(select(Note.text))) == ["x"]


async def test_rolled_back(rolled_back_db):
    async with db:
        assert list(await db.read.scalars(select(Note.text))) == []
"""


@pytest.mark.server
def test_a_database_without_an_app_gets_the_plugins_url(
    pytester: pytest.Pytester, url: str, monkeypatch: pytest.MonkeyPatch, no_kit_tables: None
) -> None:
    """A module-level ``Database()`` that no app configures gets its URL from the
    ``sanic_sqlalchemy_url`` option (environment variables expanded)."""
    monkeypatch.setenv("KIT_URL", url)
    pytester.makeini(_INI + "sanic_sqlalchemy_url = ${KIT_URL}\n")
    pytester.makeconftest(_WITHOUT_APP)
    pytester.makepyfile(test_inner=_WITHOUT_APP_TESTS)
    _run(pytester).assert_outcomes(passed=2)


async def test_configure_from_without_an_app(url: str) -> None:
    """``configure_from(url=...)`` gives a ``Database()`` its URL; no mapping needed."""
    db = Database()
    assert not db.configured
    db.configure_from(url=url)
    assert db.configured
    try:
        async with db:
            assert (await db.read.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await db.dispose()


async def test_concurrent_units_in_a_rolled_back_block_are_refused(db: Database) -> None:
    """A unit opened while another task's unit is open on the test's connection raises
    ``UnitStateError`` naming the cause and ``transactional_db``; the first unit goes
    on unharmed, and units one after the other still work."""

    async def add(name: str) -> None:
        async with db:
            db.write.add(User(name=name, email=f"{name}@example.com"))
            await db.write.flush()
            await asyncio.sleep(0.01)

    async with rolled_back(db):
        first, second = await asyncio.gather(add("a"), add("b"), return_exceptions=True)
        assert first is None
        assert isinstance(second, UnitStateError)
        assert "another unit of this rolled-back test is still open in another task" in str(second)
        assert "transactional_db" in str(second)
        await add("c")
        async with db:
            names = await db.read.scalars(select(User.name).order_by(User.name))
            assert list(names) == ["a", "c"]
    async with db:
        assert list(await db.read.scalars(select(User.name))) == []


@pytest.fixture(params=["postgresql", "mysql"])
def cluster(request: pytest.FixtureRequest) -> Any:
    name = "pg_cluster" if request.param == "postgresql" else "mariadb_cluster"
    return request.getfixturevalue(name)


async def test_query_counts_include_reads_served_by_replicas(cluster: Any) -> None:
    """Reads served by a replica count: one read is one query, and an N+1 loop fails
    ``assert_max_queries``."""
    db = Database(cluster.primary_url, read_urls=cluster.replica_urls, pool_size=2)
    async with schema(db, Base.metadata):
        await cluster.wait_caught_up()
        async with db as unit:
            with assert_num_queries(db, 1) as count:
                await db.read.execute(select(User))
            assert unit.read_from in cluster.replica_urls
            assert len(count) == 1
            refused = pytest.raises(QueryCountError, match="expected at most 2 queries, 5 were")
            with refused, assert_max_queries(db, 2):
                for user_id in range(5):
                    await db.read.execute(select(User).where(User.id == user_id))
    await db.dispose()
