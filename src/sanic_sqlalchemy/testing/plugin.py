"""The pytest plugin (entry point ``pytest11``): inert until a project names its database.

Point it at the application's ``Database`` with an ini option::

    [tool.pytest.ini_options]
    sanic_sqlalchemy_database = "myapp.db:db"
    sanic_sqlalchemy_metadata = "myapp.models:Base.metadata"   # for ``transactional_db``

or by overriding the fixtures ``sanic_sqlalchemy_database`` (and
``sanic_sqlalchemy_metadata``) in a ``conftest.py``.  The asynchronous fixtures
(``rolled_back_db``, ``transactional_db``) need pytest-asyncio; they are registered
only when it is installed.  The others are helpers bound to the database:
``capture_on_commit(execute=False)``, ``assert_num_queries(n)``, ``assert_max_queries(n)``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from typing import Any

import pytest

from ..database import DatabaseCore as Database
from ..errors import ConfigurationError
from .isolation import (
    CapturedCallback,
    QueryCount,
    assert_max_queries,
    assert_num_queries,
    capture_on_commit,
)

_DATABASE = "sanic_sqlalchemy_database"
_METADATA = "sanic_sqlalchemy_metadata"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(_DATABASE, "the application's Database, as module:attribute", default="")
    parser.addini(_METADATA, "the MetaData that transactional_db empties (module:attr)", default="")


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("asyncio"):
        from . import fixtures

        config.pluginmanager.register(fixtures, "sanic_sqlalchemy.testing.fixtures")


def load(spec: str, key: str) -> Any:
    """The object ``spec`` (``package.module:attribute.path``) names; ``key`` names the
    setting in errors."""
    module_name, _, path = spec.partition(":")
    if not module_name or not path:
        raise ConfigurationError(f"{key} must look like 'package.module:name', not {spec!r}")
    target: Any = importlib.import_module(module_name)
    for name in path.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ConfigurationError(f"{key}: {spec!r} has no attribute {name!r}") from None
    return target


@pytest.fixture
def sanic_sqlalchemy_database(request: pytest.FixtureRequest) -> Database:
    """The application's ``Database``, from the ``sanic_sqlalchemy_database`` ini option."""
    spec = request.config.getini(_DATABASE)
    if not spec:
        raise ConfigurationError(
            "No Database for the sanic-sqlalchemy fixtures: set sanic_sqlalchemy_database = "
            "'myapp.db:db' in the pytest configuration, or override the fixture "
            "sanic_sqlalchemy_database in conftest.py."
        )
    db = load(spec, _DATABASE)
    if not isinstance(db, Database):
        raise ConfigurationError(f"{_DATABASE}: {spec!r} is a {type(db).__name__}, not a Database")
    return db


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
