"""The runs under way in a process, and the dispatcher loop that starts them.

``Runs`` holds every run of one event loop (fast path, dispatcher, ``run_pending``):
it renews their claims every ``HEARTBEAT`` seconds, so that only a run whose process
died or hangs is taken over, and at a stop it lets them finish within the grace time,
cancels the rest and hands their tasks back (no attempt counted), and deletes the rows
of ended runs still waiting for it (``finish.Finisher``).

``dispatch`` claims due tasks up to its concurrency and starts them, then waits for a
notification (PostgreSQL), free slots (half of them while due tasks are left, so that
one claim serves several runs) or the poll interval, until it is cancelled.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

from .finish import Finisher
from .listen import Listener
from .runner import run_claimed
from .sql import HEARTBEAT, Claimed
from .wake import Waker

if TYPE_CHECKING:
    from .host import TaskHost

logger = logging.getLogger("sanic_sqlalchemy")

#: A process takes the tasks it commits while fewer than this many times ``limit``
#: runs are under way or wait for a slot here ...
FAST_BACKLOG = 4
#: ... and up to this many times ``limit`` while a run queued now would wait less than
#: ``FAST_WAIT`` seconds for its slot, by the mean length of the recent runs (short
#: runs drain a long queue quickly; long ones are better left to other processes).
FAST_BACKLOG_MAX = 64
FAST_WAIT = 0.25
#: The mean length of a run assumed before one ended, and the weight of each new one.
_FIRST_MEAN = 0.1
_WEIGHT = 0.1


class Runs:
    """The runs of one event loop, their claims kept alive."""

    def __init__(self, registry: TaskHost) -> None:
        self._registry = registry
        self.loop = asyncio.get_running_loop()
        #: Where runs start: a context of their own, as empty as a dispatcher's run
        #: elsewhere would find it (nothing of the committing request's), so that a
        #: task behaves alike wherever it runs.  Each run's task copies it.
        self._fresh = contextvars.Context()
        #: Each run's asyncio task and the claim it holds.
        self.active: dict[asyncio.Task[str], Claimed] = {}
        #: Set whenever a run ends (a dispatcher at full concurrency waits for it).
        self.finished = asyncio.Event()
        self._beating: asyncio.Task[None] | None = None
        #: Deletes the rows of runs that wrote nothing, together.
        self.finisher = Finisher(registry)
        #: Decides which of this loop's commits wake the dispatchers (PostgreSQL).
        self.waker = Waker(registry)
        #: Runs that commits started (``start_committed``) under way, and those waiting
        #: for a slot (claimed already, their claims kept alive like the runs').
        self._committed_running = 0
        self.queued: collections.deque[tuple[Claimed, tuple[object, ...]]] = collections.deque()
        #: When each run that a commit started began, and their mean length (seconds,
        #: a moving average) from the start of the task to its end.
        self._began: dict[asyncio.Task[str], float] = {}
        self.mean_run = _FIRST_MEAN

    @property
    def busy(self) -> bool:
        """Whether runs are under way or wait for a slot, or rows or a notification for
        the database wait to be sent."""
        return bool(self.active or self.queued or self.finisher.pending or self.waker.pending)

    def start(
        self, claimed: Claimed, after: tuple[object, ...] = (), *, committed: bool = False
    ) -> asyncio.Task[str]:
        """Run ``claimed`` in a task of its own, in a fresh context (``committed``: in one
        of the slots of the runs that commits started, freed when it ends, its length
        counted in ``mean_run``)."""
        registry = self._registry
        # In a rolled-back test the runs share the test's one connection: each deletes
        # its own row before it ends, rather than a statement sent beside the next run.
        finisher = self.finisher if registry.db.joined is None else None
        run = run_claimed(registry, claimed, after, finisher, self.loop)
        task = self._fresh.run(self.loop.create_task, run)
        self.active[task] = claimed
        if committed:
            self._began[task] = self.loop.time()
            task.add_done_callback(self._slot_freed)
        else:
            task.add_done_callback(self._ended)
        self._keep_beating()
        return task

    def takes_more(self, limit: int, others: int) -> bool:
        """Whether the tasks a commit stores now should run here (stored claimed), with
        ``others`` runs on their way to this loop besides its own."""
        busy = len(self.active) + len(self.queued) + others
        if busy < limit * FAST_BACKLOG:
            return True
        waiting = len(self.queued) / limit * self.mean_run
        return busy < limit * FAST_BACKLOG_MAX and waiting < FAST_WAIT

    def start_committed(self, claimed: Claimed, after: tuple[object, ...]) -> None:
        """Run a task that a commit stored claimed by this process: at once while fewer
        than ``registry.limit`` such runs are under way, else when one ends, so that a
        burst of commits neither runs more at once nor holds more of the pool's
        connections than a dispatcher would."""
        if self._committed_running >= self._registry.limit:
            self.queued.append((claimed, after))
            self._keep_beating()
            return
        self._committed_running += 1
        self.start(claimed, after, committed=True)

    def _slot_freed(self, task: asyncio.Task[str]) -> None:
        self._ended(task)
        self._committed_running -= 1
        began = self._began.pop(task, None)
        if began is not None and not task.cancelled():
            self.mean_run += (self.loop.time() - began - self.mean_run) * _WEIGHT
        if self.queued:
            self.start_committed(*self.queued.popleft())

    def _keep_beating(self) -> None:
        if self._beating is None or self._beating.done():
            self._beating = self.loop.create_task(self._beat())

    def _ended(self, task: asyncio.Task[str]) -> None:
        claimed = self.active.pop(task, None)
        self.finished.set()
        if task.cancelled() or claimed is None:
            return
        error = task.exception()
        if error is not None:
            logger.error(
                "task %s (%s): its run could not record how it ended; it runs again once "
                "its claim expires",
                claimed.id,
                claimed.name,
                exc_info=error,
            )

    async def _beat(self) -> None:
        registry = self._registry
        while self.active or self.queued:
            await asyncio.sleep(HEARTBEAT)
            claims = [*self.active.values(), *(claimed for claimed, _ in self.queued)]
            if not claims or registry.db.joined is not None:
                # In a rolled-back test the runs use the test's one connection, which
                # a beat must not share with them (and which cannot die alone).
                continue
            try:
                await registry.renew(claims)
            except Exception:
                # Told, and tried again at the next beat: the claims last LEASE seconds,
                # several beats.
                logger.warning("renewing the claims of running tasks failed", exc_info=True)

    async def stop(self, grace: float) -> None:
        """Let the runs finish within ``grace`` seconds, then cancel the rest and hand
        their tasks back (and those waiting for a slot at once)."""
        queued = [claimed for claimed, _ in self.queued]
        self.queued.clear()
        running = set(self.active)
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        left = {task: claimed for task, claimed in self.active.items() if not task.done()}
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
        stopped = queued + [claimed for task, claimed in left.items() if task.cancelled()]
        await self.finisher.drain()
        await self.waker.drain()
        if stopped:
            await self._registry.hand_back(stopped)
            logger.info("handed %d unfinished task(s) back at stop", len(stopped))
        beating, self._beating = self._beating, None
        if beating is not None and not self.active:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)


async def dispatch(registry: TaskHost, runs: Runs, concurrency: int, poll: float) -> None:
    """Claim and start due tasks until cancelled (the caller then stops the runs)."""
    wake = asyncio.Event()
    listener: Listener | None = None
    engines = registry.db.engines
    if engines.backend.name == "postgresql" and not engines.backend.transaction_pooling:
        # Behind a transaction pooler a LISTEN would stay on a server connection that
        # other clients borrow, and hear nothing: the dispatcher polls there.
        settings = engines.settings
        listener = Listener(settings, engines.backend.url(settings.url), registry.table.name, wake)
    #: The last claim filled every free slot: more tasks are probably due.
    backlog = False
    try:
        while True:
            if listener is not None and not listener.listening:
                try:
                    await listener.open()
                except Exception:
                    logger.warning(
                        "LISTEN for new tasks failed; polling every %g s meanwhile",
                        poll,
                        exc_info=True,
                    )
            runs.finished.clear()
            free = concurrency - len(runs.active)
            # With a backlog, claim once half the slots are free: one claim per
            # several runs rather than one per run that ends.
            if free > 0 and not (backlog and free * 2 < concurrency):
                wake.clear()
                claimed: list[Claimed] = []
                try:
                    claimed = await registry.claim(free)
                except Exception:
                    logger.error(
                        "claiming due tasks failed; trying again in %g s", poll, exc_info=True
                    )
                for one in claimed:
                    runs.start(one)
                backlog = bool(claimed) and len(claimed) == free
                if backlog:
                    continue  # more may be due: look again once slots are free
                await _first_of((wake,), poll)
            else:
                await _first_of((runs.finished,), poll)
    finally:
        if listener is not None:
            await listener.close()


async def _first_of(events: Collection[asyncio.Event], timeout: float) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
