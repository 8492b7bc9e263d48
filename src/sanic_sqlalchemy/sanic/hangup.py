"""Clients that hang up under an ASGI server.

Sanic's own server cancels the handler's task when the connection is lost; an ASGI
server only answers ``receive()`` with ``http.disconnect``. ``receive()`` is also how
Sanic reads the body, and each message goes to one caller: the watcher starts only
once Sanic has read the whole body, or when the route ignores a body the request does
not have (the watcher then reads its one empty message through Sanic's own stream,
so that Sanic knows the body was read). It stops when the response is ready.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from .phase import Phase

logger = logging.getLogger("sanic_sqlalchemy")


def watch_for_hang_up(request: Any) -> None:
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
            request._sqla_watch_later = request._sqla_phase is not Phase.HANDLING
            return
        drain = True
    watcher = asyncio.get_running_loop().create_task(_until_hung_up(request, drain))
    watcher.add_done_callback(_log_watch_failure)
    request._sqla_watcher = watcher


def watch_late(request: Any) -> None:
    request._sqla_watch_later = False
    if request._sqla_watcher is None and request._sqla_phase is not Phase.STREAMING:
        watch_for_hang_up(request)


async def _until_hung_up(request: Any, drain: bool) -> None:
    if drain:
        async for _ in request.stream:
            pass  # the body is empty: nothing is thrown away
    receive = request.transport.receive
    while (await receive())["type"] != "http.disconnect":
        pass  # after the body, nothing but http.disconnect is due
    request._sqla_watcher = None
    request._sqla_hung_up = True
    if request._sqla_phase is Phase.HANDLING:
        # Like Sanic's server: the handler is cancelled where it waits, and its
        # wrapper rolls back. Outside the handler (request middleware) nothing is
        # cancelled (no wrapper would catch it): the handler is then not run, and the
        # response rolls back.
        task: asyncio.Task[Any] | None = request._sqla_task
        if task is not None:
            task.cancel()


def stop_watching(request: Any) -> None:
    watcher: asyncio.Task[None] = request._sqla_watcher
    request._sqla_watcher = None
    watcher.cancel()


def _log_watch_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "watching for the client to hang up failed; the request is not watched",
            exc_info=task.exception(),
        )


def cancelled_by_hang_up(request: Any, error: BaseException) -> bool:
    """Whether ``error`` is the cancellation of the handler for its client's hang-up
    and nothing else cancelled the task (a server shutting down)."""
    if not (request._sqla_hung_up and isinstance(error, asyncio.CancelledError)):
        return False
    if sys.version_info >= (3, 11):
        task = asyncio.current_task()
        if task is not None and task.uncancel() > 0:
            return False
    return True
