"""What query insight costs, measured where it runs: in the process that sends statements.

Two measurements, both with every variant in one process, alternated, so that the
variance between processes (memory layout, a busy neighbour) does not enter:

1. **The statement hook alone.** The function installed on each engine's ``do_execute``
   is called a million times around a driver call that does nothing, once with every
   report off (it counts and times) and once with the slow-statement log and the
   repeated-statement watch on (thresholds nothing reaches); the difference to calling
   the driver directly is the cost per statement.
2. **Real units on PostgreSQL.** Units of ten single-row reads (``db.read.get``) and
   units that insert a row and commit, through two ``Database`` objects on the same
   server, one with the reports off and one with them on; the client's CPU time per
   read and per writing unit, medians over alternated blocks.

    .venv/bin/python benchmarks/insight_cost.py [--url postgresql+asyncpg://…] [--blocks 8]

The cost against the library before query insight, per request through Sanic, is the
benchmark harness's ``ours-baseline`` variant (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from types import SimpleNamespace
from typing import Any

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.insight import StatementWatch, UnitStats
from sanic_sqlalchemy.settings import InsightSettings

CALLS = 1_000_000


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "insight_cost"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(50))


def _nothing(_cursor: Any, _statement: str, _parameters: Any, _context: Any) -> None:
    """A driver call that does nothing."""


def hook_cost() -> dict[str, float]:
    """Nanoseconds per statement the hook adds around the driver call."""
    connection = SimpleNamespace(_sanic_sqlalchemy_stats=UnitStats())
    context = SimpleNamespace(root_connection=connection, execution_options={})
    statement = "SELECT rows.id, rows.name FROM rows WHERE rows.id = $1"
    hooks = {
        "off": StatementWatch(InsightSettings())._timed(_nothing, reads_only=True),
        "on": StatementWatch(
            InsightSettings(slow_query_ms=10_000, repeated_query_warn=10**9)
        )._timed(_nothing, reads_only=True),
    }
    timings: dict[str, list[float]] = {"direct": [], "off": [], "on": []}
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(CALLS):
            _nothing(None, statement, (), context)
        timings["direct"].append(time.perf_counter() - started)
        for name, hook in hooks.items():
            started = time.perf_counter()
            for _ in range(CALLS):
                hook(None, statement, (), context)
            timings[name].append(time.perf_counter() - started)
    direct = min(timings["direct"])
    return {name: (min(timings[name]) - direct) / CALLS * 1e9 for name in hooks}


async def _reads(db: Database, units: int) -> float:
    started = time.process_time()
    for _ in range(units):
        async with db:
            for key in range(1, 11):
                await db.read.get(Row, key)
    return (time.process_time() - started) / (units * 10) * 1e6


async def _writes(db: Database, units: int) -> float:
    started = time.process_time()
    for _ in range(units):
        async with db:
            db.write.add(Row(name="w"))
    return (time.process_time() - started) / units * 1e6


async def units_cost(url: str, blocks: int, units: int) -> dict[str, dict[str, float]]:
    """Client CPU µs per read and per writing unit, reports off and on."""
    databases = {
        "off": Database(url, pool_size=2),
        "on": Database(url, pool_size=2, slow_query_ms=10_000, repeated_query_warn=10**9),
    }
    setup = databases["off"]
    async with setup.engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
    async with setup:
        setup.write.add_all(Row(name=f"r{i}") for i in range(10))
    results: dict[str, dict[str, list[float]]] = {
        name: {"read": [], "write": []} for name in databases
    }
    try:
        for db in databases.values():  # warm-up: caches, connections
            await _reads(db, 50)
            await _writes(db, 20)
        for block in range(blocks):
            order = list(databases.items())
            for name, db in order if block % 2 else reversed(order):
                results[name]["read"].append(await _reads(db, units))
                results[name]["write"].append(await _writes(db, units // 5))
    finally:
        async with setup.engine.begin() as connection:
            await connection.run_sync(Base.metadata.drop_all)
        for db in databases.values():
            await db.dispose()
    return {
        name: {kind: statistics.median(values) for kind, values in kinds.items()}
        for name, kinds in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--blocks", type=int, default=8, help="alternated blocks (8)")
    parser.add_argument("--units", type=int, default=300, help="read units per block (300)")
    options = parser.parse_args()
    hooks = hook_cost()
    print("The statement hook alone, ns per statement over the driver call:")
    print(f"  reports off (counting and timing): {hooks['off']:.0f} ns")
    print(f"  slow log and repeat watch on:      {hooks['on']:.0f} ns")
    costs = asyncio.run(units_cost(options.url, options.blocks, options.units))
    off, on = costs["off"], costs["on"]
    print(f"\nReal units, client CPU (medians of {options.blocks} alternated blocks):")
    print("| reports | µs per read | µs per writing unit |")
    print("|---|---|---|")
    for name, cost in costs.items():
        print(f"| {name} | {cost['read']:.1f} | {cost['write']:.1f} |")
    print(f"| on / off | {on['read'] / off['read']:.3f} | {on['write'] / off['write']:.3f} |")


if __name__ == "__main__":
    main()
