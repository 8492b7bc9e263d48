"""On-commit callbacks: run after the commit, in order, never for work rolled back."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import event, select

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.testing import CommitRecorder

from .conftest import count_users
from .models import Order, User


def ada(user_id: int = 1) -> User:
    return User(id=user_id, name="Ada", email=f"ada{user_id}@example.com")


async def test_callbacks_run_in_order_sync_and_async(db: Database) -> None:
    """Sync and async callbacks run in registration order with their arguments."""
    calls: list[Any] = []

    async def async_callback(value: str, *, flag: bool) -> None:
        calls.append(("async", value, flag))

    async with db:
        db.write.add(ada())
        db.on_commit(calls.append, "first")
        db.on_commit(async_callback, "second", flag=True)
        db.on_commit(calls.append, "third")
        assert calls == []
    assert calls == ["first", ("async", "second", True), "third"]


async def test_callbacks_run_after_the_data_is_committed(db: Database) -> None:
    """A callback that opens its own unit already sees the committed row (rule 9)."""
    seen: list[int] = []

    async def check() -> None:
        seen.append(await count_users(db))

    async with db:
        db.write.add(ada())
        db.on_commit(check)
    assert seen == [1]


async def test_callback_runs_outside_the_unit(db: Database) -> None:
    """Inside a callback, ``async with db`` opens a new, independent unit."""
    units: list[object] = []

    async def inner() -> None:
        async with db as unit:
            units.append(unit)
            db.write.add(ada(2))

    async with db as outer:
        db.write.add(ada(1))
        db.on_commit(inner)
    assert units and units[0] is not outer
    assert await count_users(db) == 2


async def test_failing_callback_is_logged_reported_and_others_run(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises is logged at ERROR and reported; the rest still run (rule 9)."""
    reported: list[tuple[BaseException, Any]] = []
    ran: list[str] = []

    def broken(order: int) -> None:
        raise ValueError(f"receipt {order} failed")

    async def hook(error: BaseException, callback: Any) -> None:
        reported.append((error, callback))

    db.on_callback_error = hook
    with caplog.at_level(logging.ERROR, logger="sanic_sqlalchemy"):
        async with db:
            db.write.add(ada())
            db.on_commit(broken, 7)
            db.on_commit(ran.append, "after")
    assert ran == ["after"]
    assert len(reported) == 1
    assert isinstance(reported[0][0], ValueError)
    assert reported[0][1] is broken
    records = [r for r in caplog.records if r.name == "sanic_sqlalchemy"]
    assert records and records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert "broken" in records[0].getMessage()
    assert await count_users(db) == 1


async def test_hook_given_to_the_constructor(url: str) -> None:
    """``Database(..., on_callback_error=fn)`` sets the hook, called with the error."""
    reported: list[BaseException] = []
    db = Database(url, on_callback_error=lambda error, _callback: reported.append(error))
    try:
        async with db:
            db.on_commit(lambda: 1 / 0)
        assert isinstance(reported[0], ZeroDivisionError)
    finally:
        await db.dispose()


async def test_explicit_commit_runs_callbacks_before_returning(db: Database) -> None:
    """An explicit commit runs the callbacks registered before it, then returns (rule 7)."""
    recorder = CommitRecorder()
    async with db:
        db.write.add(ada())
        db.on_commit(recorder, "before")
        await db.write.commit()
        assert recorder.args == [("before",)]
        db.on_commit(recorder, "after")
        db.write.add(ada(2))
    assert recorder.args == [("before",), ("after",)]


async def test_explicit_rollback_drops_callbacks(db: Database) -> None:
    """``await db.write.rollback()`` drops the callbacks registered before it (rule 7)."""
    recorder = CommitRecorder()
    async with db:
        db.write.add(ada())
        await db.write.flush()
        db.on_commit(recorder, "dropped")
        await db.write.rollback()
        db.on_commit(recorder, "kept")
    assert recorder.args == [("kept",)]
    assert await count_users(db) == 0


async def test_rollback_without_transaction_drops_callbacks(db: Database) -> None:
    """A rollback drops callbacks even when no write transaction had begun."""
    recorder = CommitRecorder()
    async with db:
        db.on_commit(recorder, "dropped")
        await db.write.rollback()
    assert recorder.calls == []


async def test_savepoint_rollback_drops_its_callbacks(db: Database) -> None:
    """Callbacks of a savepoint that rolls back are dropped; the others run (rule 7)."""
    recorder = CommitRecorder()
    async with db:
        db.write.add(ada(1))
        db.on_commit(recorder, "outer")
        with pytest.raises(RuntimeError):
            async with db.write.begin_nested():
                db.write.add(ada(2))
                db.on_commit(recorder, "inner")
                raise RuntimeError("undo the savepoint")
    assert recorder.args == [("outer",)]
    assert await count_users(db) == 1


async def test_released_savepoint_waits_for_the_commit(db: Database) -> None:
    """Callbacks of a released savepoint run at the enclosing commit, not before (rule 7)."""
    recorder = CommitRecorder()
    async with db:
        db.write.add(ada(1))
        await db.write.flush()
        async with db.write.begin_nested():
            db.write.add(ada(2))
            db.on_commit(recorder, "inner")
            async with db.write.begin_nested():
                db.on_commit(recorder, "innermost")
        assert recorder.calls == []
    assert recorder.args == [("inner",), ("innermost",)]


async def test_nested_savepoint_rollback_inside_released_one(db: Database) -> None:
    """A rolled-back inner savepoint drops only its own callbacks."""
    recorder = CommitRecorder()
    async with db:
        db.write.add(ada(1))
        await db.write.flush()
        async with db.write.begin_nested():
            db.on_commit(recorder, "kept")
            savepoint = await db.write.begin_nested()
            db.on_commit(recorder, "dropped")
            await savepoint.rollback()
    assert recorder.args == [("kept",)]


async def test_after_commit_decorator(db: Database) -> None:
    """``@db.after_commit`` turns each call into an on-commit callback."""
    sent: list[str] = []

    @db.after_commit
    def send(address: str) -> None:
        sent.append(address)

    async with db:
        send("ada@example.com")
        assert sent == []
    assert sent == ["ada@example.com"]
    with pytest.raises(ZeroDivisionError):
        async with db:
            send("never")
            1 / 0  # noqa: B018
    assert sent == ["ada@example.com"]


async def test_post_process_defers_orm_event_listeners(db: Database) -> None:
    """``@db.post_process`` on an ``after_insert`` listener runs it only after commit."""
    created: list[str] = []

    @db.post_process
    def on_order_created(_mapper: Any, _connection: Any, order: Order) -> None:
        created.append(order.item)

    event.listen(Order, "after_insert", on_order_created)
    try:
        async with db:
            db.write.add(ada())
            await db.write.flush()
            db.write.add(Order(id=1, user_id=1, item="book"))
            await db.write.flush()
            assert created == []
        assert created == ["book"]
        with pytest.raises(RuntimeError):
            async with db:
                db.write.add(Order(id=2, user_id=1, item="lamp"))
                await db.write.flush()
                raise RuntimeError("roll the order back")
        assert created == ["book"]
        async with db:
            orders = (await db.read.execute(select(Order))).scalars().all()
            assert [order.item for order in orders] == ["book"]
    finally:
        event.remove(Order, "after_insert", on_order_created)


async def test_add_post_process_alias(db: Database) -> None:
    """``db.add_post_process`` is ``db.on_commit`` under the old wrapper's name."""
    recorder = CommitRecorder()
    async with db:
        db.add_post_process(recorder, 1)
    assert recorder.args == [(1,)]


async def test_callback_raising_cancelled_error_is_a_failure_not_a_cancellation(
    db: Database,
) -> None:
    """A callback that raises ``CancelledError`` itself is reported; the rest run, the unit ends."""
    import asyncio

    reported: list[BaseException] = []
    ran: list[str] = []

    def cancelled_inside() -> None:
        raise asyncio.CancelledError("a library's own timeout")

    db.on_callback_error = lambda error, _callback: reported.append(error)
    async with db:
        db.on_commit(cancelled_inside)
        db.on_commit(ran.append, "after")
    assert ran == ["after"]
    assert isinstance(reported[0], asyncio.CancelledError)
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0
