"""A unit of work per request: created on first use, settled before the response is sent.

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
import logging
from collections.abc import Callable
from typing import Any

from sanic import Request
from sanic.asgi import ASGIApp
from sanic.exceptions import SanicException
from sanic.response import ResponseStream

from ..database import DatabaseCore
from ..unit import UnitOfWork, UnitState
from ..unit.outcome import status_commits
from .hangup import stop_watching, watch_for_hang_up
from .phase import Phase
from .responses import tell_the_client
from .units import UNITS_ON_CONNECTION, Units, end_later, end_units

logger = logging.getLogger("sanic_sqlalchemy")
#: The request class's tuple of the databases whose units tell the client something.
INFORMED = "_sanic_sqlalchemy_informed"


def request_unit(db: DatabaseCore) -> UnitOfWork | None:
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
    units: Units | None = request._sqla_units
    unit = units.get(db) if units is not None else None
    if unit is not None:
        return unit
    phase = request._sqla_phase
    if phase is Phase.OVER:
        # The request has been answered: a task it started gets an ended unit (an
        # error that says so), never one that nothing would end. Recorded nowhere: the
        # connection may already serve the next request. Made, not opened: no listener
        # hears of a unit that never begins.
        unit = UnitOfWork(db.environment)
        unit.state = UnitState.ENDED
        return unit
    if units is None:
        units = request._sqla_units = {}
        conn_info = request.conn_info
        if conn_info is not None:
            leftover: Units | None = getattr(conn_info.ctx, UNITS_ON_CONNECTION, None)
            if leftover and any(not unit.ended for unit in leftover.values()):
                # Left open by a previous request on this connection that never
                # reached its end: end it now.
                end_later(leftover)
            setattr(conn_info.ctx, UNITS_ON_CONNECTION, units)
        if isinstance(request.stream, ASGIApp) and phase is not Phase.STREAMING:
            # Once the response streams, the units are settled: nothing to watch for
            # (and the server reports the response's end with http.disconnect too).
            watch_for_hang_up(request)
    if db in request._sanic_sqlalchemy_informed:
        unit = units[db] = db.open_unit(_position_tokens(request, db))
    else:
        unit = units[db] = db.open_unit()
    # Whichever task touched db first (a child task of the handler, say), the unit
    # belongs to the task that runs the request.
    unit.owner = request._sqla_task
    if phase is Phase.STREAMING:
        # First used while the response streams: reads only, like the others.
        unit.state = UnitState.COMMITTED
    return unit


#: Why a websocket request has no unit (``NoActiveUnitError``), with ``{name}`` to fill.
_WEBSOCKET_NO_UNIT = (
    "{name} was used in a websocket request (its request middleware or its handler), "
    "which gets no request unit of work: its unit would hold a transaction (and a "
    "connection) for as long as the websocket lives. Open a unit around what needs the "
    "database, in request middleware as in the handler:\n\n"
    "    async with db:\n"
    "        user = await db.read.get(User, user_id)\n"
)


def why_no_request_unit() -> str | None:
    """Why the current request has no unit, when it is a websocket request (for the
    ``NoActiveUnitError`` message; called only on that error's path)."""
    try:
        request: Any = Request.get_current()
    except SanicException:
        return None
    route = request.route
    if route is None or not hasattr(route.handler, "is_websocket"):
        return None
    return _WEBSOCKET_NO_UNIT


def _position_tokens(request: Any, db: DatabaseCore) -> tuple[object, ...]:
    """The commit positions the client brought back (cookie, header), with replicas."""
    settings = db.settings
    if not settings.read_urls:
        return ()
    names = settings.replicas
    return (request.cookies.get(names.token_cookie), request.headers.get(names.token_header))


def unit_request_class(base: type[Request]) -> type[Request]:
    class UnitOfWorkRequest(base):  # type: ignore[valid-type,misc]
        """Settles the request's units of work right before its response is sent."""

        __slots__ = (
            "_sqla_hung_up",
            "_sqla_phase",
            "_sqla_task",
            "_sqla_units",
            "_sqla_watch_later",
            "_sqla_watcher",
        )
        _sanic_sqlalchemy_databases: list[DatabaseCore] = []
        #: The databases whose units tell the client something (a commit position with
        #: replicas, Server-Timing): decided at start-up, so that the others cost nothing.
        _sanic_sqlalchemy_informed: tuple[DatabaseCore, ...] = ()

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            #: The request's units, one per Database, created on first use.
            self._sqla_units: Units | None = None
            #: The task that runs the request: it owns the units.
            self._sqla_task = asyncio.current_task()
            #: Where the request is in its life (``Phase``).
            self._sqla_phase = Phase.ROUTED
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
                stop_watching(self)
            final = await super().respond(
                response, status=status, headers=headers, content_type=content_type
            )
            units = self._sqla_units
            if units:
                for unit in units.values():
                    if unit.commit_failed and status_commits(getattr(final, "status", 500)):
                        # An exception handler answered the failed commit below 400: the
                        # client must not see success for data that was not committed.
                        logger.error(
                            "an exception handler answered %s to a request whose commit "
                            "failed; answering 500 instead",
                            final.status,
                        )
                        final.status = 500
            phase = self._sqla_phase
            if phase is Phase.OVER:
                # Its units have ended (the handler was cancelled, or its stream ended):
                # nothing is left to settle or to tell.
                return final
            if phase is Phase.HANDLING or phase is Phase.STREAMING:
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
                self._sqla_phase = Phase.OVER
                units = self._sqla_units
                if units:
                    await end_units(units, _succeeds(self, final))
                    if self._sanic_sqlalchemy_informed:
                        tell_the_client(self, units, final)
                    # Ended: the connection's next request finds nothing left over.
                    units.clear()
            return final

    UnitOfWorkRequest.__name__ = base.__name__
    UnitOfWorkRequest.__qualname__ = base.__qualname__
    UnitOfWorkRequest._sanic_sqlalchemy_databases = []
    return UnitOfWorkRequest


def _succeeds(request: Any, final: Any) -> bool:
    """Whether ``final`` commits the request's units."""
    return status_commits(getattr(final, "status", 500)) and not request._sqla_hung_up


async def _settle_for_streaming(request: Any, final: Any) -> None:
    request._sqla_phase = Phase.STREAMING
    units: Units | None = request._sqla_units
    if units:
        success = _succeeds(request, final)
        try:
            for unit in units.values():
                await unit.settle(success)
        except BaseException:
            await end_request(request, success=False)
            raise
        tell_the_client(request, units, final)


def _ending_units(request: Any, streaming_fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    async def stream_then_end_units(response: Any) -> None:
        try:
            await streaming_fn(response)
        finally:
            await end_request(request, success=False)

    return stream_then_end_units


async def end_request(request: Any, success: bool) -> None:
    """End every unit of ``request``; nothing creates a unit for it afterwards."""
    request._sqla_phase = Phase.OVER
    if request._sqla_watcher is not None:
        stop_watching(request)
    units: Units | None = request._sqla_units
    if units:
        await end_units(units, success)
