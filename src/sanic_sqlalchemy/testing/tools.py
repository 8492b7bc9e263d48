"""Pools, statements and callbacks, seen from a test: the tools of ``testing``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import MetaData, event
from sqlalchemy.ext.asyncio import AsyncEngine

from ..database import DatabaseCore as Database


@contextlib.asynccontextmanager
async def schema(db: Database, metadata: MetaData) -> AsyncIterator[None]:
    """Create ``metadata``'s tables through the write engine, drop them on exit."""
    async with db.engines.write.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.run_sync(metadata.create_all)
    try:
        yield
    finally:
        async with db.engines.write.begin() as connection:
            await connection.run_sync(metadata.drop_all)


@dataclass(frozen=True)
class PoolUse:
    """Connections lent out by each pool at one moment."""

    write: int
    read: int

    @property
    def total(self) -> int:
        return self.write + self.read


def checked_out(db: Database) -> PoolUse:
    """How many connections the write and read pools of ``db`` have lent out now."""
    engines = db.engines
    return PoolUse(_checked_out(engines.write), _checked_out(engines.read))


async def wait_until_idle(db: Database, timeout: float = 2.0) -> PoolUse:
    """Wait (polling) until no connection of ``db`` is lent out; return the last count.

    A streamed response reaches the client before its unit has finished closing, so
    a test that checks the pools right after one should wait here first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    use = checked_out(db)
    while use.total and loop.time() < deadline:
        await asyncio.sleep(0.01)
        use = checked_out(db)
    return use


def _checked_out(engine: AsyncEngine) -> int:
    status = getattr(engine.sync_engine.pool, "checkedout", None)
    return int(status()) if status is not None else 0


class CheckoutCounter:
    """Counts connections taken from the pools of ``db`` while it is attached."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        self._pools = [db.engines.write.sync_engine.pool, db.engines.read.sync_engine.pool]
        for pool in self._pools:
            event.listen(pool, "checkout", self._on_checkout)

    def _on_checkout(self, *_args: Any) -> None:
        self.count += 1

    def detach(self) -> None:
        for pool in self._pools:
            event.remove(pool, "checkout", self._on_checkout)


@dataclass
class StatementLog:
    """Records the SQL sent through every engine a unit of ``db`` can use, as
    ``(role, statement)`` pairs: ``"write"``, ``"read"`` (the primary's read pool) and
    ``"replica"`` (a replica's pool; replicas serve most reads when configured).
    Replica probes are not recorded: they are the library's, not a unit's.

    ``BEGIN``, ``COMMIT`` and ``ROLLBACK`` of the write engine go through the driver's
    transaction methods, which this log records as such (with, right before a
    ``COMMIT``, the statements it carries in its message: a unit's durable tasks on
    PostgreSQL); the read engine runs in
    autocommit, where those methods send nothing (except MySQL drivers, which still
    send a ``ROLLBACK`` when a read connection goes back to the pool).
    """

    db: Database
    statements: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listeners: list[tuple[Any, str, Any]] = []
        engines = self.db.engines
        self._listen("write", engines.write)
        self._listen("read", engines.read)
        if engines.replicas is not None:
            for replica in engines.replicas.replicas:
                self._listen("replica", replica.engine)

    def _listen(self, role: str, engine: AsyncEngine) -> None:
        def on_execute(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            self.statements.append((role, statement))

        def on_begin(_conn: Any) -> None:
            self.statements.append((role, "BEGIN"))

        def on_commit(conn: Any) -> None:
            # Statements the COMMIT carries in its own message (a unit's durable tasks,
            # on PostgreSQL) are sent right before it.
            carried = getattr(conn.connection.driver_connection, "carried", None)
            if carried:
                self.statements.append((role, carried))
            self.statements.append((role, "COMMIT"))

        def on_rollback(_conn: Any) -> None:
            self.statements.append((role, "ROLLBACK"))

        target = engine.sync_engine
        listeners: list[tuple[str, Any]] = [("before_cursor_execute", on_execute)]
        if role == "write":
            listeners += [("begin", on_begin), ("commit", on_commit), ("rollback", on_rollback)]
        for name, listener in listeners:
            event.listen(target, name, listener)
            self._listeners.append((target, name, listener))

    def detach(self) -> None:
        for target, name, listener in self._listeners:
            event.remove(target, name, listener)
        self._listeners.clear()


class CommitRecorder:
    """An on-commit callback that records its calls: ``db.on_commit(recorder, x)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))

    @property
    def args(self) -> list[tuple[Any, ...]]:
        return [args for args, _ in self.calls]
