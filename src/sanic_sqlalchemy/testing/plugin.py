"""The pytest plugin (entry point ``pytest11``): inert until a project names its database.

Point it at the application's ``Database`` with ini options::

    [tool.pytest.ini_options]
    sanic_sqlalchemy_database = "myapp.db:db"
    sanic_sqlalchemy_databases = ["myapp.db:analytics"]       # the others, if any
    sanic_sqlalchemy_url = "${TEST_DATABASE_URL}"             # without an app
    sanic_sqlalchemy_metadata = "myapp.models:Base.metadata"   # for ``transactional_db``

or by overriding the fixtures ``sanic_sqlalchemy_database`` (and
``sanic_sqlalchemy_databases``, ``sanic_sqlalchemy_metadata``) in a ``conftest.py``.
``sanic_sqlalchemy_url`` (environment variables expanded) is given to the database when
it has no URL yet: tests that build no app need no ``init_app``.  ``rolled_back_db``
rolls back every database of ``sanic_sqlalchemy_databases``: the main one, the ones
the ini option names, and every one installed on a Sanic app beside them.  The
asynchronous fixtures (``rolled_back_db``, ``transactional_db``) need pytest-asyncio;
they are registered only when it is installed.  The others are helpers bound to the
database: ``capture_on_commit(execute=False)``, ``assert_num_queries(n)``,
``assert_max_queries(n)``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

import pytest

from .._lookup import AttributeNotFound, ImportFailed, MalformedName, find
from ..database import DatabaseCore as Database
from ..errors import ConfigurationError
from ..sanic.install import installed_beside
from .isolation import (
    CapturedCallback,
    QueryCount,
    assert_max_queries,
    assert_num_queries,
    capture_on_commit,
)

_DATABASE = "sanic_sqlalchemy_database"
_DATABASES = "sanic_sqlalchemy_databases"
_URL = "sanic_sqlalchemy_url"
_METADATA = "sanic_sqlalchemy_metadata"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(_DATABASE, "the application's Database, as module:attribute", default="")
    parser.addini(
        _DATABASES,
        "the application's other Databases (module:attribute, one a line), rolled back too",
        type="linelist",
        default=[],
    )
    parser.addini(
        _URL, "the URL given to the Database when it has none ($VARS expanded)", default=""
    )
    parser.addini(_METADATA, "the MetaData that transactional_db empties (module:attr)", default="")


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("asyncio"):
        from . import fixtures

        config.pluginmanager.register(fixtures, "sanic_sqlalchemy.testing.fixtures")


def load(spec: str, key: str) -> Any:
    """The object ``spec`` (``package.module:attribute.path``) names; ``key`` names the
    setting in errors."""
    try:
        return find(spec)
    except MalformedName:
        raise ConfigurationError(
            f"{key} must look like 'package.module:name', not {spec!r}"
        ) from None
    except ImportFailed as failure:
        raise ConfigurationError(
            f"{key}: importing module {failure.module!r} (from {spec!r}) failed: {failure.error!r}"
        ) from failure.error
    except AttributeNotFound as failure:
        raise ConfigurationError(f"{key}: {spec!r} has no attribute {failure.name!r}") from None


def _database(spec: str, key: str) -> Database:
    db = load(spec, key)
    if not isinstance(db, Database):
        raise ConfigurationError(f"{key}: {spec!r} is a {type(db).__name__}, not a Database")
    return db


@pytest.fixture
def sanic_sqlalchemy_database(request: pytest.FixtureRequest) -> Database:
    """The application's ``Database``, from the ``sanic_sqlalchemy_database`` ini option;
    given ``sanic_sqlalchemy_url`` when it has no URL yet."""
    spec = request.config.getini(_DATABASE)
    if not spec:
        raise ConfigurationError(
            "No Database for the sanic-sqlalchemy fixtures: set sanic_sqlalchemy_database = "
            "'myapp.db:db' in the pytest configuration, or override the fixture "
            "sanic_sqlalchemy_database in conftest.py."
        )
    db = _database(spec, _DATABASE)
    url = os.path.expandvars(request.config.getini(_URL))
    if url and not db.configured:
        if "$" in url:
            raise ConfigurationError(
                f"{_URL}: {url!r} names an environment variable that is not set."
            )
        db.configure_from(url=url)
    return db


@pytest.fixture
def sanic_sqlalchemy_databases(
    request: pytest.FixtureRequest, sanic_sqlalchemy_database: Database
) -> list[Database]:
    """Every ``Database`` the application uses, the main one first: it, the ones the
    ``sanic_sqlalchemy_databases`` ini option names, and every one installed on a Sanic
    app beside any of these (``db.init_app(app)``)."""
    named = [sanic_sqlalchemy_database]
    named += [_database(spec, _DATABASES) for spec in request.config.getini(_DATABASES)]
    found: dict[Database, None] = {}
    for db in named:
        found.update(dict.fromkeys(installed_beside(db)))
    return list(dict.fromkeys([*named, *found]))


@pytest.fixture
def sanic_sqlalchemy_metadata(request: pytest.FixtureRequest) -> Any:
    """The ``MetaData`` whose tables ``transactional_db`` empties (ini option)."""
    spec = request.config.getini(_METADATA)
    if not spec:
        raise ConfigurationError(
            "transactional_db needs the tables to empty: set sanic_sqlalchemy_metadata = "
            "'myapp.models:Base.metadata', or override the fixture sanic_sqlalchemy_metadata."
        )
    return load(spec, _METADATA)


@pytest.fixture(name="capture_on_commit")
def capture_on_commit_fixture(
    sanic_sqlalchemy_database: Database,
) -> Callable[..., contextlib.AbstractContextManager[list[CapturedCallback]]]:
    """``with capture_on_commit(execute=False) as callbacks:`` on the database."""
    return functools.partial(capture_on_commit, sanic_sqlalchemy_database)


@pytest.fixture(name="assert_num_queries")
def assert_num_queries_fixture(
    sanic_sqlalchemy_database: Database,
) -> Callable[[int], contextlib.AbstractContextManager[QueryCount]]:
    """``with assert_num_queries(n):`` on the database."""
    return functools.partial(assert_num_queries, sanic_sqlalchemy_database)


@pytest.fixture(name="assert_max_queries")
def assert_max_queries_fixture(
    sanic_sqlalchemy_database: Database,
) -> Callable[[int], contextlib.AbstractContextManager[QueryCount]]:
    """``with assert_max_queries(n):`` on the database."""
    return functools.partial(assert_max_queries, sanic_sqlalchemy_database)
