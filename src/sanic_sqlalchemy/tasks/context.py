"""``current_task()``: which durable task the running code belongs to, if any.

Set by the runner in the context of each run only, so that code called from a task (a
helper sending an e-mail, say) can find the task's id to de-duplicate its external
effects, and code outside any task gets ``None``.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """The running task, as ``current_task()`` gives it."""

    #: The task's id, as ``defer`` returned it: the key to de-duplicate its external
    #: effects (an e-mail, a call to another service), which may happen more than once.
    id: str
    #: The registered name (``@db.task(name=...)``, by default ``module.qualname``).
    name: str
    #: This run's attempt, from 1 (a run handed back at a graceful stop is no attempt).
    attempt: int
    max_attempts: int


_current: ContextVar[TaskInfo | None] = ContextVar("sanic_sqlalchemy_task", default=None)


def current_task() -> TaskInfo | None:
    """The durable task whose run is executing this code, or ``None`` outside one."""
    return _current.get()


def enter_task(info: TaskInfo) -> None:
    """Make ``info`` the current task for the rest of the running context (each run
    has a task, and so a context, of its own)."""
    _current.set(info)
