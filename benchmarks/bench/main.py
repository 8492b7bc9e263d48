"""The benchmark harness: prepare, check, count round trips, measure, report.

Run it through ``benchmarks/run`` (which builds the pinned environment); see
benchmarks/README.md for the method and how to read the report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import db
from .apps import VARIANTS
from .check import (
    SAFE_IDS,
    CheckResult,
    RoundTrips,
    check_variant,
    compare_across,
    count_round_trips,
)
from .machine import machine, slug, source, versions
from .proxy import CountingProxy
from .report import render
from .servers import Server
from .wrk import ENDPOINTS, run_wrk, wrk_version

HERE = Path(__file__).resolve().parent.parent
WORK = HERE / "work"
RESULTS = HERE / "results"

PG_VARIANTS = ["raw-asyncpg", "core", "orm", "advanced-alchemy", "orm-readonly", "ours"]
MYSQL_VARIANTS = ["raw-asyncmy", "orm", "ours"]
SERVER_PORT = 18_181
PROXY_PORTS = {"postgresql": 16_432, "mysql": 16_306}


@dataclass
class Window:
    """One wrk run against one variant and endpoint."""

    round: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    cpu_percent: float
    cpu_us_per_request: float
    #: Opened after the first second of the window (the steady state).
    new_connections: int
    steady_seconds: float
    #: Opened in the first second: replacements for connections discarded when the
    #: previous window's clients hung up.
    replaced_connections: int
    loadavg: float


@dataclass
class BackendResults:
    backend: str
    variants: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    cross_failures: list[str] = field(default_factory=list)
    round_trips: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    windows: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    smoke_load: dict[str, dict[str, Any]] = field(default_factory=dict)


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run", description="sanic-sqlalchemy benchmarks (see benchmarks/README.md)"
    )
    parser.add_argument("--smoke", action="store_true", help="CI mode: start, check, 1 s of load")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the load phase (3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per endpoint (2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument(
        "--rt-requests", type=int, default=200, help="requests per round-trip count"
    )
    parser.add_argument(
        "--rt-load", type=int, default=2, help="seconds of round-trip count under load"
    )
    parser.add_argument("--variants", default=",".join(PG_VARIANTS), help="PostgreSQL variants")
    parser.add_argument(
        "--mysql-variants", default=",".join(MYSQL_VARIANTS), help="MariaDB variants"
    )
    parser.add_argument("--no-mysql", action="store_true", help="skip MariaDB")
    parser.add_argument("--no-postgresql", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory check")
    parser.add_argument(
        "--memory-variants", default="ours", help="variants of the memory check (PostgreSQL)"
    )
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--pg", default="postgres@127.0.0.1:5432/bench", help="user@host:port/db")
    parser.add_argument("--mysql", default="root@127.0.0.1:3306/bench", help="user@host:port/db")
    parser.add_argument("--server-core", default="1", help="core of the Sanic server")
    parser.add_argument("--load-core", default="0", help="core of wrk (and of this harness)")
    parser.add_argument("--output", help="report path (default results/<date>-<machine>.md)")
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="VARIANT:ENDPOINT",
        help="instead of the benchmark, profile VARIANT under load on ENDPOINT with py-spy "
        "(e.g. ours:get; endpoints: " + ", ".join(ENDPOINTS) + "); repeatable",
    )
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--profile-backend", default="postgresql", choices=["postgresql", "mysql"])
    args = parser.parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        args.server_core = args.load_core = ""
    return args


def target_from(spec: str, backend: str) -> db.Target:
    user, _, rest = spec.partition("@")
    hostport, _, database = rest.partition("/")
    host, _, port = hostport.partition(":")
    default_port = 5432 if backend == "postgresql" else 3306
    return db.Target(backend, host, int(port or default_port), user, database or "bench")


def variant_list(spec: str, backend: str) -> list[str]:
    names = [name.strip() for name in spec.split(",") if name.strip()]
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        if backend not in VARIANTS[name][1]:
            raise SystemExit(f"variant {name!r} does not run on {backend}")
    return names


def reference_variant(backend: str) -> str:
    return "raw-asyncpg" if backend == "postgresql" else "raw-asyncmy"


# -- phases -----------------------------------------------------------------------


async def check_phase(
    args: argparse.Namespace, target: db.Target, results: BackendResults, failures: list[str]
) -> None:
    """Every variant behind the counting proxy: the check, then the round-trip counts."""
    backend = target.backend
    proxy = CountingProxy(PROXY_PORTS[backend], target.port, backend)
    await proxy.start()
    checks: list[CheckResult] = []
    try:
        for variant in results.variants:
            server = Server(
                variant,
                backend,
                target.url(PROXY_PORTS[backend]),
                SERVER_PORT,
                args.server_core,
                WORK / "logs" / f"{backend}-{variant}-check.log",
            )
            log(f"{backend}: check {variant}")
            try:
                await server.start()
                check = await check_variant(variant, SERVER_PORT, target)
                checks.append(check)
                results.checks[variant] = {"ok": check.ok, "failures": check.failures}
                if not check.ok:
                    failures.extend(f"{backend} {variant}: {f}" for f in check.failures)
                    continue
                trips = await count_round_trips(
                    SERVER_PORT,
                    proxy,
                    requests=args.rt_requests,
                    warmup=5 if args.smoke else 20,
                    load_seconds=0 if args.smoke else args.rt_load,
                )
                results.round_trips[variant] = {
                    endpoint: _trips_dict(value) for endpoint, value in trips.items()
                }
                log(
                    f"{backend}: {variant} round trips "
                    + ", ".join(f"{e} {t.sequential:.2f}" for e, t in trips.items())
                )
                if args.smoke:
                    cpu0 = server.cpu()
                    started = time.monotonic()
                    load = await run_wrk(
                        SERVER_PORT, "mixed", seconds=1, connections=args.connections,
                        core=args.load_core, ids=SAFE_IDS,
                    )  # fmt: skip
                    wall = time.monotonic() - started
                    results.smoke_load[variant] = {
                        "requests": load.requests,
                        "rps": load.rps,
                        "errors": load.errors,
                        "p99_ms": load.p99_ms,
                        "cpu_percent": 100 * (server.cpu() - cpu0) / wall,
                    }
                    if load.error_count or load.requests == 0:
                        failures.append(
                            f"{backend} {variant}: 1 s of load gave {load.requests} requests "
                            f"and errors {load.errors}"
                        )
            except Exception as error:
                failures.append(f"{backend} {variant}: {type(error).__name__}: {error}")
                results.checks.setdefault(variant, {"ok": False, "failures": [str(error)]})
                tail = server.log_tail()
                if tail:
                    print(tail, file=sys.stderr)
            finally:
                code = await server.stop()
                if code not in (0, None, -2):
                    failures.append(f"{backend} {variant}: server exited with {code} on SIGINT")
    finally:
        await proxy.stop()
    results.cross_failures = compare_across(checks)
    failures.extend(f"{backend}: {f}" for f in results.cross_failures)


def _trips_dict(trips: RoundTrips) -> dict[str, Any]:
    counts = trips.sequential_counts
    return {
        "sequential": trips.sequential,
        "requests": trips.requests,
        "connections": counts.connections,
        "queries_per_request": counts.queries / trips.requests,
        "syncs_per_request": counts.syncs / trips.requests,
        "messages": counts.by_type,
        "statements": {text: n / trips.requests for text, n in sorted(counts.statements.items())},
        "under_load": trips.under_load,
        "under_load_connections": trips.under_load_connections,
        "under_load_replaced": trips.under_load_replaced,
        "under_load_cancels": trips.under_load_cancels,
        "under_load_requests": trips.under_load_requests,
    }


async def load_phase(
    args: argparse.Namespace, target: db.Target, results: BackendResults, failures: list[str]
) -> None:
    """Rounds; in each, every variant in turn (the order rotates) serves every endpoint."""
    backend = target.backend
    variants = [v for v in results.variants if results.checks.get(v, {}).get("ok")]
    for variant in variants:
        results.windows[variant] = {endpoint: [] for endpoint in ENDPOINTS}
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % max(len(variants), 1)
        order = variants[shift:] + variants[:shift]
        for variant in order:
            server = Server(
                variant,
                backend,
                target.url(),
                SERVER_PORT,
                args.server_core,
                WORK / "logs" / f"{backend}-{variant}-load.log",
            )
            log(f"{backend}: round {round_no}/{args.rounds}: {variant}")
            try:
                await server.start()
                for endpoint in ENDPOINTS:
                    await run_wrk(
                        SERVER_PORT, endpoint, seconds=args.warmup,
                        connections=args.connections, core=args.load_core,
                    )  # fmt: skip
                await asyncio.sleep(0.3)
                for endpoint in ENDPOINTS:
                    window = await measure(args, target, server, endpoint, round_no)
                    results.windows[variant][endpoint].append(asdict(window))
                    if window.errors and sum(window.errors.values()):
                        log(f"  {endpoint}: errors {window.errors}")
                    log(
                        f"  {endpoint:6} {window.rps:8.0f} req/s  p99 {window.p99_ms:7.1f} ms  "
                        f"cpu {window.cpu_percent:5.1f} %  new conns {window.new_connections}"
                    )
            except Exception as error:
                failures.append(f"{backend} {variant} round {round_no}: {error}")
                traceback.print_exc()
                print(server.log_tail(), file=sys.stderr)
            finally:
                await server.stop()


async def measure(
    args: argparse.Namespace, target: db.Target, server: Server, endpoint: str, round_no: int
) -> Window:
    """One wrk window, with the server's CPU time and the connections the database saw.

    When wrk stops, its clients hang up on requests in flight; SQLAlchemy discards a
    connection whose statement was interrupted, and the pool opens a replacement when
    load comes back.  So the connections opened in the first second of a window are
    counted apart (``replaced``) from those of the steady state after it.
    """
    mysql = target.backend == "mysql"
    settle = min(1.0, args.duration / 4)
    watch = None if mysql else db.BackendWatch(target)
    if watch is None:
        opened0 = await db.my_connections(target)
    else:
        await watch.start()
    loadavg = os.getloadavg()[0]
    cpu0 = server.cpu()
    started = time.monotonic()
    wall_start = time.time()
    load = asyncio.ensure_future(
        run_wrk(
            SERVER_PORT,
            endpoint,
            seconds=args.duration,
            connections=args.connections,
            core=args.load_core,
        )
    )
    await asyncio.sleep(settle)
    wall_mid = time.time()
    if watch is None:
        opened_mid = await db.my_connections(target)
    result = await load
    wall = time.monotonic() - started
    cpu = server.cpu() - cpu0
    if watch is None:
        # The server-wide counter is exact and immediate; it also counts the
        # connection that reads it.
        opened1 = await db.my_connections(target)
        replaced = opened_mid - opened0 - 1
        steady = opened1 - opened_mid - 1
    else:
        # Placed by their start time; those closed again (discarded by the pool at
        # the hang-up that ends the window) were seen while they lived.
        starts = list((await watch.stop()).values())
        replaced = sum(wall_start <= at < wall_mid for at in starts)
        steady = sum(at >= wall_mid for at in starts)
    return Window(
        round=round_no,
        requests=result.requests,
        seconds=result.duration,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p90_ms=result.p90_ms,
        p99_ms=result.p99_ms,
        max_ms=result.max_ms,
        errors=result.errors,
        cpu_percent=100 * cpu / wall,
        cpu_us_per_request=1e6 * cpu / max(result.requests, 1),
        new_connections=max(steady, 0),
        steady_seconds=max(result.duration - settle, 0.001),
        replaced_connections=max(replaced, 0),
        loadavg=loadavg,
    )


async def memory_phase(
    args: argparse.Namespace, target: db.Target, variants: list[str], failures: list[str]
) -> dict[str, Any]:
    """RSS of one worker after 10,000 and after ``--memory-requests`` mixed requests."""
    out: dict[str, Any] = {}
    checkpoints = sorted({10_000, args.memory_requests // 2, args.memory_requests})
    for variant in variants:
        server = Server(
            variant,
            target.backend,
            target.url(),
            SERVER_PORT,
            args.server_core,
            WORK / "logs" / f"{target.backend}-{variant}-memory.log",
        )
        log(f"memory: {variant} ({args.memory_requests} mixed requests)")
        try:
            await server.start()
            done = 0
            samples: list[dict[str, Any]] = [{"requests": 0, "rss": server.rss()}]
            errors = 0
            for checkpoint in checkpoints:
                result = await run_wrk(
                    SERVER_PORT, "mixed", seconds=3600, connections=args.connections,
                    core=args.load_core, max_responses=checkpoint - done,
                )  # fmt: skip
                done += result.requests
                errors += result.error_count
                samples.append({"requests": done, "rss": server.rss()})
                log(f"  after {done} requests: RSS {server.rss() / 2**20:.1f} MiB")
            first = next(s for s in samples if s["requests"] >= 10_000)
            last = samples[-1]
            growth = 100 * (last["rss"] - first["rss"]) / first["rss"]
            out[variant] = {"samples": samples, "growth_percent": growth, "errors": errors}
        except Exception as error:
            failures.append(f"memory {variant}: {error}")
        finally:
            await server.stop()
    return out


async def profile_phase(args: argparse.Namespace) -> int:
    from .profile import profile

    target = target_from(args.pg if args.profile_backend == "postgresql" else args.mysql,
                         args.profile_backend)  # fmt: skip
    await db.prepare(target)
    for spec in args.profile:
        variant, _, endpoint = spec.partition(":")
        variant_list(variant, target.backend)
        if endpoint not in ENDPOINTS:
            raise SystemExit(f"unknown endpoint {endpoint!r}; known: {', '.join(ENDPOINTS)}")
        path = await profile(args, target, variant, endpoint, SERVER_PORT)
        log(f"profile of {variant} on {endpoint}: {path}")
    return 0


# -- main -------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    warnings.simplefilter("ignore")
    if args.profile:
        return await profile_phase(args)
    started = time.time()
    failures: list[str] = []
    meta: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "source": source(),
        "wrk": wrk_version(),
        "settings": {
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "rt_requests": args.rt_requests,
            "rt_load": args.rt_load,
            "server_core": args.server_core,
            "load_core": args.load_core,
            "peer_pool": os.environ.get("BENCH_PEER_POOL", "fixed"),
        },
    }
    backends: list[BackendResults] = []
    plan: list[tuple[db.Target, list[str]]] = []
    if not args.no_postgresql:
        plan.append((target_from(args.pg, "postgresql"), variant_list(args.variants, "postgresql")))
    if not args.no_mysql:
        plan.append((target_from(args.mysql, "mysql"), variant_list(args.mysql_variants, "mysql")))

    for target, variants in plan:
        results = BackendResults(target.backend, variants)
        backends.append(results)
        log(f"{target.backend}: preparing {target.database} ({db.ROWS} rows)")
        try:
            results.info = await db.prepare(target)
        except Exception as error:
            failures.append(f"{target.backend}: cannot prepare the database: {error}")
            continue
        await check_phase(args, target, results, failures)

    memory: dict[str, Any] = {}
    if not args.smoke:
        for (target, _variants), results in zip(plan, backends, strict=True):
            if results.info:
                await load_phase(args, target, results, failures)
        if not args.no_memory and not args.no_postgresql and plan:
            memory = await memory_phase(
                args, plan[0][0], variant_list(args.memory_variants, "postgresql"), failures
            )
    meta["elapsed_seconds"] = round(time.time() - started)
    meta["source_end"] = source()
    meta["warnings"] = []
    if meta["source_end"] != meta["source"]:
        meta["warnings"].append(
            f"src/ changed during the run (commit {meta['source']['commit']}, "
            f"sources {meta['source']['src_sha256']} → {meta['source_end']['src_sha256']}): "
            "the variants may have measured different versions of the library"
        )

    data = {
        "meta": meta,
        "backends": [asdict(b) for b in backends],
        "memory": memory,
        "failures": failures,
    }
    output = report_path(args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(data))
    output.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    log(f"report: {output}")
    if failures:
        print("\nFAILURES:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    log(f"all checks passed in {meta['elapsed_seconds']} s")
    return 0


def report_path(args: argparse.Namespace) -> Path:
    if args.output:
        return (Path(os.environ.get("BENCH_CALLER_CWD", ".")) / args.output).resolve()
    date = datetime.date.today().isoformat()
    if args.smoke:
        return WORK / f"smoke-{date}-{slug()}.md"
    path = RESULTS / f"{date}-{slug()}.md"
    n = 2
    while path.exists():
        path = RESULTS / f"{date}-{slug()}-{n}.md"
        n += 1
    return path


def main() -> None:
    args = parse_args(sys.argv[1:])
    sys.exit(asyncio.run(run(args)))
