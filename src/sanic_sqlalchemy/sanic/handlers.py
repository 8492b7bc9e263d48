"""Route handlers run as the request's handler: each is wrapped at server start.

A handler is wrapped so that the wrapper looks like the handler to anything that
inspects it (sanic-ext's injection, OpenAPI): a function or method gets a function
wrapper carrying its annotations, globals (through ``__wrapped__``) and attributes;
a ``functools.partial`` gets a partial of the same function, arguments and
attributes; any other callable an object that forwards attribute lookups to it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from sanic.response import HTTPResponse

from .hangup import cancelled_by_hang_up, watch_late
from .phase import Phase
from .request import end_request
from .responses import HUNG_UP

logger = logging.getLogger("sanic_sqlalchemy")

_WRAPPED = "__sanic_sqlalchemy_wrapped__"
HANDLING, HANDLED, STREAMING = Phase.HANDLING, Phase.HANDLED, Phase.STREAMING


def wrap_handler(handler: Callable[..., Any]) -> Callable[..., Any]:
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
                return await answer_nobody(request)
            if request._sqla_watch_later:
                watch_late(request)
            request._sqla_phase = HANDLING
            try:
                response = await handler(request, *args, **kwargs)
            except BaseException as error:
                return await _handler_failed(request, error)
            phase = request._sqla_phase
            if phase is HANDLING:
                request._sqla_phase = HANDLED
            elif phase is STREAMING:
                await end_request(request, success=False)
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
        return await answer_nobody(request)
    if request._sqla_watch_later:
        watch_late(request)
    request._sqla_phase = HANDLING
    try:
        response = handler(request, *args, **kwargs)
        if inspect.isawaitable(response):
            response = await response
    except BaseException as error:
        return await _handler_failed(request, error)
    if request._sqla_phase is HANDLING:
        request._sqla_phase = HANDLED
    await _after_handler(request, cancelled=False)
    return response


async def _handler_failed(request: Any, error: BaseException) -> Any:
    """The handler raised ``error``: end the units if nothing will answer (cancelled, or
    streaming), then re-raise it; a cancellation for a client's hang-up is answered
    quietly instead."""
    if request._sqla_phase is HANDLING:
        request._sqla_phase = HANDLED
    units = request._sqla_units
    if units:
        # The units end later, from the exception handler's response: what ended
        # them is told to the listeners from here.
        for unit in units.values():
            unit.work_raised(error)
    await _after_handler(request, cancelled=not isinstance(error, Exception))
    if cancelled_by_hang_up(request, error):
        return await answer_nobody(request)
    raise error


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


def is_wrapped(handler: Any) -> bool:
    return isinstance(handler, (_UnitPartial, _UnitCallable)) or getattr(handler, _WRAPPED, False)


async def _after_handler(request: Any, cancelled: bool) -> None:
    if cancelled or request._sqla_phase is STREAMING:
        # No response will come to settle the units (cancelled), or the handler
        # streamed and is done reading.
        await end_request(request, success=False)


async def answer_nobody(request: Any) -> HTTPResponse:
    """End the units of a request whose client hung up and answer it, for Sanic to
    finish the request quietly (the ASGI server drops the response): an escaping
    cancellation would be logged by the server as an error in the application."""
    await end_request(request, success=False)
    logger.info(
        "%s %s: the client hung up; the request's units rolled back",
        request.method,
        request.path,
    )
    return HTTPResponse(status=HUNG_UP)
