"""Through a failover: a URL that names several PostgreSQL hosts, and a primary that moves.

The write pool connects only to a server that accepts writes (asyncpg's
``target_session_attrs=read-write``, unless the URL sets its own).  A primary that is
lost or demoted shows up as an error on one connection: ``install_unavailable`` turns
it into a ``PrimaryUnavailableError`` and makes SQLAlchemy discard that connection and
every pooled one, so that the next unit connects afresh, to whichever server accepts
writes by then.  ``PrimaryWatch`` keeps the primary's read pool on the server the write
pool found (a demoted primary that still runs, read-only but out of recovery, would
otherwise keep serving reads that miss the new primary's writes).

Nothing here runs per request: connections are made, and errors raised, rarely.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import URL, Dialect, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import PrimaryUnavailableError

logger = logging.getLogger("sanic_sqlalchemy")

TARGET = "target_session_attrs"
#: What the write pool asks of a server when the URL names several hosts.
WRITE_TARGET = "read-write"
#: What the primary's read pool asks instead: its connections are read-only from their
#: start-up packet, so asyncpg would find none of them "read-write".
READ_TARGET = "primary"


def hosts_of(url: URL) -> list[tuple[str, int | None]]:
    """The hosts a URL names, with their ports: ``?host=a:5432&host=b:5432``,
    ``?host=a,b&port=5432,5433``, or the URL's own host."""
    hosts = _listed(url.query.get("host"))
    if not hosts:
        return [(url.host or "", url.port)]
    ports = _listed(url.query.get("port"))
    found: list[tuple[str, int | None]] = []
    for index, host in enumerate(hosts):
        name, _, port = host.partition(":")
        if not port and index < len(ports):
            port = ports[index]
        # A malformed port is SQLAlchemy's to report, when the engine is made.
        found.append((name, int(port) if port.isdigit() else url.port))
    return found


def _listed(value: str | tuple[str, ...] | None) -> list[str]:
    """A query parameter given once, repeated, or comma-separated, as a list."""
    values = () if value is None else (value,) if isinstance(value, str) else value
    return [item for text in values for item in text.split(",")]


def several_hosts(url: URL) -> bool:
    """Whether ``url`` names more than one host: a cluster whose primary may move."""
    return len(hosts_of(url)) > 1


def with_write_target(url: URL) -> URL:
    """``url`` asking for a server that accepts writes, unless it says what it wants."""
    if TARGET in url.query or not several_hosts(url):
        return url
    return url.update_query_dict({TARGET: WRITE_TARGET})


def read_target(url: URL) -> str | None:
    """The ``target_session_attrs`` of the primary's read pool: ``primary`` where the
    write pool asks for ``read-write``; ``None`` to keep the URL's own choice."""
    wanted = url.query.get(TARGET)
    if not several_hosts(url) or wanted not in (None, WRITE_TARGET):
        return None
    return READ_TARGET


def address_of(driver_connection: Any) -> tuple[str, int] | None:
    """The ``(host, port)`` an asyncpg connection was made to (None: a Unix socket)."""
    address = getattr(driver_connection, "_addr", None)
    if isinstance(address, tuple) and len(address) == 2:
        return str(address[0]), int(address[1])
    return None


class ServerErrors(Protocol):
    """What the failover needs to know of a backend's errors."""

    def unavailable_reason(
        self, error: BaseException, driver_connection: Any, writes: bool
    ) -> str | None:
        """Why ``error`` means that the primary is gone for this connection (lost,
        shutting down, or no longer accepting writes when ``writes``), or ``None``."""


class PrimaryWatch:
    """Where the primary of a several-host URL is, as the write pool last found it; the
    primary's other pools connect there first and are discarded when it is lost."""

    def __init__(self, url: URL) -> None:
        #: ``(host, port)`` of the last server the write pool connected to.
        self.address: tuple[str, int] | None = None
        self._engines: list[AsyncEngine] = []
        self._read_target = read_target(url)

    def watch_writes(self, engine: AsyncEngine) -> None:
        """Note where each new write connection of ``engine`` landed."""
        self._engines.append(engine)

        def connected(dbapi_connection: Any, _record: Any) -> None:
            address = address_of(dbapi_connection.driver_connection)
            if address is not None:
                if address != self.address:
                    logger.info("writes go to %s:%s", *address)
                self.address = address

        event.listen(engine.sync_engine.pool, "connect", connected)

    def follow(self, engine: AsyncEngine) -> None:
        """Discard ``engine``'s pool with the write pool's when the primary is lost."""
        self._engines.append(engine)

    def read_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """The connection parameters of the primary's read pool: the target it can ask
        for, and the known primary tried first."""
        if self._read_target is not None:
            params = {**params, TARGET: self._read_target}
        address, hosts, ports = self.address, params.get("host"), params.get("port")
        if address is None or not isinstance(hosts, list) or not isinstance(ports, list):
            return params
        pairs = list(zip(hosts, ports, strict=True))
        for index, (host, port) in enumerate(pairs):
            if (str(host), port) == address:
                pairs.insert(0, pairs.pop(index))
                return {**params, "host": [h for h, _ in pairs], "port": [p for _, p in pairs]}
        return params

    def lost(self) -> None:
        """The primary was lost or demoted: forget it, and make every pool of the
        primary replace the connections it holds (at their next checkout)."""
        self.address = None
        for engine in self._engines:
            # What SQLAlchemy does to a pool when one of its connections is found dead;
            # connections in use are replaced when they come back.
            engine.sync_engine.pool._invalidate(None)  # type: ignore[arg-type]


def install_unavailable(
    engine: AsyncEngine,
    errors: ServerErrors,
    *,
    writes: bool,
    watch: PrimaryWatch | None = None,
) -> None:
    """Report a primary that is lost, unreachable or (``writes``) demoted as a
    ``PrimaryUnavailableError`` on ``engine``, discarding the connection and the pool.

    Installed before the backend's own error handlers, which leave alone an error it
    already reported.
    """
    sync_engine = engine.sync_engine
    lost: Callable[[], None] = watch.lost if watch is not None else _nothing

    def connect(dialect: Dialect, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        params = cparams if watch is None or writes else watch.read_params(cparams)
        try:
            return dialect.connect(*cargs, **params)
        except (OSError, asyncio.TimeoutError) as error:
            # Refused, unreachable or too slow: SQLAlchemy passes these on as they are.
            lost()
            raise PrimaryUnavailableError("could not connect to it", error) from error

    def on_error(context: ExceptionContext) -> BaseException | None:
        error = context.original_exception
        if not isinstance(error, context.dialect.loaded_dbapi.Error):
            return None  # a cancellation, or an error of ours
        connection = context.connection
        driver = None
        if connection is not None and not connection.invalidated:
            driver = connection.connection.driver_connection
        reason = errors.unavailable_reason(error, driver, writes)
        if reason is None:
            if not context.is_disconnect:
                return None
            reason = "the connection to it was lost"
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = True
        lost()
        # Returned, not raised: the handlers after this one (the backend's, the
        # application's) still see the error, and SQLAlchemy raises this one in the end.
        return PrimaryUnavailableError(
            reason,
            error,
            context.statement,
            context.parameters,
            hide_parameters=bool(getattr(context.engine, "hide_parameters", False)),
        )

    event.listen(sync_engine, "do_connect", connect)
    event.listen(sync_engine, "handle_error", on_error, retval=True)


def _nothing() -> None:
    pass
