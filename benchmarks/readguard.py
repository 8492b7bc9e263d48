"""What the read guard costs per statement: ``python benchmarks/readguard.py``.

Run with the project's environment (``./scripts/test`` creates ``.venv``):
``.venv/bin/python benchmarks/readguard.py``.  Measures, per dialect, the time to judge
a 1 KB query string (SQL text sent through ``db.read``: judged on every call), with and
without backslashes (which make it read twice), and the time to find the cached verdict
of a compiled ORM statement (every ORM or Core statement in the steady state).  The
baseline, measured in the same run, is one ``re.findall`` over the same text: the least
any scanner of it must do.  Prints a Markdown table.
"""

from __future__ import annotations

import platform
import re
import statistics
import sys
import timeit
from types import SimpleNamespace
from typing import Any

import sqlalchemy
from sqlalchemy import Integer, String, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy.engine.backends import Backend, MySQL, PostgreSQL, SQLite
from sanic_sqlalchemy.readonly import Dialect, ReadGuard, refusal


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(200))


def kilobyte_query(with_backslash: bool) -> str:
    """A realistic hand-written report query of about 1 KB."""
    pattern = "'%\\_%'" if with_backslash else "'%x%'"
    sql = (
        "WITH recent AS (SELECT o.user_id, count(*) AS n, max(o.created_at) AS last_at "
        "FROM orders o WHERE o.created_at > :since AND o.status IN ('placed', 'paid') "
        "GROUP BY o.user_id) /* users with recent orders */ "
        "SELECT u.id, u.name, u.email, r.n, r.last_at, "
        "CASE WHEN r.n > 10 THEN 'frequent' WHEN r.n > 3 THEN 'regular' ELSE 'new' END "
        "AS segment FROM users u JOIN recent r ON r.user_id = u.id "
        f"WHERE u.email NOT LIKE {pattern} AND u.name <> '' -- skip blanks\n"
        "AND u.id IN (SELECT user_id FROM addresses WHERE country = :country) "
    )
    while len(sql) < 1000:
        sql += "AND coalesce(u.name, 'nobody') <> 'someone; else' "
    return sql + "ORDER BY r.n DESC, u.id LIMIT 50"


def best_of(function: object, number: int) -> float:
    """Microseconds per call: the median of 7 repeats of ``number`` calls."""
    timer = timeit.Timer(function)  # type: ignore[arg-type]
    runs = timer.repeat(repeat=7, number=number)
    return statistics.median(runs) / number * 1e6


def measure(dialect: Dialect, backend: Backend, sa_dialect: Any) -> str:
    """One table row: the costs for ``dialect``."""
    plain, escaped = kilobyte_query(False), kilobyte_query(True)
    assert refusal(plain, dialect) is None, refusal(plain, dialect)
    assert refusal(escaped, dialect) is None, refusal(escaped, dialect)
    words = re.compile(r"\w+")
    text_us = best_of(lambda: refusal(plain, dialect), 2_000)
    escaped_us = best_of(lambda: refusal(escaped, dialect), 2_000)
    baseline_us = best_of(lambda: words.findall(plain), 2_000)
    guard = ReadGuard(backend)
    compiled = select(User).where(User.id == 1).compile(dialect=sa_dialect)
    context = SimpleNamespace(compiled=compiled)
    guard.check("", context)  # judged once; every later call finds the verdict
    cached_us = best_of(lambda: guard.check("", context), 200_000)
    return (
        f"| {dialect.value} | {text_us:.1f} µs | {escaped_us:.1f} µs | "
        f"{baseline_us:.1f} µs | {text_us / baseline_us:.1f}× | {cached_us * 1000:.0f} ns |"
    )


def main() -> None:
    backends: dict[Dialect, tuple[Backend, Any]] = {
        Dialect.POSTGRESQL: (PostgreSQL(), postgresql.dialect()),
        Dialect.MYSQL: (MySQL(), mysql.dialect()),
        Dialect.SQLITE: (SQLite(), sqlite.dialect()),
    }
    print(f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, ")
    print(f"{platform.processor() or platform.machine()}, {sys.platform}\n")
    print(
        "| dialect | 1 KB text | 1 KB text with `\\` | baseline `re.findall` | ratio "
        "| cached ORM verdict |"
    )
    print("|---|---|---|---|---|---|")
    for dialect, (backend, sa_dialect) in backends.items():
        print(measure(dialect, backend, sa_dialect))


if __name__ == "__main__":
    main()
