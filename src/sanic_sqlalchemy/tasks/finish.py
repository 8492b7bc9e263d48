"""Finishing runs that wrote nothing: one ``DELETE`` for every such run that ends while
the previous one is under way (a group commit).

A run that wrote through ``db.write`` finishes in its own transaction, with its writes.
A run that wrote nothing has nothing to commit with its row's deletion, so the runs of a
busy dispatcher share one statement instead of a transaction each.  Should the process
die before it is sent, the tasks run again: their effects were outside the database,
which are at least once anyway.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .host import TaskHost
    from .sql import Claimed


class Finisher:
    """Deletes the rows of ended runs that wrote nothing, many per statement."""

    def __init__(self, registry: TaskHost) -> None:
        self._registry = registry
        self._waiting: list[tuple[Claimed, asyncio.Future[None]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def done(self, claimed: Claimed) -> None:
        """Return once ``claimed``'s row is deleted (with others ending meanwhile)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((claimed, future))
        if self._sending is None:
            self._sending = asyncio.get_running_loop().create_task(self._send())
        await future

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
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._sending = None
