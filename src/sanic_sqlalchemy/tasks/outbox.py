"""The tasks one unit deferred, from ``defer`` to the unit's commit.

Deferring costs no round trip: the call is kept here, tagged with the savepoint open at
the time, like an on-commit callback.  Right before the unit's transaction commits,
every task still kept is stored with one statement (per ``ROWS_PER_STATEMENT`` tasks)
on ``db.write``'s connection, in that transaction; a savepoint that rolls back drops
its tasks, a released one hands them to the enclosing one, and a transaction that ends
without committing drops all.
After the commit, the process runs the tasks that are due at once (the fast path): when
it will, it stores them already claimed by itself (``running``, its claim, a lease), so
that running them costs no claim; should it die first, the lease runs out and a
dispatcher takes them over.  Keyed tasks are stored waiting (another unit's task with
the key may already wait) and claimed after the commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError

from .carried import carried_statements
from .deferred import Deferred
from .finish import Finisher, Waiting
from .sql import LEASE, Claimed, in_chunks, insert_statement, new_claim, now_ms
from .table import missing_table

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    from .dispatcher import Runs
    from .wake import Waker


#: How long the claim of a task stored claimed lasts, in milliseconds.
_LEASE_MS = int(LEASE * 1000)

#: Tasks stored per statement: one statement for a unit's tasks up to this many (a
#: statement's bound parameters are limited: 32,767 with asyncpg, 12 per task here).
ROWS_PER_STATEMENT = 1000

#: Told, after a commit, the tasks it stored claimed by this process, the ids of those
#: due now still to claim (keyed), the commit's position, and the runs of the
#: committing loop that ``RunsHandler`` gave before the commit (``None``: none).
CommitHandler = Callable[[list[Claimed], list[str], "str | None", "Runs | None"], None]

#: Whether this process will run the due tasks right after the commit, given the runs
#: of the committing loop (``None``: none known).
RunsHereHandler = Callable[["Runs | None"], bool]

#: The runs of the committing loop (given): their finisher, whose waiting runs a commit
#: deletes with its tasks' statement, and their waker, which decides whether it notifies.
RunsHandler = Callable[[asyncio.AbstractEventLoop], "Runs | None"]


class Outbox:
    """One unit's deferred tasks (``unit.outbox``; see ``hooks.TaskOutbox``)."""

    __slots__ = (
        "_backend",
        "_claimed",
        "_claims_here",
        "_committed",
        "_entries",
        "_finishing",
        "_lane",
        "_loop",
        "_owes_wake",
        "_runs",
        "_runs_here",
        "_table",
    )

    def __init__(
        self,
        table: Table,
        backend: str,
        committed: CommitHandler,
        runs_here: RunsHereHandler,
        claims_here: bool = True,
        runs: RunsHandler | None = None,
        *,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._table = table
        self._backend = backend
        self._committed = committed
        #: Whether this process will run the due tasks right after the commit.
        self._runs_here = runs_here
        #: Whether the tasks it runs are stored already claimed (not when a relay
        #: publishes them to a queue, whose workers claim them).
        self._claims_here = claims_here
        #: Where runs that wrote nothing wait for their rows' deletion, which this
        #: commit's statement can carry, and what decides whether it notifies (both
        #: PostgreSQL only).
        self._runs = runs if backend == "postgresql" else None
        #: The loop the unit runs in (its engines'), known without asking for it.
        self._loop = loop
        #: Whose notification this commit left to be sent after it.
        self._owes_wake: Waker | None = None
        #: The runs the commit under way finishes, and their finisher.
        self._finishing: tuple[Finisher, Waiting] | None = None
        self._entries: dict[str, Deferred] = {}
        #: The runs of the committing loop, looked up once per commit.
        self._lane: Runs | None = None
        #: The tasks the commit under way stores claimed by this process.
        self._claimed: list[Claimed] = []

    def add(self, entry: Deferred) -> str:
        """Keep ``entry`` for the commit; a keyed task already kept wins (its id)."""
        task_id = entry.id
        self._entries.setdefault(task_id, entry)
        return task_id

    def before_commit(self, session: Session, connection: Connection | None) -> None:
        entries = self._entries
        self._claimed = []
        if not entries:
            return
        runs = self._lane = None if self._runs is None else self._runs(self._loop)
        runs_here = self._runs_here(runs)
        claim = new_claim() if runs_here and self._claims_here else None
        rows = [(entry, self._stored_by(entry, claim)) for entry in entries.values()]
        now = now_ms()
        lease_until = now + _LEASE_MS
        # Dispatchers need waking only for due tasks this process will not run at
        # once; delayed ones they find at a poll when they fall due.
        wake = not runs_here and any(entry.immediate for entry in entries.values())
        if wake and runs is not None and not runs.waker.with_commit():
            wake = False
            self._owes_wake = runs.waker
        finishing = self._rides_along(runs)
        if connection is None:
            connection = session.connection()
        if self._carried_by_commit(connection, rows, lease_until, now, wake, finishing):
            return
        dicts = [entry.row(claim, lease_until, now) for entry, claim in rows]
        for chunk in in_chunks(dicts, ROWS_PER_STATEMENT):
            statement, parameters = insert_statement(
                self._table, self._backend, chunk, wake=wake, finishing=finishing
            )
            finishing = []
            try:
                connection.execute(statement, parameters).close()
            except DBAPIError as error:
                missing = missing_table(error, self._table.name)
                if missing is None:
                    raise
                raise missing from error

    def _carried_by_commit(
        self,
        connection: Connection,
        rows: list[tuple[Deferred, str | None]],
        lease_until: int,
        now: int,
        wake: bool,
        finishing: list[Claimed],
    ) -> bool:
        """Hand the statements to the transaction's ``COMMIT``, which sends them in its
        own message (PostgreSQL through asyncpg: ``carried``); whether it took them.
        Not where the session's commit only releases a savepoint (the test kit joins
        the test's transaction so): no ``COMMIT`` would carry them."""
        if self._backend != "postgresql" or connection.in_nested_transaction():
            return False
        carry = getattr(connection.connection.driver_connection, "carry_on_commit", None)
        if carry is None:
            return False
        keyed = any(entry.keyed for entry, _ in rows)
        statements = carried_statements(
            self._table, rows, lease_until, now, keyed=keyed, wake=wake, finishing=finishing
        )
        return statements is not None and bool(carry(statements))

    def commit_error(self, error: BaseException) -> BaseException | None:
        """What to raise instead of ``error``, which failed the commit (the tasks'
        statements it carried may have failed it), or ``None``."""
        return missing_table(error, self._table.name)

    def _rides_along(self, runs: Runs | None) -> list[Claimed]:
        """The runs whose rows this commit deletes with its tasks' statement."""
        if runs is None:
            return []
        finisher = runs.finisher
        waiting = finisher.ride()
        if not waiting:
            return []
        self._finishing = (finisher, waiting)
        return waiting

    def _settle_finishing(self, *, deleted: bool) -> None:
        finishing, self._finishing = self._finishing, None
        if finishing is not None:
            finisher, waiting = finishing
            finisher.settle(waiting, deleted=deleted)

    def _stored_by(self, entry: Deferred, claim: str | None) -> str | None:
        """The claim ``entry`` is stored under: ``claim``, this process's, when it runs
        the task right after the commit (an unkeyed task due now), else none (stored
        waiting)."""
        if claim is None or not entry.immediate or entry.keyed:
            return None
        self._claimed.append(entry.claimed_by(claim))
        return claim

    def committed(self, commit_token: str | None) -> None:
        self._settle_finishing(deleted=True)
        waker = self._owes_wake
        if waker is not None:
            self._owes_wake = None
            waker.owed()
        entries = self._entries
        if not entries:
            return
        self._entries = {}
        claimed, self._claimed = self._claimed, []
        runs, self._lane = self._lane, None
        due: list[str] = []
        if len(claimed) < len(entries):
            mine = {one.id for one in claimed}
            due = [
                task_id
                for task_id, entry in entries.items()
                if entry.immediate and task_id not in mine
            ]
        if claimed or due:
            self._committed(claimed, due, commit_token, runs)

    def savepoint_released(self, savepoint: object, parent: object | None) -> None:
        for entry in self._entries.values():
            if entry.savepoint is savepoint:
                entry.savepoint = parent

    def savepoint_rolled_back(self, savepoint: object) -> None:
        self._entries = {
            task_id: entry
            for task_id, entry in self._entries.items()
            if entry.savepoint is not savepoint
        }

    def rolled_back(self) -> None:
        # Also told after every commit (its transaction ended too), with nothing left.
        self._settle_finishing(deleted=False)
        self._owes_wake = None
        self._lane = None
        self._entries.clear()
        self._claimed = []
