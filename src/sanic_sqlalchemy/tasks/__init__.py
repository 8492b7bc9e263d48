"""Durable after-commit work: tasks stored with the unit's commit, run at least once,
their database effects exactly once.

``decorator`` (``@db.task``, ``defer``, ``configure``), ``payload`` (arguments as JSON),
``outbox`` (a unit's deferred tasks until its commit), ``table``, ``sql`` (store, claim,
renew, finish, per backend), ``runner`` (one run, in a unit of its own), ``dispatcher``
(the runs of a process and the loop that claims), ``listen`` (PostgreSQL's
``LISTEN``), ``context`` (``current_task()``) and ``registry`` (``db.tasks``).
"""

from .context import TaskInfo, current_task
from .decorator import Deferral, Task, TaskOptions
from .registry import TaskRegistry
from .upkeep import DeadTask

__all__ = [
    "DeadTask",
    "Deferral",
    "Task",
    "TaskInfo",
    "TaskOptions",
    "TaskRegistry",
    "current_task",
]
