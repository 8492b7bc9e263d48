"""The table of deferred tasks: one row per task from its commit until it is done.

A task's row is inserted with the unit that deferred it and deleted in the transaction
that commits its run's writes, so a done task leaves nothing behind and the table holds
only work still to do (``pending``: waiting for ``run_at``; ``running``: claimed, its
claim kept alive until ``lease_until``) and ``dead`` tasks.  Times are milliseconds
since the Unix epoch by the clocks of the processes involved (integers: every backend
compares them the same way).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text

from ..errors import TasksTableMissingError

PENDING = "pending"
RUNNING = "running"
DEAD = "dead"
#: With a queue backend: published, and confirmed by the broker; its consumer marks it done.
SENT = "sent"


def task_table(name: str) -> Table:
    """The tasks table called ``name``, in a ``MetaData`` of its own (``db.tasks.metadata``,
    for Alembic's ``target_metadata`` beside the application's)."""
    metadata = MetaData()
    return Table(
        name,
        metadata,
        Column("id", String(36), primary_key=True),
        Column("name", String(255), nullable=False),
        Column("queue", String(255), nullable=False),
        #: ``{"args": [...], "kwargs": {...}}`` as JSON.
        Column("payload", Text, nullable=False),
        Column("state", String(10), nullable=False),
        #: Runs begun so far (a claim counts one; a run handed back gives it back).
        Column("attempts", Integer, nullable=False),
        Column("max_attempts", Integer, nullable=False),
        Column("run_at", BigInteger, nullable=False),
        Column("lease_until", BigInteger, nullable=True),
        #: The claim of the run under way: its commit checks that it still holds it.
        Column("claim", String(36), nullable=True),
        Column("created_at", BigInteger, nullable=False),
        #: The last failure, with its traceback.
        Column("error", Text, nullable=True),
        Index(f"ix_{name[:48]}_due", "state", "run_at"),
        Index(f"ix_{name[:48]}_lease", "state", "lease_until"),
    )


#: How PostgreSQL, MariaDB and SQLite say that a table does not exist.
_MISSING = ("does not exist", "doesn't exist", "no such table")


def missing_table(error: BaseException, name: str) -> TasksTableMissingError | None:
    """The error to raise instead of ``error`` when it says that table ``name`` does
    not exist (None otherwise)."""
    text = str(getattr(error, "orig", None) or error)
    if name not in text or not any(words in text for words in _MISSING):
        return None
    return TasksTableMissingError(
        f"the durable tasks' table {name!r} does not exist on this database: create it "
        "with `await db.tasks.create_table()` (quick start), or add db.tasks.metadata to "
        "Alembic's target_metadata ([Base.metadata, db.tasks.metadata]) and run a "
        "migration."
    )
