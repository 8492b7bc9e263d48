"""The pytest plugin, through inner pytest sessions on every backend (``pytester``)."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator

# Imported here, not first inside a test: ``pytester`` removes the modules a test
# imported from sys.modules afterwards, and importing a driver's C extension a second
# time in one process crashes it (seen: asyncpg's TLS negotiation, segfault).
import aiosqlite  # noqa: F401
import asyncmy  # noqa: F401
import asyncpg  # noqa: F401
import pytest

# The same for SQLAlchemy's dialects: imported again, they register their SQL functions
# again, which SQLAlchemy warns about (an error under filterwarnings).
import sqlalchemy.dialects.mysql.asyncmy
import sqlalchemy.dialects.postgresql.asyncpg
import sqlalchemy.dialects.sqlite.aiosqlite  # noqa: F401
from sqlalchemy import text

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.errors import UnitStateError
from sanic_sqlalchemy.testing import (
    QueryCountError,
    assert_max_queries,
    capture_on_commit,
    rolled_back,
)

pytest_plugins = ["pytester"]

_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
sanic_sqlalchemy_database = conftest:db
sanic_sqlalchemy_metadata = conftest:Base.metadata
filterwarnings =
    error
    ignore:websockets.legacy is deprecated:DeprecationWarning
    ignore:.*Passing the loop argument to listeners is deprecated:DeprecationWarning
"""

_CONFTEST = """
import os
import uuid

import pytest
from sanic import Sanic
from sanic.exceptions import SanicException
from sanic.response import json
from sqlalchemy import String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import Database


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "plugin_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


db = Database(os.environ["PLUGIN_TEST_URL"])
COMMITTED = []
Sanic.test_mode = True
app = Sanic(f"plugin_{uuid.uuid4().hex[:12]}")
db.init_app(app)


@app.post("/notes")
async def add(request):
    db.write.add(Note(text=request.json["text"]))
    db.on_commit(COMMITTED.append, request.json["text"])
    return json({})


@app.post("/fail")
async def fail(request):
    db.write.add(Note(text="doomed"))
    db.on_commit(COMMITTED.append, "doomed")
    await db.write.flush()
    raise SanicException("refused", status_code=422)


@app.get("/notes")
async def notes(request):
    return json(list(await db.read.scalars(select(Note.text).order_by(Note.id))))


@pytest.fixture(autouse=True)
async def tables():
    await db.create_all(Base.metadata)
    yield
    await db.dispose()


async def texts():
    async with db:
        return list(await db.read.scalars(select(Note.text).order_by(Note.id)))
"""

_TESTS = """
import pytest
from sqlalchemy import select, text

from conftest import COMMITTED, Note, app, db, texts
from sanic_sqlalchemy import ReadOnlyError
from sanic_sqlalchemy.testing import QueryCountError, assert_max_queries, assert_num_queries


async def test_units_and_requests_join_the_test(rolled_back_db):
    async with db:
        db.write.add(Note(text="a"))
    assert await texts() == ["a"]
    _, response = await app.asgi_client.post("/notes", json={"text": "b"})
    assert response.status == 200
    assert COMMITTED == ["b"]
    _, response = await app.asgi_client.post("/fail")
    assert response.status == 422
    assert COMMITTED == ["b"]
    _, response = await app.asgi_client.get("/notes")
    assert response.json == ["a", "b"]
    async with db:
        db.write.add(Note(text="c"))
        assert list(await db.read.scalars(select(Note.text).order_by(Note.id))) == ["a", "b", "c"]
        with pytest.raises(ReadOnlyError):
            await db.read.execute(text("DELETE FROM plugin_notes"))


async def test_nothing_leaked_from_the_previous_test(rolled_back_db):
    assert await texts() == []


async def test_queries_are_counted(rolled_back_db):
    async with db:
        with assert_num_queries(db, 1):
            await db.read.scalars(select(Note))
        with assert_max_queries(db, 2):
            await db.read.scalars(select(Note))
        with pytest.raises(QueryCountError, match="expected 0 queries, 1 were sent:"):
            with assert_num_queries(db, 0):
                await db.read.execute(select(Note.id).where(Note.text == "x"))


async def test_fixtures_count_queries(rolled_back_db, assert_num_queries, assert_max_queries):
    async with db:
        with assert_num_queries(1), assert_max_queries(1):
            await db.read.scalars(select(Note))


async def test_on_commit_is_captured(rolled_back_db, capture_on_commit):
    COMMITTED.clear()
    with capture_on_commit() as callbacks:
        async with db:
            db.on_commit(COMMITTED.append, "kept")
            async with db.write.begin_nested() as savepoint:
                db.on_commit(COMMITTED.append, "dropped")
                await savepoint.rollback()
        _, response = await app.asgi_client.post("/fail")
        assert response.status == 422
    assert [(c.args, c.committed, c.dropped) for c in callbacks] == [
        (("kept",), True, False),
        (("dropped",), False, True),
        (("doomed",), False, True),
    ]
    assert COMMITTED == []
    with capture_on_commit(execute=True) as callbacks:
        _, response = await app.asgi_client.post("/notes", json={"text": "ran"})
    assert [c.committed for c in callbacks] == [True]
    assert COMMITTED == ["ran"]


async def test_transactional_commits_for_real(transactional_db):
    async with db:
        db.write.add(Note(text="real"))
    async with db.engine.connect() as other:
        assert list(await other.scalars(select(Note.text))) == ["real"]


async def test_transactional_emptied_the_tables(rolled_back_db):
    assert await texts() == []
"""


@pytest.fixture
async def no_plugin_notes(url: str) -> AsyncIterator[None]:
    """No ``plugin_notes`` table before the inner session, nor after it."""
    await _drop(url)
    yield
    await _drop(url)


async def _drop(url: str) -> None:
    db = Database(url)
    try:
        async with db.engine.begin() as connection:
            await connection.execute(text("DROP TABLE IF EXISTS plugin_notes"))
    finally:
        await db.dispose()


@pytest.mark.server
def test_plugin_on_each_backend(
    pytester: pytest.Pytester, url: str, monkeypatch: pytest.MonkeyPatch, no_plugin_notes: None
) -> None:
    """Units and test-client requests of a rolled-back test join it and leave nothing
    behind; the transactional variant commits and empties; queries are counted and
    on-commit callbacks captured."""
    monkeypatch.setenv("PLUGIN_TEST_URL", url)
    pytester.makeini(_INI)
    pytester.makeconftest(_CONFTEST)
    pytester.makepyfile(test_inner=_TESTS)
    # In this process (a second one would spend a second starting): the test is
    # synchronous, so the inner session's event loops run in the main thread, alone.
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=7)


def test_plugin_is_inert_until_configured(pytester: pytest.Pytester) -> None:
    """Without a configured Database the fixtures say how to configure one."""
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(
        test_inert=textwrap.dedent(
            """
            def test_plain():
                pass

            async def test_needs_db(rolled_back_db):
                pass
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*No Database for the sanic-sqlalchemy fixtures*"])


@pytest.mark.backends("sqlite")
async def test_rolled_back_blocks_cannot_nest(db: Database) -> None:
    """A second rolled_back block on the same Database says to nest units instead."""
    async with rolled_back(db):
        with pytest.raises(UnitStateError) as caught:
            async with rolled_back(db):
                pass
    assert str(caught.value) == (
        "db is already inside a rolled-back block: nest units with `async with db:`, "
        "not rolled_back(db)."
    )
    assert db.environment.outer is None


@pytest.mark.backends("sqlite")
async def test_capture_blocks_cannot_nest(db: Database) -> None:
    """A second capture_on_commit block on the same Database is refused."""
    with capture_on_commit(db), pytest.raises(UnitStateError) as caught:  # noqa: SIM117
        with capture_on_commit(db):
            pass
    assert str(caught.value) == "capture_on_commit blocks on one Database cannot be nested."
    assert db.environment.capture is None


@pytest.mark.backends("sqlite")
async def test_query_count_failure_lists_the_statements(db: Database) -> None:
    """A wrong count names the expectation and lists each statement sent."""
    async with db:
        with pytest.raises(QueryCountError) as caught, assert_max_queries(db, 1):
            await db.read.execute(text("SELECT 1"))
            await db.read.execute(text("SELECT 2"))
    assert str(caught.value) == (
        "expected at most 1 queries, 2 were sent:\n  1. SELECT 1\n  2. SELECT 2"
    )
