"""``@db.retry`` against real conflicts: PostgreSQL serialization failures and deadlocks,
MariaDB deadlocks, in plain functions and in Sanic handlers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sanic import Request
from sanic.response import HTTPResponse, json
from sqlalchemy import Integer, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import ConfigurationError, Database, SanicSQLAlchemyError
from sanic_sqlalchemy.errors import UnitStateError
from sanic_sqlalchemy.retry import is_conflict
from sanic_sqlalchemy.testing import schema

from .conftest import make_app


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "retry_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(Integer)


@pytest.fixture
async def accounts(url: str) -> AsyncIterator[Database]:
    """Two accounts of balance 0."""
    database = Database(url, pool_size=4, pool_timeout=10)
    async with schema(database, Base.metadata):
        async with database:
            database.write.add_all([Account(id=1, balance=0), Account(id=2, balance=0)])
        yield database
    await database.dispose()


async def _balances(db: Database) -> list[int]:
    async with db:
        rows = await db.read.scalars(select(Account.balance).order_by(Account.id))
        return list(rows)


class Attempts:
    """Counts the attempts of each caller and which of them committed."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.committed: list[str] = []

    def begin(self, db: Database, caller: str) -> int:
        self.started.append(caller)
        number = self.started.count(caller)
        db.on_commit(self.committed.append, f"{caller}#{number}")
        return number


async def _serializable(db: Database) -> None:
    await db.write.connection(execution_options={"isolation_level": "SERIALIZABLE"})


# -- conflicts on PostgreSQL and MariaDB ----------------------------------------


@pytest.mark.backends("postgresql")
async def test_a_serialization_failure_is_retried(accounts: Database) -> None:
    db = accounts
    attempts = Attempts()
    both_read = asyncio.Barrier(2)

    @db.retry(backoff=0.01)
    async def deposit(caller: str, amount: int) -> int:
        number = attempts.begin(db, caller)
        await _serializable(db)
        balance = await db.write.scalar(select(Account.balance).where(Account.id == 1))
        if number == 1:
            await both_read.wait()  # both read 0: one of the two updates must fail
        await db.write.execute(
            update(Account).where(Account.id == 1).values(balance=balance + amount)
        )
        return number

    results = await asyncio.gather(deposit("a", 10), deposit("b", 5))
    assert sorted(results) == [1, 2]
    assert await _balances(db) == [15, 0]
    assert len(attempts.started) == 3
    # The attempt that failed never ran its callback; the two that committed did.
    retried = "a" if results[0] == 2 else "b"
    assert sorted(attempts.committed) == sorted([f"{retried}#2", f"{'ab'.strip(retried)}#1"])


async def _deadlocking(db: Database, tally: Attempts, **policy: Any) -> Callable[..., Any]:
    """Two transfers that lock the accounts in opposite orders: a real deadlock."""
    first_locks = asyncio.Barrier(2)

    @db.retry(backoff=0.01, **policy)
    async def transfer(caller: str, first: int, second: int) -> int:
        number = tally.begin(db, caller)
        if db.settings.backend == "postgresql":
            # Detect it in 50 ms rather than the default second (this transaction only).
            await db.write.execute(text("SET LOCAL deadlock_timeout = '50ms'"))
        for account in (first, second):
            await db.write.execute(
                update(Account).where(Account.id == account).values(balance=Account.balance + 1)
            )
            if account == first and number == 1:
                await first_locks.wait()  # each holds one row and wants the other's
        return number

    return transfer


@pytest.mark.backends("postgresql", "mysql")
async def test_a_deadlock_is_retried(accounts: Database) -> None:
    attempts = Attempts()
    transfer = await _deadlocking(accounts, attempts)
    results = await asyncio.gather(transfer("a", 1, 2), transfer("b", 2, 1))
    assert sorted(results) == [1, 2]
    assert await _balances(accounts) == [2, 2]
    assert len(attempts.started) == 3 and len(attempts.committed) == 2


@pytest.mark.backends("postgresql", "mysql")
async def test_the_last_attempts_conflict_is_raised(accounts: Database) -> None:
    attempts = Attempts()
    transfer = await _deadlocking(accounts, attempts, attempts=1)
    results = await asyncio.gather(transfer("a", 1, 2), transfer("b", 2, 1), return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], DBAPIError) and is_conflict(failures[0])
    assert len(attempts.started) == 2 and len(attempts.committed) == 1
    assert await _balances(accounts) == [1, 1]  # the victim's writes were rolled back


# -- what is not retried, and where it refuses ------------------------------------


async def test_other_errors_are_not_retried(accounts: Database) -> None:
    db = accounts
    calls: list[int] = []

    @db.retry
    async def duplicate() -> None:
        calls.append(1)
        db.write.add(Account(id=1, balance=99))

    with pytest.raises(IntegrityError):
        await duplicate()
    assert calls == [1]
    assert await _balances(db) == [0, 0]


async def test_an_explicit_commit_inside_a_retry_is_refused(accounts: Database) -> None:
    """``await db.write.commit()`` in a retried function raises ``UnitStateError`` saying
    why (a conflict after it would make the retry commit its work and run its callbacks
    a second time): the attempt rolls back, no callback runs, nothing is retried."""
    db = accounts
    calls: list[str] = []

    @db.retry
    async def pay() -> None:
        calls.append("attempt")
        await db.write.execute(update(Account).where(Account.id == 1).values(balance=5))
        db.on_commit(calls.append, "receipt")
        await db.write.commit()

    with pytest.raises(UnitStateError, match=r"inside @db\.retry: a retry runs the whole"):
        await pay()
    assert calls == ["attempt"]
    assert await _balances(db) == [0, 0]
    # Savepoints stay allowed: they commit with the attempt.

    @db.retry
    async def in_a_savepoint() -> None:
        async with db.write.begin():
            await db.write.execute(update(Account).where(Account.id == 2).values(balance=7))

    await in_a_savepoint()
    assert await _balances(db) == [0, 7]


async def test_a_retry_commits_each_attempt_with_commit_on_exit_off(url: str) -> None:
    """With ``commit_on_exit=False`` the retry still owns the transaction: the attempt
    that returns commits, without an explicit commit (which it refuses)."""
    db = Database(url, commit_on_exit=False)
    async with schema(db, Base.metadata):

        @db.retry
        async def open_account() -> None:
            db.write.add(Account(id=3, balance=1))

        await open_account()
        async with db:
            assert (await db.read.scalars(select(Account.balance))).all() == [1]
    await db.dispose()


async def test_each_call_is_a_unit_of_its_own(accounts: Database) -> None:
    db = accounts

    @db.retry
    async def credit(amount: int) -> str:
        db.write.add(Account(id=10 + amount, balance=amount))
        return "done"

    async with db as outer:
        await db.read.execute(select(Account))  # reading first is fine
        assert await credit(3) == "done"
        # Committed by its own unit, already visible to another connection.
        assert await _balances(db) == [0, 0, 3]
        assert not outer.wrote
        assert outer.stats.write_statements >= 1  # the retried unit's, taken over
    assert await credit(4) == "done"  # outside any unit too


async def test_inside_a_unit_that_has_written_it_refuses(accounts: Database) -> None:
    db = accounts
    calls: list[int] = []

    @db.retry
    async def noop() -> None:
        calls.append(1)

    async with db:
        db.write.add(Account(id=5, balance=5))
        await db.write.flush()
        with pytest.raises(SanicSQLAlchemyError, match="has already written"):
            await noop()
    assert calls == []


def test_bad_use_is_refused(tmp_path: Any) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ConfigurationError, match="needs an async function"):
        db.retry(lambda: None)
    with pytest.raises(ConfigurationError, match=r"attempts=\.\.\.\): must be at least 1"):
        db.retry(attempts=0)
    with pytest.raises(ConfigurationError, match="expected a number of seconds"):
        db.retry(backoff=-1)


# -- Sanic handlers -------------------------------------------------------------------


@pytest.mark.backends("postgresql")
async def test_a_handler_is_retried_and_answers_once(url: str, serve: Any) -> None:
    app = make_app("retry")
    db = Database()
    db.init_app(app, url=url)
    attempts = Attempts()
    both_read = asyncio.Barrier(2)

    @app.post("/deposit/<caller:str>/<amount:int>")
    @db.retry(backoff=0.01)
    async def deposit(_request: Request, caller: str, amount: int) -> HTTPResponse:
        number = attempts.begin(db, caller)
        await _serializable(db)
        balance = await db.write.scalar(select(Account.balance).where(Account.id == 1))
        if number == 1:
            await both_read.wait()
        await db.write.execute(
            update(Account).where(Account.id == 1).values(balance=balance + amount)
        )
        return json({"attempt": number})

    @app.post("/refused")
    @db.retry
    async def refused(_request: Request) -> HTTPResponse:
        await db.write.execute(update(Account).values(balance=1000))
        return json({"error": "conflict"}, status=409)

    served = await serve(app)
    async with schema(db, Base.metadata):
        async with db:
            db.write.add_all([Account(id=1, balance=0), Account(id=2, balance=0)])
        client: httpx.AsyncClient = served.client
        first, second = await asyncio.gather(
            client.post("/deposit/a/10"), client.post("/deposit/b/5")
        )
        assert (first.status_code, second.status_code) == (200, 200)
        assert sorted([first.json()["attempt"], second.json()["attempt"]]) == [1, 2]
        assert await _balances(db) == [15, 0]
        assert len(attempts.committed) == 2

        # A 4xx answer rolls the handler's unit back, as a request's own unit would.
        assert (await client.post("/refused")).status_code == 409
        assert await _balances(db) == [15, 0]


@pytest.mark.backends("postgresql")
async def test_a_retried_function_called_by_a_retried_one_joins_its_attempt(
    accounts: Database,
) -> None:
    """The inner call commits with the outer attempt, not on its own: when the outer
    attempt is retried, the inner one's effect happens once."""
    db = accounts
    both_read = asyncio.Barrier(2)
    attempts = Attempts()

    @db.retry
    async def record(note: str) -> None:
        db.write.add(Account(id=100 + len(attempts.started), balance=0))
        db.on_commit(attempts.committed.append, note)

    @db.retry(backoff=0.01)
    async def deposit(caller: str, amount: int) -> None:
        attempts.started.append(caller)
        number = attempts.started.count(caller)
        await _serializable(db)
        balance = await db.write.scalar(select(Account.balance).where(Account.id == 1))
        await record(f"{caller}#{number}")
        if number == 1:
            await both_read.wait()
        await db.write.execute(
            update(Account).where(Account.id == 1).values(balance=balance + amount)
        )

    await asyncio.gather(deposit("a", 10), deposit("b", 5))
    assert len(attempts.started) == 3
    assert len(attempts.committed) == 2  # the failed attempt's inner record rolled back
    assert (await _balances(db))[0] == 15
    assert len(await _balances(db)) == 4  # two accounts, two records


async def test_pending_writes_count_as_written(accounts: Database) -> None:
    db = accounts

    @db.retry
    async def noop() -> None:
        pass

    async with db:
        db.write.add(Account(id=7, balance=7))  # not flushed yet
        with pytest.raises(SanicSQLAlchemyError, match="has already written"):
            await noop()


@pytest.mark.backends("postgresql", "mysql")
async def test_every_attempt_is_in_the_callers_stats(accounts: Database) -> None:
    attempts = Attempts()
    transfer = await _deadlocking(accounts, attempts)
    async with accounts as outer:
        results = await asyncio.gather(transfer("a", 1, 2), transfer("b", 2, 1))
    assert sorted(results) == [1, 2]
    # Three attempts, the failed one included, counted in the unit that called them:
    # two updates each (and PostgreSQL's SET LOCAL).
    per_attempt = 3 if accounts.settings.backend == "postgresql" else 2
    assert outer.stats.write_statements == 3 * per_attempt


@pytest.mark.backends("mysql")
async def test_mariadbs_snapshot_isolation_conflict_is_retried(accounts: Database) -> None:
    """With ``innodb_snapshot_isolation`` (MariaDB's default from 11.6 on) a REPEATABLE
    READ write conflict is error 1020, not a deadlock."""
    db = accounts
    calls: list[int] = []

    async def interfere() -> None:
        async with db.engine.begin() as connection:
            await connection.execute(
                update(Account).where(Account.id == 1).values(balance=Account.balance + 1)
            )

    @db.retry(backoff=0.01)
    async def withdraw() -> None:
        calls.append(1)
        await db.write.execute(text("SET SESSION innodb_snapshot_isolation = ON"))
        await db.write.scalar(select(Account.balance).where(Account.id == 1))
        if len(calls) == 1:
            await interfere()
        await db.write.execute(
            update(Account).where(Account.id == 1).values(balance=Account.balance - 10)
        )

    await withdraw()
    assert calls == [1, 1]
    assert (await _balances(db))[0] == -9
