"""Calling the listeners of one database: in registration order, each on its own.

A listener is a plain callable; what it returns is awaited when it is awaitable (an
``async def`` listener).  One that raises is logged on the ``sanic_sqlalchemy`` logger,
with its traceback, and changes nothing: the unit's outcome, the response and the other
listeners go on as if it had not been there.  Only ``Exception``\\ s are caught: a
cancellation of the task that tells them goes on to cancel it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..hooks import TaskOutcome, UnitOutcome
from ..tasks.context import TaskInfo
from ..unit import UnitOfWork
from .events import CallbackError, Event, TaskEnd, UnitBegin, UnitEnd

logger = logging.getLogger("sanic_sqlalchemy")

#: A listener of any event.
Listener = Callable[[Any], object]
#: The events that concern units: a database listens to its units only for these.
UNIT_EVENTS = ("unit_begin", "unit_end", "callback_error")
#: Every event name, in the order the documentation gives them.
EVENTS = (*UNIT_EVENTS, "task_end")


class ListenerSet:
    """The listeners of one database, by event (``hooks.Listeners``)."""

    __slots__ = ("callback_error", "task_end", "unit_begin", "unit_end")

    def __init__(self) -> None:
        self.unit_begin: tuple[Listener, ...] = ()
        self.unit_end: tuple[Listener, ...] = ()
        self.callback_error: tuple[Listener, ...] = ()
        self.task_end: tuple[Listener, ...] = ()

    def add(self, name: str, listener: Listener) -> None:
        """Call ``listener`` at every ``name`` event from now on, after those before it."""
        setattr(self, name, (*getattr(self, name), listener))

    def unit_began(self, unit: UnitOfWork) -> Awaitable[None] | None:
        listeners = self.unit_begin
        if not listeners:
            return None
        event = UnitBegin(unit)
        pending: list[tuple[Listener, Awaitable[Any]]] = []
        for listener in listeners:
            try:
                result = listener(event)
            except Exception:
                _log(event, listener)
                continue
            if result is not None and inspect.isawaitable(result):
                pending.append((listener, result))
        return _await_each(event, pending) if pending else None

    async def unit_ended(
        self, unit: UnitOfWork, outcome: UnitOutcome, error: BaseException | None, duration: float
    ) -> None:
        listeners = self.unit_end
        if listeners:
            await _tell(listeners, UnitEnd(unit, outcome, error, unit.stats, duration))

    async def callback_failed(
        self, unit: UnitOfWork, callback: Callable[..., Any], error: BaseException
    ) -> None:
        listeners = self.callback_error
        if listeners:
            await _tell(listeners, CallbackError(unit, callback, error))

    async def task_ended(
        self, task: TaskInfo, outcome: TaskOutcome, error: BaseException | None, duration: float
    ) -> None:
        listeners = self.task_end
        if listeners:
            await _tell(listeners, TaskEnd(task, outcome, error, duration))


async def _tell(listeners: tuple[Listener, ...], event: Event) -> None:
    for listener in listeners:
        try:
            result = listener(event)
            if result is not None and inspect.isawaitable(result):
                await result
        except Exception:
            _log(event, listener)


async def _await_each(event: Event, pending: list[tuple[Listener, Awaitable[Any]]]) -> None:
    for listener, awaitable in pending:
        try:
            await awaitable
        except Exception:
            _log(event, listener)


def _log(event: Event, listener: Listener) -> None:
    name = getattr(listener, "__qualname__", None) or repr(listener)
    logger.exception("the %s listener %s raised; it changes nothing", event.name, name)
