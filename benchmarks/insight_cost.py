"""What query insight costs per statement, in the process that sends it.

Each round runs, in a fresh process per variant, the same loop: units of work of ten
single-row reads by primary key (``db.read.get``), then units that insert a row and
commit.  It reports the CPU time of the Python process (not the server's) per
statement, so that the few hundred nanoseconds insight adds are not drowned in the
round trip's wall time.  Variants, alternated round by round:

* ``baseline``: the library at another checkout (``--baseline SRC``, its ``src``
  folder, e.g. a ``git worktree`` of the commit before insight);
* ``off``: this checkout, every report off (the default: ``unit.stats`` is counted);
* ``on``: this checkout with ``slow_query_ms`` and ``repeated_query_warn`` set to
  thresholds nothing reaches, so each statement is looked at and nothing is logged.

    .venv/bin/python benchmarks/insight_cost.py --baseline /tmp/base/src --rounds 7

PostgreSQL at ``--url`` (default: the local server's ``test`` database).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "src"

_CHILD = r"""
import asyncio, json, sys, time
from sqlalchemy import BigInteger, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
import sanic_sqlalchemy
from sanic_sqlalchemy import Database

class Base(DeclarativeBase):
    pass

class Row(Base):
    __tablename__ = "insight_cost"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(50))
    visits: Mapped[int] = mapped_column(Integer, default=0)

async def main(url, settings, units):
    db = Database(url, pool_size=2, **settings)
    async with db.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
    async with db:
        db.write.add_all(Row(name=f"r{i}") for i in range(10))
    for _ in range(50):  # warm-up: caches, connections
        async with db:
            await db.read.get(Row, 1)
    reads_cpu = time.process_time()
    for _ in range(units):
        async with db:
            for key in range(1, 11):
                await db.read.get(Row, key)
    reads_cpu = time.process_time() - reads_cpu
    writes_cpu = time.process_time()
    for _ in range(units):
        async with db:
            db.write.add(Row(name="w"))
    writes_cpu = time.process_time() - writes_cpu
    await db.dispose()
    print(json.dumps({
        "module": sanic_sqlalchemy.__file__,
        "read_us": reads_cpu / (units * 10) * 1e6,
        "write_unit_us": writes_cpu / units * 1e6,
    }))

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])))
"""

VARIANTS = {
    "baseline": {},
    "off": {},
    "on": {"slow_query_ms": 10_000, "repeated_query_warn": 1_000},
}


def _run(variant: str, source: str, url: str, units: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": source}
    settings = json.dumps(VARIANTS[variant])
    output = subprocess.run(
        [sys.executable, "-c", _CHILD, url, settings, str(units)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(output)
    module = str(result.pop("module"))
    if not module.startswith(source):
        raise SystemExit(f"{variant}: sanic_sqlalchemy came from {module}, not {source}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="src folder of the baseline")
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--units", type=int, default=2000, help="units per loop")
    options = parser.parse_args()
    sources = {"baseline": os.path.realpath(options.baseline), "off": str(SOURCE), "on": str(SOURCE)}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    order = list(VARIANTS)
    started = time.monotonic()
    for round_number in range(options.rounds):
        for variant in order[round_number % 3 :] + order[: round_number % 3]:
            results[variant].append(_run(variant, sources[variant], options.url, options.units))
    print(f"{options.rounds} rounds of {options.units} units per loop, "
          f"{time.monotonic() - started:.0f} s; medians of client CPU time:")
    base = {key: statistics.median(r[key] for r in results["baseline"]) for key in ("read_us", "write_unit_us")}
    print("| variant | µs CPU per read | ratio | µs CPU per writing unit | ratio |")
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        read = statistics.median(r["read_us"] for r in results[variant])
        write = statistics.median(r["write_unit_us"] for r in results[variant])
        print(f"| {variant} | {read:.1f} | {read / base['read_us']:.3f} | {write:.1f} | "
              f"{write / base['write_unit_us']:.3f} |")


if __name__ == "__main__":
    main()
