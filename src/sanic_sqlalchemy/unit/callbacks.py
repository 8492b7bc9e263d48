"""Work that waits for a commit: the on-commit queue and how callbacks are run.

A callback is tagged with the savepoint that was open when it was registered.  A
released savepoint hands its callbacks to the enclosing one, a rolled-back savepoint
drops them, a commit of the whole transaction makes them ready, a rollback drops them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..hooks import CallbackErrorHook

logger = logging.getLogger("sanic_sqlalchemy")


@dataclass(slots=True)
class Callback:
    """One registered call: ``func(*args, **kwargs)`` once the data is committed."""

    func: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    savepoint: object | None = None

    async def run(self) -> None:
        """Call the function, awaiting it when it returns an awaitable."""
        result = self.func(*self.args, **self.kwargs)
        if inspect.isawaitable(result):
            await result


class CallbackQueue:
    """The callbacks of one unit, from registration until they run or are dropped."""

    __slots__ = ("_pending", "_ready")

    def __init__(self) -> None:
        self._pending: list[Callback] = []
        self._ready: list[Callback] = []

    def __bool__(self) -> bool:
        return bool(self._pending or self._ready)

    def add(self, callback: Callback) -> None:
        self._pending.append(callback)

    def savepoint_released(self, savepoint: object, parent: object | None) -> None:
        """A released savepoint's callbacks now wait for the enclosing transaction."""
        for callback in self._pending:
            if callback.savepoint is savepoint:
                callback.savepoint = parent

    def savepoint_rolled_back(self, savepoint: object) -> None:
        """Drop the callbacks registered inside a savepoint that rolled back."""
        self._pending = [c for c in self._pending if c.savepoint is not savepoint]

    def committed(self) -> None:
        """The transaction committed: everything pending is ready to run."""
        self._ready.extend(self._pending)
        self._pending.clear()

    def rolled_back(self) -> None:
        """The transaction rolled back: drop everything not yet committed."""
        self._pending.clear()

    def drop_all(self) -> None:
        self._pending.clear()
        self._ready.clear()

    def take_ready(self, *, include_pending: bool = False) -> list[Callback]:
        """Remove and return the callbacks to run now, in registration order."""
        if include_pending:
            self.committed()
        ready, self._ready = self._ready, []
        return ready


async def run_callbacks(
    callbacks: list[Callback],
    report: Callable[[BaseException, Callable[..., Any]], Awaitable[None]],
) -> None:
    """Run ``callbacks`` in order; one that raises is logged and handed to ``report``
    (as ``report(error, func)``), not fatal."""
    for callback in callbacks:
        try:
            await callback.run()
        except (Exception, asyncio.CancelledError) as error:
            # Callbacks run in a task of their own that nothing outside cancels, so a
            # CancelledError here is the callback's own (an HTTP client's timeout, say).
            logger.error(
                "on-commit callback %s raised; the callbacks after it still run",
                _name(callback.func),
                exc_info=error,
            )
            await report(error, callback.func)


async def report_to_hook(
    hook: CallbackErrorHook, error: BaseException, func: Callable[..., Any]
) -> None:
    """Call the ``on_callback_error`` hook (awaited when async); a hook that raises is
    logged, never raised."""
    try:
        result = hook(error, func)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("the on_callback_error hook itself raised")


def _name(func: Callable[..., Any]) -> str:
    return getattr(func, "__qualname__", None) or repr(func)
