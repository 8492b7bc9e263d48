"""``ours-on-commit``: ``POST /users`` registers a no-op ``db.on_commit`` callback
(``ours_tasks``), the in-memory tier ``ours-defer`` is compared with."""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from .ours_tasks import build


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    return build(url, "on-commit")
