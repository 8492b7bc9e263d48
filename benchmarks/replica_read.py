"""A read endpoint through a replica against the same endpoint on the primary (issue 11).

    ./scripts/test --co -q >/dev/null   # once: builds .venv with the test dependencies
    .venv/bin/python benchmarks/replica_read.py [--rounds 3] [--duration 5]

Starts a private PostgreSQL primary with one streaming replica (the test suite's
cluster, ``tests/clusters.py``), fills ``users`` with 10,000 rows, then serves the
benchmark's ``ours`` variant (``benchmarks/bench/apps/ours.py``) as a single-process
Sanic server on core 1 twice per round: reading from the primary's read pool, and with
``SANIC_DATABASE_READ_URLS`` set to the replica.  wrk (32 connections, core 0) measures
``GET /users/<id>`` and ``GET /users?limit=50``; the ratio is replica ÷ primary in the
same round, the median over rounds is printed as a Markdown table.  Also counts, on the
wire, the round trips of a writing unit with and without replicas (the commit position).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tests.conftest  # noqa: E402, F401  (imports tests.clusters in its own order)
from tests.clusters import start_postgres_cluster  # noqa: E402

ENDPOINTS = {"get": "/users/1", "page": "/users?limit=50"}
LUA = ROOT / "benchmarks" / "wrk" / "bench.lua"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def fill(primary: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(primary)
    async with engine.begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS users"))
        await connection.execute(
            text(
                "CREATE TABLE users (id bigserial PRIMARY KEY, name varchar(100) NOT NULL, "
                "email varchar(200) NOT NULL, visits integer NOT NULL DEFAULT 0)"
            )
        )
        await connection.execute(
            text(
                "INSERT INTO users (name, email) SELECT 'user ' || n, 'user' || n || "
                "'@example.com' FROM generate_series(1, 10000) AS n"
            )
        )
        await connection.execute(text("ANALYZE users"))
    await engine.dispose()


def serve(primary: str, replica: str | None) -> tuple[subprocess.Popen[bytes], int]:
    return serve_ours(primary, {} if replica is None else {"DATABASE_READ_URLS": replica})


def serve_ours(url: str, config: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """Start the ``ours`` variant on ``url`` with ``config`` (``app.config`` keys, passed
    as ``SANIC_``-prefixed variables) as a Sanic server on core 1; its process and port."""
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("SANIC_")},
        "PYTHONUNBUFFERED": "1",
        **{f"SANIC_{key}": value for key, value in config.items()},
    }
    command = [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "ours", "postgresql"]
    process = subprocess.Popen(
        ["taskset", "-c", "1", *command, url, str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


def wrk(port: int, path: str, duration: float) -> float:
    output = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            "wrk",
            "-t1",
            "-c32",
            f"-d{duration:g}s",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None or "Non-2xx" in output:
        raise SystemExit(f"wrk failed:\n{output}")
    return float(match.group(1))


def measure(primary: str, replica: str | None, duration: float) -> dict[str, float]:
    process, port = serve(primary, replica)
    try:
        for path in ENDPOINTS.values():
            wrk(port, path, 1)  # warm-up
        return {name: wrk(port, path, duration) for name, path in ENDPOINTS.items()}
    finally:
        process.terminate()
        process.wait(10)


async def round_trips_per_write(primary: str, replica: str) -> dict[str, int]:
    """Round trips to the primary of a unit that inserts one row, with and without
    replicas, counted on the wire (``tests/pgcount.py``)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from tests.pgcount import RoundTripCounter

    from sanic_sqlalchemy import Database

    counts = {}
    target = make_url(primary)
    for name, read_urls in (("primary only", None), ("with a replica", [replica])):
        counter = RoundTripCounter()
        async with counter.serve("127.0.0.1", target.port or 5432) as port:
            db = Database(target.set(port=port), read_urls=read_urls)
            async with db:  # warm-up: connection opened, statements prepared
                await db.write.execute(text("INSERT INTO users (name, email) VALUES ('w', 'w')"))
            before = counter.round_trips
            async with db:
                await db.write.execute(text("INSERT INTO users (name, email) VALUES ('x', 'y')"))
            counts[name] = counter.round_trips - before
            await db.dispose()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    args = parser.parse_args()
    with start_postgres_cluster(replicas=1) as cluster:
        primary, replica = cluster.primary_url, cluster.replica_urls[0]
        asyncio.run(fill(primary))
        asyncio.run(cluster.wait_caught_up())
        ratios: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
        rates: dict[str, dict[str, list[float]]] = {"primary": {}, "replica": {}}
        for _round in range(args.rounds):
            on_primary = measure(primary, None, args.duration)
            on_replica = measure(primary, replica, args.duration)
            for name in ENDPOINTS:
                ratios[name].append(on_replica[name] / on_primary[name])
                rates["primary"].setdefault(name, []).append(on_primary[name])
                rates["replica"].setdefault(name, []).append(on_replica[name])
        trips = asyncio.run(round_trips_per_write(primary, replica))
    print(f"{args.rounds} rounds of {args.duration:g} s, wrk -t1 -c32, server on core 1\n")
    print("| endpoint | primary's read pool (req/s) | through the replica (req/s) | ratio |")
    print("|---|---|---|---|")
    for name, path in ENDPOINTS.items():
        print(
            f"| `GET {path}` | {statistics.median(rates['primary'][name]):.0f} | "
            f"{statistics.median(rates['replica'][name]):.0f} | "
            f"{statistics.median(ratios[name]):.3f} |"
        )
    print(f"\nround trips to the primary of a unit that inserts a row: {trips}")


if __name__ == "__main__":
    main()
