"""Durable tasks relayed to existing queues, against real brokers and real workers.

taskiq over RabbitMQ (taskiq-aio-pika), over Redis (taskiq-redis streams) and over NATS
JetStream (taskiq-nats), and Celery over RabbitMQ: the test commits units that defer
tasks, the queue's own worker process runs them, and the test's TCP proxy between the
application and the broker is cut mid-way and restored.  Nothing is lost, each
database effect happens once, a message delivered twice runs nothing, and a failed run
is retried by the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import amqp
import nats
import pytest
from nats.js.errors import NotFoundError
from redis import Redis
from sanic import Request
from sanic.response import HTTPResponse, json
from sqlalchemy import func, select

from sanic_sqlalchemy import ConfigurationError, Database
from sanic_sqlalchemy.tasks.relay.sql import Leased
from sanic_sqlalchemy.testing import schema

from .apps import relay_app
from .apps.relay_app import BACKENDS, QUEUE, Base, RelayOrder, RelayReceipt
from .conftest import backends_required, make_app
from .tcpproxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
#: The shared servers: the worker reaches them directly, the application through a proxy.
SERVERS = {"amqp": 5672, "redis": 6379, "nats": 4222}
KINDS = {
    "taskiq-rabbitmq": "amqp",
    "taskiq-redis": "redis",
    "taskiq-nats": "nats",
    "celery-rabbitmq": "amqp",
}


def _worker_command(kind: str) -> list[str]:
    module = "tests.apps.relay_app"
    if kind.startswith("celery"):
        return [
            *(sys.executable, "-m", "celery", "-A", f"{module}:celery_app", "worker"),
            *("-Q", QUEUE, "-P", "solo", "-l", "WARNING"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ]
    broker = {"taskiq-rabbitmq": "rabbit", "taskiq-redis": "redis", "taskiq-nats": "nats"}[kind]
    return [
        *(sys.executable, "-m", "taskiq", "worker", f"{module}:{broker}"),
        *("--workers", "1", "--log-level", "WARNING", "--shutdown-timeout", "2"),
    ]


def _reachable(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _forget_queue(server: str) -> None:
    """Delete this run's queue on the shared broker (each kind declares it its own way;
    a JetStream stream goes with its consumer and messages)."""
    if server == "nats":
        client = await nats.connect(f"nats://127.0.0.1:{SERVERS['nats']}")
        try:
            with contextlib.suppress(NotFoundError):  # the broker never started
                await client.jetstream().delete_stream(QUEUE)
        finally:
            await client.close()
    else:
        await asyncio.to_thread(_forget_sync_queue, server)


def _forget_sync_queue(server: str) -> None:
    if server == "amqp":
        with amqp.Connection(f"127.0.0.1:{SERVERS['amqp']}") as connection:
            connection.connect()
            connection.channel().queue_delete(QUEUE)
    else:
        client = Redis(port=SERVERS["redis"])
        try:
            client.delete(QUEUE)
        finally:
            client.close()


@pytest.fixture
async def relayed(
    kind: str, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[TcpProxy, Path, Path]]:
    """The shop configured to relay to ``kind``'s queue through a proxy, its worker
    running; yields the proxy, the effects file and the worker's log."""
    server = SERVERS[KINDS[kind]]
    if not _reachable(server):
        message = f"no broker on 127.0.0.1:{server}"
        if backends_required():
            pytest.fail(message)
        pytest.skip(message)
    port = {
        "amqp": relay_app.AMQP_PROXY_PORT,
        "redis": relay_app.REDIS_PROXY_PORT,
        "nats": relay_app.NATS_PROXY_PORT,
    }[KINDS[kind]]
    proxy = TcpProxy(port, server)
    effects = tmp_path / "effects.txt"
    log = tmp_path / "worker.log"
    monkeypatch.setenv("RELAY_EFFECTS", str(effects))
    db = relay_app.db
    db.configure_from(url=url, tasks_backend=BACKENDS[kind], tasks_poll=0.1, pool_size=5)
    env = {
        **os.environ,
        "RELAY_ROLE": "worker",
        "RELAY_QUEUE": QUEUE,
        "RELAY_BACKEND": BACKENDS[kind],
        "RELAY_DB_URL": url,
        "RELAY_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{SERVERS['amqp']}/",
        "RELAY_REDIS_URL": f"redis://127.0.0.1:{SERVERS['redis']}/0",
        "RELAY_NATS_URL": f"nats://127.0.0.1:{SERVERS['nats']}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")]),
    }
    await proxy.start()
    try:
        async with schema(db, Base.metadata), schema(db, db.tasks.metadata):
            with log.open("w") as output:
                worker = await asyncio.create_subprocess_exec(
                    *_worker_command(kind), env=env, cwd=ROOT, stdout=output, stderr=output
                )
            try:
                db.tasks.start()
                yield proxy, effects, log
            finally:
                # The test is over: how Celery shuts down is not under test (its warm
                # and cold shutdowns take seconds), taskiq's is quick.
                worker.send_signal(signal.SIGKILL if kind.startswith("celery") else signal.SIGTERM)
                try:
                    await asyncio.wait_for(worker.wait(), 10)
                except TimeoutError:
                    worker.kill()
                    await worker.wait()
                await db.tasks.stop(2)
    finally:
        await proxy.cut()
        await _forget_queue(KINDS[kind])
        await db.dispose()
        db.configure_from(url=url)


async def _order(count: int, *, flaky: bool = False) -> list[int]:
    """Commit ``count`` orders, each deferring its receipt, one unit each."""
    db = relay_app.db
    ids = []
    for _ in range(count):
        async with db:
            order = RelayOrder()
            db.write.add(order)
            await db.write.flush()
            (relay_app.flaky if flaky else relay_app.receipt).defer(order.id)
            ids.append(order.id)
    return ids


async def _receipts() -> list[tuple[int, int]]:
    async with relay_app.db:
        rows = await relay_app.db.read.execute(
            select(RelayReceipt.order_id, RelayReceipt.attempt).order_by(RelayReceipt.order_id)
        )
        return [(row.order_id, row.attempt) for row in rows]


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _effects(path: Path) -> collections.Counter[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return collections.Counter(" ".join(line.split()[:2]) for line in lines)


@pytest.mark.server
@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_cut_broker_delays_and_loses_nothing(
    kind: str, relayed: tuple[TcpProxy, Path, Path], backend: str
) -> None:
    """Tasks committed while the broker is cut off stay pending, are published once it
    is back, and each runs in the queue's worker with its database effect exactly once;
    a failed run is retried by the queue; a message delivered again runs nothing."""
    await _cut_and_restore(kind, backend, *relayed)


@pytest.mark.server
@pytest.mark.backends("mysql")
@pytest.mark.parametrize("kind", ["taskiq-rabbitmq"])
async def test_a_cut_broker_on_mariadb(
    kind: str, relayed: tuple[TcpProxy, Path, Path], backend: str
) -> None:
    """The same on MariaDB (its own lease and claim statements), with one queue."""
    await _cut_and_restore(kind, backend, *relayed)


async def _cut_and_restore(
    kind: str, backend: str, proxy: TcpProxy, effects: Path, log: Path
) -> None:
    db = relay_app.db
    started = time.monotonic()
    before = await _order(10)
    flaky = await _order(1, flaky=True)

    async def all_ran(expected: int) -> bool:
        return len(await _receipts()) >= expected

    await _until(lambda: all_ran(11), 90, "the worker to start and run the first tasks")
    await proxy.cut()
    during = await _order(10)
    # The fast path and a relay pass fail meanwhile.  nats-py holds what is published
    # while it reconnects, and JetStream's publish waits 5 s for its ack: a shorter cut
    # fails nothing, a longer one has the relay close the client and open a new one.
    await asyncio.sleep(6 if kind == "taskiq-nats" else 0.5)
    counts = await db.tasks.counts()
    assert counts["pending"] == 10, counts
    assert len(await _receipts()) == 11
    await proxy.start()
    await _until(lambda: all_ran(21), 60, "the relay to catch up once the broker is back")
    orders = before + flaky + during

    # A message delivered again (its task done) runs nothing.
    async with db.tasks.transaction() as connection:
        done = (await connection.execute(select(func.count()).select_from(db.tasks.table))).scalar()
    assert done == 0
    relay = db.tasks.relay
    assert relay is not None
    lines = (await asyncio.to_thread(effects.read_text)).splitlines()
    first = next(line for line in lines if line.startswith("receipt"))
    order_id, task_id = int(first.split()[1]), first.split()[2]
    again = Leased(task_id, "relay.receipt", QUEUE, f'{{"args":[{order_id}],"kwargs":{{}}}}', 5)
    assert await relay.queue.publish([again]) == [None]

    async def skipped() -> bool:
        text = await asyncio.to_thread(log.read_text)
        return f"task {task_id} (relay.receipt) delivered again: it is done" in text

    await _until(skipped, 60, "the worker to see the message again")

    receipts = await _receipts()
    assert sorted(order for order, _ in receipts) == sorted(orders), "lost or duplicated"
    assert dict(receipts)[flaky[0]] == 2, "the flaky task's first attempt committed"
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0, "sent": 0}
    external = _effects(effects)
    assert external[f"flaky {flaky[0]}"] == 2
    duplicates = sum(count - 1 for key, count in external.items() if key.startswith("receipt"))
    sys.stdout.write(
        f"\n{kind} on {backend}: {len(orders)} tasks, broker cut for 10 of them, "
        f"{duplicates} external duplicate(s), {time.monotonic() - started:.1f} s\n"
    )


def _leased(effects: Path, kind: str, name: str, max_attempts: int = 5) -> Leased:
    """The first task of ``kind`` the effects file shows, to publish it again."""
    line = next(line for line in effects.read_text().splitlines() if line.startswith(kind))
    order_id, task_id = int(line.split()[1]), line.split()[2]
    payload = f'{{"args":[{order_id}],"kwargs":{{}}}}'
    return Leased(task_id, name, QUEUE, payload, max_attempts)


async def test_a_consumer_quicker_than_the_relay_and_redeliveries(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that runs each task as it is published (taskiq's InMemoryBroker): the
    run takes the task before the relay marks it sent and commits its receipt once; a
    message published again runs nothing; a failed run waits, ``sent``, for the queue's
    retry, which runs it once more; task_end listeners hear of each run."""
    effects = tmp_path / "effects.txt"
    monkeypatch.setenv("RELAY_EFFECTS", str(effects))
    db = relay_app.db
    db.configure_from(url=url, tasks_backend=BACKENDS["taskiq-memory"])
    relay = db.tasks.relay
    assert relay is not None
    ended: list[tuple[str, str]] = []
    db.listen("task_end", lambda event: ended.append((event.task.name, event.outcome)))
    try:
        async with schema(db, Base.metadata), schema(db, db.tasks.metadata):
            orders = await _order(3)
            flaky = await _order(1, flaky=True)

            async def settled() -> bool:
                counts = await db.tasks.counts()
                return counts["sent"] == 1 and len(await _receipts()) == 3

            await _until(settled, 30, "the fast path to publish")
            assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0, "sent": 1}
            assert await relay.queue.publish([_leased(effects, "receipt", "relay.receipt")]) == [
                None
            ]
            retry = _leased(effects, "flaky", "relay.flaky", 3)
            assert await relay.queue.publish([retry]) == [None]
            receipts = await _receipts()
            assert sorted(receipts) == sorted([(order, 1) for order in orders] + [(flaky[0], 2)])
            assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0, "sent": 0}
            assert _effects(effects)[f"flaky {flaky[0]}"] == 2
            assert sum(_effects(effects).values()) == 5
            # The queue's runs are told to task_end listeners as a dispatcher's are; a
            # delivery that ran nothing is not a run.
            assert sorted(ended) == [
                ("relay.flaky", "done"),
                ("relay.flaky", "retry"),
                *[("relay.receipt", "done")] * 3,
            ]
    finally:
        await db.tasks.stop(1)
        await db.dispose()
        db.configure_from(url=url)


@pytest.mark.backends("sqlite")
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "rabbitmq",
            "DATABASE_TASKS_BACKEND: expected 'local' (tasks run in the application's "
            "processes), 'taskiq:module:broker'",
        ),
        (
            "taskiq:tests.apps.no_such_module:broker",
            "DATABASE_TASKS_BACKEND: importing module 'tests.apps.no_such_module' (from "
            "'taskiq:tests.apps.no_such_module:broker') failed: ModuleNotFoundError(",
        ),
        (
            "taskiq:tests.apps.relay_app:nothing",
            "DATABASE_TASKS_BACKEND: module 'tests.apps.relay_app' has no attribute 'nothing'",
        ),
        (
            "taskiq:tests.apps.relay_app:celery_app",
            "DATABASE_TASKS_BACKEND: 'taskiq:tests.apps.relay_app:celery_app' names a "
            "Celery, not a taskiq broker",
        ),
        (
            "celery:tests.apps.relay_app:rabbit",
            "DATABASE_TASKS_BACKEND: 'celery:tests.apps.relay_app:rabbit' names a "
            "AioPikaBroker, not a Celery app",
        ),
    ],
)
def test_a_bad_backend_is_refused_naming_the_setting(url: str, value: str, message: str) -> None:
    """A malformed value, a module that cannot be imported, a missing attribute or an
    object of the wrong kind: a ConfigurationError naming DATABASE_TASKS_BACKEND."""
    db = Database()
    with pytest.raises(ConfigurationError) as raised:
        db.configure_from({"DATABASE_URL": url, "DATABASE_TASKS_BACKEND": value})
    assert str(raised.value).startswith(message), str(raised.value)


@pytest.mark.backends("sqlite")
def test_the_backend_keyword_and_local(url: str) -> None:
    """``tasks_backend=`` is the keyword of the setting (named so in errors); ``local``
    relays nothing; configuring again alike keeps the relay."""
    with pytest.raises(ConfigurationError, match=r"^tasks_backend= \(argument\): expected"):
        Database(url, tasks_backend="celery")
    db = Database(url, tasks_backend="local")
    assert db.tasks.relay is None
    relayed = Database(url, tasks_backend=BACKENDS["taskiq-memory"])
    relay = relayed.tasks.relay
    assert relay is not None
    relayed.configure_from({"DATABASE_TASKS_POLL": 0.5})
    assert relayed.tasks.relay is relay, "configured again alike: the same relay"


async def test_a_sanic_worker_relays_what_falls_due(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve: Any
) -> None:
    """In Sanic, each worker runs a relay loop (started and stopped with the server): it
    publishes a delayed task once it falls due, and a task the fast path left behind."""
    monkeypatch.setenv("RELAY_EFFECTS", str(tmp_path / "effects.txt"))
    db = relay_app.db
    app = make_app("relay")
    app.config.DATABASE_TASKS_BACKEND = BACKENDS["taskiq-memory"]
    app.config.DATABASE_TASKS_POLL = 0.05
    db.init_app(app, url=url)

    @app.post("/orders")
    async def order(request: Request) -> HTTPResponse:
        order = RelayOrder()
        db.write.add(order)
        await db.write.flush()
        delay = float(request.args.get("delay", 0))
        relay_app.receipt.configure(delay=delay).defer(order.id)
        return json({"order": order.id}, status=201)

    try:
        async with schema(db, Base.metadata), schema(db, db.tasks.metadata):
            served = await serve(app)
            delayed = (await served.client.post("/orders?delay=0.4")).json()["order"]
            await asyncio.sleep(0.2)
            assert await _receipts() == []
            db.tasks.run_after_commit = False
            left = (await served.client.post("/orders")).json()["order"]

            async def both() -> bool:
                return len(await _receipts()) == 2

            await _until(both, 30, "the relay loop")
            assert sorted(await _receipts()) == sorted([(delayed, 1), (left, 1)])
    finally:
        db.tasks.run_after_commit = True
        await db.dispose()
        db.configure_from(url=url)
