"""``db.tasks``: the tasks a database knows, where they are stored, and running them.

Registering (``@db.task``), deferring (through the unit's outbox), the table
(``create_table``, ``metadata``), running (``run_pending``, ``work``, the fast path
after a commit, the dispatcher a Sanic worker starts and stops) and looking after the
table (``counts``, ``dead``, ``requeue``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ParamSpec, TypeVar, overload

from sqlalchemy import MetaData, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..engine.engines import Engines
from ..replicas.probe import position_of
from ..settings import Settings, TasksSettings
from ..unit import UnitOfWork
from ..unit.sessions import with_task_outbox
from .decorator import Task, TaskOptions
from .deferring import keep_call
from .dispatcher import Runs, dispatch
from .held import HeldRows
from .host import TaskDatabase
from .outbox import CommitHandler, Outbox, RunsHandler, RunsHereHandler
from .relay import Relay, open_relay
from .sql import (
    Claimed,
    claim,
    notify_statement,
)
from .table import missing_table, task_table
from .upkeep import Upkeep

logger = logging.getLogger("sanic_sqlalchemy")
P = ParamSpec("P")
T = TypeVar("T")

#: Claimed at once by ``run_pending`` (and run one after the other).
_BATCH = 20


class TaskRegistry(Upkeep, HeldRows):
    """``db.tasks``: the durable tasks of one ``Database``."""

    def __init__(self, db: TaskDatabase) -> None:
        self.db = db
        #: Every ``@db.task`` of this database, by name.
        self.registered: dict[str, Task[Any, Any]] = {}
        #: Whether the committing process runs its due tasks right after the commit
        #: (tests that look at the table before anything runs turn it off).
        self.run_after_commit = True
        #: How many tasks one dispatcher runs at once (None: half the pool size).
        self.concurrency: int | None = None
        #: Retry options for a stored task whose function this process does not know.
        self.default_options = TaskOptions(name="unknown")
        self._tables: dict[str, Table] = {}
        self._runs: Runs | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._spawned: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._stop_grace = 0.0
        #: With a queue backend (DATABASE_TASKS_BACKEND), what publishes the tasks.
        self.relay: Relay | None = None
        #: The engines and settings outboxes were last made for, with the table and
        #: the backend's name they give.
        self._outbox_for: tuple[Engines, Settings, Table, str] | None = None
        #: What a unit's outbox tells after its commit, and asks before it (decided
        #: when the database is configured, not per unit).
        self._outbox_handlers: tuple[CommitHandler, RunsHereHandler, bool, RunsHandler | None] = (
            self._local_handlers()
        )

    # -- registering and deferring -----------------------------------------------

    @overload
    def task(self, func: Callable[P, T], /) -> Task[P, T]: ...

    @overload
    def task(
        self,
        *,
        name: str | None = None,
        max_attempts: int = 5,
        queue: str = "default",
        timeout: float | None = None,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
    ) -> Callable[[Callable[P, T]], Task[P, T]]: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        max_attempts: int = 5,
        queue: str = "default",
        timeout: float | None = None,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
    ) -> Any:
        """``@db.task`` / ``@db.task(name=..., max_attempts=5, queue="default",
        timeout=None, backoff=1.0, max_backoff=300.0)`` on a sync or async function:
        still callable as before, and ``.defer(*args)`` inside a unit stores the call
        with the unit's commit; it runs after, at least once, its database effects
        exactly once.  ``name`` defaults to ``module.qualname``; a task is found by
        its name when it runs, in whichever process."""

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            options = TaskOptions(
                name=name or f"{function.__module__}.{function.__qualname__}",
                max_attempts=max_attempts,
                queue=queue,
                timeout=timeout,
                backoff=backoff,
                max_backoff=max_backoff,
            )
            task: Task[Any, Any] = Task(self, function, options)
            known = self.registered.get(options.name)
            if known is not None and known.func is not function:
                logger.warning(
                    "task %r registered again by another function; the last one runs",
                    options.name,
                )
            self.registered[options.name] = task
            if self.relay is not None:
                self.relay.register(task)
            # From now on this database's db.write stores deferred tasks at its commit
            # (decided here, once: a database without tasks pays nothing for them).
            environment = self.db.environment
            environment.write_session_class = with_task_outbox(environment.write_session_class)
            return task

        return register if func is None else register(func)

    def defer(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        delay: float,
        key: str | None,
    ) -> str:
        """Keep ``task``'s call in the current unit for its commit; return its id."""
        unit = self.db.current_unit(task.deferring)
        return keep_call(unit, task, args, kwargs, delay, key, self._new_outbox)

    def _new_outbox(self, unit: UnitOfWork) -> Outbox:
        """An outbox for ``unit`` (the table and the backend looked up once per engines
        and settings)."""
        engines = unit.engines
        settings = self.db.settings
        known = self._outbox_for
        if known is None or known[0] is not engines or known[1] is not settings:
            known = self._outbox_for = (engines, settings, self.table, engines.backend.name)
        return Outbox(known[2], known[3], *self._outbox_handlers, loop=engines.loop)

    def use(self, settings: TasksSettings) -> None:
        """Run committed tasks here, or relay them to the queue ``settings.backend``
        names (imported now: ``ConfigurationError`` naming the setting if it fails)."""
        target = settings.backend
        if target is None:
            self.relay = None
            self._outbox_handlers = self._local_handlers()
            return
        if self.relay is not None and self.relay.source == target:
            return  # configured again alike (init_app after Database(url, ...))
        relay = self.relay = open_relay(self, target)
        self._outbox_handlers = (relay.committed, relay.publishes_here, False, None)

    def _local_handlers(
        self,
    ) -> tuple[CommitHandler, RunsHereHandler, bool, RunsHandler | None]:
        """What an outbox is told without a queue backend: this process runs the tasks
        (stored claimed), and its commits finish the runs that wrote nothing."""
        return (self._after_commit, self._runs_here, True, self._loop_runs)

    # -- the table --------------------------------------------------------------

    @property
    def settings(self) -> TasksSettings:
        db = self.db
        return db.settings.tasks if db.configured else TasksSettings()

    @property
    def table(self) -> Table:
        """The tasks table (named by ``DATABASE_TASKS_TABLE``)."""
        name = self.settings.table
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = task_table(name)
        return table

    @property
    def metadata(self) -> MetaData:
        """The ``MetaData`` holding the tasks table: add it to Alembic's
        ``target_metadata`` (``[Base.metadata, db.tasks.metadata]``)."""
        return self.table.metadata

    async def create_table(self) -> None:
        """Create the tasks table if it does not exist (quick start; Alembic otherwise)."""
        async with self.db.engines.write.begin() as connection:
            await connection.run_sync(self.metadata.create_all)

    async def drop_table(self) -> None:
        """Drop the tasks table if it exists, with every task in it."""
        async with self.db.engines.write.begin() as connection:
            await connection.run_sync(self.metadata.drop_all)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction for the tasks table's own statements: on the write pool, or,
        in the test kit's rolled-back tests, a savepoint of the test's connection
        (where the tasks its units deferred are)."""
        joined = self.db.joined
        with self._table_hint():
            if joined is None:
                async with self.db.engines.write.begin() as connection:
                    yield connection
            else:
                async with joined.begin_nested():
                    yield joined

    @contextlib.contextmanager
    def _table_hint(self) -> Iterator[None]:
        """Turns "no such table" into ``TasksTableMissingError``, which says what to do."""
        try:
            yield
        except DBAPIError as error:
            missing = missing_table(error, self.table.name)
            if missing is None:
                raise
            raise missing from error

    # -- running ------------------------------------------------------------------

    def runs(self) -> Runs:
        """The runs of the running event loop."""
        runs = self._runs
        if runs is None or runs.loop is not asyncio.get_running_loop():
            runs = self._runs = Runs(self)
        return runs

    @contextlib.asynccontextmanager
    async def statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one statement on the tasks table that needs no transaction
        around it on PostgreSQL (no ``BEGIN`` and ``COMMIT`` round trips); a
        transaction elsewhere (MariaDB's claim is two statements; SQLite begins its own
        transactions) and in the test kit's rolled-back tests."""
        if self.db.joined is not None or self.db.engines.backend.name != "postgresql":
            async with self.transaction() as connection:
                yield connection
            return
        with self._table_hint():
            async with self.db.engines.write.connect() as connection:
                yield await connection.execution_options(isolation_level="AUTOCOMMIT")

    async def notify(self) -> None:
        """Wake the dispatchers listening on PostgreSQL."""
        async with self.statement() as connection:
            await connection.execute(notify_statement(self.table))

    async def claim(self, limit: int, ids: list[str] | None = None) -> list[Claimed]:
        """Claim up to ``limit`` due tasks (among ``ids``) in one statement (MariaDB: a
        transaction of its own)."""
        async with self.statement() as connection:
            return await claim(connection, self.table, self.db.engines.backend.name, limit, ids)

    async def position_token(self) -> tuple[object, ...]:
        """With replicas, a token of the primary's position now, which every task
        claimed by now was committed before; without, nothing to wait for."""
        replicas = self.db.engines.replicas
        if replicas is None:
            return ()
        position = await position_of(replicas.primary_probe, replicas.backend, primary=True)
        return () if position is None else (replicas.tokens.issue(position),)

    async def run_pending(self) -> int:
        """Run the tasks due now, here, one after the other; return how many ran
        (successful or not).  Safe beside running dispatchers: each task is claimed."""
        runs = self.runs()
        ran = 0
        while True:
            batch = await self.claim(_BATCH)
            if not batch:
                return ran
            for index, claimed in enumerate(batch):
                try:
                    await runs.start(claimed)
                except BaseException:
                    if index + 1 < len(batch):
                        await self.hand_back(batch[index + 1 :])
                    raise
                ran += 1
            # The rows of the runs that wrote nothing are deleted before the next claim.
            await runs.finisher.drain()

    async def work(self, *, concurrency: int | None = None, grace: float = 30.0) -> None:
        """The dispatcher: run due tasks as they come, until cancelled; then let the
        runs finish within ``grace`` seconds and hand the rest back.  With a queue
        backend, the relay loop instead: publish the committed tasks as they fall due."""
        if self.relay is not None:
            await self.relay.work(self.settings.poll)
            return
        try:
            await dispatch(self, self.runs(), concurrency or self.limit, self.settings.poll)
        finally:
            # Stopped by stop(grace): that grace (Sanic's graceful-shutdown time) counts.
            await self.runs().stop(self._stop_grace if self._stopping else grace)

    @property
    def limit(self) -> int:
        """How many runs a process starts at once: ``concurrency``, by default half the
        pool (requests keep the other half)."""
        return self.concurrency or max(1, self.db.settings.pool_size // 2)

    def start(self) -> None:
        """Start a dispatcher in the running loop (a Sanic worker at start-up), if this
        database has tasks and none runs yet."""
        if not self.registered or self._dispatcher is not None or self.db.joined is not None:
            return
        self._stopping = False
        context = self.db.scope.outside()
        loop = asyncio.get_running_loop()
        self._dispatcher = context.run(loop.create_task, self.work())

    async def stop(self, grace: float) -> None:
        """Stop claiming; let runs finish within ``grace`` seconds, hand back the rest."""
        self._stopping = True
        self._stop_grace = grace
        try:
            dispatcher, self._dispatcher = self._dispatcher, None
            if self._spawned:
                await asyncio.gather(*self._spawned, return_exceptions=True)
            if dispatcher is not None:
                dispatcher.cancel()
                # Its end stops the runs (within grace) and raises the cancellation.
                await asyncio.gather(dispatcher, return_exceptions=True)
            runs = self._runs
            if runs is not None and runs.loop is asyncio.get_running_loop():
                await runs.stop(grace)
            if self.relay is not None:
                await self.relay.stop(grace)
        finally:
            self._stopping = False

    @property
    def running(self) -> bool:
        """Whether a dispatcher or any run is under way in this process."""
        runs = self._runs
        relay = self.relay
        return (
            self._dispatcher is not None
            or (runs is not None and runs.busy)
            or (relay is not None and relay.active)
        )

    def _runs_here(self, runs: Runs | None) -> bool:
        """Whether this process would run tasks due at a commit right after it (``runs``:
        the committing loop's, as ``_loop_runs`` gave them, or ``None``)."""
        if self._stopping or not self.run_after_commit or self.db.joined is not None:
            return False
        # Runs past ``limit`` wait for a slot here, claimed already (no claim, no
        # notification); past a backlog (``Runs.takes_more``), the tasks are left to
        # the dispatchers of every process, which claim them as they can.
        if runs is None:
            runs = self.runs()
        return runs.takes_more(self.limit, len(self._spawned))

    def _loop_runs(self, loop: asyncio.AbstractEventLoop) -> Runs | None:
        """The runs of ``loop`` (the running one), whose finished rows and wake-ups its
        commits carry (not in the test kit's rolled-back tests: each run finishes its
        row at once; not while another loop's runs are the process's)."""
        if self.db.joined is not None:
            return None
        runs = self._runs
        if runs is None:
            return self.runs()
        return runs if runs.loop is loop else None

    def _after_commit(
        self,
        claimed: list[Claimed],
        ids: list[str],
        commit_token: str | None,
        runs: Runs | None,
    ) -> None:
        # Called in the commit's greenlet, right after COMMIT succeeded.  The tasks the
        # commit stored claimed by this process run now, whatever happened meanwhile
        # (else they would wait for their lease to run out).
        after = () if commit_token is None else (commit_token,)
        if claimed:
            if runs is None:
                runs = self.runs()
            for one in claimed:
                runs.start_committed(one, after)
        if not ids or not self._runs_here(runs):
            return
        loop = asyncio.get_running_loop()
        context = self.db.scope.outside()
        spawned = context.run(loop.create_task, self._run_committed(ids, after))
        self._spawned.add(spawned)
        spawned.add_done_callback(self._spawned.discard)

    async def _run_committed(self, ids: list[str], after: tuple[object, ...]) -> None:
        try:
            claimed = await self.claim(len(ids), ids)
        except Exception:
            logger.warning(
                "claiming the tasks a commit just stored failed; a dispatcher runs them",
                exc_info=True,
            )
            return
        runs = self.runs()
        for one in claimed:
            runs.start_committed(one, after)
