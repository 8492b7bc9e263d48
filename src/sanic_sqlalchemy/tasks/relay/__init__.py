"""Durable tasks relayed to an existing queue (``DATABASE_TASKS_BACKEND``).

``sql`` (lease, mark sent, a consumer's claim), ``relay`` (the fast path after a commit
and the relay loop), ``consumer`` (a queue's worker running one delivered task),
``taskiq_queue`` and ``celery_queue`` (each imports its queue's package, only when
configured) and ``target`` (the setting's module and object, found at configuration).
"""

from .relay import Queue, Relay
from .target import open_relay

__all__ = ["Queue", "Relay", "open_relay"]
