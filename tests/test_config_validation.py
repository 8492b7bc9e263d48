"""Configuration checked at ``init_app`` / ``Database(url)`` (issue 8, item 12)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.mysql.asyncmy import MySQLDialect_asyncmy
from sqlalchemy.pool import NullPool

from sanic_sqlalchemy import ConfigurationError, Database
from sanic_sqlalchemy.testing import schema

from .conftest import make_app
from .models import Base, User


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql+asyncpgg://app@db/shop",
            "DATABASE_URL: SQLAlchemy knows no driver 'asyncpgg' for postgresql; use "
            "'sqlite+aiosqlite', 'postgresql+asyncpg' or 'mysql+asyncmy'.",
        ),
        (
            "postgresql+asyncpg://app@db:fivefourthreetwo/shop",
            "DATABASE_URL: the port is not a number. If the password contains ':', '@' "
            "or '/', percent-encode them (%3A, %40, %2F), or pass a sqlalchemy.URL built "
            "with URL.create(...).",
        ),
        (
            "mysql+aiomysql://app@db/shop",
            "DATABASE_URL: the 'aiomysql' driver package is not installed; install it "
            "(pip install aiomysql, or the sanic-sqlalchemy extra 'postgresql' or 'mysql').",
        ),
    ],
)
def test_bad_urls_fail_at_init_app_naming_the_key(url: str, message: str) -> None:
    """A misspelled driver, a port that is not a number and a driver package that is not
    installed raise ``ConfigurationError`` at ``init_app``, naming ``DATABASE_URL``."""
    app = make_app("bad_url")
    app.config.DATABASE_URL = url
    with pytest.raises(ConfigurationError) as caught:
        Database().init_app(app)
    assert str(caught.value) == message
    assert caught.value.__cause__ is None


def test_bad_url_fails_at_database_construction() -> None:
    """``Database(url)`` checks the URL at once, naming the argument."""
    with pytest.raises(ConfigurationError, match=r"^url= \(argument\): SQLAlchemy knows no"):
        Database("mysql+asyncmyy://root@db/shop")


@pytest.mark.parametrize(
    "url", ["postgresql+asyncpg://app:p@ssw0rd@db/shop", "mysql+asyncmy://app:s3cr@t:99@db/shop"]
)
def test_password_with_an_unescaped_at_sign_never_leaks(url: str) -> None:
    """A password with an unescaped ``@`` is refused with a message that shows no part of
    it, instead of its tail becoming a host that ``repr()`` shows."""
    with pytest.raises(ConfigurationError) as caught:
        Database(url)
    error = str(caught.value)
    assert "%40" in error
    for fragment in ("ssw0rd", "p@ss", "s3cr", "t:99"):
        assert fragment not in error
        assert fragment not in repr(caught.value)
    assert caught.value.__cause__ is None


class AsyncFooDialect(MySQLDialect_asyncmy):
    """A third-party asyncio MySQL dialect, as a package would register it."""

    driver = "asyncfoo"


@pytest.fixture
def asyncfoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``mysql+asyncfoo://`` registered with SQLAlchemy, its driver package importable."""
    (tmp_path / "asyncfoo").mkdir()
    (tmp_path / "asyncfoo" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register("mysql.asyncfoo", __name__, "AsyncFooDialect")
    yield
    registry.deregister("mysql.asyncfoo")


def test_an_unsupported_mysql_driver_names_the_prefixed_key(asyncfoo: None) -> None:
    """An asyncio MySQL driver the library cannot open connections with is refused at
    ``init_app`` under the database's own prefix, for the URL and for a replica."""
    app = make_app("unsupported_driver")
    app.config.ANALYTICS_DATABASE_URL = "mysql+asyncfoo://app@db/shop"
    with pytest.raises(ConfigurationError) as caught:
        Database(config_prefix="ANALYTICS_DATABASE_").init_app(app)
    assert str(caught.value) == (
        "ANALYTICS_DATABASE_URL: the MySQL driver 'asyncfoo' is not supported; use "
        "'mysql+asyncmy' (or 'mysql+aiomysql')."
    )

    app = make_app("unsupported_replica_driver")
    app.config.ANALYTICS_DATABASE_URL = "mysql+asyncmy://app@db/shop"
    app.config.ANALYTICS_DATABASE_READ_URLS = "mysql+asyncfoo://app@replica/shop"
    with pytest.raises(ConfigurationError, match=r"^ANALYTICS_DATABASE_READ_URLS: the MySQL"):
        Database(config_prefix="ANALYTICS_DATABASE_").init_app(app)


def test_nullpool_rejects_pool_size_settings() -> None:
    """A pool size setting given together with ``poolclass=NullPool`` names its key."""
    app = make_app("nullpool_size")
    app.config.DATABASE_URL = "sqlite+aiosqlite:///x.db"
    app.config.DATABASE_POOL_SIZE = 5
    with pytest.raises(ConfigurationError) as caught:
        Database(poolclass=NullPool).init_app(app)
    assert str(caught.value) == (
        "DATABASE_POOL_SIZE: NullPool keeps no connections waiting, so this setting "
        "cannot apply; remove it (or the poolclass)."
    )


def test_poolclass_must_be_a_pool() -> None:
    """``poolclass`` that is neither a SQLAlchemy pool class nor a pool's name is refused
    at construction, naming what it takes."""
    with pytest.raises(ConfigurationError) as caught:
        Database("sqlite+aiosqlite://", poolclass="NoPool")
    assert str(caught.value) == (
        "poolclass= (argument): expected 'NullPool' (a new connection per unit, for a "
        "pooler in front of the database), 'QueuePool' (the default) or a "
        "sqlalchemy.pool class, got 'NoPool'."
    )


def test_poolclass_from_app_config() -> None:
    """``DATABASE_POOLCLASS=NullPool`` in app.config (or the environment) chooses
    NullPool, as the keyword ``poolclass=NullPool`` does; ``QueuePool`` the default."""
    app = make_app("poolclass_config")
    app.config.DATABASE_URL = "sqlite+aiosqlite:///x.db"
    app.config.DATABASE_POOLCLASS = "nullpool"
    db = Database()
    db.init_app(app)
    assert db.settings.engine_options["poolclass"] is NullPool
    app.config.DATABASE_POOLCLASS = "QueuePool"
    db = Database()
    db.init_app(app)
    assert "poolclass" not in db.settings.engine_options


async def test_nullpool_units_work(url: str) -> None:
    """``poolclass=NullPool`` (behind PgBouncer) works: units read and write, each
    connection is closed when given back."""
    db = Database(url, poolclass=NullPool)
    try:
        async with schema(db, Base.metadata):
            assert isinstance(db.engine.sync_engine.pool, NullPool)
            assert isinstance(db.engines.read.sync_engine.pool, NullPool)
            async with db:
                db.write.add(User(id=1, name="Ada", email="ada@example.com"))
            async with db:
                assert list(await db.read.scalars(select(User.name))) == ["Ada"]
                db.write.add(User(id=2, name="Bob", email="bob@example.com"))
                assert len(list(await db.read.scalars(select(User.name)))) == 2
    finally:
        await db.dispose()
