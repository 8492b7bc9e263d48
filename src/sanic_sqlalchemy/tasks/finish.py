"""Finishing runs that wrote nothing: their rows deleted together, with the next commit
that stores tasks when one is near, else by a statement of their own.

A run that wrote through ``db.write`` finishes in its own transaction, with its writes.
A run that wrote nothing has nothing to commit with its row's deletion.  On PostgreSQL,
while units that defer tasks keep committing, the next of those commits carries it (the
statement storing that unit's tasks also deletes the rows of the runs waiting here: no
round trip, no connection of their own).  Otherwise, or if that commit fails, one
``DELETE`` goes for every such run that ends while the previous one is under way (a
group commit).  Should the process die before either, the tasks run again: their
effects were outside the database, which are at least once anyway.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .host import TaskHost
    from .sql import Claimed

#: Seconds a finished run waits for a commit to carry its row's deletion, when commits
#: that store tasks came this recently; it is sent alone after that.
RIDE_WAIT = 0.05

#: Runs waiting for their rows' deletion, each with what its run awaits.
Waiting = list[tuple["Claimed", "asyncio.Future[None]"]]


class Finisher:
    """Deletes the rows of ended runs that wrote nothing, many per statement."""

    def __init__(self, registry: TaskHost) -> None:
        self._registry = registry
        self._loop = asyncio.get_running_loop()
        self._waiting: Waiting = []
        self._sending: asyncio.Task[None] | None = None
        #: While runs may wait for a commit to carry their deletion: when the runs then
        #: waiting stop waiting.
        self._timer: asyncio.TimerHandle | None = None
        #: When a commit last took (or could have taken) waiting runs along.
        self._last_ride = float("-inf")
        #: Runs whose function ended and which only wait for their rows' deletion
        #: (they hold no connection: the process may start others meanwhile).
        self.finishing = 0

    async def done(self, claimed: Claimed) -> None:
        """Return once ``claimed``'s row is deleted (with others ending meanwhile)."""
        loop = self._loop
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((claimed, future))
        if self._sending is None and self._timer is None:
            if loop.time() - self._last_ride < RIDE_WAIT:
                self._timer = loop.call_later(RIDE_WAIT, self._send_now)
            else:
                self._send_now()
        self.finishing += 1
        try:
            await future
        finally:
            self.finishing -= 1

    def ride(self) -> Waiting:
        """The runs waiting now, handed to a commit that deletes their rows (it settles
        them with ``settle``); also notes that commits are coming."""
        self._last_ride = self._loop.time()
        waiting, self._waiting = self._waiting, []
        # The timer stays: when it fires, runs that ended since and found no commit
        # yet go alone (one timer per RIDE_WAIT at most, not one per run).
        return waiting

    def settle(self, waiting: Waiting, *, deleted: bool) -> None:
        """The commit carrying ``waiting`` ended: their rows are deleted, or (it failed)
        they are deleted at once by a statement of their own."""
        if deleted:
            _resolve(waiting)
            return
        self._waiting.extend(waiting)
        self._send_now()

    def _send_now(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if self._sending is None and self._waiting:
            self._sending = self._loop.create_task(self._send())

    async def _send(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await self._registry.finish([claimed for claimed, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                _resolve(batch)
        finally:
            self._sending = None


def _resolve(waiting: Waiting) -> None:
    """Tell the runs ``waiting`` that their rows are deleted."""
    for _, future in waiting:
        if not future.done():
            future.set_result(None)
