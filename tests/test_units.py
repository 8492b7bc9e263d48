"""Units of work in plain asyncio code: the rules of PRODUCT.md, one test each."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from sanic_sqlalchemy import Database, EngineNotInitialisedError, NoActiveUnitError
from sanic_sqlalchemy.errors import UnitStateError
from sanic_sqlalchemy.testing import CheckoutCounter, CommitRecorder, PoolUse, checked_out

from .conftest import count_users
from .models import Order, User


async def test_unit_commits_on_success(db: Database) -> None:
    """Leaving ``async with db`` normally commits what ``db.write`` did (rule 4)."""
    async with db:
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))
    assert await count_users(db) == 1


async def test_unit_rolls_back_on_exception(db: Database) -> None:
    """An exception rolls back, drops the callbacks and propagates (rule 5)."""
    recorder = CommitRecorder()
    with pytest.raises(ZeroDivisionError):
        async with db:
            db.write.add(User(id=1, name="Ada", email="ada@example.com"))
            await db.write.flush()
            db.on_commit(recorder, "sent")
            1 / 0  # noqa: B018
    assert await count_users(db) == 0
    assert recorder.calls == []


async def test_redirect_exception_counts_as_success(db: Database) -> None:
    """An exception whose ``status_code`` is below 400 commits (rule 5)."""

    class Redirect(Exception):
        status_code = 302

    with pytest.raises(Redirect):
        async with db:
            db.write.add(User(id=1, name="Ada", email="ada@example.com"))
            raise Redirect()
    assert await count_users(db) == 1


async def test_error_status_exception_rolls_back(db: Database) -> None:
    """An exception whose ``status_code`` is 400 or more rolls back (rule 5)."""

    class NotFound(Exception):
        status_code = 404

    with pytest.raises(NotFound):
        async with db:
            db.write.add(User(id=1, name="Ada", email="ada@example.com"))
            raise NotFound()
    assert await count_users(db) == 0


async def test_nested_unit_joins_and_outermost_decides(db: Database) -> None:
    """A nested ``async with db`` is the same unit; only the outer exit commits (rule 1)."""
    async with db as outer:
        async with db as inner:
            assert inner is outer
            db.write.add(User(id=1, name="Ada", email="ada@example.com"))
        # The inner exit did not commit: another unit cannot see the row yet.
        assert await _count_in_task(db) == 0
    assert await count_users(db) == 1


async def _count_in_task(db: Database) -> int:
    import asyncio

    return await asyncio.create_task(count_users(db))


async def test_sessions_are_lazy(db: Database) -> None:
    """A unit that touches no session takes no connection (rule 2)."""
    counter = CheckoutCounter(db)
    try:
        async with db:
            pass
        async with db:
            _ = db.read, db.write
        assert counter.count == 0
        async with db:
            await db.read.execute(select(User))
        assert counter.count == 1
    finally:
        counter.detach()


async def test_read_and_write_are_distinct_sessions(db: Database) -> None:
    """``db.read`` and ``db.write`` are two different sessions of the unit."""
    async with db:
        assert db.read is not db.write
        assert db.read is db.read
        assert db.write is db.write


@pytest.mark.parametrize("name", ["read", "write"])
async def test_outside_a_unit_raises_with_the_fix(name: str) -> None:
    """``db.read``/``db.write`` outside a unit raise ``NoActiveUnitError`` with the fix."""
    db = Database("sqlite+aiosqlite://")
    with pytest.raises(NoActiveUnitError) as caught:
        getattr(db, name)
    assert f"db.{name} was used outside a unit of work" in str(caught.value)
    assert "async with db:" in str(caught.value)


async def test_on_commit_outside_a_unit_raises() -> None:
    """``db.on_commit`` outside a unit raises ``NoActiveUnitError`` (rule 3)."""
    db = Database("sqlite+aiosqlite://")
    with pytest.raises(NoActiveUnitError, match=r"db\.on_commit was used outside"):
        db.on_commit(print)


async def test_unit_without_url_raises() -> None:
    """Opening a unit before any URL is configured raises ``EngineNotInitialisedError``."""
    db = Database()
    with pytest.raises(EngineNotInitialisedError, match="No database URL is configured"):
        async with db:
            pass


async def test_session_used_after_its_unit_ended_says_so(db: Database) -> None:
    """A session kept past its unit raises ``UnitStateError`` naming the fix."""
    async with db:
        write = db.write
        read = db.read
    with pytest.raises(UnitStateError, match="unit of work has ended"):
        write.add(User(id=1, name="Ada", email="ada@example.com"))
        await write.flush()
    with pytest.raises(UnitStateError, match="unit of work has ended"):
        await read.execute(select(User))


async def test_commit_on_exit_false_needs_explicit_commit(url: str) -> None:
    """With ``commit_on_exit=False`` unflushed work is rolled back at exit (rule 6)."""
    from sanic_sqlalchemy.testing import schema

    from .models import Base

    db = Database(url, commit_on_exit=False)
    recorder = CommitRecorder()
    try:
        async with schema(db, Base.metadata):
            async with db:
                db.write.add(User(id=1, name="Ada", email="ada@example.com"))
                db.on_commit(recorder, "first")
                await db.write.commit()
                assert recorder.args == [("first",)]
                db.write.add(User(id=2, name="Bob", email="bob@example.com"))
                db.on_commit(recorder, "second")
            assert await count_users(db) == 1
            assert recorder.args == [("first",)]
            async with db:
                db.on_commit(recorder, "never wrote")
            assert recorder.args == [("first",), ("never wrote",)]
    finally:
        await db.dispose()


async def test_callback_in_unit_without_writes_runs(db: Database) -> None:
    """A callback of a unit that never opened a write transaction runs at its end (rule 8)."""
    recorder = CommitRecorder()
    async with db:
        await db.read.execute(select(User))
        db.on_commit(recorder, 1, key="value")
        assert recorder.calls == []
    assert recorder.calls == [((1,), {"key": "value"})]


async def test_reads_own_writes_including_loaded_objects(db: Database) -> None:
    """After ``db.write`` flushes, ``db.read`` sees it, new values included (rule 12)."""
    async with db:
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))
    async with db:
        user = (await db.read.execute(select(User).where(User.id == 1))).scalar_one()
        assert user.name == "Ada"
        db.write.add(Order(id=1, user_id=1, item="book"))
        (await db.write.get(User, 1)).name = "Ada L."  # type: ignore[union-attr]
        await db.write.flush()
        orders = (await db.read.execute(select(Order))).scalars().all()
        assert [order.item for order in orders] == ["book"]
        again = (await db.read.execute(select(User).where(User.id == 1))).scalar_one()
        assert again is user
        assert user.name == "Ada L."
        fetched = await db.read.get(User, 1)
        assert fetched is user


async def test_reads_see_committed_changes_after_explicit_commit(db: Database) -> None:
    """After an explicit commit, ``db.read`` returns the committed values (rule 12)."""
    async with db:
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))
    async with db:
        user = await db.read.get(User, 1)
        assert user is not None
        changed = await db.write.get(User, 1)
        assert changed is not None
        changed.name = "Ada L."
        await db.write.commit()
        assert (await db.read.get(User, 1)) is user
        assert user.name == "Ada L."


async def test_objects_keep_values_after_commit(db: Database) -> None:
    """Attributes loaded before the commit stay readable after it, without SQL (rule 13)."""
    async with db:
        user = User(id=1, name="Ada", email="ada@example.com")
        db.write.add(user)
        await db.write.commit()
        assert user.name == "Ada"
    assert user.email == "ada@example.com"


async def test_plain_sql_strings_with_bound_parameters(db: Database) -> None:
    """Plain SQL strings run with bound parameters; a hostile value is stored verbatim."""
    hostile = "Robert'); DROP TABLE users; --"
    async with db:
        await db.write.execute(
            text("INSERT INTO users (id, name, email) VALUES (:id, :name, :email)"),
            {"id": 1, "name": hostile, "email": "bobby@example.com"},
        )
    async with db:
        name = (
            await db.read.execute(text("SELECT name FROM users WHERE id = :id"), {"id": 1})
        ).scalar_one()
    assert name == hostile
    assert await count_users(db) == 1


async def test_connections_return_to_the_pool(db: Database) -> None:
    """A read gives its connection back as soon as its rows are read; the write session
    keeps its connection (and transaction) until the unit ends (rule 4)."""
    async with db:
        users = (await db.read.execute(select(User))).scalars()
        assert checked_out(db).total == 0
        assert users.all() == []
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))
        await db.write.flush()
        assert checked_out(db) == PoolUse(write=1, read=0)
        # After a write, reads share the writer's connection.
        assert [user.name for user in (await db.read.scalars(select(User)))] == ["Ada"]
        assert checked_out(db) == PoolUse(write=1, read=0)
    assert checked_out(db).total == 0
    async with db:
        await db.read.connection()  # asked for explicitly: kept until the unit ends
        await db.read.execute(select(User))
        assert checked_out(db) == PoolUse(write=0, read=1)
    assert checked_out(db).total == 0
    async with db:
        # A read that fails gives its connection back too; the unit can go on reading.
        with pytest.raises(DBAPIError):
            await db.read.execute(text("SELECT * FROM no_such_table"))
        assert checked_out(db).total == 0
        assert (await db.read.scalars(select(User.name))).all() == ["Ada"]


async def test_streamed_read_keeps_its_connection_while_iterated(db: Database) -> None:
    """``db.read.stream()`` reads rows from the connection as they are iterated: it keeps
    its connection, every row arrives, and the connection goes back when the unit ends."""
    async with db:
        db.write.add_all([User(id=n, name=f"u{n}", email=f"u{n}@example.com") for n in range(1, 4)])
    async with db:
        users = await db.read.stream_scalars(select(User).order_by(User.id))
        assert checked_out(db) == PoolUse(write=0, read=1)
        first = await users.__anext__()
        assert await db.read.scalar(select(User.name).where(User.id == 3)) == "u3"
        assert [first.name] + [user.name async for user in users] == ["u1", "u2", "u3"]
        assert checked_out(db) == PoolUse(write=0, read=1)
    assert checked_out(db).total == 0


async def test_unit_rejects_write_after_commit_state(db: Database) -> None:
    """A settled unit (as while a response streams) refuses db.write but still reads."""
    async with db as unit:
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))
        await unit.settle(True)
        assert len((await db.read.execute(select(User))).scalars().all()) == 1
        with pytest.raises(UnitStateError, match="already committed"):
            _ = db.write


def test_engines_cannot_cross_event_loops(url: str) -> None:
    """Using a Database from a second event loop says to dispose it in the first."""
    import asyncio

    from sanic_sqlalchemy.errors import EventLoopMismatchError

    db = Database(url)

    async def use() -> None:
        async with db:
            await db.read.execute(text("SELECT 1"))

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(use())
        with pytest.raises(EventLoopMismatchError, match=r"await db\.dispose\(\)"):
            asyncio.run(use())
        loop.run_until_complete(db.dispose())
    finally:
        loop.close()

    async def use_then_dispose() -> None:
        await use()  # after dispose(), a new loop gets fresh engines
        await db.dispose()

    asyncio.run(use_then_dispose())


async def test_text_round_trips_unicode(db: Database) -> None:
    """Four-byte characters survive a round trip (utf8mb4 on MySQL/MariaDB)."""
    async with db:
        db.write.add(User(id=1, name="Zoë 🍕", email="zoe@example.com"))
    async with db:
        assert (await db.read.get(User, 1)).name == "Zoë 🍕"  # type: ignore[union-attr]


async def test_plain_sql_strings_without_text(db: Database) -> None:
    """Both sessions take plain SQL strings, always with bound parameters (PRODUCT.md)."""
    hostile = "x'); DELETE FROM users; --"
    async with db:
        await db.write.execute(
            "INSERT INTO users (id, name, email) VALUES (:id, :name, :email)",  # type: ignore[arg-type]
            {"id": 1, "name": hostile, "email": "x@example.com"},
        )
        assert await db.write.scalar("SELECT name FROM users WHERE id = :id", {"id": 1}) == hostile  # type: ignore[arg-type]
    async with db:
        result = await db.read.execute("SELECT name FROM users WHERE id = :id", {"id": 1})  # type: ignore[arg-type]
        assert result.scalar_one() == hostile
        names = await db.read.scalars("SELECT name FROM users")  # type: ignore[arg-type]
        assert list(names) == [hostile]


async def test_core_writes_refresh_objects_read_before(db: Database) -> None:
    """A Core or text UPDATE through ``db.write`` shows in objects ``db.read`` loaded (rule 12)."""
    async with db:
        db.write.add(User(id=1, name="old", email="a@example.com"))
    async with db:
        user = (await db.read.execute(select(User).where(User.id == 1))).scalar_one()
        await db.write.execute(text("UPDATE users SET name = 'new' WHERE id = 1"))
        assert (await db.read.execute(select(User).where(User.id == 1))).scalar_one() is user
        assert user.name == "new"
        await db.write.commit()
        await db.write.execute(update(User).where(User.id == 1).values(name="newer"))
        await db.write.commit()
        assert (await db.read.get(User, 1)) is user
        assert user.name == "newer"


async def test_sessions_use_their_own_engines(db: Database) -> None:
    """``db.read`` is bound to the read-only engine, ``db.write`` to the write engine."""
    async with db:
        assert db.read.bind is db.engines.read
        assert db.write.bind is db.engines.write
        assert db.engines.read is not db.engines.write


async def test_on_commit_after_the_unit_settled_says_why(db: Database) -> None:
    """Registering a callback once the unit committed raises, saying to call it directly."""
    async with db as unit:
        await unit.settle(True)
        with pytest.raises(UnitStateError, match="no later commit will run the callback"):
            db.on_commit(print)


async def test_in_memory_sqlite_is_shared_by_both_pools_and_removed() -> None:
    """``sqlite+aiosqlite://`` gives one private database to both pools, deleted at dispose."""
    from sanic_sqlalchemy.testing import schema

    from .models import Base

    db = Database("sqlite+aiosqlite://")
    async with schema(db, Base.metadata):
        async with db:
            db.write.add(User(id=1, name="Ada", email="ada@example.com"))
        async with db:
            assert (await db.read.get(User, 1)) is not None
        path = db.engines.write.url.database
        assert path is not None and _exists(path)
    await db.dispose()
    assert not _exists(path)


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


async def test_plain_sql_takes_keyword_parameters(db: Database) -> None:
    """``execute("… :id", id=1)`` binds keyword arguments as parameters, as the
    hand-written wrappers did, on both sessions; a hostile value is only compared."""
    async with db:
        await db.write.execute(
            "INSERT INTO users (id, name, email) VALUES (:id, :name, :email)",
            id=1,
            name="Ada",
            email="ada@example.com",
        )
        found = await db.read.execute("SELECT name FROM users WHERE id = :id", id=1)
        assert found.scalar_one() == "Ada"
        hostile = await db.read.scalar(
            "SELECT count(*) FROM users WHERE name = :name", name="x'; DELETE FROM users; --"
        )
        assert hostile == 0
        mixed = await db.read.execute(
            "SELECT count(*) FROM users WHERE id = :id AND name = :name", {"id": 1}, name="Ada"
        )
        assert mixed.scalar_one() == 1
    assert await count_users(db) == 1
