"""The Sanic integration, and the only module that imports Sanic.

Every request is a unit of work:

* ``http.lifecycle.handle`` opens it, before request middleware runs (a websocket
  handler gets none: it opens its own units with ``async with db:``);
* ``Request.respond`` settles it once the final response is known and before any
  byte of it is sent: a status below 400 commits, anything else rolls back, and a
  failing commit raises there, so that Sanic answers 500 instead of a 2xx.  This is
  the one place every response passes, streaming ones included;
* ``http.lifecycle.response`` closes it; a request that never got that far (the
  client hung up, the handler was cancelled) is closed by ``http.lifecycle.complete``
  or ``http.lifecycle.exception``.  Response middleware is never relied upon.

A pool that stays exhausted longer than the pool timeout answers 503 with a
``Retry-After`` header.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sanic import Request, Sanic
from sanic.http.constants import Stage
from sanic.response import HTTPResponse, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

if TYPE_CHECKING:
    from contextvars import Token

    from .database import Database
    from .unit import UnitOfWork

logger = logging.getLogger("sanic_sqlalchemy")

_UNITS = "_sanic_sqlalchemy_units"
_PRIORITY = 1_000_000
#: Seconds a client is asked to wait after a 503 for an exhausted pool.
RETRY_AFTER = 1

_Open = list[tuple["Database", "UnitOfWork", "Token[UnitOfWork | None]"]]


def install(db: Database, app: Sanic[Any, Any]) -> None:
    """Hook ``db`` into ``app``: engines per worker and a unit per request."""
    databases: list[Database] | None = getattr(
        app.request_class, "_sanic_sqlalchemy_databases", None
    )
    if databases is None:
        app.request_class = _unit_request_class(app.request_class or Request)
        databases = app.request_class._sanic_sqlalchemy_databases  # type: ignore[attr-defined]
        assert databases is not None
        _install_signals(app, databases)
        app.error_handler.add(PoolTimeoutError, _pool_exhausted)
    if db in databases:
        return
    databases.append(db)

    async def start_engines(_app: Sanic[Any, Any]) -> None:
        await db.start()

    async def dispose_engines(_app: Sanic[Any, Any]) -> None:
        await db.dispose()

    app.register_listener(start_engines, "before_server_start", priority=_PRIORITY)
    app.register_listener(dispose_engines, "after_server_stop", priority=_PRIORITY)


def _unit_request_class(base: type[Request]) -> type[Request]:
    class UnitOfWorkRequest(base):  # type: ignore[valid-type,misc]
        """Settles the request's units of work right before its response is sent."""

        _sanic_sqlalchemy_databases: list[Database] = []

        async def respond(
            self,
            response: Any = None,
            *,
            status: int = 200,
            headers: Any = None,
            content_type: str | None = None,
        ) -> Any:
            final = await super().respond(
                response, status=status, headers=headers, content_type=content_type
            )
            opened: _Open | None = getattr(self.ctx, _UNITS, None)
            if opened:
                success = getattr(final, "status", 500) < 400
                for _db, unit, _token in opened:
                    await unit.settle(success)
            return final

    UnitOfWorkRequest.__name__ = base.__name__
    UnitOfWorkRequest.__qualname__ = base.__qualname__
    UnitOfWorkRequest._sanic_sqlalchemy_databases = []
    return UnitOfWorkRequest


def _install_signals(app: Sanic[Any, Any], databases: list[Database]) -> None:
    async def open_units(request: Request) -> None:
        conn_ctx = request.conn_info.ctx if request.conn_info is not None else None
        if conn_ctx is not None:
            # A previous request on this connection that never reached its end.
            await _close(getattr(conn_ctx, _UNITS, None), success=False)
        opened: _Open = []
        for db in databases:
            unit = db.open_unit()
            opened.append((db, unit, db.scope.enter(unit)))
        setattr(request.ctx, _UNITS, opened)
        if conn_ctx is not None:
            setattr(conn_ctx, _UNITS, opened)

    async def leave_websockets_alone(request: Request, handler: Any, **_context: Any) -> None:
        if hasattr(handler, "is_websocket"):
            # A websocket lives for minutes: one unit for all of it would hold a
            # transaction open that long. Its handler opens units with `async with db:`.
            await _close_request(request, success=False)

    async def close_units(request: Request, response: Any) -> None:
        await _close_request(request, success=getattr(response, "status", 500) < 400)

    async def close_after_error(request: Request, exception: BaseException) -> None:
        stream = request.stream
        if stream is not None and stream.stage is not Stage.HANDLER:
            # The response had started: no error response (and no respond()) follows.
            await _close_request(request, success=False)

    async def close_with_connection(conn_info: Any) -> None:
        await _close(getattr(conn_info.ctx, _UNITS, None), success=False)

    app.signal("http.lifecycle.handle", priority=_PRIORITY)(open_units)
    app.signal("http.routing.after", priority=_PRIORITY)(leave_websockets_alone)
    app.signal("http.lifecycle.response", priority=-_PRIORITY)(close_units)
    app.signal("http.lifecycle.exception", priority=-_PRIORITY)(close_after_error)
    app.signal("http.lifecycle.complete", priority=-_PRIORITY)(close_with_connection)


async def _close_request(request: Request, success: bool) -> None:
    opened: _Open | None = getattr(request.ctx, _UNITS, None)
    if opened is None:
        return
    delattr(request.ctx, _UNITS)
    conn_info = request.conn_info
    if conn_info is not None and getattr(conn_info.ctx, _UNITS, None) is opened:
        delattr(conn_info.ctx, _UNITS)
    await _close(opened, success)


async def _close(opened: _Open | None, success: bool) -> None:
    if not opened:
        return
    errors: list[BaseException] = []
    for db, unit, token in opened:
        try:
            await unit.end(success)
        except Exception as error:
            errors.append(error)
        finally:
            db.scope.leave(token)
    opened.clear()
    if errors:
        raise errors[0]


def _pool_exhausted(request: Request, error: Exception) -> HTTPResponse:
    logger.warning("no pooled database connection within the pool timeout: %s", error)
    return text(
        "Service temporarily unavailable: the database is busy. Please retry.",
        status=503,
        headers={"Retry-After": str(RETRY_AFTER)},
    )
