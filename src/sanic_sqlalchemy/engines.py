"""The engines of one worker: a write pool and a read-only pool, bound to one loop.

Both pools check each connection on checkout without a round trip (is the socket
still open? is a read connection still read-only and outside any transaction?) and
ping only a connection that sat idle longer than ``LIVENESS_WINDOW``: under load no
request pays for a ping, and a connection killed while idle (server restart,
``pg_terminate_backend``, ``KILL``) is replaced before a request sees it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from .dialects import Backend, Role, backend_for
from .errors import ConfigurationError, EventLoopMismatchError, ReadOnlyError
from .insight import StatementWatch
from .readonly import ReadGuard
from .replicas.probe import connect_options, probe_engine
from .replicas.router import Replica, ReplicaSet
from .settings import Settings, pool_accepts_size

logger = logging.getLogger("sanic_sqlalchemy")

#: A connection checked out within this many seconds is trusted without a ping.
LIVENESS_WINDOW = 1.0
_LAST_USED = "sanic_sqlalchemy_last_used"


class Engines:
    """The write engine and the read engine of one ``Database`` in one event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend: Backend = backend_for(settings)
        self.loop = asyncio.get_running_loop()
        #: The replicas that serve reads, when ``read_urls`` are set.
        self.replicas: ReplicaSet | None = None
        try:
            self.write = self._create(Role.WRITE)
            self.read = self._create(Role.READ)
            if settings.read_urls:
                self.replicas = self._replica_set()
        except (ArgumentError, TypeError) as error:
            self.backend.cleanup()
            raise ConfigurationError(f"Could not create the database engine: {error}") from error
        if self.replicas is not None:
            self.replicas.start()

    def _replica_set(self) -> ReplicaSet:
        settings, backend = self.settings, self.backend
        replicas = [
            Replica(url, self._create(Role.READ, url), probe_engine(backend.url(url), backend.name))
            for url in settings.read_urls
        ]
        return ReplicaSet(
            backend.name, backend.url(settings.url), replicas, settings.replicas.max_lag
        )

    def _create(self, role: Role, url: URL | None = None) -> AsyncEngine:
        settings = self.settings
        options: dict[str, Any] = {
            "echo": settings.echo,
            "pool_size": settings.pool_size,
            "max_overflow": settings.max_overflow,
            "pool_timeout": settings.pool_timeout,
            "pool_recycle": -1 if settings.pool_recycle is None else settings.pool_recycle,
            **settings.engine_options,
        }
        if not pool_accepts_size(settings.engine_options):
            # NullPool and the like take none of these (SQLAlchemy raises TypeError).
            for name in ("pool_size", "max_overflow", "pool_timeout"):
                del options[name]
        options.update(self.backend.engine_options(role, settings))
        if url is not None:
            # A replica that does not answer must fail fast, so the unit moves on.
            options["connect_args"] = {
                **connect_options(self.backend.name),
                **options.get("connect_args", {}),
            }
        engine = create_async_engine(self.backend.url(url or settings.url), **options)
        self.backend.install(engine, role)
        self._install_liveness(engine, role)
        guard = ReadGuard(self.backend)
        if role is Role.READ:
            guard.install_on_read_engine(engine)
            event.listen(engine.sync_engine, "handle_error", self._translate_refused_write)
        else:
            guard.install_on_write_engine(engine)
        # After the guard: a refused statement is never sent, so never timed.
        StatementWatch(settings.insight).install(engine, reads_only=role is Role.READ)
        return engine

    def _translate_refused_write(self, context: ExceptionContext) -> None:
        # Whatever path the write took (driver SQL on a held connection included).
        error = context.sqlalchemy_exception
        if isinstance(error, DBAPIError):
            refusal = refused_as_read_only(self.backend, error)
            if refusal is not None:
                raise refusal

    def _install_liveness(self, engine: AsyncEngine, role: Role) -> None:
        backend = self.backend
        dialect = engine.sync_engine.dialect

        def mark_connected(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            record.info[_LAST_USED] = time.monotonic()

        def on_checkout(
            dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
        ) -> None:
            driver = dbapi_connection.driver_connection
            if backend.is_dead(driver):
                raise DisconnectionError("connection closed while idle in the pool")
            if backend.is_unsafe_for(role, driver):
                raise DisconnectionError("connection left its read-only or idle state")
            # Idle time counts from the last checkout, not the last check-in: never
            # shorter than the truth, and one pool event less per statement.
            now = time.monotonic()
            info = record.info
            last_used = info.get(_LAST_USED, 0.0)
            info[_LAST_USED] = now
            if now - last_used > LIVENESS_WINDOW:
                # Raises DisconnectionError (the pool then opens a new connection)
                # when the server no longer answers.
                try:
                    alive = dialect.do_ping(dbapi_connection)
                except dialect.loaded_dbapi.Error as error:
                    if dialect.is_disconnect(error, dbapi_connection, None):
                        raise DisconnectionError("connection did not answer a ping") from error
                    raise
                if not alive:
                    raise DisconnectionError("connection did not answer a ping")

        event.listen(engine.sync_engine.pool, "connect", mark_connected)
        event.listen(engine.sync_engine.pool, "checkout", on_checkout)

    def check_loop(self) -> None:
        """Raise when the running loop is not the one these engines were made in."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            raise EventLoopMismatchError(
                "Database used outside a running event loop: open units with "
                "`async with db:` inside async code."
            ) from None
        if running is not self.loop:
            raise EventLoopMismatchError(
                "The engines of this Database were created in another event loop. "
                "Engines cannot move between loops: call `await db.dispose()` before "
                "the loop that used them ends (for example in a test fixture's "
                "teardown), then the next unit creates fresh ones in its own loop."
            )

    async def dispose(self) -> None:
        """Close every pooled connection of every engine (and stop the replica probe), in
        the loop they belong to.

        Usually that is the running loop.  Engines left behind by a loop that stopped
        without disposing them (a server start that failed after the engines were
        created) are disposed by running that loop once more in a worker thread, since
        their connections can only be closed there; a loop that is already closed can
        run nothing, so its connections are dropped unclosed, with a warning.
        """
        loop = self.loop
        if loop is asyncio.get_running_loop():
            await self._dispose()
        elif loop.is_closed():
            logger.warning(
                "the event loop of these engines is closed: their pooled connections "
                "cannot be closed cleanly and are dropped (call `await db.dispose()` "
                "before a loop ends)"
            )
            self.backend.cleanup()
        elif loop.is_running():
            # A loop in another thread.
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._dispose(), loop))
        else:
            await asyncio.to_thread(loop.run_until_complete, self._dispose())

    async def _dispose(self) -> None:
        try:
            if self.replicas is not None:
                await self.replicas.close()
                for replica in self.replicas.replicas:
                    await replica.engine.dispose()
            await self.write.dispose()
            await self.read.dispose()
        finally:
            self.backend.cleanup()


def refused_as_read_only(backend: Backend, error: DBAPIError) -> ReadOnlyError | None:
    """The ``ReadOnlyError`` to raise when ``error`` is the database refusing a write
    because the connection or transaction is read-only; ``None`` otherwise."""
    if not backend.is_read_only_violation(error.orig):
        return None
    return ReadOnlyError(
        "db.read cannot write: the database refused the statement as read-only and "
        "nothing was changed. Run writes through db.write."
    )
