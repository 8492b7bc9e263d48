"""What the Sanic layer adds to responses: the commit position and ``Server-Timing``
headers, and the 503 answers for an exhausted pool, no replica, or a primary lost in a
failover."""

from __future__ import annotations

import logging
from typing import Any

from sanic import Request
from sanic.response import HTTPResponse, text

from ..insight import metric_name, server_timing
from .units import Units

logger = logging.getLogger("sanic_sqlalchemy")

#: Seconds a client is asked to wait after a 503 (an exhausted pool, no replica, a
#: primary lost in a failover).
RETRY_AFTER = 1
#: The status of the response that nobody receives, for a client that hung up (nginx's
#: "client closed request"): an ASGI server drops it, response middleware sees it.
HUNG_UP = 499


def tell_the_client(request: Any, units: Units, response: Any) -> None:
    """Set before the headers go out: the position of each unit's commit, so that the
    client's next requests read only from replicas that have it, and the units' time in
    the database as ``Server-Timing`` where a database is set to send it."""
    for db, unit in units.items():
        if db.settings.insight.server_timing:
            # A header line of its own: the application's own metrics stay as they are.
            response.headers.add(
                "Server-Timing", server_timing(metric_name(db.config_prefix), unit.stats)
            )
        token = unit.commit_token
        if token is None:
            continue
        names = db.settings.replicas
        response.headers[names.token_header] = token
        response.cookies.add_cookie(
            names.token_cookie,
            token,
            path="/",
            max_age=int(names.token_ttl),
            httponly=True,
            samesite="Lax",
            secure=request.scheme in ("https", "wss"),
        )


def no_replica(request: Request, error: Exception) -> HTTPResponse:
    logger.warning("%s", error)
    return text(
        "Service temporarily unavailable: no database replica can serve reads. Please retry.",
        status=503,
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def pool_exhausted(request: Request, error: Exception) -> HTTPResponse:
    logger.warning("no pooled database connection within the pool timeout: %s", error)
    return text(
        "Service temporarily unavailable: the database is busy. Please retry.",
        status=503,
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def primary_unavailable(request: Request, error: Exception) -> HTTPResponse:
    # One line, no traceback (nor the statement's parameters): during a failover every
    # request in flight comes here.
    logger.warning(
        "%s %s: answered 503, the database primary is unavailable: %s (%r)",
        request.method,
        request.path,
        getattr(error, "reason", "unknown"),
        getattr(error, "orig", error),
    )
    return text(
        "Service temporarily unavailable: the database is switching over. Please retry.",
        status=503,
        headers={"Retry-After": str(RETRY_AFTER)},
    )
