"""Celery as the queue of committed tasks (``DATABASE_TASKS_BACKEND=celery:module:app``).

Each ``@db.task`` is registered on the app under its own name, late-acknowledged (a
worker that dies mid-run leaves the message to another) and retried by Celery itself on
an exception, up to its ``max_attempts`` with its backoff and full jitter.  A Celery
worker runs tasks in plain threads or processes: the task's unit runs on one event loop
per worker process, in a thread of its own (engines belong to one loop).  Tasks are
published as ``apply_async(task_id=id, queue=...)`` would, on a connection of the relay's
own with publisher confirms, in a thread (Celery's publishing blocks).  Only this
module imports Celery, and only when that backend is configured.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from celery import Celery  # type: ignore[import-untyped]

from ...errors import ConfigurationError
from ..payload import decode
from .consumer import consume
from .relay import PUBLISH_TIMEOUT

if TYPE_CHECKING:
    from ..decorator import Task
    from ..host import TaskHost
    from .sql import Leased

T = TypeVar("T")

#: The relay's connection: confirmed publishes, and a broker that is down fails a
#: publish quickly instead of blocking its thread while kombu retries.
_TRANSPORT_OPTIONS = {
    "confirm_publish": True,
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}


class _LoopThread:
    """One event loop per process, in a daemon thread, that runs coroutines for
    Celery's synchronous workers (made again in a forked child)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            loop = self._loop
            if loop is None or self._pid != os.getpid():
                loop = self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                threading.Thread(
                    target=loop.run_forever, name="sanic-sqlalchemy-tasks", daemon=True
                ).start()
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()


class CeleryQueue:
    """A Celery app: its workers consume, the relay publishes on its own connection."""

    def __init__(self, app: Any, target: str, host: TaskHost) -> None:
        self._app = app
        self.target = target
        self._host = host
        self._runner = _LoopThread()
        #: Publishing happens in this one thread, which alone uses the connection.
        self._publisher: ThreadPoolExecutor | None = None
        self._connection: Any = None
        self._producer: Any = None

    @property
    def connected(self) -> bool:
        return self._publisher is not None

    def register(self, task: Task[Any, Any]) -> None:
        host = self._host
        runner = self._runner
        options = task.options

        def run(celery_task: Any, *args: Any, **kwargs: Any) -> str:
            # The arguments travel for Celery's tools to show; the run takes the stored
            # ones, with the task's row.
            return runner.run(consume(host, task, celery_task.request.id))

        self._app.task(
            name=task.name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            autoretry_for=(Exception,),
            max_retries=options.max_attempts - 1,
            retry_backoff=max(1.0, options.backoff),
            retry_backoff_max=int(options.max_backoff),
            retry_jitter=True,
            shared=False,
            # The message's arguments are not the function's: no signature check.
            typing=False,
        )(run)

    async def publish(self, tasks: Sequence[Leased]) -> list[BaseException | None]:
        if self._publisher is None:
            self._publisher = ThreadPoolExecutor(1, thread_name_prefix="sanic-sqlalchemy-relay")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._publisher, self._publish_all, list(tasks))

    def _publish_all(self, tasks: list[Leased]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        for task in tasks:
            try:
                self._send(task)
            except Exception as error:
                self._disconnect()
                # The others would wait for the same broker: they stay pending.
                outcomes.extend([error] * (len(tasks) - len(outcomes)))
                break
            outcomes.append(None)
        return outcomes

    def _send(self, task: Leased) -> None:
        app = self._app
        if self._producer is None:
            self._connection = app.connection_for_write(
                transport_options=_TRANSPORT_OPTIONS, connect_timeout=PUBLISH_TIMEOUT
            )
            self._producer = app.amqp.Producer(self._connection, auto_declare=False)
        args, kwargs = decode(task.payload)
        app.send_task(
            task.name,
            args=args,
            kwargs=kwargs,
            task_id=task.id,
            queue=task.queue,
            producer=self._producer,
            retry=False,
            timeout=PUBLISH_TIMEOUT,
            confirm_timeout=PUBLISH_TIMEOUT,
        )

    def _disconnect(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            connection.collect()

    async def reset(self) -> None:
        publisher = self._publisher
        if publisher is not None:
            await asyncio.get_running_loop().run_in_executor(publisher, self._disconnect)

    async def close(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await asyncio.get_running_loop().run_in_executor(publisher, self._disconnect)
            publisher.shutdown(wait=False)


def celery_queue(app: object, target: str, key: str, host: TaskHost) -> CeleryQueue:
    """The queue of ``app``, which must be a Celery app."""
    if not isinstance(app, Celery):
        raise ConfigurationError(
            f"{key}: {target!r} names a {type(app).__name__}, not a Celery app (celery.Celery)."
        )
    return CeleryQueue(app, target, host)
