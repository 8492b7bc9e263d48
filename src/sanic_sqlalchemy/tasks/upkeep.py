"""Looking after the tasks table: ``db.tasks.counts()``, ``dead()`` and ``requeue()``,
shared by ``TaskRegistry`` as a base class (what they need of it is ``Tables``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select

from ..errors import TaskNotFoundError
from .host import TaskHost
from .payload import decode
from .sql import counts_statement, dead_statement, requeue_statement
from .table import DEAD, PENDING, RUNNING, SENT

if TYPE_CHECKING:
    from .relay import Relay


class Tables(TaskHost, Protocol):
    """What looking after the table needs of ``db.tasks``."""

    #: With a queue backend, what publishes the tasks (``counts()`` adds ``sent``).
    relay: Relay | None


@dataclass(frozen=True, slots=True)
class DeadTask:
    """A task out of attempts (``db.tasks.dead()``)."""

    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    attempts: int
    #: The last error, with its traceback.
    error: str | None


class Upkeep:
    """``counts``, ``dead`` and ``requeue`` of ``db.tasks``."""

    async def counts(self: Tables) -> dict[str, int]:
        """How many tasks wait (``pending``), run (``running``) or are ``dead``; with a
        queue backend also how many the broker holds (``sent``)."""
        counts = {PENDING: 0, RUNNING: 0, DEAD: 0}
        if self.relay is not None:
            counts[SENT] = 0
        async with self.transaction() as connection:
            for state, count in await connection.execute(counts_statement(self.table)):
                counts[state] = count
        return counts

    async def dead(self: Tables) -> list[DeadTask]:
        """The tasks out of attempts, oldest first, each with its last error."""
        async with self.transaction() as connection:
            rows = (await connection.execute(dead_statement(self.table))).all()
        dead = []
        for row in rows:
            args, kwargs = decode(row.payload)
            dead.append(DeadTask(row.id, row.name, args, kwargs, row.attempts, row.error))
        return dead

    async def requeue(self: Tables, task_id: str) -> None:
        """Give dead task ``task_id`` its attempts back: it runs again (as attempt 1)."""
        engines = self.db.engines
        async with self.transaction() as connection:
            result = await connection.execute(requeue_statement(self.table, task_id))
            if result.rowcount != 1:
                raise TaskNotFoundError(
                    f"db.tasks.requeue({task_id!r}): no dead task has this id (it ran, "
                    "is still waiting or running, or never existed); db.tasks.dead() "
                    "lists the dead ones."
                )
            if engines.backend.name == "postgresql":
                await connection.execute(select(func.pg_notify(self.table.name, "requeue")))
