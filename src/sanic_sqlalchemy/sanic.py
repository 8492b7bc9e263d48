"""The Sanic integration, and the only module that imports Sanic.

Every request is a unit of work, created the first time the request touches ``db``
(request middleware included), so that a request that never does costs next to
nothing:

* ``Request.respond`` settles it once the final response is known and before any
  byte of it is sent: a status below 400 commits, anything else rolls back, and a
  failing commit raises there, so that Sanic answers 500 instead of a 2xx.  Every
  response passes there, streaming ones included;
* the unit ends (its read session closes) right after that, or, when the handler
  itself called ``respond`` to stream, when the handler returns: each route handler
  is wrapped for this at server start, which also ends the unit of a handler that
  was cancelled (the client hung up);
* ``http.lifecycle.complete``, once per connection, ends whatever a request left
  behind on paths that reach neither (a cancellation in request middleware).
  Response middleware is never relied upon.

A websocket handler gets no request unit (it would hold a transaction for minutes): it
opens its own with ``async with db:``.  A pool that stays exhausted longer than the pool
timeout answers 503 with a ``Retry-After`` header.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

if TYPE_CHECKING:
    from .database import Database
    from .unit import UnitOfWork

logger = logging.getLogger("sanic_sqlalchemy")

_UNITS = "_sanic_sqlalchemy_units"
_IN_HANDLER = "_sanic_sqlalchemy_in_handler"
#: Set when the handler called ``respond`` itself: its units settled before it returned.
_STREAMING = "_sanic_sqlalchemy_streaming"
_WRAPPED = "__sanic_sqlalchemy_wrapped__"
_PRIORITY = 1_000_000
#: Seconds a client is asked to wait after a 503 for an exhausted pool.
RETRY_AFTER = 1

_Units = dict["Database", "UnitOfWork"]


def install(db: Database, app: Sanic[Any, Any]) -> None:
    """Hook ``db`` into ``app``: engines per worker and a unit per request."""
    databases: list[Database] | None = getattr(
        app.request_class, "_sanic_sqlalchemy_databases", None
    )
    if databases is None:
        app.request_class = _unit_request_class(app.request_class or Request)
        databases = app.request_class._sanic_sqlalchemy_databases  # type: ignore[attr-defined]
        assert databases is not None
        _install_app_hooks(app)
    if db in databases:
        return
    databases.append(db)
    db.scope.provider = functools.partial(_request_unit, db)

    async def start_engines(_app: Sanic[Any, Any]) -> None:
        await db.start()

    async def dispose_engines(_app: Sanic[Any, Any]) -> None:
        await db.dispose()

    app.register_listener(start_engines, "before_server_start", priority=_PRIORITY)
    app.register_listener(dispose_engines, "after_server_stop", priority=_PRIORITY)


def _request_unit(db: Database) -> UnitOfWork | None:
    """The current request's unit of ``db``, created on first use."""
    try:
        request = Request.get_current()
    except SanicException:
        return None
    if db not in getattr(type(request), "_sanic_sqlalchemy_databases", ()):
        return None  # a request of another app, which does not use this db
    route = request.route
    if route is not None and hasattr(route.handler, "is_websocket"):
        return None
    state = request.ctx.__dict__
    units: _Units | None = state.get(_UNITS)
    if units is None:
        units = state[_UNITS] = {}
        conn_info = request.conn_info
        if conn_info is not None:
            leftover: _Units | None = conn_info.ctx.__dict__.get(_UNITS)
            if leftover and any(not unit.ended for unit in leftover.values()):
                # Left open by a previous request on this connection that never
                # reached its end: end it now.
                _end_later(leftover)
            conn_info.ctx.__dict__[_UNITS] = units
    unit = units.get(db)
    if unit is None:
        unit = units[db] = db.open_unit()
    return unit


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
            state = self.ctx.__dict__
            units: _Units | None = state.get(_UNITS)
            if units:
                success = getattr(final, "status", 500) < 400
                if success and any(unit.commit_failed for unit in units.values()):
                    # An exception handler answered the failed commit below 400: the
                    # client must not see success for data that was not committed.
                    logger.error(
                        "an exception handler answered %s to a request whose commit "
                        "failed; answering 500 instead",
                        final.status,
                    )
                    final.status = 500
                    success = False
                if not state.get(_IN_HANDLER):
                    # Sanic is about to send a finished response: nothing will read.
                    await _end_units(units, success)
                    return final
                # The handler streams: it may still read while it sends.
                state[_STREAMING] = True
                try:
                    for unit in units.values():
                        await unit.settle(success)
                except BaseException:
                    await _end_units(units, success=False)
                    raise
            return final

    UnitOfWorkRequest.__name__ = base.__name__
    UnitOfWorkRequest.__qualname__ = base.__qualname__
    UnitOfWorkRequest._sanic_sqlalchemy_databases = []
    return UnitOfWorkRequest


def _wrap_handler(handler: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(handler):
        # The common case, kept lean: it runs on every request, database or not.
        async def in_unit_of_work(request: Request, *args: Any, **kwargs: Any) -> Any:
            state = request.ctx.__dict__
            state[_IN_HANDLER] = True
            try:
                response = await handler(request, *args, **kwargs)
            except BaseException as error:
                state[_IN_HANDLER] = False
                await _after_handler(state, cancelled=not isinstance(error, Exception))
                raise
            state[_IN_HANDLER] = False
            if _STREAMING in state:
                await _after_handler(state, cancelled=False)
            return response

    else:

        async def in_unit_of_work(request: Request, *args: Any, **kwargs: Any) -> Any:
            state = request.ctx.__dict__
            state[_IN_HANDLER] = True
            cancelled = False
            try:
                response = handler(request, *args, **kwargs)
                if inspect.isawaitable(response):
                    response = await response
                return response
            except BaseException as error:
                cancelled = not isinstance(error, Exception)
                raise
            finally:
                state[_IN_HANDLER] = False
                await _after_handler(state, cancelled)

    functools.update_wrapper(in_unit_of_work, handler)
    setattr(in_unit_of_work, _WRAPPED, True)
    return in_unit_of_work


async def _after_handler(state: dict[str, Any], cancelled: bool) -> None:
    units: _Units | None = state.get(_UNITS)
    if units and cancelled:
        # No response will come to settle the unit.
        await _end_units(units, success=False)
    elif units:
        # A unit the handler settled by responding itself (streaming) is done reading;
        # the others wait for respond().
        await _end_settled(units)


def _install_app_hooks(app: Sanic[Any, Any]) -> None:
    async def wrap_handlers(app: Sanic[Any, Any]) -> None:
        for route in app.router.routes:
            handler = route.handler
            if getattr(handler, _WRAPPED, False) or hasattr(handler, "is_websocket"):
                continue
            route.handler = _wrap_handler(handler)

    async def end_with_connection(conn_info: Any) -> None:
        units: _Units | None = conn_info.ctx.__dict__.pop(_UNITS, None)
        if units:
            await _end_units(units, success=False)

    app.register_listener(wrap_handlers, "before_server_start", priority=_PRIORITY)
    app.signal("http.lifecycle.complete", priority=-_PRIORITY)(end_with_connection)
    app.error_handler.add(PoolTimeoutError, _pool_exhausted)


async def _end_settled(units: _Units) -> None:
    settled = {db: unit for db, unit in units.items() if unit.settled}
    if settled:
        await _end_units(settled, success=False)


async def _end_units(units: _Units, success: bool) -> None:
    """End every unit (those already settled keep their outcome); raise the first error.

    Once one unit fails (its commit raised), the units after it roll back.
    """
    error: BaseException | None = None
    for unit in list(units.values()):
        try:
            await unit.end(success and error is None)
        except BaseException as failure:
            if error is None:
                error = failure
            else:
                logger.error("ending another unit of the request failed too", exc_info=failure)
    if error is not None:
        raise error


def _end_later(units: _Units) -> None:
    task = asyncio.get_running_loop().create_task(_end_units(dict(units), success=False))
    task.add_done_callback(_log_failure)
    units.clear()


def _log_failure(task: Any) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "ending a unit of work left by a previous request failed", exc_info=task.exception()
        )


def _pool_exhausted(request: Request, error: Exception) -> HTTPResponse:
    logger.warning("no pooled database connection within the pool timeout: %s", error)
    return text(
        "Service temporarily unavailable: the database is busy. Please retry.",
        status=503,
        headers={"Retry-After": str(RETRY_AFTER)},
    )
