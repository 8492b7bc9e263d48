"""Durable tasks' costs (issue 18), in one run on this machine:

1. A writing endpoint (``POST /users``) that defers a durable no-op task, against the
   same endpoint with an in-memory ``db.on_commit`` callback: the request's round trips
   (1 and 5 tasks per request, the unit alone and with the task's own run), then req/s
   under wrk (server on core 1, wrk and a local PostgreSQL on core 0: ``--db-core``), the
   variants interleaved round by round; the ratio is taken within each round.
2. Dispatcher throughput, one worker process, PostgreSQL: ours, pgqueuer and
   procrastinate on the same database, interleaved round by round; no-op tasks and tasks
   that insert one row each.
3. The latency from a unit's commit to its task's start: on the fast path (the
   committing process) and through a dispatcher woken by ``LISTEN/NOTIFY``.
4. ``--parts interference`` (not run by default): how much slower the server's own
   code runs while PostgreSQL works harder on the other core (``bench.interference``).
5. ``--parts paired`` (not run by default): the endpoints of 1 with one task per
   request, both servers running, ``wrk`` alternating between them in adjacent windows
   (``bench.paired``): the ratio that drifting load on a shared machine disturbs least.

    ./benchmarks/run --tasks [--rounds 3] [--duration 5] [--count 5000] [--output PATH]

Instructions per request (load-immune) come from ``instructions.py``::

    benchmarks/.venv/bin/python benchmarks/instructions.py \\
        --variants ours-defer,ours-on-commit --endpoints insert
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import db as bench_db  # noqa: E402
from bench import interference, paired, queues  # noqa: E402
from bench.http import Client  # noqa: E402
from bench.local_db import cpu_seconds, database_on_core  # noqa: E402
from bench.machine import machine, source, versions  # noqa: E402
from bench.proxy import CountingProxy  # noqa: E402
from bench.servers import Server  # noqa: E402
from bench.wrk import run_wrk, wrk_version  # noqa: E402

#: Hosts whose PostgreSQL runs on this machine (``--db-core`` pins it).
LOCAL = {"127.0.0.1", "localhost", "::1"}
SERVER_PORT = 18_281
PROXY_PORT = 16_532
#: (variant, tasks per request, whether the server runs the tasks itself) measured under
#: load; without, the server only stores them (a worker process elsewhere would run them).
LOADS = [
    ("ours-on-commit", 1, True),
    ("ours-defer", 1, True),
    ("ours-defer", 1, False),
    ("ours-on-commit", 5, True),
    ("ours-defer", 5, True),
    ("ours-defer", 5, False),
]


def label_of(variant: str, per_request: int, fast: bool) -> str:
    return f"{variant} ×{per_request}" + ("" if fast else " (unit only)")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def empty_tasks_table(target: bench_db.Target) -> None:
    """No variant finds another's tasks: a "unit only" server leaves its tasks waiting,
    which the next server's dispatcher would otherwise run while it is measured."""
    async with bench_db.pg_connect(target) as connection:
        exists = await connection.fetchval("SELECT to_regclass('sanic_sqlalchemy_tasks')")
        if exists is not None:
            await connection.execute("TRUNCATE sanic_sqlalchemy_tasks")


def server(variant: str, url: str, port: int, per_request: int, fast: bool = True) -> Server:
    env = {"BENCH_TASKS_PER_REQUEST": str(per_request), "BENCH_TASKS_FAST": "1" if fast else "0"}
    logs = HERE / "work" / "logs" / f"tasks-{variant}-{per_request}-{int(fast)}.log"
    return Server(variant, "postgresql", url, port, "1", logs, env)


def loads(per_request: list[int]) -> list[tuple[str, int, bool]]:
    """The measured loads with these numbers of tasks per request."""
    return [load for load in LOADS if load[1] in per_request]


async def round_trips(
    target: bench_db.Target, requests: int, measured: list[int]
) -> dict[str, float]:
    """Round trips per ``POST /users``, counted by the proxy, sequential requests."""
    out: dict[str, float] = {}
    for variant, per_request, fast in loads(measured):
        await empty_tasks_table(target)
        proxy = CountingProxy(PROXY_PORT, target.port, "postgresql")
        await proxy.start()
        one = server(variant, target.url(PROXY_PORT), SERVER_PORT, per_request, fast)
        await one.start()
        client = Client(SERVER_PORT)
        try:
            for n in range(requests + 20):
                if n == 20:
                    await asyncio.sleep(0.3)
                    before = proxy.snapshot()
                body = {"name": f"rt {n}", "email": f"rt{n}-{time.time_ns()}@example.com"}
                response = await client.request("POST", "/users", body)
                if response.status != 201:
                    raise RuntimeError(f"{variant}: {response.status} {response.body!r}")
            await asyncio.sleep(0.5)  # the tasks of the last requests
            delta = proxy.snapshot().minus(before)
        finally:
            await client.close()
            await one.stop()
            await proxy.stop()
        label = label_of(variant, per_request, fast)
        out[label] = delta.round_trips / requests
        log(f"round trips {label}: {out[label]:.2f}")
    return out


async def load(
    target: bench_db.Target, rounds: int, duration: int, tasks_per_request: list[int]
) -> dict[str, Any]:
    rates: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    #: The server's CPU time per request (its process's, over the window).
    cpu_us: dict[str, list[float]] = {}
    #: PostgreSQL's (every process of a local server), the same way.
    db_cpu_us: dict[str, list[float]] = {}
    measured = loads(tasks_per_request)
    for number in range(rounds):
        order = measured[number % len(measured) :] + measured[: number % len(measured)]
        for variant, per_request, fast in order:
            await empty_tasks_table(target)
            one = server(variant, target.url(), SERVER_PORT, per_request, fast)
            await one.start()
            try:
                await run_wrk(SERVER_PORT, "insert", seconds=2, core="0")  # warm-up
                cpu, db_cpu = one.cpu(), cpu_seconds()
                result = await run_wrk(SERVER_PORT, "insert", seconds=duration, core="0")
                cpu, db_cpu = one.cpu() - cpu, cpu_seconds() - db_cpu
            finally:
                await one.stop()
            if result.error_count:
                raise RuntimeError(f"{variant}: wrk errors {result.errors}")
            label = label_of(variant, per_request, fast)
            rates.setdefault(label, []).append(result.rps)
            latencies.setdefault(label, []).append(result.p99_ms)
            cpu_us.setdefault(label, []).append(cpu / max(result.requests, 1) * 1e6)
            db_cpu_us.setdefault(label, []).append(db_cpu / max(result.requests, 1) * 1e6)
            log(f"round {number + 1} {label}: {result.rps:.0f} req/s")
    ratios = {
        label: [d / c for d, c in zip(rates[label], rates[f"ours-on-commit ×{n}"], strict=True)]
        for variant, n, fast in measured
        if variant == "ours-defer"
        for label in [label_of(variant, n, fast)]
    }
    return {
        "rates": rates,
        "p99_ms": latencies,
        "cpu_us": cpu_us,
        "db_cpu_us": db_cpu_us,
        "ratios": ratios,
    }


def median_range(values: list[float], digits: int = 0) -> str:
    def show(value: float) -> str:
        return f"{value:,.{digits}f}"

    return f"{show(statistics.median(values))} ({show(min(values))}–{show(max(values))})"


def report(data: dict[str, Any]) -> str:
    lines = [
        "# Durable tasks: costs and throughput (issue 18)",
        "",
        f"Run {data['date']} with `{data['command']}`.",
        "",
        "## Machine and versions",
        "",
    ]
    m = data["machine"]
    lines += [
        f"- {m['nproc']} cores, {m['cpu']}, {m['memory']}, {m['os']}, Python {m['python']}",
        f"- load average at the start: {', '.join(f'{x:.2f}' for x in m['loadavg'])} (the "
        "machine is shared with other sessions running test suites: absolute numbers move, "
        "the ratios are taken within a round)",
        f"- PostgreSQL: {data['postgres']}; wrk: {data['wrk']}",
        "- " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()),
        f"- sanic-sqlalchemy at {data['source'].get('commit', '?')}"
        + (" (src/ with local changes)" if data["source"].get("dirty") else ""),
        "",
    ]
    if "round_trips" in data:
        lines += [
            "## 1. A writing endpoint that defers a task, against `db.on_commit`",
            "",
            "Round trips per `POST /users` (sequential requests on one connection, counted by "
            "the proxy). *Unit only*: the committing process does not run the task (a "
            "dispatcher would); otherwise the total includes the task's own run.",
            "",
            "| variant | round trips per request |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.2f} |" for k, v in data["round_trips"].items()]
        load_data = data["load"]
        lines += [
            "",
            f"req/s under wrk (`-t1 -c32`, {data['duration']} s per window, "
            f"{data['rounds']} rounds, order rotated each round; median and min–max). "
            f"The local PostgreSQL: {data.get('database_core', 'not pinned')}.",
            "",
            "| variant | req/s | p99 ms (median) | CPU µs per request: server | PostgreSQL |",
            "|---|---|---|---|---|",
        ]
        for label, rates in load_data["rates"].items():
            p99 = statistics.median(load_data["p99_ms"][label])
            cpu = median_range(load_data["cpu_us"][label])
            db_cpu = median_range(load_data["db_cpu_us"][label])
            lines.append(f"| {label} | {median_range(rates)} | {p99:.1f} | {cpu} | {db_cpu} |")
        lines += ["", "Ratio to on_commit with as many callbacks, within each round:", ""]
        for label, ratios in load_data["ratios"].items():
            lines.append(f"- {label}: {median_range(ratios, 3)}")
        lines.append("")
    if "paired" in data:
        lines += paired.report(data["paired"], median_range)
    if "throughput" in data:
        lines += [
            "## 2. Dispatcher throughput, one worker process, PostgreSQL",
            "",
            f"{data['count']:,} tasks stored before the worker starts; {data['concurrency']} "
            "at once; timed until every completion is stored. Tasks per second, median "
            "(min–max) over rounds; ratio to pgqueuer within each round.",
            "",
            "| system | no-op tasks/s | ÷ pgqueuer | one-row tasks/s | ÷ pgqueuer |",
            "|---|---|---|---|---|",
        ]
        results = data["throughput"]
        for system in results["noop"]:
            cells = []
            for kind in ("noop", "write"):
                rates = results[kind][system]
                ratios = [r / p for r, p in zip(rates, results[kind]["pgqueuer"], strict=True)]
                cells += [median_range(rates), f"{statistics.median(ratios):.2f}"]
            lines.append(f"| {system} | " + " | ".join(cells) + " |")
        lines.append("")
    if "latency" in data:
        lines += [
            "## 3. From commit to task start",
            "",
            f"{data['latency_units']} units one after the other, 5 ms apart, each deferring one "
            "task; from the start of the unit's COMMIT (its round trip included) to the "
            "task's first line, in milliseconds.",
            "",
            "| path | p50 ms | p99 ms |",
            "|---|---|---|",
        ]
        for path, (p50, p99) in data["latency"].items():
            lines.append(f"| {path} | {p50:.2f} | {p99:.2f} |")
        lines.append("")
    if data.get("interference"):
        lines += interference.report(data["interference"], median_range)
    return "\n".join(lines)


async def postgres_version(target: bench_db.Target) -> str:
    async with bench_db.pg_connect(target) as connection:
        version = await connection.fetchval("SHOW server_version")
        sync = await connection.fetchval("SHOW synchronous_commit")
    return f"{version} (synchronous_commit {sync})"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    user, _, rest = args.pg.partition("@")
    hostport, _, database = rest.partition("/")
    host, _, port = hostport.partition(":")
    target = bench_db.Target("postgresql", host, int(port or 5432), user, database)
    queue_url = target.url().replace(f"/{database}", f"/{args.queue_db}")
    data: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "./benchmarks/run --tasks " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "source": source(),
        "wrk": wrk_version(),
        "rounds": args.rounds,
        "duration": args.duration,
        "count": args.count,
        "concurrency": args.concurrency,
        "latency_units": args.latency_units,
    }
    await bench_db.prepare(target)
    data["postgres"] = await postgres_version(target)
    async with bench_db.pg_connect(target) as connection:
        if not await connection.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", args.queue_db
        ):
            await connection.execute(f'CREATE DATABASE "{args.queue_db}"')
    db_core = args.db_core if target.host in LOCAL else ""  # a remote one: left alone
    if "endpoint" in args.parts:
        data["round_trips"] = await round_trips(target, args.rt_requests, args.per_request)
        with database_on_core(db_core) as pinned:
            data["load"] = await load(target, args.rounds, args.duration, args.per_request)
        data["database_core"] = pinned
    if "interference" in args.parts:
        with database_on_core(db_core):
            data["interference"] = await interference.measure(
                target,
                lambda: server("ours-on-commit", target.url(), SERVER_PORT, 1),
                SERVER_PORT,
                args.rounds,
                args.duration,
                HERE / "work",
                log,
            )
    if "paired" in args.parts:
        await empty_tasks_table(target)
        with database_on_core(db_core):
            data["paired"] = await paired.measure(
                lambda port: server("ours-on-commit", target.url(), port, 1),
                lambda port: server("ours-defer", target.url(), port, 1),
                SERVER_PORT,
                args.pairs,
                args.duration,
                log,
            )
    if "queues" in args.parts:
        log("dispatcher throughput")
        systems = ["ours", "pgqueuer", "procrastinate"]
        data["throughput"] = await queues.throughput(
            queue_url, systems, args.count, args.concurrency, args.rounds
        )
    if "latency" in args.parts:
        data["latency"] = {}
        for path, fast in (("fast path (committing process)", True), ("dispatcher", False)):
            delays = await queues.latency(queue_url, args.latency_units, fast)
            data["latency"][path] = queues.percentiles(delays)
            log(f"latency {path}: p50/p99 {data['latency'][path]}")
    return data


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run --tasks", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk window")
    parser.add_argument("--count", type=int, default=5000, help="tasks per throughput run")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--latency-units", type=int, default=300)
    parser.add_argument("--rt-requests", type=int, default=200)
    parser.add_argument("--parts", default="endpoint,queues,latency")
    parser.add_argument("--pairs", type=int, default=20, help="window pairs of --parts paired")
    parser.add_argument(
        "--per-request", default="1,5", help="the endpoint's tasks per request (1, 5 or both)"
    )
    parser.add_argument(
        "--db-core",
        default="0",
        help="core of a local PostgreSQL during the req/s windows ('' leaves it alone)",
    )
    parser.add_argument("--pg", default="postgres@127.0.0.1:5432/bench", help="user@host:port/db")
    parser.add_argument("--queue-db", default="bench_tasks", help="database of part 2 and 3")
    parser.add_argument("--output", type=Path, default=None, help="the report (markdown)")
    args = parser.parse_args()
    args.parts = args.parts.split(",")
    args.per_request = [int(n) for n in args.per_request.split(",")]
    data = asyncio.run(main_async(args))
    text = report(data)
    print(text)
    if args.output is not None:
        output = Path(os.environ.get("BENCH_CALLER_CWD", ".")) / args.output
        output.write_text(text)
        output.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
