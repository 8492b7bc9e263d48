"""Settings: explicit arguments, then ``app.config`` and ``SANIC_`` variables, checked at init."""

from __future__ import annotations

from typing import Any

import pytest
from sanic import Sanic
from sanic.config import Config

from sanic_sqlalchemy import ConfigurationError, Database
from sanic_sqlalchemy.settings import Settings

from .conftest import make_app


def test_database_connects_to_nothing_at_construction() -> None:
    """``Database()`` without a URL reads no configuration and creates no engine."""
    db = Database()
    assert db._engines is None


def test_every_key_is_read_from_app_config() -> None:
    """Every ``DATABASE_*`` key of the contract is read from ``app.config``."""
    config = {
        "DATABASE_URL": "postgresql+asyncpg://app:secret@db.internal/shop",
        "DATABASE_READ_URLS": "postgresql+asyncpg://r1/shop, postgresql+asyncpg://r2/shop",
        "DATABASE_ECHO": "true",
        "DATABASE_POOL_SIZE": "7",
        "DATABASE_MAX_OVERFLOW": 3,
        "DATABASE_POOL_TIMEOUT": "2.5",
        "DATABASE_POOL_RECYCLE": 600,
        "DATABASE_COMMIT_ON_EXIT": "false",
    }
    settings = Settings.build({}, config)
    assert settings.url.host == "db.internal"
    assert [url.host for url in settings.read_urls] == ["r1", "r2"]
    assert settings.echo is True
    assert settings.pool_size == 7
    assert settings.max_overflow == 3
    assert settings.pool_timeout == 2.5
    assert settings.pool_recycle == 600
    assert settings.commit_on_exit is False


def test_explicit_arguments_win_over_config() -> None:
    """An argument passed to ``init_app`` overrides the same key in ``app.config``."""
    settings = Settings.build(
        {"url": "sqlite+aiosqlite:///explicit.db", "pool_size": 3},
        {"DATABASE_URL": "sqlite+aiosqlite:///config.db", "DATABASE_POOL_SIZE": 9},
    )
    assert settings.url.database == "explicit.db"
    assert settings.pool_size == 3


def test_sanic_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """``SANIC_DATABASE_URL`` and friends reach the settings through Sanic's config."""
    monkeypatch.setenv("SANIC_DATABASE_URL", "mysql+asyncmy://root@127.0.0.1/test")
    monkeypatch.setenv("SANIC_DATABASE_POOL_SIZE", "4")
    settings = Settings.build({}, Config())
    assert settings.backend == "mysql"
    assert settings.pool_size == 4
    assert settings.pool_recycle == 3600  # MySQL default: drop connections before the server does


def test_init_app_reads_config_and_fails_at_init() -> None:
    """``init_app`` validates at once: a bad value raises naming its key, not at first request."""
    app = make_app("settings")
    app.config.DATABASE_URL = "sqlite+aiosqlite:///x.db"
    app.config.DATABASE_POOL_SIZE = "lots"
    with pytest.raises(ConfigurationError, match="DATABASE_POOL_SIZE: expected a whole number"):
        Database().init_app(app)


def test_missing_url_names_the_key() -> None:
    """Without any URL, ``init_app`` says where a URL can come from."""
    app: Sanic[Any, Any] = make_app("missing")
    with pytest.raises(ConfigurationError, match="DATABASE_URL") as caught:
        Database().init_app(app)
    assert "SANIC_DATABASE_URL" in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("DATABASE_URL", "not a url", "not a database URL"),
        ("DATABASE_URL", "oracle+cx://u@h/db", "unsupported database 'oracle'"),
        ("DATABASE_URL", "postgresql://u@h/db", "not an asyncio driver"),
        ("DATABASE_POOL_SIZE", 0, "must be at least 1"),
        ("DATABASE_MAX_OVERFLOW", -1, "must be at least 0"),
        ("DATABASE_POOL_TIMEOUT", "soon", "expected a number of seconds"),
        ("DATABASE_POOL_TIMEOUT", 0, "must be more than 0 seconds"),
        ("DATABASE_ECHO", "maybe", "expected true or false"),
        ("DATABASE_COMMIT_ON_EXIT", 2, "expected true or false"),
        ("DATABASE_READ_URLS", 5, "expected a list of URLs"),
        ("DATABASE_READ_URLS", "mysql+asyncmy://r/db", "is not a sqlite URL"),
    ],
)
def test_bad_values_are_reported_with_their_key(key: str, value: Any, message: str) -> None:
    """Each bad value raises ``ConfigurationError`` naming the key and what was expected."""
    config = {"DATABASE_URL": "sqlite+aiosqlite:///x.db", key: value}
    with pytest.raises(ConfigurationError) as caught:
        Settings.build({}, config)
    assert str(caught.value).startswith(key)
    assert message in str(caught.value)


def test_password_never_appears_in_errors() -> None:
    """Errors about a URL never repeat its password."""
    config = {
        "DATABASE_URL": "postgresql+asyncpg://app:hunter2@db/shop",
        "DATABASE_READ_URLS": "mysql+asyncmy://app:hunter2@replica/shop",
    }
    with pytest.raises(ConfigurationError) as caught:
        Settings.build({}, config)
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)


def test_engine_options_pass_through() -> None:
    """Keyword options that are not settings go to ``create_async_engine`` unchanged."""
    settings = Settings.build({"url": "sqlite+aiosqlite://", "connect_args": {"timeout": 3}})
    assert settings.engine_options == {"connect_args": {"timeout": 3}}


async def test_unknown_engine_option_is_a_configuration_error() -> None:
    """An engine option SQLAlchemy rejects raises ``ConfigurationError`` when engines start."""
    db = Database("sqlite+aiosqlite://", no_such_option=True)
    with pytest.raises(ConfigurationError, match="Could not create the database engine"):
        await db.start()
