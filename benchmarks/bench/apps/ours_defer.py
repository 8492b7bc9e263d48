"""``ours-defer``: ``POST /users`` defers a durable no-op task (``ours_tasks``)."""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from .ours_tasks import build


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    return build(url, "defer")
