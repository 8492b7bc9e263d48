"""Through PgBouncer in transaction mode against direct, same run (issue 19).

    ./scripts/test --co -q >/dev/null   # once: builds .venv with the test dependencies
    .venv/bin/python benchmarks/pooling.py [--rounds 3] [--duration 5] [--server-pool 20]

Starts a private PgBouncer 1.18 in transaction mode (the test suite's, ``tests/pgbouncer.py``)
in front of the machine's PostgreSQL, fills ``users`` in the database ``bench_pool`` with
10,000 rows, then serves the benchmark's ``ours`` variant (``benchmarks/bench/apps/ours.py``,
every setting at its default) as a single-process Sanic server on core 1 twice per round:
connected directly, and through the pooler with ``SANIC_DATABASE_TRANSACTION_POOLING=true``.
wrk (32 connections, core 0, ``wrk/bench.lua``) measures ``GET /users/<id>`` (random ids)
and ``POST /users``; the ratio is pooled ÷ direct in the same round, the median over rounds
is printed as a Markdown table, with the round trips per request of both counted on the
wire (``tests/pgcount.py``, through ``tests/test_round_trips.py``'s app).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import uuid4

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replica_read import fill as fill_users  # noqa: E402
from replica_read import free_port, serve_ours  # noqa: E402
from tests.pgbouncer import pgbouncer_sync  # noqa: E402

ENDPOINTS = {"get": "GET /users/<id>", "insert": "POST /users"}
LUA = ROOT / "benchmarks" / "wrk" / "bench.lua"
DATABASE = "bench_pool"


async def fill(server: str) -> str:
    """Create ``bench_pool`` on ``server`` (a URL of any of its databases) when missing,
    fill its ``users``; return the URL of ``bench_pool``."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    admin = create_async_engine(
        make_url(server).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    async with admin.connect() as connection:
        exists = await connection.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": DATABASE}
        )
        if not exists:
            await connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    await admin.dispose()
    url = make_url(server).set(database=DATABASE).render_as_string(hide_password=False)
    await fill_users(url)
    return url


def wrk(port: int, endpoint: str, duration: float) -> dict[str, Any]:
    output = subprocess.run(
        [
            *("taskset", "-c", "0", "wrk", "-t1", "-c32", f"-d{duration:g}s", "--timeout", "10s"),
            *("-s", str(LUA), f"http://127.0.0.1:{port}"),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BENCH_ENDPOINT": endpoint},
    ).stdout
    line = next((x for x in output.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed:\n{output}")
    summary: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    if any(summary["errors"].values()):
        raise SystemExit(f"errors under load ({endpoint}): {summary['errors']}")
    summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
    return summary


def measure(url: str, pooled: bool, duration: float) -> dict[str, dict[str, Any]]:
    process, port = serve_ours(url, {"DATABASE_TRANSACTION_POOLING": "true"} if pooled else {})
    try:
        for endpoint in ENDPOINTS:
            wrk(port, endpoint, 1)  # warm-up: connections opened, statements described
        return {endpoint: wrk(port, endpoint, duration) for endpoint in ENDPOINTS}
    finally:
        process.terminate()
        process.wait(10)


async def round_trips(direct: str, pooler: str) -> dict[str, dict[tuple[str, str], float]]:
    """Round trips per request, steady state, of the test suite's round-trip app."""
    from tests.conftest import Served
    from tests.test_round_trips import round_trips_per_request

    async def served(app: Any) -> Any:
        port = free_port()
        server = await app.create_server(
            host="127.0.0.1", port=port, return_asyncio_server=True, access_log=False
        )
        await server.startup()
        await server.before_start()
        await server.after_start()
        running.append(server)
        return Served(app, port)

    running: list[Any] = []
    try:
        return {
            "direct": await round_trips_per_request(direct, served),
            "pooled": await round_trips_per_request(pooler, served, transaction_pooling=True),
            # What the description cache saves: each statement described again.
            "pooled, no description cache": await round_trips_per_request(
                pooler,
                served,
                transaction_pooling=True,
                connect_args={"prepared_statement_cache_size": 0},
            ),
            # SQLAlchemy's recipe for poolers: a new name per statement, no caches.
            "pooled, unique names": await round_trips_per_request(
                pooler,
                served,
                transaction_pooling=True,
                connect_args={
                    "prepared_statement_cache_size": 0,
                    "prepared_statement_name_func": lambda: f"__asyncpg_{uuid4()}__",
                },
            ),
        }
    finally:
        for server in running:
            await server.before_stop()
            server.close()
            await server.wait_closed()
            await server.after_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--server-pool", type=int, default=20, help="PgBouncer's pool size")
    parser.add_argument("--round-trips-only", action="store_true", help="skip the load")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    direct = asyncio.run(fill(args.pg))
    with pgbouncer_sync(direct, pool_size=args.server_pool) as bouncer:
        pooler = bouncer.url
        if args.round_trips_only:
            args.rounds = 0
        rates: dict[str, dict[str, list[float]]] = {"direct": {}, "pooled": {}}
        ratios: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
        p99: dict[str, dict[str, list[float]]] = {"direct": {}, "pooled": {}}
        for round_number in range(args.rounds):
            order = [("direct", direct, False), ("pooled", pooler, True)]
            if round_number % 2:
                order.reverse()
            results = {name: measure(url, pooled, args.duration) for name, url, pooled in order}
            for endpoint in ENDPOINTS:
                for name in rates:
                    summary = results[name][endpoint]
                    rates[name].setdefault(endpoint, []).append(summary["rps"])
                    p99[name].setdefault(endpoint, []).append(summary["latency_us"]["p99"] / 1000)
                ratios[endpoint].append(
                    results["pooled"][endpoint]["rps"] / results["direct"][endpoint]["rps"]
                )
        trips = asyncio.run(round_trips(direct, pooler))
    if args.rounds:
        print_rates(args, rates, ratios, p99, trips)
    print("\nround trips per request, steady state (tests/test_round_trips.py's app):\n")
    print("| configuration | " + " | ".join(f"`{m} {p}`" for m, p in trips["direct"]) + " |")
    print("|---|" + "---|" * len(trips["direct"]))
    for name, counts in trips.items():
        print(f"| {name} | " + " | ".join(f"{n:g}" for n in counts.values()) + " |")


def print_rates(
    args: argparse.Namespace,
    rates: dict[str, dict[str, list[float]]],
    ratios: dict[str, list[float]],
    p99: dict[str, dict[str, list[float]]],
    trips: dict[str, dict[tuple[str, str], float]],
) -> None:
    print(
        f"{args.rounds} rounds of {args.duration:g} s, wrk -t1 -c32 (core 0), server on core 1, "
        f"PgBouncer default_pool_size={args.server_pool}\n"
    )
    print(
        "| endpoint | direct (req/s) | through PgBouncer (req/s) | ratio | p99 direct / pooled "
        "(ms) | round trips direct / pooled |"
    )
    print("|---|---|---|---|---|---|")
    keys = {"get": ("GET", "/users/1"), "insert": ("POST", "/users")}
    for endpoint, label in ENDPOINTS.items():
        key = keys[endpoint]
        print(
            f"| `{label}` | {statistics.median(rates['direct'][endpoint]):.0f} "
            f"({min(rates['direct'][endpoint]):.0f}–{max(rates['direct'][endpoint]):.0f}) | "
            f"{statistics.median(rates['pooled'][endpoint]):.0f} "
            f"({min(rates['pooled'][endpoint]):.0f}–{max(rates['pooled'][endpoint]):.0f}) | "
            f"{statistics.median(ratios[endpoint]):.3f} | "
            f"{statistics.median(p99['direct'][endpoint]):.1f} / "
            f"{statistics.median(p99['pooled'][endpoint]):.1f} | "
            f"{trips['direct'][key]:g} / {trips['pooled'][key]:g} |"
        )


if __name__ == "__main__":
    main()
