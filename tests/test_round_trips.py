"""Round trips to PostgreSQL per request in steady state, counted on the wire.

Run ``./scripts/test tests/test_round_trips.py -s`` to see the counts printed.
"""

from __future__ import annotations

from typing import Any

import pytest
from sanic import Request
from sanic.response import HTTPResponse, json
from sqlalchemy.engine import make_url

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.testing import schema

from .conftest import make_app
from .models import Base, User
from .pgcount import RoundTripCounter

pytestmark = pytest.mark.backends("postgresql")

EXPECTED = {
    ("POST", "/users"): 3,  # BEGIN, INSERT, COMMIT
    ("GET", "/users/1"): 1,  # SELECT on a read-only connection in autocommit
    ("POST", "/users/1/touch"): 4,  # BEGIN, SELECT, UPDATE, COMMIT
    ("GET", "/noop"): 0,
}


async def test_round_trips_per_request(url: str, serve: Any) -> None:
    """A single-row read costs 1 round trip, an insert 3, a read-and-update 4, a no-op 0."""
    measured = await round_trips_per_request(url, serve)
    for (method, path), per_request in measured.items():
        print(f"{method} {path}: {per_request:g} round trips")
    assert measured == EXPECTED


async def round_trips_per_request(
    url: str, serve: Any, **options: Any
) -> dict[tuple[str, str], float]:
    """Round trips per request of each of ``EXPECTED``'s requests, in steady state, to
    the PostgreSQL server (or pooler) at ``url``, for a Database made with ``options``."""
    counter = RoundTripCounter()
    target = make_url(url)
    measured: dict[tuple[str, str], float] = {}
    async with counter.serve(target.host or "127.0.0.1", target.port or 5432) as port:
        db = Database(target.set(host="127.0.0.1", port=port), pool_size=2, **options)
        app = make_app("round_trips")
        touches = iter(range(1_000_000))

        @app.get("/noop")
        async def noop(_request: Request) -> HTTPResponse:
            return json({})

        @app.get("/users/<user_id:int>")
        async def read(_request: Request, user_id: int) -> HTTPResponse:
            user = await db.read.get(User, user_id)
            assert user is not None
            return json({"id": user.id, "name": user.name})

        @app.post("/users")
        async def create(_request: Request) -> HTTPResponse:
            user = User(name="new", email=f"{id(_request)}-{next(touches)}@example.com")
            db.write.add(user)
            await db.write.flush()
            return json({"id": user.id}, status=201)

        @app.post("/users/<user_id:int>/touch")
        async def touch(_request: Request, user_id: int) -> HTTPResponse:
            user = await db.write.get(User, user_id)
            assert user is not None
            user.name = f"touched {next(touches)}"
            return json({"id": user.id})

        db.init_app(app)
        async with schema(db, Base.metadata):
            served = await serve(app)
            for _ in range(3):  # warm up: connections opened, statements prepared
                for method, path in EXPECTED:
                    assert (await served.client.request(method, path)).status_code < 300
            connections = counter.connections
            for method, path in EXPECTED:
                before = counter.round_trips
                for _ in range(10):
                    response = await served.client.request(method, path)
                    assert response.status_code < 300
                measured[method, path] = (counter.round_trips - before) / 10
            assert counter.connections == connections, "steady state opened new connections"
        await db.dispose()
    return measured
