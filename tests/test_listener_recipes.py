"""The recipes of docs/guides/listeners.md, run as written against a real Sanic app:
an OpenTelemetry span per unit above opentelemetry-instrumentation-sqlalchemy's
statement spans, Sentry breadcrumbs with a test transport, Prometheus counters.

The guide's recipe blocks (those the documentation's own run skips, naming this module)
are executed here, in order, in one namespace: the tests use the guide's code itself.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sanic import Request
from sanic.response import HTTPResponse, json, raw
from sentry_sdk.envelope import Envelope
from sentry_sdk.scope import Scope, ScopeType
from sentry_sdk.transport import Transport

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.testing import schema

from .conftest import count_users, make_app
from .models import User

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guides" / "listeners.md"
_RECIPE_BLOCK = re.compile(
    r'^% skip: next "[^"\n]*tests/test_listener_recipes\.py"\n```python\n(.*?)^```',
    re.MULTILINE | re.DOTALL,
)


@pytest.fixture(scope="module")
def recipes() -> dict[str, Any]:
    """The names the guide's recipe blocks define, run in order as the guide gives them."""
    namespace: dict[str, Any] = {"__name__": "listener_recipes"}
    blocks = _RECIPE_BLOCK.findall(GUIDE.read_text())
    assert len(blocks) == 3, "the guide should hold the three recipes, marked for this module"
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)
    return namespace


def shop(db: Database) -> Any:
    """A small app: read a user; create one, while a task of the handler counts the
    users in a unit of its own, with an on-commit callback that fails when asked to;
    an error response."""
    app = make_app("recipes")

    @app.get("/users/<user_id:int>")
    async def show(request: Request, user_id: int) -> HTTPResponse:
        user = await db.read.get(User, user_id)
        return json({"name": None if user is None else user.name})

    @app.post("/users")
    async def create(request: Request) -> HTTPResponse:
        db.write.add(User(**request.json))
        total = await asyncio.create_task(count_users(db))  # a unit of its own
        if request.args.get("mail") == "down":
            db.on_commit(send_welcome, request.json["email"])
        return json({"before": total}, status=201)

    @app.post("/refused")
    async def refused(request: Request) -> HTTPResponse:
        db.write.add(User(id=9, name="Mallory", email="mallory@example.com"))
        return json({"error": "refused"}, status=403)

    async def send_welcome(email: str) -> None:
        raise ConnectionError(f"the mail server refused {email}")

    db.init_app(app)
    return app


ADA = {"id": 1, "name": "Ada", "email": "ada@example.com"}


# -- OpenTelemetry ------------------------------------------------------------------


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider, exporter
    SQLAlchemyInstrumentor().uninstrument()
    tracer_provider.shutdown()


async def test_a_span_per_unit_parents_the_statement_spans(
    recipes: dict[str, Any], db: Database, serve: Any, provider: Any
) -> None:
    """Through real requests, each unit has a span whose children are the statement
    spans of opentelemetry-instrumentation-sqlalchemy, with its outcome recorded."""
    tracer_provider, exporter = provider
    app = shop(db)
    recipes["trace_app"](app, db, tracer_provider)
    served = await serve(app)
    exporter.clear()  # what the server's start-up ran
    assert (await served.client.post("/users", json=ADA)).status_code == 201
    assert (await served.client.get("/users/1")).json() == {"name": "Ada"}
    assert (await served.client.post("/refused")).status_code == 403

    spans = exporter.get_finished_spans()
    units = [span for span in spans if span.name == "db.unit"]
    outcomes = [span.attributes["db.unit.outcome"] for span in units if span.attributes]
    # POST /users: its inner unit, then its own; GET: one; the refused POST: one.
    assert outcomes == ["no_write", "committed", "no_write", "rolled_back"]
    statements = [span for span in spans if span.name != "db.unit" and span.name != "connect"]
    assert statements, "opentelemetry-instrumentation-sqlalchemy recorded no statement"
    by_id = {span.context.span_id: span for span in units}
    for statement in statements:
        assert statement.parent is not None, f"{statement.name} has no parent span"
        parent = by_id.get(statement.parent.span_id)
        assert parent is not None, f"{statement.name} is not a child of a unit's span"
        assert statement.context.trace_id == parent.context.trace_id
    inserts = [span for span in statements if span.name.startswith("INSERT")]
    assert [by_id[span.parent.span_id] for span in inserts if span.parent] == [units[1]]
    parents = [span.parent.span_id for span in statements if span.parent]
    # The refused POST's change was never sent: its unit has no statement.
    assert [parents.count(unit.context.span_id) > 0 for unit in units] == [True] * 3 + [False]
    # The handler's task's unit began while the request's unit was current.
    child, request_unit = units[0], units[1]
    assert child.parent is not None and child.parent.span_id == request_unit.context.span_id


# -- Sentry --------------------------------------------------------------------------


class MemoryTransport(Transport):
    """Keeps what the Sentry client would send, in memory."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        found = [envelope.get_event() for envelope in self.envelopes]
        return [event for event in found if event is not None]


@pytest.fixture
def sentry() -> Iterator[MemoryTransport]:
    transport = MemoryTransport()
    sentry_sdk.init(
        dsn="https://public@sentry.example.invalid/1",
        transport=transport,
        default_integrations=False,
        auto_enabling_integrations=False,
    )
    yield transport
    sentry_sdk.get_client().close()
    # Not init() again: its default integrations would patch Sanic for every later test.
    sentry_sdk.get_global_scope().set_client(None)


async def test_sentry_breadcrumbs_lead_to_a_failing_callback(
    recipes: dict[str, Any], db: Database, serve: Any, sentry: MemoryTransport
) -> None:
    """A failing on-commit callback reaches Sentry as an error event whose breadcrumbs
    show the unit that ended before it and the callback itself; the response and the
    commit are unchanged."""
    app = shop(db)
    recipes["sentry_breadcrumbs"](db)

    @app.on_request
    async def isolate(request: Request) -> None:
        # What Sentry's Sanic integration does: an isolation scope per request, which
        # the tasks the request starts share.
        Scope.set_isolation_scope(Scope(ty=ScopeType.ISOLATION))

    served = await serve(app)
    response = await served.client.post("/users?mail=down", json=ADA)
    assert response.status_code == 201
    assert await count_users(db) == 1
    [event] = sentry.events()
    [exception] = event["exception"]["values"]
    assert exception["type"] == "ConnectionError"
    assert "the mail server refused ada@example.com" in exception["value"]
    crumbs = event["breadcrumbs"]["values"]
    assert [(crumb["category"], crumb["level"]) for crumb in crumbs] == [
        ("db.unit", "info"),
        ("db.on_commit", "error"),
    ]
    unit, callback = crumbs
    assert unit["message"] == "unit of work no_write"  # the handler's task's count
    assert unit["data"]["statements"] == 1 and unit["data"]["read_from"] == "primary"
    assert "send_welcome raised ConnectionError" in callback["message"]


# -- Prometheus ----------------------------------------------------------------------


@pytest.fixture
async def tasks_db(db: Database) -> Any:
    db.tasks.run_after_commit = False
    async with schema(db, db.tasks.metadata):
        yield db
        await db.tasks.stop(0)


async def test_prometheus_counters(recipes: dict[str, Any], tasks_db: Database, serve: Any) -> None:
    """Units by outcome, their statements and duration, failing callbacks and task runs
    are counted, and served in Prometheus's text format."""
    db = tasks_db
    registry = CollectorRegistry()
    recipes["count_units"](db, registry)

    @db.task(name="shop.welcome", max_attempts=1)
    async def welcome(user_id: int) -> None:
        if user_id == 2:
            raise ConnectionError("no mail today")

    async with db:
        welcome.defer(1)
        welcome.defer(2)
    assert await db.tasks.run_pending() == 2  # before the server's dispatcher starts
    app = shop(db)

    @app.get("/metrics")
    async def metrics(request: Request) -> HTTPResponse:
        return raw(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    served = await serve(app)
    assert (await served.client.post("/users?mail=down", json=ADA)).status_code == 201
    assert (await served.client.post("/refused")).status_code == 403

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    # The POST's own unit (committed) and its task's count (no_write), the refused
    # POST (rolled_back), the unit that deferred (committed), and the two task runs,
    # which wrote nothing through db.write (no_write: a run that wrote nothing is
    # finished apart from its unit, with other runs).
    assert sample("db_units_total", outcome="committed") == 2
    assert sample("db_units_total", outcome="no_write") == 3
    assert sample("db_units_total", outcome="rolled_back") == 1
    assert sample("db_unit_seconds_count") == 6
    assert (sample("db_unit_statements_total") or 0) >= 3
    assert sample("db_callback_errors_total") == 1
    assert sample("db_task_runs_total", task="shop.welcome", outcome="done") == 1
    assert sample("db_task_runs_total", task="shop.welcome", outcome="dead") == 1
    text = (await served.client.get("/metrics")).text
    assert 'db_units_total{outcome="committed"} 2.0' in text
    assert 'db_task_runs_total{outcome="dead",task="shop.welcome"} 1.0' in text
