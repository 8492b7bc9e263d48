"""Instructions per unit of work that defers a durable task, against one that registers
a ``db.on_commit`` callback, counted by valgrind (callgrind) in one process, without
HTTP: a cost that neither the machine's other load nor the database's work can disturb.

Each unit inserts a user and defers one no-op task (``defer``: run by the same process
right after the commit; ``stored``: left to a dispatcher elsewhere) or registers one
no-op callback (``on-commit``); units run one after the other.  Each variant runs twice
under callgrind, ``--warm`` units and ``--warm`` + ``--count``; the difference of the
totals divided by ``--count`` is one unit's cost (start-up and imports cancel out).

    benchmarks/.venv/bin/python benchmarks/unit_instructions.py [--count 300]

Needs valgrind and a PostgreSQL database (``--pg``: the benchmarks' ``users`` table, made
if missing, and a tasks table ``unit_tasks``, dropped and made again).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.apps.common import Base, User
from instructions import total_instructions

from sanic_sqlalchemy import Database

VARIANTS = ("on-commit", "defer", "stored")


async def _units(variant: str, count: int, url: str) -> None:
    """The measured process: ``count`` units of ``variant``."""
    db = Database(url, tasks_table="unit_tasks")

    @db.task(name="bench.noop")
    async def noop_task(user_id: int) -> None:
        return None

    async def noop_callback(user_id: int) -> None:
        return None

    await db.start()
    await db.create_all(Base.metadata)  # the benchmarks' users table, if missing
    await db.tasks.drop_table()
    await db.tasks.create_table()
    if variant == "stored":
        db.tasks.run_after_commit = False
    else:
        db.tasks.start()
    for _ in range(count):
        async with db:
            user = User(name="n", email="e", visits=0)
            db.write.add(user)
            await db.write.flush()
            if variant == "on-commit":
                db.on_commit(noop_callback, user.id)
            else:
                noop_task.defer(user.id)
        await asyncio.sleep(0)  # the run (defer) starts before the next unit
    await db.tasks.stop(5)
    await db.dispose()


def _measure(variant: str, units: int, url: str, work: Path) -> int:
    out_file = work / f"{variant}-{units}.callgrind"
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
        "--dump-instr=no", "--collect-jumps=no",
        sys.executable, __file__, "--child", variant, str(units), url,
    ]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode:
        raise SystemExit(f"{variant}: exit {done.returncode}\n{done.stderr.decode()[-3000:]}")
    return total_instructions(out_file)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        asyncio.run(_units(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/bench")
    args = parser.parse_args()
    variants = args.variants.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
    per_unit: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-units-") as folder:
        work = Path(folder)
        for variant in variants:
            # One run at a time: they share the database's tables.
            warm = _measure(variant, args.warm, args.pg, work)
            full = _measure(variant, args.warm + args.count, args.pg, work)
            per_unit[variant] = (full - warm) / args.count
            print(f"{variant:10} {per_unit[variant]:>12,.0f} instructions/unit", flush=True)
    if "on-commit" in per_unit:
        base = per_unit["on-commit"]
        for variant, value in per_unit.items():
            print(f"{variant:10} ÷ on-commit: {value / base:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
