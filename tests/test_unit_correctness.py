"""Unit-of-work correctness (issue 8): a callback runs if and only if its data committed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sanic import Request
from sanic.response import HTTPResponse, json
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError

from sanic_sqlalchemy import Database, ReadOnlyError
from sanic_sqlalchemy.errors import UnitStateError
from sanic_sqlalchemy.testing import CommitRecorder, checked_out, schema

from .conftest import count_users, make_app
from .models import Base, Order, User


def ada(user_id: int = 1, email: str | None = None) -> User:
    return User(id=user_id, name="Ada", email=email or f"ada{user_id}@example.com")


async def seed(db: Database) -> None:
    async with db:
        db.write.add(ada())


@pytest.fixture
def created(db: Database) -> Iterator[list[str]]:
    """Items of the orders an ``@db.after_commit`` ``after_insert`` listener saw committed."""
    seen: list[str] = []

    @db.after_commit
    def on_order_created(_mapper: Any, _connection: Any, order: Order) -> None:
        seen.append(order.item)

    event.listen(Order, "after_insert", on_order_created)
    try:
        yield seen
    finally:
        event.remove(Order, "after_insert", on_order_created)


# -- 1. ORM-event callbacks when the commit itself flushes --------------------------


async def test_listener_callback_when_the_requests_commit_flushes(
    db: Database, serve: Any, created: list[str]
) -> None:
    """An ``@db.after_commit`` ``after_insert`` listener works in a handler that adds
    without flushing: the request's commit does the flush, then the callback runs."""
    app = make_app("listener")

    await seed(db)

    @app.post("/orders")
    async def place(_request: Request) -> HTTPResponse:
        db.write.add(Order(id=1, user_id=1, item="book"))
        return json({"id": 1}, status=201)

    db.init_app(app)
    served = await serve(app)
    assert (await served.client.post("/orders")).status_code == 201
    assert created == ["book"]
    async with db:
        assert list(await db.read.scalars(select(Order.item))) == ["book"]


async def test_listener_callback_when_the_units_commit_flushes(
    db: Database, created: list[str]
) -> None:
    """The same listener works when ``async with db:`` commits at its end without an
    explicit flush."""
    await seed(db)
    async with db:
        db.write.add(Order(id=1, user_id=1, item="book"))
        assert created == []
    assert created == ["book"]


async def test_listener_callback_when_an_explicit_commit_flushes(
    db: Database, created: list[str]
) -> None:
    """The same listener works when ``await db.write.commit()`` does the flush: the
    callback runs before ``commit()`` returns."""
    await seed(db)
    async with db:
        db.write.add(Order(id=1, user_id=1, item="book"))
        await db.write.commit()
        assert created == ["book"]
        db.write.add(Order(id=2, user_id=1, item="lamp"))
    assert created == ["book", "lamp"]


# -- 4. data thrown away by reset() or invalidate() ---------------------------------


@pytest.mark.parametrize("discard", ["reset", "invalidate"])
async def test_no_callback_after_the_write_session_discarded_its_data(
    db: Database, discard: str
) -> None:
    """After ``db.write.reset()`` or ``invalidate()`` threw a flushed write away, its
    callbacks never run; work and callbacks after it commit as usual."""
    recorder = CommitRecorder()
    async with db:
        db.write.add(ada(1))
        await db.write.flush()
        db.on_commit(recorder, "discarded")
        await getattr(db.write, discard)()
        db.write.add(ada(2))
        db.on_commit(recorder, "kept")
    assert recorder.args == [("kept",)]
    async with db:
        assert list(await db.read.scalars(select(User.id))) == [2]
    assert checked_out(db).total == 0


# -- 5. a commit that succeeded, then a later one that failed ------------------------


async def test_callbacks_of_a_commit_survive_a_later_failing_commit(db: Database) -> None:
    """Callbacks of a transaction committed through its own object still run when the
    unit's final commit then fails; those waiting for the failed commit do not."""
    recorder = CommitRecorder()
    with pytest.raises(IntegrityError):
        async with db:
            db.write.add(ada(1, "taken@example.com"))
            db.on_commit(recorder, "committed")
            transaction = db.write.get_transaction()
            assert transaction is not None
            await transaction.commit()
            db.write.add(ada(2, "taken@example.com"))  # refused at the final commit
            db.on_commit(recorder, "rolled back")
    assert recorder.args == [("committed",)]
    assert await count_users(db) == 1


async def test_callbacks_of_a_committed_begin_block_survive_a_failing_commit(url: str) -> None:
    """With ``commit_on_exit=False``, a committed ``begin()`` block's callbacks run at
    its end, whatever happens to a later commit of the same unit."""
    db = Database(url, commit_on_exit=False)
    recorder = CommitRecorder()
    try:
        async with schema(db, Base.metadata):
            with pytest.raises(IntegrityError):
                async with db:
                    async with db.write.begin():
                        db.write.add(ada(1, "taken@example.com"))
                        db.on_commit(recorder, "block")
                    db.write.add(ada(2, "taken@example.com"))
                    db.on_commit(recorder, "failed")
                    await db.write.commit()
            assert recorder.args == [("block",)]
            assert await count_users(db) == 1
    finally:
        await db.dispose()


async def test_text_writes_run_inside_the_request_commit(db: Database, serve: Any) -> None:
    """A handler's Core write commits with the request, and ``db.on_commit`` registered
    from a ``before_commit`` session listener during the final commit runs too."""
    app = make_app("before_commit")
    recorder = CommitRecorder()

    def before_commit(_session: Any) -> None:
        db.on_commit(recorder, "registered at commit")

    @app.post("/")
    async def create(_request: Request) -> HTTPResponse:
        event.listen(db.write.sync_session, "before_commit", before_commit)
        await db.write.execute(
            text("INSERT INTO users (id, name, email) VALUES (1, 'Ada', 'a@example.com')")
        )
        return json({"ok": True})

    db.init_app(app)
    served = await serve(app)
    assert (await served.client.post("/")).status_code == 200
    assert recorder.args == [("registered at commit",)]
    assert await count_users(db) == 1


# -- 8. held read connections and a write ------------------------------------------


async def test_held_read_connection_survives_a_write(db: Database) -> None:
    """A connection from ``db.read.connection()`` stays open across a write and the
    ``db.read`` queries after it, which see the write; it goes back at the unit's end."""
    await seed(db)
    count = select(func.count()).select_from(User)
    async with db:
        held = await db.read.connection()
        assert await held.scalar(count) == 1
        db.write.add(ada(2))
        await db.write.flush()
        assert list(await db.read.scalars(select(User.id).order_by(User.id))) == [1, 2]
        assert await held.scalar(count) == 1  # its own connection: committed rows only
        await db.write.commit()
        assert list(await db.read.scalars(select(User.id).order_by(User.id))) == [1, 2]
        assert await held.scalar(count) == 2
        db.write.add(ada(3))
        assert len(list(await db.read.scalars(select(User.id)))) == 3
        assert await held.scalar(count) == 2
    assert await count_users(db) == 3
    assert checked_out(db).total == 0


async def test_streamed_read_survives_a_write(db: Database) -> None:
    """A ``db.read.stream()`` being iterated goes on to its last row after a write and a
    ``db.read`` query in between."""
    async with db:
        db.write.add_all([ada(n) for n in range(1, 51)])
    async with db:
        ordered = select(User).order_by(User.id).execution_options(yield_per=2)
        users = await db.read.stream_scalars(ordered)
        first = await users.__anext__()
        db.write.add(Order(id=1, user_id=1, item="book"))
        await db.write.flush()
        assert list(await db.read.scalars(select(Order.item))) == ["book"]
        assert [first.id] + [user.id async for user in users] == list(range(1, 51))
    async with db:
        assert list(await db.read.scalars(select(Order.item))) == ["book"]
    assert checked_out(db).total == 0


async def test_read_connection_taken_after_a_write_sees_it_read_only(db: Database) -> None:
    """``db.read.connection()`` after a write sees the unit's writes, pending ones
    included, and still refuses to write."""
    async with db:
        db.write.add(ada(1))
        held = await db.read.connection()
        assert await held.scalar(select(User.name)) == "Ada"
        result = await held.exec_driver_sql("SELECT email FROM users")
        assert result.scalars().all() == ["ada1@example.com"]
        with pytest.raises(ReadOnlyError, match=r"refused this statement before sending it"):
            await held.execute(text("UPDATE users SET name = 'changed'"))
        with pytest.raises(UnitStateError, match=r"^run_sync\(\) is not available"):
            await held.run_sync(lambda connection: None)
        assert await held.scalar(select(User.name)) == "Ada"
        db.write.add(ada(2))
        assert len((await held.scalars(select(User.id))).all()) == 2
    assert await count_users(db) == 2
    assert checked_out(db).total == 0
