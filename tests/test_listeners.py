"""Listeners (PRODUCT.md, "Observability"), rule by rule, on SQLite, PostgreSQL and
MariaDB: the events and their fields, async listeners awaited, a raising listener
logged and changing nothing, every kind of unit heard, nothing installed without one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sanic import Request
from sanic.response import HTTPResponse, json
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from sanic_sqlalchemy import Database, SanicSQLAlchemyError, current_task
from sanic_sqlalchemy.errors import ListenerTypeError, UnknownEventError
from sanic_sqlalchemy.listeners import CallbackError, TaskEnd, UnitBegin, UnitEnd
from sanic_sqlalchemy.testing import rolled_back, schema
from sanic_sqlalchemy.unit import UnitOfWork

from .conftest import count_users, make_app
from .models import User

ADA = {"id": 1, "name": "Ada", "email": "ada@example.com"}
BOB = {"id": 2, "name": "Bob", "email": "bob@example.com"}
#: A statement the server answers with a real conflict, which @db.retry retries.
CONFLICT = {
    "postgresql": "DO $$ BEGIN RAISE EXCEPTION 'made to conflict' USING ERRCODE = '40001'; END $$",
    "mysql": "BEGIN NOT ATOMIC SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, "
    "MESSAGE_TEXT = 'made to conflict'; END",
}


class Heard:
    """Listens to every unit event of a database and keeps the events in order."""

    def __init__(self, db: Database) -> None:
        self.events: list[Any] = []
        self.ended = asyncio.Event()
        db.listen("unit_begin", self.events.append)
        db.listen("unit_end", self._ended)
        db.listen("callback_error", self.events.append)

    def _ended(self, event: UnitEnd) -> None:
        self.events.append(event)
        self.ended.set()

    @property
    def begins(self) -> list[UnitBegin]:
        return [event for event in self.events if isinstance(event, UnitBegin)]

    @property
    def ends(self) -> list[UnitEnd]:
        return [event for event in self.events if isinstance(event, UnitEnd)]

    async def end(self) -> UnitEnd:
        """The one unit_end heard (waiting for it up to five seconds)."""
        await asyncio.wait_for(self.ended.wait(), 5)
        [end] = self.ends
        return end


def listener_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "sanic_sqlalchemy" and "listener" in record.getMessage()
    ]


# -- registering ---------------------------------------------------------------------


async def test_an_unknown_event_name_is_refused_with_the_valid_names(db: Database) -> None:
    """``db.listen`` and ``@db.listens_for`` refuse a name that is no event, in the
    library's own error type, listing the names that are."""
    expected = (
        "'unit_start' is not an event of sanic-sqlalchemy; listen for one of 'unit_begin', "
        "'unit_end', 'callback_error', 'task_end' (db.listen(\"unit_end\", record) or "
        '@db.listens_for("unit_end")).'
    )
    with pytest.raises(UnknownEventError) as refused:
        db.listen("unit_start", print)  # type: ignore[call-overload]
    assert str(refused.value) == expected
    assert isinstance(refused.value, SanicSQLAlchemyError)
    assert isinstance(refused.value, ValueError)
    with pytest.raises(UnknownEventError, match="'unit_start' is not an event"):
        db.listens_for("unit_start")  # type: ignore[call-overload]
    async with db as unit:
        pass
    assert type(unit) is UnitOfWork, "a refused listener installed something"


async def test_a_listener_must_be_callable(db: Database) -> None:
    """A listener that cannot be called is refused when it is registered."""
    with pytest.raises(ListenerTypeError, match=r"needs a function .* got 42"):
        db.listen("unit_end", 42)  # type: ignore[call-overload]
    assert isinstance(ListenerTypeError("x"), TypeError)


async def test_listen_and_listens_for_register_alike_in_order(db: Database) -> None:
    """``@db.listens_for`` returns the function unchanged; listeners are called in the
    order they were registered, whichever way."""
    order: list[str] = []

    def first(event: UnitEnd) -> None:
        order.append("first")

    db.listen("unit_end", first)

    @db.listens_for("unit_end")
    def second(event: UnitEnd) -> None:
        order.append("second")

    assert second.__name__ == "second" and callable(second)
    async with db:
        pass
    assert order == ["first", "second"]


async def test_a_database_without_unit_listeners_keeps_plain_units(db: Database) -> None:
    """Nothing is installed until a unit listener is registered: units stay plain
    ``UnitOfWork`` objects (a ``task_end`` listener alone changes nothing for units),
    and a unit opened before the registration is not told."""
    async with db as unit:
        pass
    assert type(unit) is UnitOfWork
    db.listen("task_end", lambda event: None)
    async with db as unit:
        pass
    assert type(unit) is UnitOfWork
    async with db as before:
        heard = Heard(db)
        async with db as joined:
            pass
    assert joined is before
    assert heard.events == []
    async with db as after:
        pass
    assert type(after) is not UnitOfWork and isinstance(after, UnitOfWork)
    assert [event.unit for event in heard.events] == [after, after]


# -- the events of a unit ----------------------------------------------------------------


async def test_begin_and_end_carry_the_unit_of_async_with(db: Database) -> None:
    """``unit_begin`` and ``unit_end`` carry the object of ``async with db as unit``;
    a unit that only read ends ``no_write`` with its statistics and its duration."""
    heard = Heard(db)
    started = time.perf_counter()
    async with db as unit:
        assert [event.unit for event in heard.events] == [unit]
        await db.read.execute(select(User))
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    begin, end = heard.events
    assert isinstance(begin, UnitBegin) and isinstance(end, UnitEnd)
    assert begin.unit is unit and end.unit is unit
    assert (end.outcome, end.error) == ("no_write", None)
    assert end.stats is unit.stats and end.stats.read_statements == 1
    assert 0.02 <= end.duration <= elapsed
    assert (begin.name, end.name) == ("unit_begin", "unit_end")


async def test_a_unit_that_writes_ends_committed(db: Database) -> None:
    """A unit whose write transaction commits ends ``committed``."""
    heard = Heard(db)
    async with db:
        db.write.add(User(**ADA))
    end = heard.ends[0]
    assert (end.outcome, end.error, end.stats.write_statements > 0) == ("committed", None, True)
    assert await count_users(db) == 1


async def test_an_exception_rolls_back_and_is_the_error(db: Database) -> None:
    """A unit left with an exception ends ``rolled_back`` with that exception."""
    heard = Heard(db)
    failure = LookupError("no such order")
    with pytest.raises(LookupError):
        async with db:
            db.write.add(User(**ADA))
            await db.write.flush()
            raise failure
    end = heard.ends[0]
    assert (end.outcome, end.error) == ("rolled_back", failure)
    assert await count_users(db) == 0


async def test_a_failing_commit_is_the_error(db: Database) -> None:
    """A unit whose commit fails ends ``rolled_back`` with the commit's error."""
    async with db:
        db.write.add(User(**ADA))
    heard = Heard(db)
    with pytest.raises(IntegrityError):
        async with db:
            db.write.add(User(id=2, name="Ada again", email=ADA["email"]))
    end = heard.ends[0]
    assert end.outcome == "rolled_back"
    assert isinstance(end.error, IntegrityError)


async def test_the_outcome_is_that_of_the_last_write_transaction(url: str, db: Database) -> None:
    """With ``commit_on_exit=False``: committed when the last write transaction was
    committed by hand, rolled back when work was left uncommitted (flushed or not) or
    rolled back, no write when ``db.write`` was given nothing."""
    manual = Database(url, commit_on_exit=False)
    heard = Heard(manual)
    try:
        async with manual:
            manual.write.add(User(**ADA))
            await manual.write.commit()
        async with manual:
            manual.write.add(User(**BOB))
            await manual.write.flush()  # left uncommitted
        async with manual:
            manual.write.add(User(**BOB))  # never sent, dropped
        async with manual:
            await manual.write.execute(text("DELETE FROM users"))
            await manual.write.commit()
            manual.write.add(User(**BOB))
            await manual.write.flush()
            await manual.write.rollback()
        async with manual:
            await manual.read.execute(select(User))
    finally:
        await manual.dispose()
    assert [end.outcome for end in heard.ends] == [
        "committed",
        "rolled_back",
        "rolled_back",
        "rolled_back",
        "no_write",
    ]
    assert [end.error for end in heard.ends] == [None] * 5


async def test_a_nested_block_joins_and_is_not_a_unit_of_its_own(db: Database) -> None:
    """A nested ``async with db:`` joins the open unit: one begin, one end."""
    heard = Heard(db)
    async with db as outer, db as inner:
        db.write.add(User(**ADA))
    assert inner is outer
    assert [type(event) for event in heard.events] == [UnitBegin, UnitEnd]


async def test_async_listeners_are_awaited_before_the_unit_goes_on(db: Database) -> None:
    """Async listeners are awaited: ``unit_begin``'s before the block's body runs (the
    unit is opened in async code), ``unit_end``'s before the block is left."""
    done: list[str] = []

    @db.listens_for("unit_begin")
    async def began(event: UnitBegin) -> None:
        await asyncio.sleep(0.01)
        done.append("begin")

    @db.listens_for("unit_end")
    async def ended(event: UnitEnd) -> None:
        await asyncio.sleep(0.01)
        done.append(f"end {event.outcome}")

    async with db:
        assert done == ["begin"]
        db.write.add(User(**ADA))
    assert done == ["begin", "end committed"]


async def test_a_raising_listener_is_logged_and_changes_nothing(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Listeners that raise, sync or async, at begin or end, are logged with their
    traceback; the unit commits, the block goes on and the other listeners are called."""
    heard_after: list[str] = []

    def sync_failure(event: Any) -> None:
        raise RuntimeError(f"sync {event.name}")

    async def async_failure(event: Any) -> None:
        await asyncio.sleep(0)
        raise RuntimeError(f"async {event.name}")

    for name in ("unit_begin", "unit_end"):
        db.listen(name, sync_failure)  # type: ignore[call-overload]
        db.listen(name, async_failure)  # type: ignore[call-overload]
        db.listen(name, lambda event: heard_after.append(event.name))  # type: ignore[call-overload]
    with caplog.at_level(logging.ERROR, logger="sanic_sqlalchemy"):
        async with db:
            db.write.add(User(**ADA))
    assert heard_after == ["unit_begin", "unit_end"]
    errors = listener_errors(caplog)
    assert [str(record.exc_info[1]) for record in errors if record.exc_info] == [
        "sync unit_begin",
        "async unit_begin",
        "sync unit_end",
        "async unit_end",
    ]
    assert errors[0].getMessage().startswith("the unit_begin listener ")
    assert errors[0].getMessage().endswith("sync_failure raised; it changes nothing")
    assert await count_users(db) == 1


# -- on-commit callbacks that raise --------------------------------------------------------


async def test_callback_error_names_the_unit_and_the_registered_callable(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """``callback_error`` carries the unit, the callable registered with
    ``db.on_commit`` and its error; the ``on_callback_error`` hook is still called,
    later callbacks still run, and a raising ``callback_error`` listener changes nothing."""
    heard = Heard(db)
    hooked: list[tuple[BaseException, Any]] = []
    db.on_callback_error = lambda error, callback: hooked.append((error, callback))
    db.listen("callback_error", lambda event: 1 / 0)
    ran: list[str] = []

    async def send_receipt(user_id: int) -> None:
        raise ConnectionError(f"mail server down for {user_id}")

    with caplog.at_level(logging.ERROR, logger="sanic_sqlalchemy"):
        async with db as unit:
            db.write.add(User(**ADA))
            db.on_commit(send_receipt, 1)
            db.on_commit(ran.append, "after")
    [failed] = [event for event in heard.events if isinstance(event, CallbackError)]
    assert failed.unit is unit and failed.callback is send_receipt
    assert isinstance(failed.error, ConnectionError)
    assert hooked == [(failed.error, send_receipt)]
    assert ran == ["after"]
    assert [type(event) for event in heard.events] == [UnitBegin, CallbackError, UnitEnd]
    assert heard.ends[0].outcome == "committed"
    [logged] = listener_errors(caplog)
    assert logged.exc_info is not None and isinstance(logged.exc_info[1], ZeroDivisionError)


# -- every kind of unit ----------------------------------------------------------------


@pytest.mark.backends("postgresql", "mysql")
async def test_each_retry_attempt_is_a_unit(db: Database, backend: str) -> None:
    """Every attempt of ``@db.retry`` is heard: the one that hit a real conflict ends
    ``rolled_back`` with it, the next ``committed``."""
    heard = Heard(db)
    attempts: list[UnitOfWork] = []

    @db.retry(attempts=2, backoff=0)
    async def register() -> None:
        attempts.append(db.current_unit())
        db.write.add(User(**ADA))
        if len(attempts) == 1:
            await db.write.execute(text(CONFLICT[backend]))

    await register()
    assert [event.unit for event in heard.events] == [attempts[0]] * 2 + [attempts[1]] * 2
    first, second = heard.ends
    assert first.outcome == "rolled_back" and "made to conflict" in str(first.error)
    assert (second.outcome, second.error) == ("committed", None)
    assert await count_users(db) == 1


@pytest.fixture
async def tasks_db(db: Database) -> AsyncIterator[Database]:
    """``db`` with its tasks table; the tasks run only when a test runs them."""
    db.tasks.run_after_commit = False
    async with schema(db, db.tasks.metadata):
        yield db
        await db.tasks.stop(0)


async def test_a_task_run_is_a_unit_and_ends_with_task_end(
    tasks_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A task's run is a unit heard like any other; ``task_end`` carries the task as
    ``current_task()`` gives it, the outcome (done, retry, dead), the error and the
    duration; a raising ``task_end`` listener changes nothing."""
    db = tasks_db
    heard = Heard(db)
    ended: list[TaskEnd] = []
    inside: list[Any] = []
    db.listen("task_end", lambda event: 1 / 0)
    db.listen("task_end", ended.append)

    @db.task(name="test.welcome")
    async def welcome(user_id: int) -> None:
        inside.append(current_task())
        db.write.add(User(id=user_id, name="Ada", email="ada@example.com"))

    @db.task(name="test.flaky", max_attempts=2, backoff=0)
    async def flaky() -> None:
        inside.append(current_task())
        raise ConnectionError("the mail server said no")

    async with db:
        done_id = welcome.defer(1)
        flaky_id = flaky.defer()
    heard.events.clear()
    with caplog.at_level(logging.ERROR, logger="sanic_sqlalchemy"):
        assert await db.tasks.run_pending() == 3  # welcome, flaky twice
    assert sorted((event.task.id, event.outcome) for event in ended) == sorted(
        [(done_id, "done"), (flaky_id, "retry"), (flaky_id, "dead")]
    )
    for event in ended:
        assert any(event.task is info for info in inside), "not the object current_task() gave"
        assert event.duration > 0
        if event.outcome == "done":
            assert event.error is None
        else:
            assert isinstance(event.error, ConnectionError)
    assert [e.task.attempt for e in ended if e.task.id == flaky_id] == [1, 2]
    outcomes = sorted(end.outcome for end in heard.ends)
    assert outcomes == ["committed", "no_write", "no_write"]  # flaky writes nothing
    assert len(listener_errors(caplog)) == 3
    assert await count_users(db) == 1
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 1}


async def test_units_of_a_rolled_back_test_are_heard(db: Database) -> None:
    """The test kit's units (savepoints of the test's transaction) are heard too."""
    heard = Heard(db)
    async with rolled_back(db):
        async with db as unit:
            db.write.add(User(**ADA))
        assert await count_users(db) == 1
    assert await count_users(db) == 0
    assert next(end.unit for end in heard.ends) is unit
    assert [end.outcome for end in heard.ends] == ["committed", "no_write", "no_write"]


# -- Sanic requests ---------------------------------------------------------------------


@pytest.fixture
async def served(db: Database, serve: Any) -> Any:
    """An app whose routes take each path a request's unit can end by; the handlers
    note their unit in ``app.ctx.units``."""
    app = make_app("listeners")
    app.ctx.units = []
    app.ctx.streamed = asyncio.Event()
    app.ctx.reached = asyncio.Event()

    def note_unit() -> None:
        app.ctx.units.append(db.current_unit())

    @app.post("/users")
    async def create(request: Request) -> HTTPResponse:
        db.write.add(User(**request.json))
        note_unit()
        return json({"created": True}, status=201)

    @app.get("/users")
    async def listing(request: Request) -> HTTPResponse:
        note_unit()
        return json({"users": len((await db.read.scalars(select(User))).all())})

    @app.post("/refused")
    async def refused(request: Request) -> HTTPResponse:
        db.write.add(User(**ADA))
        note_unit()
        return json({"error": "no"}, status=409)

    @app.post("/raises")
    async def raises(request: Request) -> HTTPResponse:
        db.write.add(User(**ADA))
        note_unit()
        raise LookupError("no such user")

    @app.post("/stream")
    async def stream(request: Request) -> None:
        db.write.add(User(**ADA))
        note_unit()
        response = await request.respond(content_type="text/plain")
        await response.send("users: ")
        await response.send(str(len((await db.read.scalars(select(User))).all())))
        await response.eof()
        app.ctx.streamed.set()

    @app.post("/slow")
    async def slow(request: Request) -> HTTPResponse:
        db.write.add(User(**ADA))
        await db.write.flush()
        note_unit()
        app.ctx.reached.set()
        await asyncio.sleep(30)
        return json({"finished": True})

    db.init_app(app)
    return await serve(app)


async def test_a_request_that_writes_is_heard_committed(db: Database, served: Any) -> None:
    """A request's unit is heard: the handler's unit, ended ``committed`` before the
    response is sent."""
    heard = Heard(db)
    response = await served.client.post("/users", json=ADA)
    assert response.status_code == 201
    assert heard.ended.is_set(), "the response came before the unit_end listener ran"
    [unit] = served.app.ctx.units
    assert [event.unit for event in heard.events] == [unit, unit]
    assert (heard.ends[0].outcome, heard.ends[0].error) == ("committed", None)


async def test_a_request_that_reads_ends_no_write(db: Database, served: Any) -> None:
    """A request that only reads ends ``no_write``, with its statistics."""
    heard = Heard(db)
    assert (await served.client.get("/users")).json() == {"users": 0}
    assert heard.ends[0].outcome == "no_write"
    assert heard.ends[0].stats.read_statements == 1


async def test_an_error_response_rolls_back_without_an_error(db: Database, served: Any) -> None:
    """A response of status 400 or more rolls back; no exception ended the unit."""
    heard = Heard(db)
    assert (await served.client.post("/refused")).status_code == 409
    assert (heard.ends[0].outcome, heard.ends[0].error) == ("rolled_back", None)


async def test_a_handler_exception_is_the_error(db: Database, served: Any) -> None:
    """An exception raised by the handler (answered by Sanic's exception handler) is the
    error of the request's unit."""
    heard = Heard(db)
    assert (await served.client.post("/raises")).status_code == 500
    end = heard.ends[0]
    assert end.outcome == "rolled_back"
    assert isinstance(end.error, LookupError) and end.error.args == ("no such user",)


async def test_a_failing_commit_in_a_request_is_the_error(db: Database, served: Any) -> None:
    """A request whose commit fails (answered 500) is heard with the commit's error."""
    assert (await served.client.post("/users", json=ADA)).status_code == 201
    heard = Heard(db)
    response = await served.client.post("/users", json={**BOB, "email": ADA["email"]})
    assert response.status_code == 500
    assert heard.ends[0].outcome == "rolled_back"
    assert isinstance(heard.ends[0].error, IntegrityError)


async def test_a_streaming_request_ends_after_its_stream(db: Database, served: Any) -> None:
    """A streaming response commits before its headers and its unit ends (and is heard)
    once the handler has streamed everything."""
    heard = Heard(db)
    response = await served.client.post("/stream")
    assert response.text == "users: 1"
    end = await heard.end()
    assert served.app.ctx.streamed.is_set()
    assert (end.outcome, end.error) == ("committed", None)
    assert end.stats.read_statements == 1


async def test_a_client_hanging_up_is_heard_rolled_back(db: Database, served: Any) -> None:
    """A client that hangs up mid-request: its unit rolls back and is heard, with the
    cancellation that ended its handler."""
    heard = Heard(db)
    port = int(served.url.rsplit(":", 1)[1])
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /slow HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(served.app.ctx.reached.wait(), 5)
    writer.close()
    await writer.wait_closed()
    end = await heard.end()
    assert end.unit is served.app.ctx.units[0]
    assert end.outcome == "rolled_back"
    assert isinstance(end.error, asyncio.CancelledError)
    assert await count_users(db) == 0


async def test_listeners_in_requests_are_awaited_and_change_no_response(
    db: Database, served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """In a request, async listeners are awaited before the response is sent (a request's
    unit is opened in synchronous code: its async ``unit_begin`` listeners are awaited
    when it ends, before the ``unit_end`` ones); raising ones change no response."""
    done: list[str] = []

    async def began(event: UnitBegin) -> None:
        await asyncio.sleep(0.01)
        done.append("begin")

    async def ended(event: UnitEnd) -> None:
        await asyncio.sleep(0.01)
        done.append(f"end {event.outcome}")

    def fails(event: Any) -> None:
        raise RuntimeError(event.name)

    db.listen("unit_begin", began)
    db.listen("unit_begin", fails)
    db.listen("unit_end", fails)
    db.listen("unit_end", ended)
    with caplog.at_level(logging.ERROR, logger="sanic_sqlalchemy"):
        response = await served.client.post("/users", json=ADA)
    assert response.status_code == 201
    assert done == ["begin", "end committed"]
    assert len(listener_errors(caplog)) == 2
    assert await count_users(db) == 1


async def test_a_listener_is_told_only_of_its_own_database(db: Database, url: str) -> None:
    """Listeners belong to one database: another database's units are not heard."""
    heard = Heard(db)
    other = Database(url)
    try:
        async with other:
            await other.read.execute(select(User))
    finally:
        await other.dispose()
    assert heard.events == []
