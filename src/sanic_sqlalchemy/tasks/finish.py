"""Finishing runs that wrote nothing: their rows deleted together, with a commit that
stores tasks when one is near, else by a statement of their own.

A run that wrote through ``db.write`` finishes in its own transaction, with its writes.
A run that wrote nothing has nothing to commit with its row's deletion.  On PostgreSQL,
while units that defer tasks keep committing, one of those commits carries it (the
statement storing that unit's tasks also deletes the rows of the runs waiting here: no
round trip, no connection of their own): the first commit once ``RIDE_BATCH`` rows wait
or the oldest has waited ``RIDE_EVERY``, so that under load one ``DELETE`` serves many
runs rather than each commit carrying one (a statement costs the server more than the
rows it deletes).  Otherwise, or if that commit fails, one ``DELETE`` goes for all such
runs that ended meanwhile (a group commit).  Should the process die before either, the
tasks run again: their effects were outside the database, which are at least once
anyway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .sql import CLAIMS_PER_STATEMENT, Claimed

if TYPE_CHECKING:
    from .host import TaskHost

logger = logging.getLogger("sanic_sqlalchemy")

#: Seconds a finished run waits for a commit to carry its row's deletion, when commits
#: that store tasks came this recently; it is sent alone after that.
RIDE_WAIT = 0.05
#: A commit takes the waiting rows along once this many wait, or once the oldest has
#: waited this long (seconds, less than ``RIDE_WAIT``): one deletion for many runs.
RIDE_BATCH = 64
RIDE_EVERY = 0.02

#: Runs waiting for their rows' deletion.
Waiting = list[Claimed]


class Finisher:
    """Deletes the rows of ended runs that wrote nothing, many per statement.

    A run hands its row over and ends at once: it holds no slot and no connection while
    the row waits.  While commits that store tasks come (one in the last ``RIDE_WAIT``
    seconds), one takes the rows waiting once there are enough of them or they waited
    long enough; once none came for ``RIDE_WAIT``, the rows still waiting go with a
    statement of their own.  ``drain`` deletes what still waits
    (a stop, ``run_pending``)."""

    def __init__(self, registry: TaskHost) -> None:
        self._registry = registry
        self._loop = asyncio.get_running_loop()
        self._waiting: Waiting = []
        self._sending: asyncio.Task[None] | None = None
        #: Set while rows wait for a ride: when to look whether commits still come.
        self._timer: asyncio.TimerHandle | None = None
        #: When a commit last took (or could have taken) waiting runs along.
        self._last_ride = float("-inf")
        #: Send the rows waiting once the statement under way is done, ride or not.
        self._urgent = False
        #: When the oldest of the rows waiting began to wait.
        self._oldest = 0.0

    @property
    def pending(self) -> bool:
        """Whether rows wait for their deletion or are being deleted."""
        return bool(self._waiting) or self._sending is not None

    def finish(self, claimed: Claimed) -> None:
        """Have ``claimed``'s row deleted soon (with others ending meanwhile)."""
        if not self._waiting:
            self._oldest = self._loop.time()
        self._waiting.append(claimed)
        if self._sending is None and self._timer is None:
            self._schedule()

    async def drain(self) -> None:
        """Delete the rows waiting now; return once they are (or their statement failed)."""
        while self.pending:
            self._send_now()
            sending = self._sending
            if sending is not None:
                # Not cancelled with the caller: the rows' statement is on its way.
                await asyncio.wait([sending])

    def ride(self) -> Waiting:
        """The runs waiting now, handed to a commit that deletes their rows (it settles
        them with ``settle``), or none while they are few and young (the next commits
        take them); also notes that commits are coming."""
        now = self._last_ride = self._loop.time()
        waiting = self._waiting
        if len(waiting) < RIDE_BATCH and now - self._oldest < RIDE_EVERY:
            return []
        if len(waiting) > CLAIMS_PER_STATEMENT:
            # A backlog (the database stalled): a commit carries what one statement
            # can, the next ones (or the timer) the rest.
            self._waiting = waiting[CLAIMS_PER_STATEMENT:]
            return waiting[:CLAIMS_PER_STATEMENT]
        self._waiting = []
        return waiting

    def settle(self, waiting: Waiting, *, deleted: bool) -> None:
        """The commit carrying ``waiting`` ended: their rows are deleted, or (it failed)
        they are deleted at once by a statement of their own."""
        if not deleted:
            self._waiting.extend(waiting)
            self._send_now()

    def _schedule(self) -> None:
        """Send the rows waiting now, or, while commits come to carry them, look again
        when the next one would be late."""
        if self._sending is not None or self._timer is not None or not self._waiting:
            return
        loop = self._loop
        late = self._last_ride + RIDE_WAIT
        if loop.time() < late:
            self._timer = loop.call_at(late, self._look_again)
        else:
            self._sending = loop.create_task(self._send())

    def _look_again(self) -> None:
        self._timer = None
        self._schedule()

    def _send_now(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if self._sending is not None:
            self._urgent = True
        elif self._waiting:
            self._sending = self._loop.create_task(self._send())

    async def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            await self._registry.finish(batch)
        except Exception:
            # Their claims run out and the tasks run again: their effects were outside
            # the database, which are at least once anyway.
            logger.warning(
                "deleting the rows of %d finished task run(s) failed; they run again "
                "once their claims expire",
                len(batch),
                exc_info=True,
            )
        finally:
            self._sending = None
            urgent, self._urgent = self._urgent, False
            if urgent:
                self._send_now()
            else:
                self._schedule()  # the rows that ended meanwhile: ride, or go now
