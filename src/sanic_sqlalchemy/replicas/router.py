"""Which replica serves a unit's reads: health, lag and positions, per worker.

A background probe asks every server how far it is about once a second.  Lag is
measured by positions, not by replay timestamps (an idle primary makes those look old):
the probe keeps a short history of the primary's positions, each with the time the probe
that first saw it *asked* (not when the answer came), and a replica's lag is how long
ago the primary first had data the replica still lacks; a replica that has every
position the primary reported lags by nothing.  The probe asks the primary every
``PROBE_INTERVAL`` seconds from the start of the previous probe, so a commit is first
seen at most about that long after it was made: the token TTL's margin over the lag
limit (``settings.TOKEN_TTL_MARGIN``) covers it.

Units are spread round robin over the usable replicas: every replica serves the same
data, units are short and reads give their connection back after each statement, so
counting outstanding work per replica would cost more than it balances.  A replica is
usable when it answered its last probe, lags no more than the limit, and has reached
the position the unit needs (a client's token).  When a token asks for more than the
cached positions show, the positions are refreshed first (at most every few
milliseconds), so a replica that caught up since the last probe is used.

Each server has at most one probe under way, shared by everyone who wants its answer.
A refresh waits only for the servers that can answer (the primary, and the replicas
that answered their last probe or were never probed), each for a fraction of a second:
a probe that takes longer goes on in the background and takes its replica out when it
fails.  A replica that is down is probed again, in the background, once its backoff is
over; nothing waits for it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from ..settings import public_url
from .positions import Position
from .probe import position_of, probe_engine
from .tokens import TokenCodec

logger = logging.getLogger("sanic_sqlalchemy")

#: Seconds between two probes of every server.
PROBE_INTERVAL = 1.0
#: Seconds an on-demand refresh is trusted for (a burst of requests shares one).
REFRESH_INTERVAL = 0.005
#: Seconds a refresh waits for a server's answer, from the start of its probe: a
#: server that answers does so within milliseconds, so a unit never waits for one
#: that hangs (whose probe only fails after the connect timeout).
REFRESH_PATIENCE = 0.25
#: Seconds a replica that failed stays out before it is tried again, at most.
MAX_BACKOFF = 30.0


def public_name(url: URL) -> str:
    """The URL as shown to users and logs (``unit.read_from``): without its password or
    any query parameter that holds a secret."""
    return public_url(url, mask=False)


@dataclass(eq=False)
class Replica:
    """One replica: the pool that serves units, and what the probe knows of it."""

    url: URL
    engine: AsyncEngine
    probe: AsyncEngine
    name: str = ""
    position: Position | None = None
    up: bool = False
    #: Whether a probe of it ever ended (answered or failed).
    probed: bool = False
    retry_at: float = 0.0
    failures: int = 0
    last_error: str = ""

    def __post_init__(self) -> None:
        self.name = public_name(self.url)


@dataclass(eq=False)
class ReplicaSet:
    """The replicas of one ``Database`` in one worker, and the primary's position."""

    backend: str
    primary_url: URL
    replicas: Sequence[Replica]
    max_lag: float
    #: Issues and reads the clients' position tokens of this database.
    tokens: TokenCodec
    primary_probe: AsyncEngine = field(init=False)
    primary_position: Position | None = field(default=None, init=False)
    #: When the probe that found ``primary_position`` asked (monotonic clock).
    _primary_asked_at: float = field(default=float("-inf"), init=False)
    _history: deque[tuple[float, Position]] = field(default_factory=deque, init=False)
    _turn: itertools.count[int] = field(default_factory=itertools.count, init=False)
    _refreshed_at: float = field(default=-1.0, init=False)
    #: The probe under way (or last made) per server, None for the primary, with the
    #: time it started.
    _probes: dict[Replica | None, tuple[float, asyncio.Task[None]]] = field(
        default_factory=dict, init=False
    )
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.primary_probe = probe_engine(self.primary_url, self.backend)

    @property
    def names(self) -> list[str]:
        return [replica.name for replica in self.replicas]

    # -- probing -----------------------------------------------------------------

    def start(self) -> None:
        """Start the background probe in the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe_forever())

    async def close(self) -> None:
        """Stop probing and close the probe connections."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        probes = [probe for _started, probe in self._probes.values()]
        self._probes.clear()
        for probe in probes:
            probe.cancel()
        # The probes report their own failures; only their cancellation is left.
        await asyncio.gather(*probes, return_exceptions=True)
        await self.primary_probe.dispose()
        for replica in self.replicas:
            await replica.probe.dispose()

    async def _probe_forever(self) -> None:
        # A probe every PROBE_INTERVAL from the start of the last one (not from its
        # end): the gap between two questions to the primary bounds how late a commit
        # is first seen, which the token TTL's margin must cover.
        while True:
            started = time.monotonic()
            await self.refresh(patience=PROBE_INTERVAL)
            await asyncio.sleep(max(0.0, started + PROBE_INTERVAL - time.monotonic()))

    async def refresh(self, patience: float = REFRESH_PATIENCE) -> None:
        """Ask the servers that can answer how far they are, now.

        Those are the primary and the replicas that answered their last probe or were
        never probed; each is waited for until ``patience`` seconds after its probe
        started (a probe already under way is shared, not repeated), and one that takes
        longer goes on in the background.  A replica that is down is probed in the
        background once its backoff is over, never waited for.
        """
        self._retry_due()
        waited = [self._probing(None)]
        waited += [
            self._probing(replica) for replica in self.replicas if replica.up or not replica.probed
        ]
        for started, probe in waited:
            remaining = started + patience - time.monotonic()
            if remaining > 0 and not probe.done():
                # Not cancelled when the wait ends (asyncio.wait): it goes on.
                await asyncio.wait((probe,), timeout=remaining)
        self._refreshed_at = time.monotonic()

    def _probing(self, replica: Replica | None) -> tuple[float, asyncio.Task[None]]:
        """The probe of ``replica`` (None: the primary) under way, or a new one, and
        when it started."""
        current = self._probes.get(replica)
        if current is None or current[1].done():
            probe = self._probe_primary() if replica is None else self._probe(replica)
            task = asyncio.get_running_loop().create_task(probe)
            current = self._probes[replica] = (time.monotonic(), task)
        return current

    async def refresh_if_stale(self) -> None:
        if time.monotonic() - self._refreshed_at > REFRESH_INTERVAL:
            await self.refresh()

    async def _probe_primary(self) -> None:
        await self._ask_primary()

    async def _ask_primary(self) -> Position | None:
        """The primary's position, asked now; None when it did not answer."""
        asked_at = time.monotonic()
        try:
            position = await position_of(self.primary_probe, self.backend, primary=True)
        except Exception as error:
            logger.warning("probing the primary's position failed: %s", error)
            return None
        self._note_primary(position, asked_at)
        return position

    def _note_primary(self, position: Position | None, asked_at: float) -> None:
        if position is None or asked_at < self._primary_asked_at:
            return  # an answer to an older question than the one already noted
        self.primary_position = position
        self._primary_asked_at = asked_at
        history = self._history
        if (
            not history
            or not history[-1][1].covers(position)
            or not position.covers(history[-1][1])
        ):
            # Seen as of the question: the primary had it by then at the latest (the
            # answer's arrival would make a replica lacking it look fresher).
            history.append((asked_at, position))
        horizon = time.monotonic() - 2 * self.max_lag - 10 * PROBE_INTERVAL
        while len(history) > 1 and history[0][0] < horizon:
            history.popleft()

    async def _probe(self, replica: Replica) -> None:
        try:
            position = await position_of(replica.probe, self.backend, primary=False)
        except Exception as error:
            replica.probed = True
            self.mark_down(replica, error)
            return
        if (
            replica.position is not None
            and position is not None
            and not position.covers(replica.position)
        ):
            position = replica.position  # never go back on what was seen
        replica.position = position
        if not replica.up and replica.failures:
            logger.info("replica %s is up again", replica.name)
        replica.up, replica.probed, replica.failures, replica.last_error = True, True, 0, ""

    def mark_down(self, replica: Replica, error: BaseException) -> None:
        """Take ``replica`` out of the rotation, to be tried again after a backoff."""
        replica.failures += 1
        backoff = min(MAX_BACKOFF, PROBE_INTERVAL * 2 ** (replica.failures - 1))
        replica.retry_at = time.monotonic() + backoff
        replica.last_error = f"{type(error).__name__}: {error}"
        if replica.up or replica.failures == 1:
            logger.warning(
                "replica %s is down (%s); retried in %.0f s",
                replica.name,
                replica.last_error,
                backoff,
            )
        replica.up = False

    # -- choosing ----------------------------------------------------------------

    def lag(self, replica: Replica) -> float:
        """Seconds since the primary first had data that ``replica`` still lacks."""
        position = replica.position
        if position is None:
            return float("inf")
        for seen_at, primary in self._history:
            if not position.covers(primary):
                return time.monotonic() - seen_at
        return 0.0

    def usable(self, replica: Replica, floor: Position | None) -> str | None:
        """Why ``replica`` cannot serve a unit that needs ``floor``, or None."""
        if not replica.up:
            return f"down ({replica.last_error or 'not probed yet'})"
        lag = self.lag(replica)
        if lag > self.max_lag:
            return f"lagging {lag:.1f} s (limit {self.max_lag:g} s)"
        if floor is not None and (replica.position is None or not replica.position.covers(floor)):
            return f"behind the unit's position {floor}"
        return None

    def pick(self, floor: Position | None, exclude: Sequence[Replica] = ()) -> Replica | None:
        """The next usable replica in turn, or None."""
        candidates = [
            replica
            for replica in self.replicas
            if replica not in exclude and self.usable(replica, floor) is None
        ]
        if not candidates:
            return None
        return candidates[next(self._turn) % len(candidates)]

    async def choose(
        self, floor: Position | None, exclude: Sequence[Replica] = (), wait: float = 0.0
    ) -> tuple[Replica | None, str]:
        """A replica for a unit that needs ``floor`` (None: any usable one), and why.

        Refreshes the positions first when the cache shows no replica that qualifies
        (at most every few milliseconds), and then waits up to ``wait`` seconds for one
        to catch up.
        """
        self._retry_due()
        replica = self.pick(floor, exclude)
        if replica is None and (floor is not None or self._refreshed_at < 0):
            await self.refresh_if_stale()
            replica = self.pick(floor, exclude)
        deadline = time.monotonic() + wait
        while replica is None and floor is not None and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            await self.refresh()
            replica = self.pick(floor, exclude)
        if replica is not None:
            reason = "token reached" if floor is not None else "healthy, within the lag limit"
            return replica, reason
        reasons = "; ".join(
            f"{candidate.name}: {self.usable(candidate, floor) or 'failed in this unit'}"
            for candidate in self.replicas
        )
        return None, reasons

    def _retry_due(self) -> None:
        """Probe, in the background, each replica that is down and whose backoff is
        over; until it answers it stays down."""
        now = time.monotonic()
        for replica in self.replicas:
            if replica.probed and not replica.up and replica.retry_at <= now:
                self._probing(replica)

    async def cap(self, wanted: Position) -> Position:
        """``wanted`` (a client's token), at most the primary's current position.

        When the cached primary position is behind the token, it is refreshed first,
        and only a position asked since caps (one asked within ``REFRESH_INTERVAL``):
        capping at a stale one (the primary did not answer in time) could cut a token
        below its own commit.
        """
        primary = self.primary_position
        if primary is not None and primary.covers(wanted):
            return wanted
        since = time.monotonic() - REFRESH_INTERVAL
        await self.refresh_if_stale()
        primary = self.primary_position
        if primary is None or primary.covers(wanted) or self._primary_asked_at < since:
            return wanted
        return primary

    async def primary_position_now(self) -> Position | None:
        """The primary's position as of now (one round trip), or None when it does not
        answer: everything any unit can have read is at or before it."""
        return await self._ask_primary()
