"""The relay's statements: which committed tasks to publish, and how a consumer runs one.

Publishing: a relay leases due ``pending`` tasks for ``PUBLISH_LEASE`` seconds (and
tasks whose consumer's claim expired, since that consumer died and its queue may not
deliver the message again), publishes them, and marks ``sent`` those the broker
confirmed; the others are released at once, and a relay that dies leaves leases that
expire.  Consuming: a queue's worker claims the delivered task by its id as a
dispatcher's run does (``running``, a claim of its own, one more attempt), from
``pending`` (the broker was quicker than the relay's mark), ``sent``, or ``running``
with an expired claim; a failed run puts it back to ``sent`` for the queue to retry,
or marks it ``dead``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

from ..sql import LEASE, Claimed, now_ms
from ..table import DEAD, PENDING, RUNNING, SENT

#: Seconds a relay holds the tasks it publishes (publishing takes milliseconds; a relay
#: that dies mid-way leaves them to another relay after this).
PUBLISH_LEASE = 30.0


@dataclass(frozen=True, slots=True)
class Leased:
    """A committed task a relay is about to publish."""

    id: str
    name: str
    queue: str
    payload: str
    max_attempts: int


async def lease(
    connection: AsyncConnection,
    table: Table,
    backend: str,
    limit: int,
    ids: Sequence[str] | None = None,
) -> tuple[str, list[Leased]]:
    """Lease up to ``limit`` tasks to publish (only among ``ids`` when given), in the
    connection's transaction, which the caller commits; return the lease and them."""
    c = table.c
    now = now_ms()
    token = uuid.uuid4().hex
    condition = or_(
        and_(
            c.state == PENDING,
            c.run_at <= now,
            or_(c.lease_until.is_(None), c.lease_until < now),
        ),
        and_(c.state == RUNNING, c.lease_until < now),
    )
    if ids is not None:
        condition = and_(c.id.in_(list(ids)), condition)
    values = {"state": PENDING, "claim": token, "lease_until": now + int(PUBLISH_LEASE * 1000)}
    columns = (c.id, c.name, c.queue, c.payload, c.max_attempts)
    pick = select(*columns).where(condition).order_by(c.run_at).limit(limit)
    if backend != "sqlite":
        rows = (await connection.execute(pick.with_for_update(skip_locked=True))).all()
        if rows:
            await connection.execute(
                update(table).where(c.id.in_([row.id for row in rows])).values(**values)
            )
        return token, [Leased(*row) for row in rows]
    # SQLite locks nothing a SELECT reads: the rows leased are those the UPDATE took.
    await connection.execute(
        update(table)
        .where(c.id.in_(pick.with_only_columns(c.id).scalar_subquery()))
        .values(**values)
    )
    rows = (await connection.execute(select(*columns).where(c.claim == token))).all()
    return token, [Leased(*row) for row in rows]


def sent_statement(table: Table, token: str, ids: Sequence[str]) -> Executable:
    """Marks ``sent`` the leased tasks whose publishing the broker confirmed (a task a
    consumer already took, or finished, is left alone)."""
    c = table.c
    return (
        update(table)
        .where(c.id.in_(list(ids)), c.claim == token, c.state == PENDING)
        .values(state=SENT, claim=None, lease_until=None)
    )


def release_statement(table: Table, token: str, ids: Sequence[str]) -> Executable:
    """Frees leased tasks whose publishing failed: the next relay pass tries them again."""
    c = table.c
    return (
        update(table)
        .where(c.id.in_(list(ids)), c.claim == token, c.state == PENDING)
        .values(claim=None, lease_until=None)
    )


async def take(connection: AsyncConnection, table: Table, task_id: str) -> Claimed | None:
    """Claim the task a queue delivered, for one run; ``None`` when it is done (gone),
    dead, or running under another live claim."""
    c = table.c
    now = now_ms()
    token = uuid.uuid4().hex
    result: CursorResult[Any] = await connection.execute(
        update(table)
        .where(
            c.id == task_id,
            or_(
                and_(c.state == PENDING, c.run_at <= now),
                c.state == SENT,
                and_(c.state == RUNNING, c.lease_until < now),
            ),
        )
        .values(
            state=RUNNING,
            claim=token,
            lease_until=now + int(LEASE * 1000),
            attempts=c.attempts + 1,
        )
    )
    if result.rowcount != 1:
        return None
    row = (
        await connection.execute(
            select(c.id, c.name, c.payload, c.attempts, c.max_attempts, c.error).where(
                c.id == task_id
            )
        )
    ).one()
    return Claimed(row.id, row.name, row.payload, row.attempts, row.max_attempts, token, row.error)


async def state_of(connection: AsyncConnection, table: Table, task_id: str) -> str | None:
    """The task's state, ``None`` once it is done (its row is gone)."""
    c = table.c
    state: str | None = (
        await connection.execute(select(c.state).where(c.id == task_id))
    ).scalar_one_or_none()
    return state


def returned_statement(table: Table, claimed: Claimed, *, dead: bool, error: str) -> Executable:
    """Hands a failed run's task back to its queue (``sent``: the queue retries it), or
    marks it ``dead``."""
    c = table.c
    return (
        update(table)
        .where(c.id == claimed.id, c.claim == claimed.claim)
        .values(state=DEAD if dead else SENT, claim=None, lease_until=None, error=error)
    )
