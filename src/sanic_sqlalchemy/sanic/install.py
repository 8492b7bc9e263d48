"""Hooking a database into a Sanic app: engines per worker, a unit per request, wrapped
handlers, the end of units with the connection, error answers and injection."""

from __future__ import annotations

import asyncio
import functools
import weakref
from typing import Any

from sanic import Request, Sanic
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ..database import DatabaseCore
from ..errors import ConfigurationError, PrimaryUnavailableError, ReplicaUnavailableError
from ..settings import token_name_clash
from .debug import watch_commit_flushes
from .handlers import is_wrapped, wrap_handler
from .injection import install_injection
from .request import INFORMED, request_unit, unit_request_class, why_no_request_unit
from .responses import no_replica, pool_exhausted, primary_unavailable
from .units import UNITS_ON_CONNECTION, Units, end_units

_PRIORITY = 1_000_000
#: How many running servers of this process use each Database's engines.
_servers: weakref.WeakKeyDictionary[DatabaseCore, int] = weakref.WeakKeyDictionary()
#: The database lists of the apps each Database is installed on (shared with the app).
_apps_of: weakref.WeakKeyDictionary[DatabaseCore, list[list[DatabaseCore]]] = (
    weakref.WeakKeyDictionary()
)


def installed_beside(db: DatabaseCore) -> list[DatabaseCore]:
    """``db`` and every Database installed on an app that ``db`` is installed on, in
    order of installation (the test kit rolls all of them back together)."""
    found = {db: None}
    for databases in _apps_of.get(db, ()):
        found.update(dict.fromkeys(databases))
    return list(found)


def install(db: DatabaseCore, app: Sanic[Any, Any]) -> None:
    """Hook ``db`` into ``app``: engines per worker and a unit per request."""
    databases: list[DatabaseCore] | None = getattr(
        app.request_class, "_sanic_sqlalchemy_databases", None
    )
    if databases is None:
        app.request_class = unit_request_class(app.request_class or Request)
        databases = app.request_class._sanic_sqlalchemy_databases  # type: ignore[attr-defined]
        assert databases is not None
        _install_app_hooks(app)
    check_token_names(db, databases)
    if db in databases:
        return
    databases.append(db)
    _decide_informed(app, databases)
    _apps_of.setdefault(db, []).append(databases)
    db.scope.provider = functools.partial(request_unit, db)
    db.scope.why_none = why_no_request_unit

    async def start_engines(app: Sanic[Any, Any]) -> None:
        # Again at start: a database may have been configured anew since init_app.
        check_token_names(db, databases)
        _decide_informed(app, databases)
        if app.debug:
            # Decided at start-up: a production server installs nothing.
            watch_commit_flushes(db.write_session_class.sync_session_class)
        servers = _servers.get(db, 0)
        engines = db._engines
        if servers and engines is not None and engines.loop is asyncio.get_running_loop():
            # Another app of this process serves the same db in this loop
            # (Sanic.serve_single with several apps): share its engines.
            _servers[db] = servers + 1
            return
        _servers[db] = 1
        await db.start()

    async def dispose_engines(_app: Sanic[Any, Any]) -> None:
        servers = _servers.get(db, 0) - 1
        if servers > 0:
            # The last app to stop disposes. Sanic stops a secondary app inside the
            # primary's shutdown and, if that stop still awaits I/O when the primary
            # goes on, spins forever waiting for it (sanic's shutdown_tasks).
            _servers[db] = servers
            return
        _servers.pop(db, None)
        await db.dispose()

    async def start_tasks(app: Sanic[Any, Any]) -> None:
        # Decided here, at start: a database without tasks gets no dispatcher, and no
        # request pays anything for tasks either way.
        db.tasks.start()

    async def stop_tasks(app: Sanic[Any, Any]) -> None:
        # Stop claiming; runs get Sanic's graceful-shutdown time, then are handed back.
        await db.tasks.stop(float(app.config.GRACEFUL_SHUTDOWN_TIMEOUT))

    app.register_listener(start_engines, "before_server_start", priority=_PRIORITY)
    app.register_listener(start_tasks, "after_server_start", priority=-_PRIORITY)
    app.register_listener(stop_tasks, "before_server_stop", priority=_PRIORITY)
    app.register_listener(dispose_engines, "after_server_stop", priority=_PRIORITY)


def _decide_informed(app: Sanic[Any, Any], databases: list[DatabaseCore]) -> None:
    """Decide which databases' units tell the client something (a commit position with
    replicas, Server-Timing), so that a request reads and sends tokens only for those."""
    informed = tuple(
        known
        for known in databases
        if known.settings.read_urls or known.settings.insight.server_timing
    )
    setattr(app.request_class, INFORMED, informed)


def check_token_names(db: DatabaseCore, databases: list[DatabaseCore]) -> None:
    """Raise ``ConfigurationError`` when ``db`` and another database of the same app
    both have replicas and would carry their clients' positions under one cookie or
    header name: the response would hold only one of the two tokens, and the client's
    next request could read from a replica that misses its own write."""
    for other in databases:
        if other is db:
            continue
        clash = token_name_clash(other.settings, db.settings)
        if clash is None:
            continue
        prefix = db.config_prefix
        raise ConfigurationError(
            f"{prefix}TOKEN_COOKIE, {prefix}TOKEN_HEADER: the databases of "
            f"{other.config_prefix}URL and {prefix}URL both have replicas and would both "
            f"send {clash} to carry their clients' commit positions; one token would "
            "replace the other and a client could miss its own write. Give each its "
            f"own names: set {prefix}TOKEN_COOKIE and {prefix}TOKEN_HEADER (databases "
            "with different config prefixes get names of their own by default)."
        )


def _install_app_hooks(app: Sanic[Any, Any]) -> None:
    async def wrap_handlers(app: Sanic[Any, Any]) -> None:
        for route in app.router.routes:
            handler = route.handler
            if is_wrapped(handler) or hasattr(handler, "is_websocket"):
                continue
            route.handler = wrap_handler(handler)

    async def end_with_connection(conn_info: Any) -> None:
        units: Units | None = getattr(conn_info.ctx, UNITS_ON_CONNECTION, None)
        if units is not None:
            delattr(conn_info.ctx, UNITS_ON_CONNECTION)
        if units:
            await end_units(units, success=False)

    # Last of the start-up listeners: extensions (sanic-ext's automatic HEAD and
    # OPTIONS routes, OpenAPI) add their routes before it.
    app.register_listener(wrap_handlers, "before_server_start", priority=-_PRIORITY)
    app.signal("http.lifecycle.complete", priority=-_PRIORITY)(end_with_connection)
    app.error_handler.add(PoolTimeoutError, pool_exhausted)
    app.error_handler.add(ReplicaUnavailableError, no_replica)
    app.error_handler.add(PrimaryUnavailableError, primary_unavailable)
    install_injection(app)
