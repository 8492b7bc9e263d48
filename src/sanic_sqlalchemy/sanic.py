"""The Sanic integration, and the only module that imports Sanic.

Every request is a unit of work, created the first time the request touches ``db``
(request middleware included), so that a request that never does costs next to
nothing.  The unit belongs to the task that runs the request's handler: a task the
handler starts (``asyncio.create_task``, ``app.add_task``, a signal handler) shares its
``db.read`` while the request runs, and gets a unit of its own from ``async with db:``.

* ``Request.respond`` settles it once the final response is known and before any
  byte of it is sent: a status below 400 commits, anything else rolls back, and a
  failing commit raises there, so that Sanic answers 500 instead of a 2xx.  Every
  response passes there, streaming ones included;
* the unit ends (its read session closes) right after that, or, when the response
  streams (the handler called ``respond`` itself, or returned a ``ResponseStream``),
  when the handler or the streaming function returns: each route handler is wrapped
  for this at server start, after every extension added its routes, in a way that
  leaves what ``typing.get_type_hints`` and ``inspect`` see on it unchanged; the
  wrapper also ends the unit of a handler that was cancelled (the client hung up);
* ``http.lifecycle.complete``, once per connection, ends whatever a request left
  behind on paths that reach neither (a cancellation in request middleware).
  Response middleware is never relied upon;
* under an ASGI server, which does not cancel a request whose client hangs up as
  Sanic's own server does, a request that created a unit watches for the
  ``http.disconnect`` message until its response is ready (only once nothing else
  will read the request's messages) and cancels its handler, which then rolls back the
  same way; nothing commits for a client that hung up.

Per-request state lives in slots of the request class, never in ``request.ctx``
(which an application may replace with a slotted object of its own).  A websocket
handler gets no request unit (it would hold a transaction for minutes): it opens its
own with ``async with db:``.  A pool that stays exhausted longer than the pool timeout
answers 503 with a ``Retry-After`` header.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import sys
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sanic import Request, Sanic
from sanic.asgi import ASGIApp
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, ResponseStream, text
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from .errors import ReplicaUnavailableError
from .injection import install_injection
from .insight import metric_name, server_timing
from .unit import UnitState

if TYPE_CHECKING:
    from .database import Database
    from .unit import UnitOfWork

logger = logging.getLogger("sanic_sqlalchemy")

_UNITS = "_sanic_sqlalchemy_units"
_WRAPPED = "__sanic_sqlalchemy_wrapped__"
_PRIORITY = 1_000_000
#: Seconds a client is asked to wait after a 503 for an exhausted pool.
RETRY_AFTER = 1
#: The status of the response that nobody receives, for a client that hung up (nginx's
#: "client closed request"): an ASGI server drops it, response middleware sees it.
HUNG_UP = 499

_Units = dict["Database", "UnitOfWork"]
#: How many running servers of this process use each Database's engines.
_servers: weakref.WeakKeyDictionary[Database, int] = weakref.WeakKeyDictionary()


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

    app.register_listener(start_engines, "before_server_start", priority=_PRIORITY)
    app.register_listener(dispose_engines, "after_server_stop", priority=_PRIORITY)


def _request_unit(db: Database) -> UnitOfWork | None:
    """The current request's unit of ``db``, created on first use."""
    try:
        request: Any = Request.get_current()
    except SanicException:
        return None
    if db not in getattr(type(request), "_sanic_sqlalchemy_databases", ()):
        return None  # a request of another app, which does not use this db
    route = request.route
    if route is not None and hasattr(route.handler, "is_websocket"):
        return None
    units: _Units | None = request._sqla_units
    unit = units.get(db) if units is not None else None
    if unit is not None:
        return unit
    if request._sqla_over:
        # The request has been answered: a task it started gets an ended unit (an
        # error that says so), never one that nothing would end. Recorded nowhere: the
        # connection may already serve the next request.
        unit = db.open_unit()
        unit.state = UnitState.ENDED
        return unit
    if units is None:
        units = request._sqla_units = {}
        conn_info = request.conn_info
        if conn_info is not None:
            leftover: _Units | None = getattr(conn_info.ctx, _UNITS, None)
            if leftover and any(not unit.ended for unit in leftover.values()):
                # Left open by a previous request on this connection that never
                # reached its end: end it now.
                _end_later(leftover)
            setattr(conn_info.ctx, _UNITS, units)
        if isinstance(request.stream, ASGIApp) and not request._sqla_streaming:
            # Once the response streams, the units are settled: nothing to watch for
            # (and the server reports the response's end with http.disconnect too).
            _watch_for_hang_up(request)
    unit = units[db] = db.open_unit(_position_tokens(request, db))
    # Whichever task touched db first (a child task of the handler, say), the unit
    # belongs to the task that runs the request.
    unit.owner = request._sqla_task
    if request._sqla_streaming:
        # First used while the response streams: reads only, like the others.
        unit.state = UnitState.COMMITTED
    return unit


def _position_tokens(request: Any, db: Database) -> tuple[object, ...]:
    """The commit positions the client brought back (cookie, header), with replicas."""
    settings = db.settings
    if not settings.read_urls:
        return ()
    names = settings.replicas
    return (request.cookies.get(names.token_cookie), request.headers.get(names.token_header))


def _tell_the_client(request: Any, units: _Units, response: Any) -> None:
    """Set before the headers go out: the position of each unit's commit, so that the
    client's next requests read only from replicas that have it, and the units' time in
    the database as ``Server-Timing`` where a database is set to send it."""
    for db, unit in units.items():
        if db.settings.insight.server_timing:
            # A header line of its own: the application's own metrics stay as they are.
            response.headers.add(
                "Server-Timing", server_timing(metric_name(db.config_prefix), unit.stats)
            )
        token = unit.commit_token
        if token is None:
            continue
        names = db.settings.replicas
        response.headers[names.token_header] = token
        response.cookies.add_cookie(
            names.token_cookie,
            token,
            path="/",
            max_age=int(names.token_ttl),
            httponly=True,
            samesite="Lax",
            secure=request.scheme in ("https", "wss"),
        )


def _unit_request_class(base: type[Request]) -> type[Request]:
    class UnitOfWorkRequest(base):  # type: ignore[valid-type,misc]
        """Settles the request's units of work right before its response is sent."""

        __slots__ = (
            "_sqla_hung_up",
            "_sqla_in_handler",
            "_sqla_over",
            "_sqla_streaming",
            "_sqla_task",
            "_sqla_units",
            "_sqla_watch_later",
            "_sqla_watcher",
        )
        _sanic_sqlalchemy_databases: list[Database] = []

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            #: The request's units, one per Database, created on first use.
            self._sqla_units: _Units | None = None
            #: The task that runs the request: it owns the units.
            self._sqla_task = asyncio.current_task()
            self._sqla_in_handler = False
            #: The response streams: units are settled, reads go on until it ends.
            self._sqla_streaming = False
            #: The request is over: no unit is created for it any more.
            self._sqla_over = False
            #: Under an ASGI server: the task watching for the client to hang up, and
            #: whether it did (then nothing commits).
            self._sqla_watcher: asyncio.Task[None] | None = None
            self._sqla_hung_up = False
            #: A unit was created before Sanic read the body (sanic-ext injects at
            #: routing): watch once the handler starts, when the body has been read.
            self._sqla_watch_later = False

        async def respond(
            self,
            response: Any = None,
            *,
            status: int = 200,
            headers: Any = None,
            content_type: str | None = None,
        ) -> Any:
            if self._sqla_watcher is not None:
                # The response is ready: from here on the units settle, and a hang-up
                # no longer cancels anything.
                _stop_watching(self)
            final = await super().respond(
                response, status=status, headers=headers, content_type=content_type
            )
            units = self._sqla_units
            if (
                units
                and getattr(final, "status", 500) < 400
                and any(unit.commit_failed for unit in units.values())
            ):
                # An exception handler answered the failed commit below 400: the
                # client must not see success for data that was not committed.
                logger.error(
                    "an exception handler answered %s to a request whose commit "
                    "failed; answering 500 instead",
                    final.status,
                )
                final.status = 500
            if self._sqla_in_handler or self._sqla_streaming:
                # The handler streams (or a ResponseStream opens its stream): it may
                # still read while it sends.
                await _settle_for_streaming(self, final)
            elif isinstance(final, ResponseStream):
                # Its streaming function runs next and may read: the units end when
                # it returns.
                await _settle_for_streaming(self, final)
                final.streaming_fn = _ending_units(self, final.streaming_fn)
            else:
                # Sanic is about to send a finished response: nothing will read.
                self._sqla_over = True
                units = self._sqla_units
                if units:
                    await _end_units(units, _succeeds(self, final))
                    _tell_the_client(self, units, final)
            return final

    UnitOfWorkRequest.__name__ = base.__name__
    UnitOfWorkRequest.__qualname__ = base.__qualname__
    UnitOfWorkRequest._sanic_sqlalchemy_databases = []
    return UnitOfWorkRequest


def _succeeds(request: Any, final: Any) -> bool:
    """Whether ``final`` commits the request's units."""
    return getattr(final, "status", 500) < 400 and not request._sqla_hung_up


async def _settle_for_streaming(request: Any, final: Any) -> None:
    request._sqla_streaming = True
    units: _Units | None = request._sqla_units
    if units:
        success = _succeeds(request, final)
        try:
            for unit in units.values():
                await unit.settle(success)
        except BaseException:
            await _end_request(request, success=False)
            raise
        _tell_the_client(request, units, final)


def _ending_units(request: Any, streaming_fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    async def stream_then_end_units(response: Any) -> None:
        try:
            await streaming_fn(response)
        finally:
            await _end_request(request, success=False)

    return stream_then_end_units


async def _end_request(request: Any, success: bool) -> None:
    """End every unit of ``request``; nothing creates a unit for it afterwards."""
    request._sqla_over = True
    if request._sqla_watcher is not None:
        _stop_watching(request)
    units: _Units | None = request._sqla_units
    if units:
        await _end_units(units, success)


# -- handlers -------------------------------------------------------------------
#
# A handler is wrapped so that the wrapper looks like the handler to anything that
# inspects it (sanic-ext's injection, OpenAPI): a function or method gets a function
# wrapper carrying its annotations, globals (through ``__wrapped__``) and attributes;
# a ``functools.partial`` gets a partial of the same function, arguments and
# attributes; any other callable an object that forwards attribute lookups to it.


def _wrap_handler(handler: Callable[..., Any]) -> Callable[..., Any]:
    if isinstance(handler, functools.partial):
        wrapped: Callable[..., Any] = _UnitPartial(handler.func, *handler.args, **handler.keywords)
        wrapped.__dict__.update(handler.__dict__)
        return wrapped
    if not (inspect.isfunction(handler) or inspect.ismethod(handler)):
        return _UnitCallable(handler)
    if inspect.iscoroutinefunction(handler):
        # The common case, kept lean: it runs on every request, database or not.
        async def in_unit_of_work(request: Any, *args: Any, **kwargs: Any) -> Any:
            if request._sqla_hung_up:
                return await _answer_nobody(request)
            if request._sqla_watch_later:
                _watch_late(request)
            request._sqla_in_handler = True
            try:
                response = await handler(request, *args, **kwargs)
            except BaseException as error:
                request._sqla_in_handler = False
                await _after_handler(request, cancelled=not isinstance(error, Exception))
                if _cancelled_by_hang_up(request, error):
                    return await _answer_nobody(request)
                raise
            request._sqla_in_handler = False
            if request._sqla_streaming:
                await _after_handler(request, cancelled=False)
            return response

    else:

        async def in_unit_of_work(request: Any, *args: Any, **kwargs: Any) -> Any:
            return await _run_handler(handler, request, args, kwargs)

    functools.update_wrapper(in_unit_of_work, handler)
    setattr(in_unit_of_work, _WRAPPED, True)
    return in_unit_of_work


async def _run_handler(
    handler: Callable[..., Any], request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run any handler (sync or async) as the request's handler."""
    if request._sqla_hung_up:
        return await _answer_nobody(request)
    if request._sqla_watch_later:
        _watch_late(request)
    request._sqla_in_handler = True
    try:
        response = handler(request, *args, **kwargs)
        if inspect.isawaitable(response):
            response = await response
    except BaseException as error:
        request._sqla_in_handler = False
        await _after_handler(request, cancelled=not isinstance(error, Exception))
        if _cancelled_by_hang_up(request, error):
            return await _answer_nobody(request)
        raise
    request._sqla_in_handler = False
    await _after_handler(request, cancelled=False)
    return response


class _UnitPartial(functools.partial[Any]):
    """A partial handler run as the request's handler; still a partial of the same
    function, arguments and attributes for whatever looks inside."""

    def __call__(self, request: Any, /, *args: Any, **kwargs: Any) -> Any:
        return _run_handler(super().__call__, request, args, kwargs)


class _UnitCallable:
    """A callable object handler run as the request's handler; attribute lookups
    (annotations included) reach the object itself."""

    __slots__ = ("__wrapped__",)

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.__wrapped__ = handler

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return _run_handler(self.__wrapped__, request, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def __repr__(self) -> str:
        return repr(self.__wrapped__)


def _is_wrapped(handler: Any) -> bool:
    return isinstance(handler, (_UnitPartial, _UnitCallable)) or getattr(handler, _WRAPPED, False)


async def _after_handler(request: Any, cancelled: bool) -> None:
    if cancelled or request._sqla_streaming:
        # No response will come to settle the units (cancelled), or the handler
        # streamed and is done reading.
        await _end_request(request, success=False)


# -- clients that hang up under an ASGI server ----------------------------------------
#
# Sanic's own server cancels the handler's task when the connection is lost; an ASGI
# server only answers ``receive()`` with ``http.disconnect``. ``receive()`` is also how
# Sanic reads the body, and each message goes to one caller: the watcher starts only
# once Sanic has read the whole body, or when the route ignores a body the request does
# not have (the watcher then reads its one empty message through Sanic's own stream,
# so that Sanic knows the body was read). It stops when the response is ready.


def _watch_for_hang_up(request: Any) -> None:
    stream = request.stream
    drain = False
    if stream.request_body:
        route = request.route
        headers = request.headers
        if (
            route is None
            or not route.extra.ignore_body
            or hasattr(route.handler, "is_stream")
            or "transfer-encoding" in headers
            or headers.get("content-length", "0").strip() != "0"
        ):
            # The handler (or Sanic for it) will read the body: a watcher would take
            # its messages. Sanic reads it before the handler starts, unless the handler
            # streams it: try again then. Otherwise not watched (see the README).
            request._sqla_watch_later = not request._sqla_in_handler
            return
        drain = True
    watcher = asyncio.get_running_loop().create_task(_until_hung_up(request, drain))
    watcher.add_done_callback(_log_watch_failure)
    request._sqla_watcher = watcher


def _watch_late(request: Any) -> None:
    request._sqla_watch_later = False
    if request._sqla_watcher is None and not request._sqla_streaming:
        _watch_for_hang_up(request)


async def _until_hung_up(request: Any, drain: bool) -> None:
    if drain:
        async for _ in request.stream:
            pass  # the body is empty: nothing is thrown away
    receive = request.transport.receive
    while (await receive())["type"] != "http.disconnect":
        pass  # after the body, nothing but http.disconnect is due
    request._sqla_watcher = None
    request._sqla_hung_up = True
    if request._sqla_in_handler:
        # Like Sanic's server: the handler is cancelled where it waits, and its
        # wrapper rolls back. Outside the handler (request middleware) nothing is
        # cancelled (no wrapper would catch it): the handler is then not run, and the
        # response rolls back.
        task: asyncio.Task[Any] | None = request._sqla_task
        if task is not None:
            task.cancel()


def _stop_watching(request: Any) -> None:
    watcher: asyncio.Task[None] = request._sqla_watcher
    request._sqla_watcher = None
    watcher.cancel()


def _log_watch_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "watching for the client to hang up failed; the request is not watched",
            exc_info=task.exception(),
        )


def _cancelled_by_hang_up(request: Any, error: BaseException) -> bool:
    """Whether ``error`` is the cancellation of the handler for its client's hang-up
    and nothing else cancelled the task (a server shutting down)."""
    if not (request._sqla_hung_up and isinstance(error, asyncio.CancelledError)):
        return False
    if sys.version_info >= (3, 11):
        task = asyncio.current_task()
        if task is not None and task.uncancel() > 0:
            return False
    return True


async def _answer_nobody(request: Any) -> HTTPResponse:
    """End the units of a request whose client hung up and answer it, for Sanic to
    finish the request quietly (the ASGI server drops the response): an escaping
    cancellation would be logged by the server as an error in the application."""
    await _end_request(request, success=False)
    logger.info(
        "%s %s: the client hung up; the request's units rolled back",
        request.method,
        request.path,
    )
    return HTTPResponse(status=HUNG_UP)


def _install_app_hooks(app: Sanic[Any, Any]) -> None:
    async def wrap_handlers(app: Sanic[Any, Any]) -> None:
        for route in app.router.routes:
            handler = route.handler
            if _is_wrapped(handler) or hasattr(handler, "is_websocket"):
                continue
            route.handler = _wrap_handler(handler)

    async def end_with_connection(conn_info: Any) -> None:
        units: _Units | None = getattr(conn_info.ctx, _UNITS, None)
        if units is not None:
            delattr(conn_info.ctx, _UNITS)
        if units:
            await _end_units(units, success=False)

    # Last of the start-up listeners: extensions (sanic-ext's automatic HEAD and
    # OPTIONS routes, OpenAPI) add their routes before it.
    app.register_listener(wrap_handlers, "before_server_start", priority=-_PRIORITY)
    app.signal("http.lifecycle.complete", priority=-_PRIORITY)(end_with_connection)
    app.error_handler.add(PoolTimeoutError, _pool_exhausted)
    app.error_handler.add(ReplicaUnavailableError, _no_replica)
    install_injection(app)


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


def _no_replica(request: Request, error: Exception) -> HTTPResponse:
    logger.warning("%s", error)
    return text(
        "Service temporarily unavailable: no database replica can serve reads. Please retry.",
        status=503,
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def _pool_exhausted(request: Request, error: Exception) -> HTTPResponse:
    logger.warning("no pooled database connection within the pool timeout: %s", error)
    return text(
        "Service temporarily unavailable: the database is busy. Please retry.",
        status=503,
        headers={"Retry-After": str(RETRY_AFTER)},
    )
