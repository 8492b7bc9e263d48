"""The ``ours`` app on another checkout of sanic-sqlalchemy, named by
``BENCH_BASELINE_SRC`` (its ``src`` folder), so that a change and a baseline are
measured in the same run: ``git worktree add /tmp/base <commit>`` then
``BENCH_BASELINE_SRC=/tmp/base/src ./benchmarks/run --variants raw-asyncpg,ours,ours-baseline``.
"""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from .checkout import create_app_from


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    return create_app_from("BENCH_BASELINE_SRC", "ours-baseline", url, backend)
