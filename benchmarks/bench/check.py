"""The correctness check (identical JSON, real commits) and the round-trip counts."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from sanic.response import json as sanic_json

from . import db
from .http import Client, Response
from .proxy import CountingProxy, Counts
from .wrk import ENDPOINTS, run_wrk

MISSING_ID = 10_000_000
#: The row each variant's touch check increments (load phases may touch it too).
TOUCH_CHECK_ID = 9_999
PAGE_LIMIT = 50
#: Ids that round-trip counts and smoke load may touch: not those the check compares.
SAFE_IDS = (PAGE_LIMIT + 1, TOUCH_CHECK_ID - 1)


def canonical(data: Any) -> bytes:
    """The bytes every variant must send for ``data`` (Sanic's own JSON encoder)."""
    return bytes(sanic_json(data).body)


@dataclass
class CheckResult:
    variant: str
    failures: list[str] = field(default_factory=list)
    #: Bodies that must be byte-identical across variants, by request.
    fixed_bodies: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


def _expect(result: CheckResult, what: str, response: Response, status: int, body: bytes) -> None:
    if response.status != status:
        result.failures.append(
            f"{what}: status {response.status}, expected {status}: {response.body[:200]!r}"
        )
    elif response.body != body:
        result.failures.append(
            f"{what}: body {response.body[:200]!r} differs from expected {body[:200]!r}"
        )
    if not response.headers.get("content-type", "").startswith("application/json"):
        result.failures.append(f"{what}: content-type {response.headers.get('content-type')!r}")


async def check_variant(variant: str, port: int, target: db.Target) -> CheckResult:
    """Every endpoint once; the answers are compared with what the database holds."""
    result = CheckResult(variant)
    client = Client(port)
    try:
        fixed = [
            ("GET /noop", "GET", "/noop", 200, canonical({"ok": True})),
            ("GET /users/1", "GET", "/users/1", 200, canonical(await db.user(target, 1))),
            (
                "GET /users/<missing>",
                "GET",
                f"/users/{MISSING_ID}",
                404,
                canonical({"error": "not found"}),
            ),
            (
                f"GET /users?limit={PAGE_LIMIT}",
                "GET",
                f"/users?limit={PAGE_LIMIT}",
                200,
                canonical({"users": await db.page(target, PAGE_LIMIT)}),
            ),
            (
                "POST /users/<missing>/touch",
                "POST",
                f"/users/{MISSING_ID}/touch",
                404,
                canonical({"error": "not found"}),
            ),
        ]
        for what, method, path, status, body in fixed:
            response = await client.request(method, path)
            _expect(result, what, response, status, body)
            result.fixed_bodies[what] = (
                response.status,
                response.headers.get("content-type", ""),
                response.body,
            )

        # An insert must be committed by the time the response arrives.
        new = {"name": f"check {variant}", "email": f"check-{variant}@example.com"}
        response = await client.request("POST", "/users", new)
        if response.status != 201:
            result.failures.append(
                f"POST /users: status {response.status}: {response.body[:200]!r}"
            )
        else:
            created = response.json()
            stored = await db.user(target, int(created["id"]))
            if stored is None:
                result.failures.append(f"POST /users: row {created['id']} is not committed")
            else:
                if stored["name"] != new["name"] or stored["email"] != new["email"]:
                    result.failures.append(f"POST /users: stored row {stored} differs from {new}")
                _expect(result, "POST /users", response, 201, canonical(stored))

        # A touch must read, update and commit before the response.
        before = await db.user(target, TOUCH_CHECK_ID)
        assert before is not None
        response = await client.request("POST", f"/users/{TOUCH_CHECK_ID}/touch")
        after = await db.user(target, TOUCH_CHECK_ID)
        assert after is not None
        if after["visits"] != before["visits"] + 1:
            result.failures.append(
                f"POST /users/<id>/touch: visits {before['visits']} -> {after['visits']} "
                "in the database (not committed before the response?)"
            )
        _expect(result, "POST /users/<id>/touch", response, 200, canonical(after))
    except Exception as error:  # a crash is a failure of this variant, not of the harness
        result.failures.append(f"check crashed: {type(error).__name__}: {error}")
    finally:
        await client.close()
    return result


def compare_across(results: list[CheckResult]) -> list[str]:
    """Byte-for-byte comparison of the fixed answers of every variant with the first."""
    failures: list[str] = []
    if not results:
        return failures
    reference = results[0]
    for other in results[1:]:
        for what, answer in reference.fixed_bodies.items():
            theirs = other.fixed_bodies.get(what)
            if theirs != answer:
                failures.append(
                    f"{other.variant} answers {what} differently from {reference.variant}: "
                    f"{theirs!r:.200} vs {answer!r:.200}"
                )
    return failures


# -- round trips ------------------------------------------------------------------


def _request_for(endpoint: str, rng: random.Random, serial: list[int]) -> tuple[str, str, Any]:
    if endpoint == "noop":
        return "GET", "/noop", None
    if endpoint == "get":
        return "GET", f"/users/{rng.randint(1, db.ROWS)}", None
    if endpoint == "page":
        return "GET", f"/users?limit={PAGE_LIMIT}", None
    if endpoint == "insert":
        serial[0] += 1
        n = serial[0]
        return "POST", "/users", {"name": f"rt {n}", "email": f"rt{n}@example.com"}
    if endpoint == "touch":
        # Not the rows the check compares across variants (the first page, the touch row).
        return "POST", f"/users/{rng.randint(*SAFE_IDS)}/touch", None
    raise ValueError(endpoint)


@dataclass
class RoundTrips:
    """Per request, for one variant and endpoint."""

    sequential: float
    sequential_counts: Counts
    requests: int
    under_load: float | None = None
    under_load_connections: int | None = None
    under_load_replaced: int | None = None
    under_load_cancels: int | None = None
    under_load_requests: int | None = None


async def count_round_trips(
    port: int,
    proxy: CountingProxy,
    *,
    requests: int,
    warmup: int,
    load_seconds: float,
) -> dict[str, RoundTrips]:
    """Round trips per request, one endpoint at a time.

    Sequentially over one keep-alive connection (the steady state of one request: no
    connection is opened, none sits idle long enough to be pinged), then, when
    ``load_seconds`` is set, under wrk's 32 connections (which adds whatever the pool
    does under pressure: overflow connections, pings, waits).
    """
    rng = random.Random(7)
    serial = [0]
    client = Client(port)
    out: dict[str, RoundTrips] = {}
    try:
        for endpoint in ENDPOINTS:
            for _ in range(warmup):
                method, path, body = _request_for(endpoint, rng, serial)
                await client.request(method, path, body)
            await asyncio.sleep(0.2)
            before = proxy.snapshot()
            for _ in range(requests):
                method, path, body = _request_for(endpoint, rng, serial)
                response = await client.request(method, path, body)
                if response.status >= 400:
                    raise RuntimeError(
                        f"{method} {path}: {response.status} {response.body[:200]!r}"
                    )
            await asyncio.sleep(0.3)  # anything sent after the last response
            delta = proxy.snapshot().minus(before)
            out[endpoint] = RoundTrips(delta.round_trips / requests, delta, requests)
        if load_seconds:
            # Fill the pools to what 32 clients need before counting.
            await run_wrk(port, "mixed", seconds=1, core="", ids=SAFE_IDS)
            await asyncio.sleep(0.3)
            for endpoint in ENDPOINTS:
                before = proxy.snapshot()
                load = asyncio.ensure_future(
                    run_wrk(port, endpoint, seconds=load_seconds, core="", ids=SAFE_IDS)
                )
                # Connections opened in the first half second replace those discarded
                # when the previous run's clients hung up; the steady state comes after.
                await asyncio.sleep(0.5)
                middle = proxy.snapshot()
                result = await load
                await asyncio.sleep(0.3)
                after = proxy.snapshot()
                delta = after.minus(before)
                trips = out[endpoint]
                trips.under_load = delta.round_trips / max(result.requests, 1)
                trips.under_load_connections = after.minus(middle).connections
                trips.under_load_replaced = middle.minus(before).connections
                trips.under_load_cancels = delta.cancels
                trips.under_load_requests = result.requests
    finally:
        await client.close()
    return out
