"""The ``ours`` app on the previous main, named by ``BENCH_PREVIOUS_SRC`` (its ``src``
folder): beside ``ours-baseline``, so that a change is measured against an old baseline
and the main it replaces in one run (small costs cannot add up unseen)."""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from .checkout import create_app_from


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    return create_app_from("BENCH_PREVIOUS_SRC", "ours-previous", url, backend)
