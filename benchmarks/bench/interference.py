"""How much a busier database slows the measured server on a machine they share.

The endpoint benchmark runs the server, wrk and PostgreSQL on one small machine.  A
variant that gives the database more work (durable tasks store and delete rows) is
then charged for it twice: the database's CPU, and the server's own code running
slower while the database works on the other core (caches and memory shared, or the
host's cores shared).  This measures the second for code that does not change: the
``db.on_commit`` endpoint, its server's CPU time per request, alone and while
``pgbench`` writes to the same PostgreSQL from the load core.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .db import Target, pg_connect
from .servers import Server
from .wrk import run_wrk

#: What pgbench runs, over and over, on its connections: a row inserted and one
#: deleted per transaction, as a deferred task's row is.
SCRIPT = """\\set n random(1, 1000000000)
BEGIN;
INSERT INTO bench_interference (v, t) VALUES (md5(:n::text), :n);
DELETE FROM bench_interference WHERE id = (SELECT min(id) FROM bench_interference);
COMMIT;
"""
CLIENTS = 4


async def _prepare(target: Target) -> None:
    async with pg_connect(target) as connection:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS bench_interference "
            "(id bigserial PRIMARY KEY, v text NOT NULL, t bigint NOT NULL)"
        )
        await connection.execute(
            "CREATE INDEX IF NOT EXISTS bench_interference_t ON bench_interference (t)"
        )
        await connection.execute("TRUNCATE bench_interference")


async def measure(
    target: Target,
    start_server: Callable[[], Server],
    port: int,
    rounds: int,
    duration: int,
    work_dir: Path,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    """Server CPU µs per request alone and beside pgbench, per round (``None`` without
    pgbench)."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        log("interference: pgbench is missing (Debian: postgresql-client), skipped")
        return None
    await _prepare(target)
    script = work_dir / "interference.sql"
    script.write_text(SCRIPT)
    alone: list[float] = []
    beside: list[float] = []
    for number in range(rounds):
        for busy in (False, True) if number % 2 == 0 else (True, False):
            one = start_server()
            await one.start()
            writer = None
            try:
                await run_wrk(port, "insert", seconds=2, core="0")  # warm-up
                if busy:
                    writer = await asyncio.create_subprocess_exec(
                        "taskset", "-c", "0", pgbench, "-n", "-h", target.host,
                        "-p", str(target.port), "-U", target.user, "-c", str(CLIENTS),
                        "-T", str(duration + 2), "-f", str(script), target.database,
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                    )  # fmt: skip
                    await asyncio.sleep(0.5)
                cpu = one.cpu()
                result = await run_wrk(port, "insert", seconds=duration, core="0")
                cpu = one.cpu() - cpu
            finally:
                if writer is not None:
                    _, errors = await writer.communicate()
                    if writer.returncode:
                        raise RuntimeError(f"pgbench failed: {errors.decode()}")
                await one.stop()
            per_request = cpu / max(result.requests, 1) * 1e6
            (beside if busy else alone).append(per_request)
            log(f"interference round {number + 1} {'beside pgbench' if busy else 'alone'}: "
                f"{per_request:.0f} µs CPU per request")  # fmt: skip
    ratios = [b / a for a, b in zip(alone, beside, strict=True)]
    return {"alone_us": alone, "beside_us": beside, "ratios": ratios, "clients": CLIENTS}


def report(data: dict[str, Any], median_range: Callable[..., str]) -> list[str]:
    return [
        "## 4. The machine: a busier database slows the server's own code",
        "",
        "The `db.on_commit` endpoint (code that does not change), its server's CPU time per "
        f"request, alone and while `pgbench` ({data['clients']} clients, one row inserted "
        "and one deleted per transaction) writes to the same PostgreSQL from core 0; "
        "median (min–max) over rounds.",
        "",
        "| | server CPU µs per request |",
        "|---|---|",
        f"| alone | {median_range(data['alone_us'])} |",
        f"| beside pgbench | {median_range(data['beside_us'])} |",
        "",
        f"Ratio within each round: {median_range(data['ratios'], 3)} (median "
        f"{statistics.median(data['ratios']):.3f}).",
        "",
    ]
