"""The two sessions of a unit: ``db.read`` (``ReadSession``) and ``db.write``
(``WriteSession``), ``AsyncSession`` subclasses whose synchronous halves carry the
guard rails."""

from .read import ReadSession
from .replica import ReplicaReadSyncSession
from .write import WriteSession, stores_tasks, with_task_outbox

__all__ = [
    "ReadSession",
    "ReplicaReadSyncSession",
    "WriteSession",
    "stores_tasks",
    "with_task_outbox",
]
