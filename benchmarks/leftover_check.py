"""What the read connections' leftover check costs (issue 17, item 3):
``.venv/bin/python benchmarks/leftover_check.py``.

A unit whose ``db.read`` ran a statement the read guard is not sure of (SQL text, a
function SQLAlchemy does not know) has its read connection checked for session locks
and changed settings as it goes back to the pool: one round trip.  A unit of ORM/Core
statements built from known constructs pays nothing.  This measures, against the
servers of ``TEST_POSTGRES_URL`` and ``TEST_MYSQL_URL`` (the local ones by default),
the wall time per unit of one read, for:

* ``orm``: ``select(Row.id).where(Row.id == 1)`` — never checked;
* ``text, check off``: ``text("SELECT id FROM rows WHERE id = 1")`` with the check
  switched off (the backend's ``checks_leftover_state`` set to False before the engines
  are made), the cost before this change;
* ``text, check on``: the same text, checked at check-in.

Units run one after the other in one task (the latency a request sees); the best of
several blocks is kept.  Prints a Markdown table.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from typing import Any

import sqlalchemy
from sqlalchemy import Integer, String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.engine.backends import MySQL, PostgreSQL

BLOCKS = 5
UNITS = 400


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "leftover_bench_rows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


async def _per_unit(db: Database, statement: Any) -> float:
    """Best-of-blocks µs of wall time per unit running ``statement`` through db.read."""
    best = float("inf")
    for _ in range(BLOCKS):
        started = time.perf_counter()
        for _ in range(UNITS):
            async with db:
                (await db.read.execute(statement)).all()
        best = min(best, (time.perf_counter() - started) / UNITS * 1e6)
    return best


async def measure(url: str) -> dict[str, float]:
    sql = text("SELECT id FROM leftover_bench_rows WHERE id = 1")
    results: dict[str, float] = {}
    db = Database(url, pool_size=2)
    await db.create_all(Base.metadata)
    async with db:
        db.write.add(Row(id=1, name="a"))
    results["orm"] = await _per_unit(db, select(Row.id).where(Row.id == 1))
    results["text, check on"] = await _per_unit(db, sql)
    await db.dispose()

    # Off: the backends say they cannot check, before the engines are made.
    saved = (PostgreSQL.checks_leftover_state, MySQL.checks_leftover_state)
    PostgreSQL.checks_leftover_state = MySQL.checks_leftover_state = False
    try:
        off = Database(url, pool_size=2)
        results["text, check off"] = await _per_unit(off, sql)
        await off.drop_all(Base.metadata)
        await off.dispose()
    finally:
        PostgreSQL.checks_leftover_state, MySQL.checks_leftover_state = saved
    return results


async def main() -> None:
    urls = {
        "PostgreSQL": os.environ.get(
            "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
        "MariaDB": os.environ.get("TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"),
    }
    print(
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"{UNITS} units x best of {BLOCKS} blocks, one read each, sequential\n"
    )
    print("| backend | orm (µs/unit) | text, check off | text, check on | cost of the check |")
    print("|---|---|---|---|---|")
    for name, url in urls.items():
        r = await measure(url)
        cost = r["text, check on"] - r["text, check off"]
        print(
            f"| {name} | {r['orm']:.0f} | {r['text, check off']:.0f} | "
            f"{r['text, check on']:.0f} | {cost:+.0f} µs "
            f"({cost / r['text, check off']:+.0%}) |"
        )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
