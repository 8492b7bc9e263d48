"""PostgreSQL's wake-up call: ``LISTEN`` on a connection of its own.

The statement that stores a unit's tasks calls ``pg_notify`` on a channel named after
the tasks table, delivered when the unit commits; a dispatcher listening there looks
for due tasks at once instead of at its next poll.  The connection is opened outside
the pools (a pooled connection must never carry a ``LISTEN`` into another unit).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ..settings import Settings

logger = logging.getLogger("sanic_sqlalchemy")


class Listener:
    """A ``LISTEN`` that sets ``wake`` on every notification on ``channel``."""

    def __init__(self, settings: Settings, url: Any, channel: str, wake: asyncio.Event) -> None:
        self._settings = settings
        self._url = url
        self._channel = channel
        self._wake = wake
        self._engine: AsyncEngine | None = None
        self._connection: AsyncConnection | None = None
        self._driver: Any = None

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    @property
    def listening(self) -> bool:
        driver = self._driver
        return driver is not None and not driver.is_closed()

    async def open(self) -> None:
        """Listen (again, after a lost connection); raise when the server cannot be
        reached (the dispatcher then polls, and tries again at its next look)."""
        await self.close()
        connect_args = dict(self._settings.engine_options.get("connect_args", {}))
        engine = self._engine = create_async_engine(
            self._url, poolclass=NullPool, connect_args=connect_args
        )
        connection = self._connection = await engine.connect()
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.add_listener(self._channel, self._notified)
        self._driver = driver
        # Anything committed before the LISTEN took effect was not notified.
        self._wake.set()

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        engine, self._engine = self._engine, None
        self._driver = None
        try:
            if connection is not None:
                # Closing the connection ends the LISTEN with it.
                await connection.close()
        finally:
            if engine is not None:
                await engine.dispose()
