"""Where one unit's reads go when its database has replicas.

A unit reads from one server: chosen at its first read, kept for the unit, and changed
only when that server fails, then only for one at least as far along as anything the
unit can have read (a replica that has reached the primary's current position, asked
fresh at that moment rather than taken from the probe's cache), or the primary.  A
unit that asks for a client's position (a token) reads only from a replica that has
reached it, else from the primary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from ..errors import ReplicaUnavailableError
from ..settings import ReplicaFallback, ReplicaSettings
from .positions import Position, latest
from .router import Replica, ReplicaSet
from .tokens import TokenCodec

logger = logging.getLogger("sanic_sqlalchemy")

#: Errors that mean a server could not be reached (nothing ran on it).
UNREACHABLE = (DBAPIError, OSError, asyncio.TimeoutError, PoolTimeoutError)


def wanted_position(tokens: Iterable[object], codec: TokenCodec) -> Position | None:
    """The furthest position asked for by ``tokens`` (invalid, unsigned, forged and
    expired ones are ignored)."""
    return latest(codec.read(token) for token in tokens)


class ReadRoute:
    """The server one unit reads from, chosen on its first read."""

    __slots__ = (
        "_chosen",
        "_failed",
        "_has_read",
        "_primary",
        "_replicas",
        "_settings",
        "_wanted",
        "target",
    )

    def __init__(
        self,
        replicas: ReplicaSet,
        primary: AsyncEngine,
        settings: ReplicaSettings,
        wanted: Position | None,
    ) -> None:
        self._replicas = replicas
        self._primary = primary
        self._settings = settings
        self._wanted = wanted
        self._failed: list[Replica] = []
        self._chosen = False
        #: Whether the unit has read from its server (so knows data up to some position).
        self._has_read = False
        #: The serving replica; None before the first read and when on the primary.
        self.target: Replica | None = None

    @property
    def read_from(self) -> str | None:
        """``"primary"``, the serving replica's URL without its password, or None
        before the unit's first read."""
        if not self._chosen:
            return None
        return "primary" if self.target is None else self.target.name

    def bind(self) -> Engine:
        """The engine for the unit's next read (inside SQLAlchemy's greenlet)."""
        if not self._chosen:
            await_only(self._choose(self._wanted, why_prefix=""))
        target = self.target
        return (target.engine if target is not None else self._primary).sync_engine

    def read_done(self) -> None:
        """A read succeeded on the unit's server."""
        self._has_read = True

    def server_failed(self, error: BaseException) -> bool:
        """The unit's replica failed: move to another server (True), or, on the
        primary, there is nowhere to move (False)."""
        target = self.target
        if target is None:
            return False
        self._replicas.mark_down(target, error)
        self._failed.append(target)
        floor = self._wanted
        if self._has_read:
            # Anything the unit read is at or before the primary's position right now
            # (asked now, not the probe's cache, which may be behind what it read).
            fresh = await_only(self._replicas.primary_position_now())
            if fresh is None:
                self.target = None  # position unknown: the primary is the safe choice
                logger.debug("unit reads from the primary: %s failed", target.name)
                return True
            floor = latest([floor, fresh])
        await_only(self._choose(floor, why_prefix=f"{target.name} failed; "))
        return True

    async def _choose(self, floor: Position | None, why_prefix: str) -> None:
        replicas = self._replicas
        if floor is not None:
            floor = await replicas.cap(floor)
        replica, why = await replicas.choose(floor, self._failed, self._settings.wait)
        if replica is None:
            if self._settings.fallback is ReplicaFallback.ERROR:
                raise ReplicaUnavailableError(
                    f"No replica can serve this unit's reads ({why}), and "
                    "DATABASE_REPLICA_FALLBACK=error forbids reading from the primary. "
                    f"Replicas: {', '.join(replicas.names)}. Check that they run and "
                    "replicate, or set DATABASE_REPLICA_FALLBACK=primary."
                )
            logger.debug("unit reads from the primary: %s%s", why_prefix, why)
        else:
            logger.debug("unit reads from replica %s: %s%s", replica.name, why_prefix, why)
        self.target = replica
        self._chosen = True
