"""taskiq as the queue of committed tasks (``DATABASE_TASKS_BACKEND=taskiq:module:broker``).

Each ``@db.task`` is registered on the broker under its own name; the taskiq worker
(``taskiq worker module:broker ...``) runs it through ``consumer.consume``.  A task is
published as ``AsyncKicker(name).with_task_id(id).kiq(*args, **kwargs)`` with the labels
``queue_name`` (its queue: taskiq-aio-pika routes by it when the broker declares several
queues, taskiq-redis uses it as the list or stream) and ``retry_on_error`` /
``max_retries`` (its ``max_attempts``), which taskiq's retry middlewares read.  Only
this module imports taskiq, and only when that backend is configured.  taskiq-nats
ignores ``queue_name`` (one subject per broker); its JetStream brokers are confirmed by
JetStream's ack, and a NATS client of theirs that was closed is replaced at the next
start.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from taskiq import AsyncBroker, Context, TaskiqDepends
from taskiq.kicker import AsyncKicker

from ...errors import ConfigurationError
from ..payload import decode
from .consumer import consume
from .relay import PUBLISH_TIMEOUT

if TYPE_CHECKING:
    from ..decorator import Task
    from ..host import TaskHost
    from .sql import Leased

logger = logging.getLogger("sanic_sqlalchemy")

#: A run's taskiq context (the message, whose id is the task's), injected by taskiq.
_CONTEXT: Context = TaskiqDepends()


class TaskiqQueue:
    """A taskiq broker, started by the relay in the processes that publish (a taskiq
    worker process starts its broker itself)."""

    def __init__(self, broker: AsyncBroker, target: str, host: TaskHost) -> None:
        self._broker = broker
        self.target = target
        self._host = host
        #: The loop this process started the broker in (None: not started by us).
        self._started: asyncio.AbstractEventLoop | None = None
        #: Publishes that find the broker not started wait for one start.
        self._starting: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    @property
    def connected(self) -> bool:
        return self._started is not None

    def register(self, task: Task[Any, Any]) -> None:
        host = self._host

        async def run(
            *args: Any, sanic_sqlalchemy_context: Context = _CONTEXT, **kwargs: Any
        ) -> None:
            # The arguments travel for the queue's tools to show; the run takes the
            # stored ones, with the task's row.
            await consume(host, task, sanic_sqlalchemy_context.message.task_id)

        self._broker.register_task(
            run,
            task_name=task.name,
            retry_on_error=True,
            max_retries=task.options.max_attempts,
        )

    async def _start(self) -> None:
        broker = self._broker
        loop = asyncio.get_running_loop()
        if broker.is_worker_process or self._started is loop:
            return
        if self._starting is None or self._starting[0] is not loop:
            self._starting = (loop, asyncio.Lock())
        async with self._starting[1]:
            if self._started is not loop:
                _renew_nats_client(broker)
                await broker.startup()
                self._started = loop

    async def publish(self, tasks: Sequence[Leased]) -> list[BaseException | None]:
        await self._start()
        kicks = (self._kick(task) for task in tasks)
        outcomes = await asyncio.gather(*kicks, return_exceptions=True)
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    async def _kick(self, task: Leased) -> None:
        args, kwargs = decode(task.payload)
        labels = {
            "queue_name": task.queue,
            "retry_on_error": True,
            "max_retries": task.max_attempts,
        }
        kicker: AsyncKicker[Any, Any] = AsyncKicker(task.name, self._broker, labels)
        await asyncio.wait_for(kicker.with_task_id(task.id).kiq(*args, **kwargs), PUBLISH_TIMEOUT)

    async def reset(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self._started is not asyncio.get_running_loop():
            return
        self._started = None
        try:
            await self._broker.shutdown()
        except Exception:
            # Closing a connection the broker already dropped: the next start makes a
            # new one.
            logger.info("closing the connection to %s failed", self.target, exc_info=True)


def _renew_nats_client(broker: AsyncBroker) -> None:
    """Give a taskiq-nats broker whose NATS client was closed (by ``reset``, or by the
    client itself after its reconnects ran out) a new one: the broker keeps one client
    for life, and a closed one cannot connect again."""
    nats_client = sys.modules.get("nats.aio.client")  # imported if the broker is one
    held: Any = broker
    client = getattr(held, "client", None)
    if nats_client is not None and isinstance(client, nats_client.Client) and client.is_closed:
        held.client = nats_client.Client()


def taskiq_queue(broker: object, target: str, key: str, host: TaskHost) -> TaskiqQueue:
    """The queue of ``broker``, which must be a taskiq broker."""
    if not isinstance(broker, AsyncBroker):
        raise ConfigurationError(
            f"{key}: {target!r} names a {type(broker).__name__}, not a taskiq broker "
            "(such as taskiq_aio_pika.AioPikaBroker or taskiq_redis.RedisStreamBroker)."
        )
    return TaskiqQueue(broker, target, host)
