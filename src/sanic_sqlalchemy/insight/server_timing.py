"""The ``Server-Timing`` response header for a request's units (W3C Server Timing)."""

from __future__ import annotations

from ..settings import DEFAULT_PREFIX
from .stats import UnitStats


def metric_name(prefix: str) -> str:
    """``db`` for the default database, ``analytics-db`` for ``ANALYTICS_DATABASE_``."""
    if prefix == DEFAULT_PREFIX:
        return "db"
    words = prefix.strip("_").lower().split("_")
    return "-".join("db" if word == "database" else word for word in words)


def server_timing(name: str, stats: UnitStats) -> str:
    """``db;dur=12.40;desc="5 queries"``, and the pool wait when there was one."""
    count = stats.statements
    metrics = [
        f'{name};dur={stats.db_time * 1000:.2f};desc="{count} '
        f'{"query" if count == 1 else "queries"}"'
    ]
    if stats.connection_wait:
        metrics.append(
            f'{name}-pool;dur={stats.connection_wait * 1000:.2f};desc="waiting for a connection"'
        )
    return ", ".join(metrics)
