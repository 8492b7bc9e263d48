"""A shop whose committed tasks go to an existing queue (``tests/test_tasks_relay.py``).

The same module is the test's application (its brokers reach RabbitMQ, Redis and NATS
through the test's TCP proxies, on ports picked at import) and the queue's worker
process (``RELAY_ROLE=worker``: the brokers reach the servers directly, and the database
is configured from ``RELAY_DB_URL`` with ``RELAY_BACKEND``).  Every queue, exchange and
stream is named after ``RELAY_QUEUE``, unique per test run, so parallel runs on the
shared brokers never meet; RabbitMQ drops the queues once unused.  Each task appends a
line to ``RELAY_EFFECTS`` (its external effect) and inserts a receipt (its database
effect).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

from celery import Celery
from kombu import Queue as KombuQueue
from nats.js.api import RetentionPolicy, StreamConfig
from sqlalchemy import Integer
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from taskiq import InMemoryBroker, SimpleRetryMiddleware
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType
from taskiq_nats import PullBasedJetStreamBroker
from taskiq_redis import RedisStreamBroker

from sanic_sqlalchemy import Database, current_task


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


WORKER = os.environ.get("RELAY_ROLE") == "worker"
QUEUE = os.environ.get("RELAY_QUEUE") or f"relay-{uuid.uuid4().hex[:12]}"
#: Where the test's proxies listen (the worker connects to the servers directly).
AMQP_PROXY_PORT = _free_port()
REDIS_PROXY_PORT = _free_port()
NATS_PROXY_PORT = _free_port()
AMQP_URL = os.environ.get("RELAY_AMQP_URL") or f"amqp://guest:guest@127.0.0.1:{AMQP_PROXY_PORT}/"
REDIS_URL = os.environ.get("RELAY_REDIS_URL") or f"redis://127.0.0.1:{REDIS_PROXY_PORT}/0"
NATS_URL = os.environ.get("RELAY_NATS_URL") or f"nats://127.0.0.1:{NATS_PROXY_PORT}"
#: Unused queues, exchanges' queues and streams go away by themselves (milliseconds).
EXPIRES = {"x-expires": 600_000}

rabbit = AioPikaBroker(
    AMQP_URL,
    exchange=Exchange(name=f"{QUEUE}.exchange", auto_delete=True),
    task_queues=[Queue(name=QUEUE, type=QueueType.CLASSIC, arguments=EXPIRES)],
    dead_letter_queue=Queue(name=f"{QUEUE}.dead", type=QueueType.CLASSIC, arguments=EXPIRES),
).with_middlewares(SimpleRetryMiddleware())

redis = RedisStreamBroker(REDIS_URL, queue_name=QUEUE, consumer_group_name=QUEUE).with_middlewares(
    SimpleRetryMiddleware()
)

#: A JetStream stream (stored, acknowledged: a message published while no worker
#: listens waits) with one durable pull consumer, both named after the queue.
nats = PullBasedJetStreamBroker(
    NATS_URL,
    subject=QUEUE,
    stream_name=QUEUE,
    durable=QUEUE,
    stream_config=StreamConfig(retention=RetentionPolicy.WORK_QUEUE),
).with_middlewares(SimpleRetryMiddleware())

#: Runs each task as it is published, in the publishing process (no retries).
memory = InMemoryBroker(await_inplace=True)

celery_app = Celery("relay_app", broker=AMQP_URL)
celery_app.conf.update(
    task_queues=[KombuQueue(QUEUE, routing_key=QUEUE, queue_arguments=EXPIRES)],
    worker_prefetch_multiplier=1,
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

#: ``DATABASE_TASKS_BACKEND`` for each kind the test runs.
BACKENDS = {
    "taskiq-rabbitmq": "taskiq:tests.apps.relay_app:rabbit",
    "taskiq-redis": "taskiq:tests.apps.relay_app:redis",
    "taskiq-nats": "taskiq:tests.apps.relay_app:nats",
    "celery-rabbitmq": "celery:tests.apps.relay_app:celery_app",
    "taskiq-memory": "taskiq:tests.apps.relay_app:memory",
}


class Base(DeclarativeBase):
    pass


class RelayOrder(Base):
    __tablename__ = "relay_orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class RelayReceipt(Base):
    __tablename__ = "relay_receipts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)


db = Database()


def _effect(line: str) -> None:
    with open(os.environ["RELAY_EFFECTS"], "a") as effects:
        effects.write(line + "\n")


@db.task(name="relay.receipt", queue=QUEUE)
async def receipt(order_id: int) -> None:
    task = current_task()
    assert task is not None
    _effect(f"receipt {order_id} {task.id}")
    db.write.add(RelayReceipt(order_id=order_id, attempt=task.attempt))


@db.task(name="relay.flaky", queue=QUEUE, max_attempts=3, backoff=0.1, max_backoff=1.0)
async def flaky(order_id: int) -> None:
    """Fails its first attempt after writing (which rolls back): the queue retries it."""
    task = current_task()
    assert task is not None
    _effect(f"flaky {order_id} {task.id}")
    db.write.add(RelayReceipt(order_id=order_id, attempt=task.attempt))
    if task.attempt == 1:
        raise RuntimeError("the first attempt fails")


if WORKER:
    from celery.signals import worker_ready

    @worker_ready.connect
    def _bound_the_event_loops_sleep(sender: Any, **_: Any) -> None:
        """Celery's event loop (kombu's Hub, ``-P solo`` here) sometimes sleeps in its poll
        until its next timer, up to 10 s, while a message waits for it: one run in three
        of the cut-broker test took 10 to 20 s more.  A no-op timer every 0.1 s bounds
        that sleep; how soon the queue's own worker notices a message is not under test."""
        sender.timer.call_repeatedly(0.1, lambda: None)

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("sanic_sqlalchemy").setLevel(logging.INFO)
    db.configure_from(url=os.environ["RELAY_DB_URL"], tasks_backend=os.environ["RELAY_BACKEND"])
