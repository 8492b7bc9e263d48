"""sanic-sqlalchemy with every query-insight report switched on: a ``Server-Timing``
header on each response, the slow-statement log and the repeated-statement warning
(thresholds no benchmark statement reaches, so the cost is the watching, not logging)."""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from . import ours


def create_app(url: str, backend: str) -> Sanic[Any, Any]:
    return ours.create_app(
        url, backend, server_timing=True, slow_query_ms=1000, repeated_query_warn=50
    )
