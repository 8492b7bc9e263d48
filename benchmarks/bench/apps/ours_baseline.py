"""The ``ours`` app on another checkout of sanic-sqlalchemy, named by
``BENCH_BASELINE_SRC`` (its ``src`` folder), so that a change and its parent are
measured in the same run: ``git worktree add /tmp/base HEAD~1`` then
``BENCH_BASELINE_SRC=/tmp/base/src ./benchmarks/run --variants raw-asyncpg,ours,ours-baseline``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from sanic import Sanic

_SOURCE = os.environ.get("BENCH_BASELINE_SRC")
if not _SOURCE or not os.path.isdir(os.path.join(_SOURCE, "sanic_sqlalchemy")):
    raise SystemExit("ours-baseline needs BENCH_BASELINE_SRC=<a checkout>/src")
if "sanic_sqlalchemy" in sys.modules:
    raise SystemExit("ours-baseline: sanic_sqlalchemy was imported before the baseline path")
sys.path.insert(0, _SOURCE)

from . import ours  # noqa: E402  (imports sanic_sqlalchemy from the baseline)


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    imported = sys.modules["sanic_sqlalchemy"].__file__ or ""
    if not os.path.realpath(imported).startswith(os.path.realpath(_SOURCE)):
        raise SystemExit(f"ours-baseline: sanic_sqlalchemy came from {imported}")
    return ours.create_app(url, backend)
