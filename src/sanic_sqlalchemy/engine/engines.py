"""The engines of one worker: a write pool and a read-only pool (and one per replica),
bound to one event loop, each with its backend's set-up, the liveness check, the read
guard and the statement watch installed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..cluster.failover import PrimaryWatch, install_unavailable, several_hosts
from ..errors import ConfigurationError, EventLoopMismatchError
from ..insight import StatementWatch
from ..readonly import ReadGuard
from ..replicas.probe import connect_options, probe_engine
from ..replicas.router import Replica, ReplicaSet
from ..replicas.tokens import TokenCodec, cluster_tag
from ..settings import Settings, pool_accepts_size
from .backends import Backend, Role, backend_for, refused_as_read_only
from .liveness import install_leftover_check, install_liveness

logger = logging.getLogger("sanic_sqlalchemy")


class Engines:
    """The write engine and the read engine of one ``Database`` in one event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend: Backend = backend_for(settings)
        self.loop = asyncio.get_running_loop()
        #: The replicas that serve reads, when ``read_urls`` are set.
        self.replicas: ReplicaSet | None = None
        #: Where the primary is, when the URL names several hosts (a failover may move it).
        self.primary_watch = (
            PrimaryWatch(settings.url)
            if self.backend.fails_over and several_hosts(settings.url)
            else None
        )
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
        names = settings.replicas
        tokens = TokenCodec(
            backend=backend.name,
            tag=cluster_tag(settings.url),
            secret=names.token_secret,
            ttl=names.token_ttl,
        )
        return ReplicaSet(backend.name, backend.url(settings.url), replicas, names.max_lag, tokens)

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
        if role is Role.WRITE and url is None:
            # The COMMIT can carry statements (a unit's durable tasks): they then cost
            # no round trip of their own (``backends.carried_commit``).
            carrying = self.backend.commit_carrying_args(options)
            if carrying is not None:
                options["connect_args"] = carrying
        if url is not None:
            # A replica that does not answer must fail fast, so the unit moves on.
            options["connect_args"] = {
                **connect_options(self.backend.name),
                **options.get("connect_args", {}),
            }
        engine = create_async_engine(self.backend.url(url or settings.url), **options)
        if url is None and self.backend.fails_over:
            self._install_failover(engine, role)
        self.backend.install(engine, role)
        install_liveness(engine, self.backend, role)
        guard = ReadGuard(self.backend)
        if role is Role.READ:
            guard.install_on_read_engine(engine)
            install_leftover_check(engine, self.backend)
            event.listen(engine.sync_engine, "handle_error", self._translate_refused_write)
        else:
            guard.install_on_write_engine(engine)
        # After the guard: a refused statement is never sent, so never timed.
        StatementWatch(settings.insight).install(engine, reads_only=role is Role.READ)
        return engine

    def _install_failover(self, engine: AsyncEngine, role: Role) -> None:
        """A lost or demoted primary becomes ``PrimaryUnavailableError`` (first among the
        error handlers); with several hosts, the primary's pools follow the write pool."""
        watch = self.primary_watch
        install_unavailable(engine, self.backend, writes=role is Role.WRITE, watch=watch)
        if watch is not None:
            if role is Role.WRITE:
                watch.watch_writes(engine)
            else:
                watch.follow(engine)

    def _translate_refused_write(self, context: ExceptionContext) -> None:
        # Whatever path the write took (driver SQL on a held connection included).
        error = context.sqlalchemy_exception
        if isinstance(error, DBAPIError):
            refusal = refused_as_read_only(self.backend, error)
            if refusal is not None:
                raise refusal

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
