"""The tasks one unit deferred, from ``defer`` to the unit's commit.

Deferring costs no round trip: the call is kept here, tagged with the savepoint open at
the time, like an on-commit callback.  Right before the unit's transaction commits,
every task still kept is stored with one statement (per ``ROWS_PER_STATEMENT`` tasks)
on ``db.write``'s connection, in that transaction; a savepoint that rolls back drops
its tasks, a released one hands them to the enclosing one, and a transaction that ends
without committing drops all.
After the commit, the process runs the tasks that are due at once (the fast path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .sql import insert_statement

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.orm import Session


@dataclass(slots=True)
class Deferred:
    """One deferred call: the row to store, and the savepoint it waits for."""

    row: dict[str, Any]
    savepoint: object | None
    #: Due at the commit (no ``delay``): the committing process runs it at once.
    immediate: bool


#: Tasks stored per statement: one statement for a unit's tasks up to this many (a
#: statement's bound parameters are limited: 32,767 with asyncpg, 12 per task here).
ROWS_PER_STATEMENT = 1000

#: Told the ids of the tasks a commit stored that are due now, and the commit's position.
CommitHandler = Callable[[list[str], "str | None"], None]


class Outbox:
    """One unit's deferred tasks (``unit.outbox``; see ``hooks.TaskOutbox``)."""

    __slots__ = ("_backend", "_committed", "_entries", "_runs_here", "_table")

    def __init__(
        self,
        table: Table,
        backend: str,
        committed: CommitHandler,
        runs_here: Callable[[], bool],
    ) -> None:
        self._table = table
        self._backend = backend
        self._committed = committed
        #: Whether this process will run the due tasks right after the commit.
        self._runs_here = runs_here
        self._entries: dict[str, Deferred] = {}

    def add(self, entry: Deferred) -> str:
        """Keep ``entry`` for the commit; a keyed task already kept wins (its id)."""
        task_id: str = entry.row["id"]
        self._entries.setdefault(task_id, entry)
        return task_id

    def before_commit(self, session: Session) -> None:
        entries = self._entries
        if entries:
            rows = [entry.row for entry in entries.values()]
            # Dispatchers need waking only for due tasks this process will not run at
            # once; delayed ones they find at a poll when they fall due.
            wake = any(entry.immediate for entry in entries.values()) and not self._runs_here()
            connection = session.connection()
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                chunk = rows[start : start + ROWS_PER_STATEMENT]
                statement = insert_statement(self._table, self._backend, chunk, wake=wake)
                connection.execute(statement).close()

    def committed(self, commit_token: str | None) -> None:
        entries, self._entries = self._entries, {}
        due = [task_id for task_id, entry in entries.items() if entry.immediate]
        if due:
            self._committed(due, commit_token)

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
        self._entries.clear()
