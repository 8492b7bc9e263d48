"""Several databases in one app: prefixed settings, one request, commits side by side."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sanic import Request
from sanic.response import HTTPResponse, json
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from sanic_sqlalchemy import ConfigurationError, Database, EngineNotInitialisedError
from sanic_sqlalchemy.testing import checked_out, schema

from .conftest import backend_url, make_app
from .models import Base, User
from .test_sanic import Child, DeferredBase, Parent

ANALYTICS = "ANALYTICS_DATABASE_"


@pytest.fixture
async def second_url(backend: str, url: str, tmp_path: Path) -> str:
    """A second database next to the test database: another file, or ``<name>b``."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'analytics.db'}"
    main = make_url(url)
    second = main.set(database=f"{main.database}b")
    engine = create_async_engine(main, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            if backend == "postgresql":
                query = text("SELECT 1 FROM pg_database WHERE datname = :name")
                found = await connection.scalar(query, {"name": second.database})
                if found is None:
                    await connection.execute(text(f'CREATE DATABASE "{second.database}"'))
            else:
                await connection.execute(text(f"CREATE DATABASE IF NOT EXISTS `{second.database}`"))
    finally:
        await engine.dispose()
    return second.render_as_string(hide_password=False)


@pytest.fixture
async def two(url: str, second_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """``db`` and ``analytics``, configured through ``app.config`` by ``two_apps``."""
    db, analytics = Database(), Database(config_prefix=ANALYTICS)
    yield db, analytics
    await db.dispose()
    await analytics.dispose()


async def users(db: Database) -> list[str]:
    """The names in ``users`` of ``db``, read in a unit of its own."""
    async with db:
        return list((await db.read.execute(select(User.name).order_by(User.id))).scalars())


def test_prefixed_keys_are_read_instead_of_the_default_ones(tmp_path: Path) -> None:
    """``config_prefix`` reads ``ANALYTICS_DATABASE_URL`` and friends, and leaves
    ``DATABASE_*`` to the default database."""
    app = make_app("prefixed")
    app.config.DATABASE_URL = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    app.config.ANALYTICS_DATABASE_URL = f"sqlite+aiosqlite:///{tmp_path / 'analytics.db'}"
    app.config.ANALYTICS_DATABASE_POOL_SIZE = "3"
    db, analytics = Database(), Database(config_prefix=ANALYTICS)
    db.init_app(app)
    analytics.init_app(app)
    assert str(analytics.settings.url.database).endswith("analytics.db")
    assert analytics.settings.pool_size == 3
    assert str(db.settings.url.database).endswith("main.db")
    assert db.settings.pool_size == 10


def test_init_app_takes_the_prefix_too(tmp_path: Path) -> None:
    """``init_app(app, config_prefix=...)`` chooses the keys as ``Database(...)`` would."""
    app = make_app("prefixed_init")
    app.config.REPORTS_DB_URL = f"sqlite+aiosqlite:///{tmp_path / 'reports.db'}"
    reports = Database()
    reports.init_app(app, config_prefix="REPORTS_DB_")
    assert reports.config_prefix == "REPORTS_DB_"
    assert str(reports.settings.url.database).endswith("reports.db")


def test_a_bad_value_names_the_prefixed_key(tmp_path: Path) -> None:
    """A bad setting of a prefixed database is reported under its own key."""
    app = make_app("prefixed_bad")
    app.config.ANALYTICS_DATABASE_URL = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    app.config.ANALYTICS_DATABASE_POOL_SIZE = "many"
    with pytest.raises(ConfigurationError) as caught:
        Database(config_prefix=ANALYTICS).init_app(app)
    assert str(caught.value) == (
        "ANALYTICS_DATABASE_POOL_SIZE: expected a whole number, got 'many'."
    )


def test_a_missing_url_names_the_prefixed_key() -> None:
    """Without ``ANALYTICS_DATABASE_URL`` the error says to set that key, not
    ``DATABASE_URL``, even when ``DATABASE_URL`` is set."""
    app = make_app("prefixed_missing")
    app.config.DATABASE_URL = "sqlite+aiosqlite://"
    analytics = Database(config_prefix=ANALYTICS)
    with pytest.raises(EngineNotInitialisedError, match="ANALYTICS_DATABASE_URL"):
        analytics.settings  # noqa: B018
    with pytest.raises(ConfigurationError) as caught:
        analytics.init_app(app)
    assert "set ANALYTICS_DATABASE_URL in app.config" in str(caught.value)
    assert "SANIC_ANALYTICS_DATABASE_URL" in str(caught.value)


@pytest.mark.parametrize("prefix", ["", "analytics_", "ANALYTICS DB_", 3])
def test_a_bad_prefix_is_refused(prefix: Any) -> None:
    """A prefix that cannot name ``app.config`` keys is a ``ConfigurationError``."""
    with pytest.raises(ConfigurationError, match=r"^config_prefix= \(argument\): expected"):
        Database(config_prefix=prefix)


def two_apps(db: Database, analytics: Database, url: str, second_url: str) -> Any:
    """An app that writes a user into both databases in one request."""
    app = make_app("two_databases")
    app.config.DATABASE_URL = url
    app.config.ANALYTICS_DATABASE_URL = second_url

    @app.post("/<user_id:int>")
    async def create(request: Request, user_id: int) -> HTTPResponse:
        db.write.add(User(id=user_id, name="main", email=f"{user_id}@example.com"))
        analytics.write.add(User(id=user_id, name="analytics", email=f"{user_id}@example.com"))
        await db.write.flush()
        await analytics.write.flush()
        # Each unit reads its own writes, from its own database.
        seen = [
            (await db.read.execute(select(User.name))).scalar_one(),
            (await analytics.read.execute(select(User.name))).scalar_one(),
        ]
        if request.args.get("raise"):
            raise RuntimeError("the handler failed after writing to both")
        return json(seen, status=int(request.args.get("status", 201)))

    db.init_app(app)
    analytics.init_app(app)
    return app


async def test_one_request_commits_both_databases(
    two: tuple[Database, Database], url: str, second_url: str, serve: Any
) -> None:
    """A request that succeeds commits its writes to each database."""
    db, analytics = two
    app = two_apps(db, analytics, url, second_url)
    async with schema(db, Base.metadata), schema(analytics, Base.metadata):
        served = await serve(app)
        response = await served.client.post("/1")
        assert response.status_code == 201
        assert response.json() == ["main", "analytics"]
        assert await users(db) == ["main"]
        assert await users(analytics) == ["analytics"]
        assert checked_out(db).total == checked_out(analytics).total == 0


@pytest.mark.parametrize("query", ["?status=409", "?raise=1"])
async def test_an_error_rolls_back_both_databases(
    two: tuple[Database, Database], url: str, second_url: str, serve: Any, query: str
) -> None:
    """A request answered 400 or above, or whose handler raises, rolls back both."""
    db, analytics = two
    app = two_apps(db, analytics, url, second_url)
    async with schema(db, Base.metadata), schema(analytics, Base.metadata):
        served = await serve(app)
        response = await served.client.post(f"/1{query}")
        assert response.status_code in (409, 500)
        assert await users(db) == []
        assert await users(analytics) == []
        assert checked_out(db).total == checked_out(analytics).total == 0


def deferred_app(first: Database, second: Database, orphan_in: Database) -> Any:
    """An app whose one request writes to ``first`` then ``second``; the write to
    ``orphan_in`` breaks a deferred foreign key, so its commit is refused."""
    app = make_app("deferred")

    @app.post("/")
    async def index(_request: Request) -> HTTPResponse:
        for database in (first, second):
            parent_id = 12345 if database is orphan_in else 1
            database.write.add(Child(id=1, parent_id=parent_id, name="child"))
            if database is not orphan_in:
                database.write.add(Parent(id=1))
        return json({}, status=201)

    return app


@pytest.mark.backends("sqlite", "postgresql")
async def test_a_failing_commit_rolls_back_the_databases_not_yet_committed(
    two: tuple[Database, Database], url: str, second_url: str, serve: Any
) -> None:
    """When the first database's commit is refused, the second one rolls back."""
    db, analytics = two
    app = deferred_app(db, analytics, orphan_in=db)
    db.init_app(app, url)
    analytics.init_app(app, second_url)
    async with schema(db, DeferredBase.metadata), schema(analytics, DeferredBase.metadata):
        served = await serve(app)
        assert (await served.client.post("/")).status_code == 500
        for database in (db, analytics):
            async with database:
                assert (await database.read.execute(select(Child))).scalars().all() == []
            assert checked_out(database).total == 0


@pytest.mark.backends("sqlite", "postgresql")
async def test_a_database_that_committed_stays_committed(
    two: tuple[Database, Database], url: str, second_url: str, serve: Any
) -> None:
    """Not two-phase commit: when the second database's commit is refused, the first
    one's commit, already made, stays; the client gets a 500."""
    db, analytics = two
    app = deferred_app(db, analytics, orphan_in=analytics)
    db.init_app(app, url)
    analytics.init_app(app, second_url)
    async with schema(db, DeferredBase.metadata), schema(analytics, DeferredBase.metadata):
        served = await serve(app)
        assert (await served.client.post("/")).status_code == 500
        async with db:
            assert len((await db.read.execute(select(Child))).scalars().all()) == 1
        async with analytics:
            assert (await analytics.read.execute(select(Child))).scalars().all() == []


@pytest.fixture
def cross_urls(tmp_path: Path) -> tuple[str, str]:
    """The PostgreSQL and the MariaDB test URLs; skipped without both (failed in CI)."""
    return backend_url("postgresql", tmp_path), backend_url("mysql", tmp_path)


@pytest.fixture
async def postgres_and_mariadb(
    cross_urls: tuple[str, str],
) -> AsyncIterator[tuple[Database, Database]]:
    """``db`` for PostgreSQL and ``analytics`` for MariaDB, configured by ``cross_app``."""
    db, analytics = Database(), Database(config_prefix=ANALYTICS)
    yield db, analytics
    await db.dispose()
    await analytics.dispose()


def cross_app(
    databases: tuple[Database, Database],
    urls: tuple[str, str],
    *,
    postgresql_first: bool = True,
    orphan: bool = False,
) -> Any:
    """An app whose one request writes a parent and a child to PostgreSQL (``db``), the
    child an orphan with ``orphan`` (its deferred foreign key fails the commit), and a
    user to MariaDB (``analytics``), PostgreSQL first unless told otherwise."""
    db, analytics = databases
    order = (db, analytics) if postgresql_first else (analytics, db)
    app = make_app("postgres_and_mariadb")
    app.config.DATABASE_URL, app.config.ANALYTICS_DATABASE_URL = urls

    @app.post("/")
    async def create(request: Request) -> HTTPResponse:
        for database in order:
            if database is db:
                db.write.add(Child(id=1, parent_id=12345 if orphan else 1, name="child"))
                if not orphan:
                    db.write.add(Parent(id=1))
                await db.write.flush()
            else:
                analytics.write.add(User(id=1, name="analytics", email="1@example.com"))
                await analytics.write.flush()
        seen = [
            len((await db.read.execute(select(Child))).scalars().all()),
            (await analytics.read.execute(select(User.name))).scalar_one(),
        ]
        if request.args.get("raise"):
            raise RuntimeError("the handler failed after writing to both")
        return json(seen, status=int(request.args.get("status", 201)))

    db.init_app(app)
    analytics.init_app(app)
    return app


async def children(db: Database) -> int:
    """Rows in ``deferred_children`` of ``db``, read in a unit of its own."""
    async with db:
        return len((await db.read.execute(select(Child))).scalars().all())


async def test_postgresql_and_mariadb_commit_in_one_request(
    postgres_and_mariadb: tuple[Database, Database], cross_urls: tuple[str, str]
) -> None:
    """One request through the Sanic test client writes to PostgreSQL and to MariaDB,
    reads its own writes from each, and commits both."""
    db, analytics = postgres_and_mariadb
    app = cross_app(postgres_and_mariadb, cross_urls)
    async with schema(db, DeferredBase.metadata), schema(analytics, Base.metadata):
        _, response = await app.asgi_client.post("/")
        assert (response.status, response.json) == (201, [1, "analytics"])
        assert await children(db) == 1
        assert await users(analytics) == ["analytics"]
        assert checked_out(db).total == checked_out(analytics).total == 0


@pytest.mark.parametrize("query", ["?status=409", "?raise=1"])
async def test_an_error_rolls_back_postgresql_and_mariadb(
    postgres_and_mariadb: tuple[Database, Database], cross_urls: tuple[str, str], query: str
) -> None:
    """A request answered 400 or above, or whose handler raises, after writing to
    PostgreSQL and MariaDB rolls back both."""
    db, analytics = postgres_and_mariadb
    app = cross_app(postgres_and_mariadb, cross_urls)
    async with schema(db, DeferredBase.metadata), schema(analytics, Base.metadata):
        _, response = await app.asgi_client.post(f"/{query}")
        assert response.status in (409, 500)
        assert await children(db) == 0
        assert await users(analytics) == []
        assert checked_out(db).total == checked_out(analytics).total == 0


async def test_a_failing_postgresql_commit_rolls_back_mariadb(
    postgres_and_mariadb: tuple[Database, Database], cross_urls: tuple[str, str]
) -> None:
    """When PostgreSQL, committed first, refuses the commit (a deferred foreign key),
    MariaDB's writes, not committed yet, roll back; the client gets a 500."""
    db, analytics = postgres_and_mariadb
    app = cross_app(postgres_and_mariadb, cross_urls, orphan=True)
    async with schema(db, DeferredBase.metadata), schema(analytics, Base.metadata):
        _, response = await app.asgi_client.post("/")
        assert response.status == 500
        assert await children(db) == 0
        assert await users(analytics) == []
        assert checked_out(db).total == checked_out(analytics).total == 0


async def test_mariadb_committed_before_a_failing_postgresql_commit_stays(
    postgres_and_mariadb: tuple[Database, Database], cross_urls: tuple[str, str]
) -> None:
    """Not two-phase commit: MariaDB, touched and so committed first, keeps its commit
    when PostgreSQL's commit is refused afterwards; the client gets a 500."""
    db, analytics = postgres_and_mariadb
    app = cross_app(postgres_and_mariadb, cross_urls, postgresql_first=False, orphan=True)
    async with schema(db, DeferredBase.metadata), schema(analytics, Base.metadata):
        _, response = await app.asgi_client.post("/")
        assert response.status == 500
        assert await children(db) == 0
        assert await users(analytics) == ["analytics"]
