"""The tasks table's statements, per backend: store, claim, keep alive, finish.

* Store: one multi-row ``INSERT`` per unit that ignores a task whose id is already
  stored (a keyed task waiting to run); on PostgreSQL the same statement calls
  ``pg_notify`` (delivered at commit), which wakes the dispatchers at once, unless the
  committing process is about to run every due task itself (then waking every
  dispatcher of every worker would only have them look for nothing).
* Claim: due tasks (``pending`` and ``run_at`` passed) and tasks whose claim expired
  (``running`` and ``lease_until`` passed), oldest first, marked ``running`` with a new
  claim and one more attempt.  PostgreSQL and MariaDB lock the picked rows with
  ``FOR UPDATE SKIP LOCKED``, so dispatchers never wait for one another nor pick the
  same task; SQLite runs one writer at a time (one dispatcher, documented).
  A keyed task leaves its key's id when it is claimed (its row takes a fresh id), so
  that the key is free for the next ``defer`` while it runs.
* Finish: a run's writes commit with the ``DELETE`` of its row, which names the run's
  claim: a run whose claim was taken over deletes nothing and rolls back.  Runs that
  wrote nothing are finished together, one ``DELETE`` for all that end meanwhile.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable, Update

from .randomness import random_hex32
from .table import DEAD, PENDING, RUNNING

T = TypeVar("T")

#: Seconds a claim lasts unless its process renews it: a run whose process died or
#: hangs is taken over once its claim is this old.
LEASE = 20.0
#: Seconds between renewals of the claims of a process's runs.
HEARTBEAT = LEASE / 4
#: Runs one statement names at most (two parameters each).  However many ended or
#: hold claims (a backlog after the database stalled), each statement stays within
#: what every backend takes: PostgreSQL fails a list of a few thousand ``(id, claim)``
#: pairs ("stack depth limit exceeded"), asyncpg sends at most 32,767 parameters, an
#: SQLite built before 3.32 takes 999.
CLAIMS_PER_STATEMENT = 400


def now_ms() -> int:
    """The time as the tasks table counts it: milliseconds since the Unix epoch."""
    return int(time.time() * 1000)


def new_claim() -> str:
    """A claim's token: the rows a claim marks carry it, and only its runs finish them."""
    return random_hex32()  # as random as a UUID's hex, without building one


def is_keyed(task_id: str) -> bool:
    """Whether ``task_id`` is a key's (``Task.keyed_id``: a version-5 UUID; others are 4)."""
    return task_id[14:15] == "5"


@dataclass(slots=True)
class Claimed:
    """One task a run has claimed: what the run needs to call it and to finish it
    (never changed once made; not frozen, which costs every claim more to make)."""

    id: str
    name: str
    payload: str
    #: This run's attempt (from 1; more than ``max_attempts`` when the run takes over a
    #: task whose last allowed run died).
    attempts: int
    max_attempts: int
    #: The claim this run holds; its commit and its failure name it.
    claim: str
    #: The error of the run before, if any (kept when a taken-over task dies).
    error: str | None
    #: The arguments, when the committing process has them (``payload.encode_call``):
    #: its run need not decode the payload.
    arguments: tuple[list[Any], dict[str, Any]] | None = None


def insert_statement(
    table: Table,
    backend: str,
    rows: Sequence[dict[str, Any]],
    *,
    wake: bool = True,
    finishing: Sequence[Claimed] = (),
) -> tuple[Executable, dict[str, Any] | list[dict[str, Any]]]:
    """One statement storing ``rows``, skipping ids already stored (keyed tasks); on
    PostgreSQL with ``wake``, it also wakes the dispatchers when it commits, and with
    ``finishing``, it also deletes the rows of those runs (that wrote nothing), each if
    its run still holds its claim.  With its parameters: the statement is built and
    compiled once, whatever the number of rows.

    PostgreSQL inserts one row from one parameter per column, and more from one array
    per column (``unnest``), so its text is the same for any number of rows (asyncpg
    prepares it once).  MariaDB and SQLite run the one-row statement over all rows
    (``executemany``: the MariaDB driver sends one multi-row ``INSERT``, SQLite runs it
    in its thread without a round trip each).  A multi-row ``VALUES`` would be compiled
    anew for every unit: SQLAlchemy cannot cache it."""
    if backend == "postgresql":
        one = len(rows) == 1
        if one:
            parameters: dict[str, Any] = dict(rows[0])
        else:
            parameters = {f"{c.name}s": [row[c.name] for row in rows] for c in table.c}
        if finishing:
            parameters["done_ids"] = [claimed.id for claimed in finishing]
            parameters["done_claims"] = [claimed.claim for claimed in finishing]
        return _postgresql_insert(table, wake, bool(finishing), one), parameters
    if finishing:
        raise ValueError("only PostgreSQL finishes runs in the statement storing tasks")
    many = list(rows) if len(rows) > 1 else dict(rows[0])
    return _one_row_insert(table, backend), many


def _array(name: str, column: Any) -> Any:
    """A parameter holding one array of ``column``'s values."""
    return bindparam(name, type_=ARRAY(column.type, dimensions=1))


@functools.lru_cache(maxsize=16)
def _postgresql_insert(table: Table, wake: bool, finishing: bool, one: bool) -> Executable:
    """One row from one parameter per column (the usual unit defers one task; arrays
    cost more to send), else rows from one array per column."""
    c = table.c
    if one:
        statement = pg_insert(table).values({column.name: bindparam(column.name) for column in c})
    else:
        names = [column.name for column in c]
        arrays = func.unnest(*(_array(f"{column.name}s", column) for column in c))
        rows = arrays.table_valued(*names).render_derived()
        statement = pg_insert(table).from_select(names, select(*rows.c))
    statement = statement.on_conflict_do_nothing(index_elements=[c.id])
    finished = None
    if finishing:
        # Runs that wrote nothing, finished with this commit rather than in a
        # transaction of their own (``finish.Finisher``).
        claims = func.unnest(_array("done_ids", c.id), _array("done_claims", c.claim))
        pairs = claims.table_valued("id", "claim").render_derived()
        finished = (
            delete(table)
            .where(tuple_(c.id, c.claim).in_(select(pairs.c.id, pairs.c.claim)))
            .cte("finished")
        )
    if wake:
        stored = statement.returning(c.id).cte("deferred")
        # One statement still: the notification is sent when the transaction commits.
        notify = select(func.pg_notify(table.name, cast(func.count(), String)))
        notify = notify.select_from(stored)
        # A data-modifying CTE must be at the top level (it runs even unreferenced).
        return notify if finished is None else notify.add_cte(finished)
    return statement if finished is None else statement.add_cte(finished)


@functools.lru_cache(maxsize=16)
def _one_row_insert(table: Table, backend: str) -> Executable:
    if backend == "mysql":
        statement = mysql_insert(table)
        # A no-op on a duplicate id (INSERT IGNORE would also hide other errors).
        return statement.on_duplicate_key_update(id=statement.inserted.id)
    return sqlite_insert(table).on_conflict_do_nothing(index_elements=[table.c.id])


def _keyed(table: Table) -> Any:
    """Rows whose id is a key's (``Task.keyed_id``: a version-5 UUID; others are version 4)."""
    return func.substr(table.c.id, 15, 1) == "5"


def _fresh_id(backend: str) -> Any:
    """A new random id, made by the server (PostgreSQL, SQLite) for a claimed keyed row."""
    if backend == "postgresql":
        return cast(func.gen_random_uuid(), String)
    # SQLite: 36 characters in the UUID layout (version 4), from randomblob().
    parts = [func.lower(func.hex(func.randomblob(size))) for size in (4, 2, 2, 2, 6)]
    return (
        parts[0] + "-" + parts[1] + "-4" + func.substr(parts[2], 2) + "-a"
        + func.substr(parts[3], 2) + "-" + parts[4]
    )  # fmt: skip


def _due(table: Table, now: Any) -> Any:
    c = table.c
    return or_(
        and_(c.state == PENDING, c.run_at <= now),
        and_(c.state == RUNNING, c.lease_until < now),
    )


def _claimed_columns(table: Table) -> tuple[Any, ...]:
    """The columns a claim reads back."""
    c = table.c
    return (c.id, c.name, c.payload, c.attempts, c.max_attempts, c.error)


async def claim(
    connection: AsyncConnection,
    table: Table,
    backend: str,
    limit: int,
    ids: Sequence[str] | None = None,
) -> list[Claimed]:
    """Claim up to ``limit`` due tasks (only among ``ids`` when given), in the
    connection's transaction, which the caller commits."""
    now = now_ms()
    token = new_claim()
    if backend == "mysql":
        return await _claim_mysql(connection, table, now, token, limit, ids)
    parameters: dict[str, Any] = {
        "now": now,
        "claim": token,
        "lease_until": now + int(LEASE * 1000),
        "limit": limit,
    }
    if ids is not None:
        parameters["ids"] = list(ids)
    result = await connection.execute(_claim_statement(table, backend, ids is not None), parameters)
    return [
        Claimed(row.id, row.name, row.payload, row.attempts, row.max_attempts, token, row.error)
        for row in result
    ]


@functools.lru_cache(maxsize=16)
def _claim_statement(table: Table, backend: str, among: bool) -> Executable:
    """PostgreSQL's and SQLite's claim, one statement built once: parameters ``now``,
    ``claim``, ``lease_until``, ``limit`` and, with ``among``, ``ids``."""
    c = table.c
    condition = _due(table, bindparam("now"))
    if among:
        condition = and_(c.id.in_(bindparam("ids", expanding=True)), condition)
    values = {
        "state": RUNNING,
        "claim": bindparam("claim"),
        "lease_until": bindparam("lease_until"),
        "attempts": c.attempts + 1,
        "id": case((_keyed(table), _fresh_id(backend)), else_=c.id),
    }
    pick = select(c.id).where(condition).order_by(c.run_at).limit(bindparam("limit"))
    if backend == "postgresql":
        # A CTE runs once: the rows locked are exactly the rows updated.
        chosen = pick.with_for_update(skip_locked=True).cte("chosen")
        statement = update(table).where(c.id == chosen.c.id)
    else:
        statement = update(table).where(c.id.in_(pick.scalar_subquery()))
    return statement.values(**values).returning(*_claimed_columns(table))


async def _claim_mysql(
    connection: AsyncConnection,
    table: Table,
    now: int,
    token: str,
    limit: int,
    ids: Sequence[str] | None,
) -> list[Claimed]:
    """MariaDB has no UPDATE ... RETURNING: lock and read, then mark."""
    c = table.c
    condition = _due(table, now)
    if ids is not None:
        condition = and_(c.id.in_(list(ids)), condition)
    picked = (
        await connection.execute(
            select(*_claimed_columns(table))
            .where(condition)
            .order_by(c.run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not picked:
        return []
    values: dict[str, Any] = {
        "state": RUNNING,
        "claim": token,
        "lease_until": now + int(LEASE * 1000),
        "attempts": c.attempts + 1,
    }
    fresh = {row.id: str(uuid.uuid4()) for row in picked if is_keyed(row.id)}
    if fresh:
        values["id"] = case(fresh, value=c.id, else_=c.id)
    await connection.execute(
        update(table).where(c.id.in_([row.id for row in picked])).values(**values)
    )
    return [
        Claimed(
            fresh.get(row.id, row.id),
            row.name,
            row.payload,
            row.attempts + 1,
            row.max_attempts,
            token,
            row.error,
        )
        for row in picked
    ]


def in_chunks(items: Sequence[T], size: int = CLAIMS_PER_STATEMENT) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``, one per statement."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def done_statement(table: Table, claimed: Claimed) -> tuple[Executable, dict[str, Any]]:
    """Deletes the task's row if this run still holds its claim (one row) — run in the
    transaction of the run's own writes, just before it commits."""
    return _done_statement(table), {"done_id": claimed.id, "done_claim": claimed.claim}


@functools.lru_cache(maxsize=16)
def _done_statement(table: Table) -> Executable:
    c = table.c
    return delete(table).where(c.id == bindparam("done_id"), c.claim == bindparam("done_claim"))


def done_many_statement(
    table: Table, claims: Sequence[Claimed]
) -> tuple[Executable, dict[str, Any]]:
    """Deletes the rows of runs that wrote nothing, each if its run still holds its claim
    (at most ``CLAIMS_PER_STATEMENT`` runs: ``in_chunks``)."""
    if len(claims) == 1:
        return done_statement(table, claims[0])
    pairs = [(claimed.id, claimed.claim) for claimed in claims]
    return _done_many_statement(table), {"done_pairs": pairs}


@functools.lru_cache(maxsize=16)
def _done_many_statement(table: Table) -> Executable:
    c = table.c
    return delete(table).where(tuple_(c.id, c.claim).in_(bindparam("done_pairs", expanding=True)))


def failed_statement(
    table: Table, claimed: Claimed, *, dead: bool, delay: float, error: str
) -> Executable:
    """Puts a failed run's task back to wait ``delay`` seconds, or marks it dead."""
    c = table.c
    return (
        update(table)
        .where(c.id == claimed.id, c.claim == claimed.claim)
        .values(
            state=DEAD if dead else PENDING,
            run_at=now_ms() + int(delay * 1000),
            claim=None,
            lease_until=None,
            error=error,
        )
    )


def _held(table: Table, claims: Sequence[Claimed]) -> Update:
    """An UPDATE of the rows these runs still hold (found by their primary key: MariaDB
    locks every row a statement scans; a claim taken over by another run is not ours)."""
    c = table.c
    return update(table).where(
        c.id.in_(sorted({claimed.id for claimed in claims})),
        c.claim.in_(sorted({claimed.claim for claimed in claims})),
    )


def renew_statement(table: Table, claims: Sequence[Claimed]) -> Executable:
    """Keeps the claims of a process's runs alive for another ``LEASE`` (found by their
    primary key: MariaDB locks every row a statement scans; at most
    ``CLAIMS_PER_STATEMENT`` runs: ``in_chunks``)."""
    return _held(table, claims).values(lease_until=now_ms() + int(LEASE * 1000))


def hand_back_statement(table: Table, claims: Sequence[Claimed]) -> Executable:
    """Returns runs stopped at a graceful stop to the waiting tasks, attempt not counted
    (at most ``CLAIMS_PER_STATEMENT`` runs: ``in_chunks``)."""
    c = table.c
    return _held(table, claims).values(
        state=PENDING, claim=None, lease_until=None, attempts=c.attempts - 1, run_at=now_ms()
    )


def requeue_statement(table: Table, task_id: str) -> Executable:
    """Gives a dead task its attempts back and makes it due now."""
    c = table.c
    return (
        update(table)
        .where(c.id == task_id, c.state == DEAD)
        .values(state=PENDING, attempts=0, run_at=now_ms(), claim=None, lease_until=None)
    )


def notify_statement(table: Table) -> Executable:
    """Wakes the dispatchers listening on PostgreSQL (``wake.Waker``)."""
    return select(func.pg_notify(table.name, "1"))


def counts_statement(table: Table) -> Executable:
    c = table.c
    return select(c.state, func.count()).group_by(c.state)


def dead_statement(table: Table) -> Executable:
    c = table.c
    return (
        select(c.id, c.name, c.payload, c.attempts, c.error)
        .where(c.state == DEAD)
        .order_by(c.created_at, c.id)
    )
