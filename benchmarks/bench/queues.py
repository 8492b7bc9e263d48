"""Durable-task dispatchers side by side (issue 18): ours, pgqueuer and procrastinate,
one worker process each (this one), on the same PostgreSQL database.

Each system gets ``count`` jobs stored before its worker starts, then its worker runs
them with ``concurrency`` at once until every completion is stored (ours: the rows are
deleted; pgqueuer: its rows are gone from its queue table; procrastinate: the jobs are
``succeeded``).  Jobs are no-ops, or insert one row each (ours in the run's own
transaction with its completion; the others through a pool of their own, outside their
completion).  Also the latency from a unit's commit to its task's start, on the fast
path and through a dispatcher woken by ``LISTEN/NOTIFY``.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import Integer
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import Database, current_task

#: The table the writing jobs insert into.
ROWS_TABLE = "task_bench_rows"


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = ROWS_TABLE
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


def dsn(url: str) -> str:
    """A libpq URL from a SQLAlchemy one."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _until_empty(connection: asyncpg.Connection, query: str) -> None:
    # Completions are stored by the system under test: only its table can tell.
    while await connection.fetchval(query):  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def _prepare_rows(url: str) -> None:
    connection = await asyncpg.connect(dsn(url))
    try:
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {ROWS_TABLE} (id bigserial PRIMARY KEY, n integer)"
        )
        await connection.execute(f"TRUNCATE {ROWS_TABLE}")
    finally:
        await connection.close()


async def _rows(url: str) -> int:
    connection = await asyncpg.connect(dsn(url))
    try:
        return int(await connection.fetchval(f"SELECT count(*) FROM {ROWS_TABLE}"))
    finally:
        await connection.close()


# -- ours -------------------------------------------------------------------------


async def ours(url: str, count: int, concurrency: int, write: bool) -> float:
    """Seconds for one ``db.tasks.work()`` to run ``count`` stored tasks."""
    db = Database(url, pool_size=concurrency + 2)
    db.tasks.run_after_commit = False
    started = [0]

    @db.task(name="bench.queue_job")
    async def job(n: int) -> None:
        started[0] += 1
        if write:
            db.write.add(Row(n=n))

    await db.tasks.drop_table()
    await db.tasks.create_table()
    async with db:
        for n in range(count):
            job.defer(n)
    watcher = await asyncpg.connect(dsn(url))
    begin = time.perf_counter()
    worker = asyncio.ensure_future(db.tasks.work(concurrency=concurrency))
    try:
        await _until_empty(watcher, f"SELECT EXISTS (SELECT 1 FROM {db.tasks.table.name})")
        elapsed = time.perf_counter() - begin
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await watcher.close()
        await db.dispose()
    if started[0] != count:
        raise RuntimeError(f"ours: {started[0]} starts for {count} tasks")
    return elapsed


# -- pgqueuer ---------------------------------------------------------------------


async def pgqueuer(url: str, count: int, concurrency: int, write: bool) -> float:
    """Seconds for one pgqueuer ``QueueManager`` (drain mode) to run ``count`` jobs."""
    from pgqueuer import QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    connection = await asyncpg.connect(dsn(url))
    pool = await asyncpg.create_pool(dsn(url), min_size=concurrency, max_size=concurrency)
    queries = Queries(AsyncpgDriver(connection))
    try:
        if not await queries.schema_is_installed():
            await queries.install()
        await queries.clear_queue()
        await queries.clear_queue_log()
        for start in range(0, count, 1000):
            size = min(1000, count - start)
            await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
        manager = QueueManager(queries)
        started = [0]

        @manager.entrypoint("noop")
        async def noop(job: Job) -> None:
            started[0] += 1
            if write:
                await pool.execute(f"INSERT INTO {ROWS_TABLE} (n) VALUES ($1)", started[0])

        begin = time.perf_counter()
        await manager.run(
            batch_size=max(1, concurrency // 2),
            max_concurrent_tasks=concurrency,
            mode=QueueExecutionMode.drain,
            dequeue_timeout=__import__("datetime").timedelta(seconds=0.1),
        )
        elapsed = time.perf_counter() - begin
    finally:
        await pool.close()
        if not connection.is_closed():
            await connection.close()
    if started[0] != count:
        raise RuntimeError(f"pgqueuer: {started[0]} starts for {count} jobs")
    return elapsed


# -- procrastinate ----------------------------------------------------------------


async def procrastinate(url: str, count: int, concurrency: int, write: bool) -> float:
    """Seconds for one procrastinate worker (``wait=False``) to run ``count`` jobs."""
    import procrastinate as proc

    connector = proc.PsycopgConnector(conninfo=dsn(url), min_size=2, max_size=concurrency + 2)
    app = proc.App(connector=connector)
    pool = await asyncpg.create_pool(dsn(url), min_size=concurrency, max_size=concurrency)
    started = [0]

    @app.task(name="noop")
    async def noop(n: int) -> None:
        started[0] += 1
        if write:
            await pool.execute(f"INSERT INTO {ROWS_TABLE} (n) VALUES ($1)", n)

    setup = await asyncpg.connect(dsn(url))
    try:
        if await setup.fetchval("SELECT to_regclass('procrastinate_jobs') IS NULL"):
            async with app.open_async():
                await app.schema_manager.apply_schema_async()
        await setup.execute("TRUNCATE procrastinate_jobs CASCADE")
        async with app.open_async():
            for start in range(0, count, 1000):
                size = min(1000, count - start)
                await noop.batch_defer_async(*({"n": start + i} for i in range(size)))
            begin = time.perf_counter()
            await app.run_worker_async(
                concurrency=concurrency,
                wait=False,
                install_signal_handlers=False,
                delete_jobs="never",
                listen_notify=False,
            )
            elapsed = time.perf_counter() - begin
        left = await setup.fetchval(
            "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"
        )
    finally:
        await pool.close()
        await setup.close()
    if started[0] != count or left:
        raise RuntimeError(f"procrastinate: {started[0]} starts, {left} not succeeded")
    return elapsed


SYSTEMS: dict[str, Callable[[str, int, int, bool], Awaitable[float]]] = {
    "ours": ours,
    "pgqueuer": pgqueuer,
    "procrastinate": procrastinate,
}


async def throughput(
    url: str, systems: list[str], count: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    """Tasks per second per system and kind (no-op, one row), rounds interleaved, with
    each round's ratio to pgqueuer's."""
    results: dict[str, dict[str, list[float]]] = {}
    for round_number in range(rounds):
        order = systems[round_number % len(systems) :] + systems[: round_number % len(systems)]
        for kind in ("noop", "write"):
            for system in order:
                if kind == "write":
                    await _prepare_rows(url)
                seconds = await SYSTEMS[system](url, count, concurrency, kind == "write")
                if kind == "write" and await _rows(url) != count:
                    raise RuntimeError(f"{system}: {await _rows(url)} rows for {count} jobs")
                rate = count / seconds
                results.setdefault(kind, {}).setdefault(system, []).append(rate)
                print(f"  round {round_number + 1} {kind:5} {system:13} {rate:8.0f} tasks/s")
    return results


# -- latency ----------------------------------------------------------------------


async def latency(url: str, units: int, fast: bool) -> list[float]:
    """Milliseconds from each unit's commit to its task's start (``units`` units one
    after the other, 5 ms apart), on the fast path or through a dispatcher."""
    db = Database(url, pool_size=10)
    db.tasks.run_after_commit = fast
    committed: dict[str, float] = {}
    delays: list[float] = []
    done = asyncio.Event()

    @db.task(name="bench.latency")
    async def job(n: int) -> None:
        now = time.perf_counter()
        task = current_task()
        assert task is not None
        delays.append((now - committed[task.id]) * 1000)
        if len(delays) == units:
            done.set()

    await db.tasks.drop_table()
    await db.tasks.create_table()
    worker = None if fast else asyncio.ensure_future(db.tasks.work(concurrency=5))
    await asyncio.sleep(0.5)  # the dispatcher's LISTEN is in place
    try:
        for n in range(units + 20):
            async with db:
                task_id = job.defer(n)
                # The unit's end sends the COMMIT: the latency includes its round trip.
                committed[task_id] = time.perf_counter()
            if n < 20:  # warm-up
                await asyncio.sleep(0.05)
                delays.clear()
                continue
            await asyncio.sleep(0.005)
        await asyncio.wait_for(done.wait(), 30)
    finally:
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        await db.tasks.stop(5)
        await db.dispose()
    return delays


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99
