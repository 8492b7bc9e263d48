"""Belt and braces behind the read guard (issue 17, item 3): whatever the guard lets
through, a pooled read connection is never handed out again holding a session lock or
a changed setting.

A function the guard does not know may take a lock or change a setting inside (a
PL/pgSQL function calling ``pg_advisory_lock``, a MariaDB stored function calling
``GET_LOCK``): the guard cannot see into it, so after a unit that ran one, the read
connection is checked as it goes back to the pool and closed if it holds anything.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from sanic_sqlalchemy import Database

from .models import User

pytestmark = pytest.mark.backends("postgresql", "mysql")

#: A lock key and a lock name no other test uses.
KEY = 417_003

_FUNCTIONS = {
    "postgresql": [
        "CREATE OR REPLACE FUNCTION h_take_lock() RETURNS int LANGUAGE plpgsql AS "
        f"$$ BEGIN PERFORM pg_advisory_lock({KEY}); RETURN 1; END $$",
        "CREATE OR REPLACE FUNCTION h_short_timeout() RETURNS int LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM set_config('statement_timeout', '1ms', false); RETURN 1; END $$",
    ],
    "mysql": [
        "DROP FUNCTION IF EXISTS h_take_lock",
        f"CREATE FUNCTION h_take_lock() RETURNS INT NO SQL RETURN GET_LOCK('h{KEY}', 0)",
    ],
}


@pytest.fixture
async def admin(url: str, backend: str) -> AsyncIterator[AsyncEngine]:
    """A connection outside the pools under test, with the functions created."""
    engine = create_async_engine(url, poolclass=NullPool)
    async with engine.begin() as connection:
        if backend == "mysql":
            await connection.exec_driver_sql("SET SESSION sql_log_bin = 0")
        for statement in _FUNCTIONS[backend]:
            await connection.exec_driver_sql(statement)
    yield engine
    await engine.dispose()


async def _lock_held(admin: AsyncEngine, backend: str) -> bool:
    async with admin.connect() as connection:
        if backend == "postgresql":
            query = f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {KEY}"
        else:
            query = f"SELECT IS_USED_LOCK('h{KEY}') IS NOT NULL"
        return bool(await connection.scalar(text(query)))


@pytest.mark.parametrize("how", ["text", "orm"])
async def test_a_lock_taken_inside_a_function_does_not_outlive_the_unit(
    db: Database, admin: AsyncEngine, backend: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock taken inside a function the guard accepts (as SQL text, or as an ORM
    ``func`` it does not know) is released when the unit ends: the connection is
    closed, with a warning, and the next unit reads on a fresh one."""
    statement: Any = text("SELECT h_take_lock()") if how == "text" else select(func.h_take_lock())
    with caplog.at_level(logging.WARNING, logger="sanic_sqlalchemy"):
        async with db:
            assert (await db.read.execute(statement)).scalar_one() == 1
    assert not await _lock_held(admin, backend), "the pooled read connection kept the lock"
    [warning] = [
        r.getMessage() for r in caplog.records if "came back from its unit" in r.getMessage()
    ]
    assert "lock" in warning
    async with db:
        await db.read.execute(select(User.id))


@pytest.mark.backends("postgresql")
async def test_a_setting_changed_inside_a_function_does_not_reach_the_next_unit(
    db: Database, admin: AsyncEngine, backend: str
) -> None:
    """``statement_timeout`` set by a function the guard accepts is gone in the next
    unit: the connection that carried it was closed at check-in."""
    async with db:
        await db.read.execute(text("SELECT h_short_timeout()"))
    async with db:
        timeout = (await db.read.execute(text("SHOW statement_timeout"))).scalar_one()
        await db.read.execute(text("SELECT pg_sleep(0.01)"))
    assert timeout == "0"


async def test_only_units_the_guard_was_unsure_of_pay_for_the_check(
    db: Database, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ORM read of known constructs (``func.count()`` included) leaves nothing to
    check at check-in; SQL text or an unknown function costs one check."""
    async with db:
        await db.read.execute(select(User.id))  # the engine's first connection
    backend_object = db.engines.backend
    checked: list[object] = []
    real = backend_object.leftover_state

    def counted(dbapi_connection: Any) -> str | None:
        checked.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(backend_object, "leftover_state", counted)
    async with db:
        await db.read.execute(select(User.id, func.count()).group_by(User.id))
        await db.read.execute(select(User).where(User.name == "Ada"))
    assert checked == []
    async with db:
        await db.read.execute(text("SELECT 1"))
    assert len(checked) == 1
