"""The relay: committed tasks published to an existing queue, marked sent once confirmed.

Right after a commit, the committing process publishes the tasks it stored that are due
(the fast path).  A relay loop (in each Sanic worker, ``db.tasks.work()``, the CLI's
``tasks work``) publishes what the fast path could not: tasks of a process that died
after its commit, delayed tasks once due, tasks committed while the broker was down,
and tasks whose consumer died.  A task is marked ``sent`` only after the broker
confirmed it; until then it stays ``pending`` and is published again later, so a broker
that is down delays delivery and loses nothing (a task may be published twice: its id
is the message's id, and its consumer runs it once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ...settings import QueueTarget
from ..host import TaskHost
from ..sql import Claimed
from .sql import Leased, lease, release_statement, sent_statement

if TYPE_CHECKING:
    from ..decorator import Task

logger = logging.getLogger("sanic_sqlalchemy")

#: Tasks leased and published per pass of the relay loop.
BATCH = 100
#: Seconds the relay waits at most between passes while publishing fails.
MAX_RETRY_WAIT = 10.0
#: Seconds a publish may wait for the broker (to connect, to confirm) before it fails.
PUBLISH_TIMEOUT = 10.0


class Queue(Protocol):
    """An existing queue as the relay uses it (``TaskiqQueue``, ``CeleryQueue``)."""

    #: ``taskiq:module:broker`` or ``celery:module:app``, for messages.
    target: str

    @property
    def connected(self) -> bool:
        """Whether this process holds a connection to the broker that ``close`` ends."""

    def register(self, task: Task[Any, Any]) -> None:
        """Make ``task`` known to the queue's workers, run by ``consumer.consume``."""

    async def publish(self, tasks: Sequence[Leased]) -> list[BaseException | None]:
        """Publish ``tasks`` (each with its id as the message's id, on its queue) and
        wait for the broker's confirmation; for each, ``None`` or why it failed."""

    async def reset(self) -> None:
        """Drop the connection to the broker after a failure (the next publish makes a
        new one)."""

    async def close(self) -> None:
        """Close the connection to the broker, if this process opened one."""


class RelayHost(TaskHost, Protocol):
    """``db.tasks`` as the relay sees it."""

    #: Whether the committing process handles its tasks right after the commit.
    run_after_commit: bool


class PublishError(Exception):
    """Some tasks of a pass were not confirmed by the broker (they stay pending)."""


class Relay:
    """Publishes a database's committed tasks to ``queue``."""

    def __init__(self, host: RelayHost, queue: Queue, source: QueueTarget) -> None:
        self._host = host
        self.queue = queue
        #: The setting this relay was made from.
        self.source = source
        self._spawned: set[asyncio.Task[None]] = set()
        self._stopping = False

    def register(self, task: Task[Any, Any]) -> None:
        """Make ``task`` known to the queue's workers."""
        self.queue.register(task)

    def publishes_here(self, _runs: object) -> bool:
        """Told to the outbox: no dispatcher needs waking at a commit (none listens;
        the relay loops poll)."""
        return True

    def committed(
        self,
        _claimed: list[Claimed],
        ids: list[str],
        _commit_token: str | None,
        _runs: object,
    ) -> None:
        """The fast path, in the commit's greenlet: publish the tasks just committed (none
        is stored claimed: the outbox is told not to, since the queue's workers claim)."""
        host = self._host
        if self._stopping or not host.run_after_commit or host.db.joined is not None:
            return
        loop = asyncio.get_running_loop()
        context = host.db.scope.outside()
        spawned = context.run(loop.create_task, self._publish_committed(ids))
        self._spawned.add(spawned)
        spawned.add_done_callback(self._spawned.discard)

    async def _publish_committed(self, ids: list[str]) -> None:
        try:
            await self.relay(len(ids), ids)
        except Exception as error:
            # A line per commit, no traceback: the relay loop logs the outage's.
            logger.warning(
                "publishing the tasks a commit just stored to %s failed (%r); the relay "
                "loop publishes them once the broker answers",
                self.queue.target,
                error,
            )

    async def relay(self, limit: int, ids: Sequence[str] | None = None) -> int:
        """Lease up to ``limit`` due tasks (among ``ids``), publish them, mark sent
        those confirmed and release the others; return how many were sent.  Raises
        ``PublishError`` when some were not confirmed."""
        host = self._host
        async with host.transaction() as connection:
            backend = host.db.engines.backend.name
            token, tasks = await lease(connection, host.table, backend, limit, ids)
        if not tasks:
            return 0
        try:
            outcomes = await self.queue.publish(tasks)
        except BaseException:
            await self._settle(token, [], [task.id for task in tasks])
            raise
        results = list(zip(tasks, outcomes, strict=True))
        sent = [task.id for task, error in results if error is None]
        failed = [(task, error) for task, error in results if error is not None]
        await self._settle(token, sent, [task.id for task, _ in failed])
        if failed:
            task, error = failed[0]
            raise PublishError(
                f"{len(failed)} of {len(tasks)} task(s) were not confirmed by "
                f"{self.queue.target} (the first, {task.id} ({task.name}): {error!r}); "
                "they stay pending and are published again"
            ) from error
        return len(sent)

    async def _settle(self, token: str, sent: list[str], failed: list[str]) -> None:
        host = self._host
        async with host.transaction() as connection:
            if sent:
                await connection.execute(sent_statement(host.table, token, sent))
            if failed:
                await connection.execute(release_statement(host.table, token, failed))

    async def work(self, poll: float) -> None:
        """The relay loop, until cancelled: publish what is due every ``poll`` seconds
        (at once again after a full batch), waiting longer while the broker fails."""
        self._stopping = False
        failures = 0
        while True:
            try:
                sent = await self.relay(BATCH)
            except Exception:
                failures += 1
                wait = min(poll * 2 ** min(failures - 1, 10), MAX_RETRY_WAIT)
                # The traceback once per outage; then a line per pass.
                logger.warning(
                    "relaying tasks to %s failed (%d time(s) in a row); trying again in %g s",
                    self.queue.target,
                    failures,
                    wait,
                    exc_info=failures == 1,
                )
                await self.queue.reset()
                await asyncio.sleep(wait)
                continue
            failures = 0
            if sent < BATCH:
                await asyncio.sleep(poll)

    @property
    def active(self) -> bool:
        """Whether publishing is under way, or a connection open, in this process."""
        return bool(self._spawned) or self.queue.connected

    async def stop(self, grace: float) -> None:
        """Stop publishing after commits; let publishing under way end within
        ``grace`` seconds (what is left stays pending), then close the connection."""
        self._stopping = True
        try:
            spawned = set(self._spawned)
            if spawned:
                _, left = await asyncio.wait(spawned, timeout=grace)
                for task in left:
                    task.cancel()
                if left:
                    await asyncio.wait(left)
            await self.queue.close()
        finally:
            self._stopping = False
