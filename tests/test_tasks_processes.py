"""Durable tasks against real processes: SIGKILLed committers on PostgreSQL, and two
dispatcher processes sharing the due tasks on PostgreSQL and MariaDB.  Database
effects must happen exactly once; external effects (lines appended to a file) at
least once, their duplicates counted and printed."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from sanic_sqlalchemy.testing import schema

from .apps import task_worker
from .apps.task_worker import Base, KillOrder, KillReceipt
from .conftest import free_port

SCRIPT = Path(task_worker.__file__)
KILLS = 100


@pytest.fixture
async def worker_db(url: str) -> AsyncIterator[None]:
    """The worker module's database on the test backend, with fresh tables."""
    db = task_worker.db
    db.configure_from(url=url, pool_size=10)
    db.tasks.run_after_commit = False
    async with schema(db, Base.metadata), schema(db, db.tasks.metadata):
        yield
    await db.dispose()


def _env(url: str, effects: Path) -> dict[str, str]:
    root = Path(__file__).resolve().parent.parent
    return {
        **os.environ,
        "TASKS_URL": url,
        "TASKS_EFFECTS": str(effects),
        "PYTHONPATH": os.pathsep.join([str(root), str(root / "src")]),
    }


def _effects(path: Path, kind: str) -> collections.Counter[str]:
    if not path.exists():
        return collections.Counter()
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return collections.Counter(" ".join(parts[1:3]) for parts in lines if parts[0] == kind)


@pytest.mark.backends("postgresql")
async def test_sigkilled_committers_lose_and_duplicate_nothing(
    url: str, tmp_path: Path, worker_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committer killed at random moments (right after commits, mid-run of its own
    tasks): after a drain, receipts equal the committed orders, none twice, and no
    task of a rolled-back unit ran."""
    effects = tmp_path / "effects.txt"
    env = _env(url, effects)
    monkeypatch.setenv("TASKS_EFFECTS", str(effects))  # the drain runs tasks here
    started = time.monotonic()
    committers = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.apps.task_worker",
        "fork",
        env=env,
        cwd=SCRIPT.parent.parent.parent,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert committers.stdin is not None and committers.stdout is not None
    try:
        # The next committer starts while this one runs (a fork and a first commit
        # take some 60 ms): at times two commit side by side.
        committers.stdin.write(b"go\n" * 2)
        for kill in range(KILLS):
            line = await asyncio.wait_for(committers.stdout.readline(), 20)
            word, _, pid = line.decode().partition(" ")
            assert word == "ready", f"a committer did not start: {line.decode()}"
            if kill + 2 < KILLS:
                committers.stdin.write(b"go\n")
            await committers.stdin.drain()
            await asyncio.sleep(random.uniform(0.0, 0.1))
            os.kill(int(pid), signal.SIGKILL)
    finally:
        committers.kill()
        await committers.wait()
    db = task_worker.db
    table = db.tasks.table
    # Every process that claimed a task is dead: let their claims expire now rather
    # than in 20 seconds.
    async with db.engines.write.begin() as connection:
        await connection.execute(
            update(table).where(table.c.state == "running").values(lease_until=0)
        )
    before = await db.tasks.counts()
    drained = await db.tasks.run_pending()
    async with db:
        orders = sorted((await db.read.scalars(select(KillOrder.id))).all())
        rows = (await db.read.execute(select(KillReceipt.order_id, KillReceipt.doomed))).all()
    receipts = sorted(row.order_id for row in rows)
    external = _effects(effects, "receipt")
    duplicates = sum(count - 1 for count in external.values())
    sys.stdout.write(
        f"\nSIGKILL test: {KILLS} kills in {time.monotonic() - started:.1f} s, "
        f"{len(orders)} committed orders, {len(receipts)} receipts, "
        f"{before['pending']} pending and {before['running']} running at the kill's end, "
        f"{drained} run by the drain, {duplicates} external duplicate(s)\n"
    )
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}
    assert len(orders) >= KILLS
    assert receipts == orders, "receipts lost or duplicated"
    assert not any(row.doomed for row in rows)
    assert not any(key.endswith(" 1") for key in external), "a rolled-back unit's task ran"
    assert {int(key.split()[0]) for key in external} == set(orders)


@pytest.mark.backends("postgresql", "mysql")
async def test_two_dispatchers_run_each_task_once(
    url: str, tmp_path: Path, worker_db: None
) -> None:
    db = task_worker.db
    total = 1000
    async with db:
        for number in range(total):
            task_worker.effect.defer(number)
    effects = tmp_path / "effects.txt"
    env = _env(url, effects)
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.apps.task_worker",
            "work",
            env=env,
            cwd=SCRIPT.parent.parent.parent,
        )
        for _ in range(2)
    ]
    codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), 60)
    assert codes == [0, 0]
    async with db:
        numbers = sorted((await db.read.scalars(select(KillReceipt.order_id))).all())
    external = _effects(effects, "effect")
    duplicates = sum(count - 1 for count in external.values())
    sys.stdout.write(f"\ntwo dispatchers: {len(numbers)} effects, {duplicates} duplicate starts\n")
    assert numbers == list(range(total))
    assert await db.tasks.counts() == {"pending": 0, "running": 0, "dead": 0}


@pytest.mark.backends("postgresql")
async def test_sigterm_lets_runs_finish_within_grace_and_hands_back_the_rest(
    url: str, tmp_path: Path, worker_db: None
) -> None:
    """``sanic`` stopped with SIGTERM: a task that ends within the graceful-shutdown
    time commits, a longer one is handed back without counting an attempt."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SANIC_")}
    environment.update(
        {
            "SANIC_DATABASE_URL": url,
            "SANIC_GRACEFUL_SHUTDOWN_TIMEOUT": "1.5",
            "PYTHONPATH": _env(url, tmp_path)["PYTHONPATH"],
        }
    )
    log = (tmp_path / "server.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sanic",
        "tests.apps.task_app:app",
        "--single-process",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-logs",
        "--no-motd",
        cwd=SCRIPT.parent.parent.parent,
        env=environment,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    db = task_worker.db
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(400):
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/")).status_code == 200:
                        break
                await asyncio.sleep(0.05)
            assert (await client.post("/defer/1?seconds=0.5")).status_code == 201
            assert (await client.post("/defer/2?seconds=60")).status_code == 201
        for _ in range(100):
            if (await db.tasks.counts())["running"] == 2:
                break
            await asyncio.sleep(0.05)
        assert (await db.tasks.counts())["running"] == 2
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        assert time.monotonic() - stopping < 10
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        log.close()
    output = (tmp_path / "server.log").read_text(errors="replace")
    assert "Traceback" not in output, output
    table = db.tasks.table
    async with db:
        numbers = (await db.read.scalars(select(KillReceipt.order_id))).all()
    async with db.engines.write.connect() as connection:
        rows = (await connection.execute(select(table.c.state, table.c.attempts))).all()
    assert numbers == [1]
    assert [(row.state, row.attempts) for row in rows] == [("pending", 0)]
