"""Waking the dispatchers of every process (PostgreSQL ``NOTIFY``), at most once per
``NOTIFY_GAP`` seconds from each process.

PostgreSQL delivers notifications in commit order by holding a database-wide lock from
a notifying commit's start to its end, its WAL flush included: notifying commits cannot
share a flush, and at hundreds per second that lock sets their pace (a quarter fewer
commits per second on the benchmark machine).  So one commit per gap notifies; the
commits in between do not, and once the gap is over, one notification of its own,
sent after they committed, wakes the dispatchers for all of them (a woken dispatcher
claims every task due, not one).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .host import TaskHost

logger = logging.getLogger("sanic_sqlalchemy")

#: Seconds between two notifications from one process.
NOTIFY_GAP = 0.02


class Waker:
    """Decides which commits notify, and sends the notification owed to the others."""

    def __init__(self, registry: TaskHost) -> None:
        self._registry = registry
        self._loop = asyncio.get_running_loop()
        self._last = float("-inf")
        #: Set once a commit that did not notify committed: when the notification goes.
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def with_commit(self) -> bool:
        """Whether the commit about to store due tasks notifies; one that does not
        calls ``owed`` once it committed."""
        now = self._loop.time()
        if now - self._last < NOTIFY_GAP:
            return False
        self._last = now
        return True

    @property
    def pending(self) -> bool:
        """Whether a notification is owed or on its way."""
        return self._timer is not None or bool(self._sending)

    async def drain(self) -> None:
        """Send the notification owed now (a stop), and wait for what is on its way."""
        if self._timer is not None:
            self._timer.cancel()
            self._notify()
        if self._sending:
            await asyncio.wait(self._sending)

    def owed(self) -> None:
        """A commit that did not notify committed: notify once the gap is over."""
        if self._timer is None:
            self._timer = self._loop.call_at(self._last + NOTIFY_GAP, self._notify)

    def _notify(self) -> None:
        self._timer = None
        self._last = self._loop.time()
        sending = self._loop.create_task(self._send())
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _send(self) -> None:
        try:
            await self._registry.notify()
        except Exception:
            logger.warning(
                "waking the task dispatchers failed; they find the tasks at their next poll",
                exc_info=True,
            )
