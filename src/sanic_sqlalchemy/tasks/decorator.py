"""``@db.task``: a function that can still be called, and deferred with a unit's commit.

``task(*args)`` calls the function, as before decoration.  ``task.defer(*args)`` keeps
the call in the current unit (no round trip) and returns the task's id; the unit stores
it in its transaction when it commits.  ``task.configure(delay=, key=)`` defers later,
or once per key while a task with that key waits.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from ..errors import ConfigurationError

P = ParamSpec("P")
R = TypeVar("R")

#: Ids of keyed tasks are derived from the task's name and key, so that a second
#: ``defer`` with the key (in another unit, another process) returns the id of the
#: task that waits, without asking the database.
_KEYED = uuid.UUID("6f6b8a6e-5d0b-4c47-9d6e-2f1c3b7f9a11")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task is stored and retried (``@db.task(...)``'s keywords)."""

    name: str
    max_attempts: int = 5
    queue: str = "default"
    #: Seconds a run may take before it is cancelled and counts as failed (None: no limit).
    timeout: float | None = None
    #: Retries wait a random time of up to ``backoff * 2**(attempt-1)`` seconds, capped.
    backoff: float = 1.0
    max_backoff: float = 300.0

    def __post_init__(self) -> None:
        def bad(keyword: str, expected: str, value: object) -> ConfigurationError:
            return ConfigurationError(
                f"@db.task({keyword}=...) on {self.name!r}: expected {expected}, got {value!r}."
            )

        if not isinstance(self.name, str) or not self.name or len(self.name) > 255:
            raise bad("name", "a non-empty string of at most 255 characters", self.name)
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise bad("max_attempts", "a whole number, 1 or more", attempts)
        if not isinstance(self.queue, str) or not self.queue or len(self.queue) > 255:
            raise bad("queue", "a non-empty string of at most 255 characters", self.queue)
        for keyword in ("backoff", "max_backoff", "timeout"):
            value = getattr(self, keyword)
            if keyword == "timeout" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise bad(keyword, "a number of seconds, 0 or more", value)
        if self.timeout == 0:
            raise bad("timeout", "a number of seconds above 0, or None", self.timeout)


class Deferrer(Protocol):
    """Keeps a task's call in the current unit (``registry.TaskRegistry.defer``)."""

    def defer(
        self,
        task: Task[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        delay: float,
        key: str | None,
    ) -> str: ...


class Task(Generic[P, R]):
    """A function decorated with ``@db.task``: callable as before, and deferrable."""

    def __init__(self, registry: Deferrer, func: Callable[P, R], options: TaskOptions) -> None:
        self._registry = registry
        #: The decorated function, as written.
        self.func = func
        #: Whether ``func`` is a coroutine function (a plain one runs in a thread).
        self.is_async = inspect.iscoroutinefunction(func)
        self.options = options
        #: How ``defer`` names itself in errors.
        self.deferring = f"{options.name}.defer()"
        functools.update_wrapper(self, func)

    @property
    def name(self) -> str:
        """The name the task is stored and found under."""
        return self.options.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the function now, here, as if it were not decorated."""
        return self.func(*args, **kwargs)

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Run ``func(*args, **kwargs)`` after the current unit commits; return its id.

        Inside a unit only (``NoActiveUnitError`` outside).  The call is stored with the
        unit's commit, so a unit (or savepoint) that rolls back leaves nothing to run;
        the arguments must survive a JSON round trip (``TaskArgumentError`` names the
        one that does not).
        """
        return self._registry.defer(self, args, kwargs, delay=0.0, key=None)

    def configure(self, *, delay: float | None = None, key: str | None = None) -> Deferral[P]:
        """``task.configure(delay=30, key="receipt-17").defer(17)``: not before ``delay``
        seconds after the unit commits; and while a task of this name with ``key`` waits
        to run, another ``defer`` with it stores nothing and returns the waiting task's
        id."""
        if delay is not None and (
            isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0
        ):
            raise ConfigurationError(
                f"{self.name}.configure(delay=...): expected a number of seconds, 0 or "
                f"more, got {delay!r}."
            )
        if key is not None and (not isinstance(key, str) or not key):
            raise ConfigurationError(
                f"{self.name}.configure(key=...): expected a non-empty string, got {key!r}."
            )
        return Deferral(self, float(delay or 0.0), key)

    def keyed_id(self, key: str) -> str:
        """The id of this task's call deferred with ``key``."""
        return str(uuid.uuid5(_KEYED, f"{self.name}\0{key}"))

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


class Deferral(Generic[P]):
    """A task with its deferral options (``task.configure(...)``)."""

    __slots__ = ("_delay", "_key", "_task")

    def __init__(self, task: Task[P, Any], delay: float, key: str | None) -> None:
        self._task = task
        self._delay = delay
        self._key = key

    def defer(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """As ``task.defer``, with these options."""
        task = self._task
        return task._registry.defer(task, args, kwargs, delay=self._delay, key=self._key)
