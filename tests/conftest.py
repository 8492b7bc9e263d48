"""Fixtures: one Database per test on each backend, real Sanic servers on loopback.

Backends come from ``TEST_POSTGRES_URL`` and ``TEST_MYSQL_URL``; SQLite always runs.
When ``CI`` (or ``SANIC_SQLALCHEMY_REQUIRE_BACKENDS``) is set, a backend whose URL is
missing fails the test instead of skipping it: a green CI run means every backend ran.

``TEST_SANIC_EXT`` says which of CI's two passes this is: ``1``, the whole suite with
sanic-ext installed (Sanic then loads it into every app), which must be importable;
``0``, the suite without it, which must not be, and where the tests marked
``sanic_ext`` are deselected (they run in the other pass). Unset (a developer's run),
those tests are skipped when sanic-ext is missing, and a skip fails a CI run.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sanic import Sanic
from sanic.router import Router
from sqlalchemy import select

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.testing import checked_out, schema

from .models import Base, User

BACKENDS = ("sqlite", "postgresql", "mysql")
_URL_VARIABLES = {"postgresql": "TEST_POSTGRES_URL", "mysql": "TEST_MYSQL_URL"}


def backends_required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("SANIC_SQLALCHEMY_REQUIRE_BACKENDS"))


def _sanic_ext_importable() -> bool:
    # Sanic loads sanic-ext only when the import succeeds (25.12 needs pydantic without
    # declaring it): installed is not enough.
    try:
        importlib.import_module("sanic_ext")
    except ImportError:
        return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    wanted = os.environ.get("TEST_SANIC_EXT")
    if wanted not in (None, "0", "1"):
        raise pytest.UsageError(f"TEST_SANIC_EXT must be 0 or 1, not {wanted!r}")
    if wanted is not None and _sanic_ext_importable() != (wanted == "1"):
        raise pytest.UsageError(
            "TEST_SANIC_EXT=1 but sanic-ext cannot be imported (install the sanic-ext "
            "dependency group)"
            if wanted == "1"
            else "TEST_SANIC_EXT=0 but sanic-ext is importable: this pass must run without it"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _sanic_ext_importable():
        return
    needs_ext = [item for item in items if item.get_closest_marker("sanic_ext")]
    if not needs_ext:
        return
    if os.environ.get("TEST_SANIC_EXT") == "0":
        # The pass without sanic-ext: these run in the pass with it.
        config.hook.pytest_deselected(items=needs_ext)
        items[:] = [item for item in items if item not in needs_ext]
        return
    skip = pytest.mark.skip(reason="sanic-ext is not installed: TEST_SANIC_EXT=1 ./scripts/test")
    for item in needs_ext:
        item.add_marker(skip)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what importing and collecting made (modules, SQLAlchemy's and Sanic's
    machinery, the test items): it lives to the end of the session anyway, and each full
    garbage collection went through all of it again (tests call ``gc.collect()``, and
    the heap grows: Sanic keeps every app in its registry).  What the tests make is
    collected as before, so leaks still show."""
    gc.collect()
    gc.freeze()


#: Sanic's own ASGI entry point: sanic-testing's ``asgi_client`` replaces it on the class.
_SANIC_CALL = Sanic.__call__


@pytest.fixture(autouse=True)
def _forget_the_tests_apps() -> Iterator[None]:
    """Unregister the Sanic apps a test made once it is over (``Sanic.unregister_app``,
    for testing), and empty Sanic's route caches, which hold on to them; put back
    ``Sanic.__call__``, which sanic-testing's ``asgi_client`` replaces for every app
    (uvicorn then failed to start an app in a later test).

    Sanic keeps every app in a class-wide registry: kept, the apps of earlier tests made
    each full garbage collection longer as the session went on (tests call
    ``gc.collect()``), and each server start goes through every app there that ever
    served (TouchUp's ``_sync_events``) to add the HTTP signals it lacks: a test
    touched the apps of earlier ones."""
    before = set(Sanic._app_registry)
    yield
    for name, app in list(Sanic._app_registry.items()):
        if name not in before:
            Sanic.unregister_app(app)
    Router.get.cache_clear()
    Router.find_route_by_view_name.cache_clear()
    Sanic.__call__ = _SANIC_CALL  # type: ignore[method-assign]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        names = marker.args if marker else BACKENDS
        metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def backend_url(name: str, tmp_path: Path) -> str:
    """The URL of a test database on backend ``name``; skip (or fail in CI) if unset."""
    if name == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    variable = _URL_VARIABLES[name]
    url = os.environ.get(variable)
    if not url:
        message = f"{variable} is not set: the {name} backend cannot be tested"
        if backends_required():
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    return backend_url(backend, tmp_path)


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    """A Database on the test backend with fresh tables; checks nothing leaked."""
    database = Database(url, pool_size=5, pool_timeout=5)
    async with schema(database, Base.metadata):
        yield database
        assert checked_out(database).total == 0, "a connection was not returned to the pool"
    await database.dispose()


async def count_users(db: Database) -> int:
    """Rows in users, read in a unit of its own."""
    async with db:
        return len((await db.read.execute(select(User))).scalars().all())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_app(name: str = "test", *, openapi: bool = False) -> Sanic[Any, Any]:
    """A Sanic app with a name unique in this process.

    With sanic-ext loaded, its OpenAPI extension stays off unless ``openapi``: at each
    server start it adds its documentation routes one by one, and sanic-ext then an
    automatic HEAD and OPTIONS route for each, every one re-compiling the router: about
    30 ms a start on top of Sanic's own 20, for routes no test but sanic-ext's own
    (``test_sanic_ext.py``, ``test_injection*.py``: ``openapi=True``) requests.  The
    rest of sanic-ext (injection, the automatic HEAD and OPTIONS routes) stays on.
    """
    Sanic.test_mode = True
    app: Sanic[Any, Any] = Sanic(f"{name}_{uuid.uuid4().hex[:12]}")
    if not openapi:
        app.config.OAS = False
    return app


class Served:
    """A Sanic app served on loopback by this test's event loop, with a client."""

    def __init__(self, app: Sanic[Any, Any], port: int) -> None:
        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.AsyncClient(base_url=self.url, timeout=30)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Sanic[Any, Any]], Any]]:
    """``await serve(app)`` starts ``app`` in this loop; everything stops at teardown."""
    running: list[tuple[Any, Served]] = []

    async def start(app: Sanic[Any, Any], **options: Any) -> Served:
        port = free_port()
        server = await app.create_server(
            host="127.0.0.1", port=port, return_asyncio_server=True, access_log=False, **options
        )
        assert server is not None
        await server.startup()
        await server.before_start()
        await server.after_start()
        served = Served(app, port)
        running.append((server, served))
        return served

    yield start
    for server, served in reversed(running):
        await served.client.aclose()
        await server.before_stop()
        server.close()
        await server.wait_closed()
        await server.after_stop()
    await asyncio.sleep(0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test fails the run: green must mean every backend ran."""
    if not backends_required():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(f"CI: {skipped} test(s) skipped; every backend must run", red=True)


# The replicated clusters (tests/clusters.py), the PgBouncer (tests/pgbouncer.py) and the
# failover pair (tests/pgfailover.py), last: those modules import this one.
from .clusters import _reset_clusters, mariadb_cluster, pg_cluster  # noqa: E402, F401
from .pgbouncer import pgbouncer  # noqa: E402, F401
from .pgfailover import failover_pair  # noqa: E402, F401
