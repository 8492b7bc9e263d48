"""The event objects listeners are called with: one class per event, read-only.

``UnitBegin`` and ``UnitEnd`` carry the unit itself (the object of ``async with db as
unit``, the same at both), ``CallbackError`` the callable that was registered with
``db.on_commit``, ``TaskEnd`` the task as ``current_task()`` gives it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..hooks import TaskOutcome, UnitOutcome
from ..insight import UnitStats
from ..tasks.context import TaskInfo
from ..unit import UnitOfWork


@dataclass(frozen=True, slots=True, eq=False)
class UnitBegin:
    """``unit_begin``: a unit of work was opened (not a nested ``async with db:``
    joining one)."""

    name: ClassVar[str] = "unit_begin"
    #: The unit: ``async with db as unit``'s object, a request's, a retry attempt's.
    unit: UnitOfWork


@dataclass(frozen=True, slots=True, eq=False)
class UnitEnd:
    """``unit_end``: a unit of work ended, its sessions closed and its callbacks run."""

    name: ClassVar[str] = "unit_end"
    #: The same object as at ``unit_begin``.
    unit: UnitOfWork
    #: ``"committed"`` or ``"rolled_back"`` (how its last write transaction ended), or
    #: ``"no_write"`` when it opened no write transaction.
    outcome: UnitOutcome
    #: The exception that ended the unit (raised in it, or by its commit), or ``None``
    #: (a response of status 400 or more, or a client that hung up, rolls back without).
    error: BaseException | None
    #: Its statements and time in the database (``unit.stats``).
    stats: UnitStats
    #: Seconds from its opening to its end.
    duration: float


@dataclass(frozen=True, slots=True, eq=False)
class CallbackError:
    """``callback_error``: an on-commit callback raised (it is logged as well)."""

    name: ClassVar[str] = "callback_error"
    #: The unit whose commit the callback followed.
    unit: UnitOfWork
    #: The callable registered with ``db.on_commit`` (or decorated by ``@db.after_commit``).
    callback: Callable[..., Any]
    error: BaseException


@dataclass(frozen=True, slots=True, eq=False)
class TaskEnd:
    """``task_end``: a run of a durable task ended and its outcome is stored."""

    name: ClassVar[str] = "task_end"
    #: The task, as ``current_task()`` gives it inside the run (``.id``, ``.name``,
    #: ``.attempt``, ``.max_attempts``).
    task: TaskInfo
    #: ``"done"``, ``"retry"`` (it waits for another attempt) or ``"dead"`` (out of
    #: attempts).
    outcome: TaskOutcome
    #: What the run raised (a timeout is a ``TimeoutError``); ``None`` when done, and for
    #: a task declared dead because its process died on its last attempt.
    error: BaseException | None
    #: Seconds from the run's start until its outcome was stored.
    duration: float


#: Every event a listener can be registered for, by name.
Event = UnitBegin | UnitEnd | CallbackError | TaskEnd
