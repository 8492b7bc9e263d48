"""Setting values: each parser checks one value and names its key when it is bad.

URLs stay ``sqlalchemy.URL`` objects so that a password is never rendered into a log
line or an error message (``public_url`` shows one without its secrets).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import NullPool, Pool, QueuePool

from ..errors import ConfigurationError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb")
#: The asyncio MySQL/MariaDB drivers whose connections ``dialects`` knows how to open.
_MYSQL_DRIVERS = ("asyncmy", "aiomysql")


def name_value(
    raw: Mapping[str, tuple[str, Any]], keyword: str, pattern: re.Pattern[str], default: str
) -> str:
    if keyword not in raw:
        return default
    key, value = raw[keyword]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ConfigurationError(f"{key}: not a valid cookie or header name: {value!r}.")
    return value


#: Query parameters of a URL that hold secrets (``?password=``, ``sslpassword``,
#: ``passwd``, an auth token): never shown, like the URL's own password.
_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|credential", re.IGNORECASE)


def public_url(url: URL, *, mask: bool = True) -> str:
    """``url`` as shown to users, logs and error messages: its password and every query
    parameter that holds a secret masked as ``***`` (``mask``) or left out."""
    secrets = [key for key in url.query if _SECRET_QUERY_KEY.search(key)]
    shown = url.difference_update_query(secrets)
    if not mask:
        # URL.set(password=None) keeps the password: None there means "unchanged".
        shown = URL.create(
            shown.drivername,
            username=shown.username,
            host=shown.host,
            port=shown.port,
            database=shown.database,
            query=shown.query,
        )
        return shown.render_as_string(hide_password=False)
    text = shown.render_as_string(hide_password=True)
    if secrets:
        text += ("&" if shown.query else "?") + "&".join(
            f"{quote_plus(key)}=***" for key in secrets
        )
    return text


def backend_of(url: URL) -> str:
    """``sqlite``, ``postgresql`` or ``mysql`` for ``url`` (MariaDB counts as MySQL)."""
    name = url.get_backend_name()
    return "mysql" if name == "mariadb" else name


def url_value(key: str, value: Any) -> URL:
    if isinstance(value, URL):
        url = value
    elif isinstance(value, str) and value.strip():
        try:
            url = make_url(value.strip())
        except ArgumentError as error:
            # The message of ArgumentError quotes the URL, password included.
            raise ConfigurationError(
                f"{key}: not a database URL (expected e.g. "
                "'postgresql+asyncpg://user:password@host/dbname')."
            ) from error.__cause__
        except ValueError:
            # Only the port is converted (int()); the message would quote it, and a
            # password containing ':' or '@' can end up there: not chained, not quoted.
            raise ConfigurationError(
                f"{key}: the port is not a number. If the password contains ':', '@' "
                "or '/', percent-encode them (%3A, %40, %2F), or pass a "
                "sqlalchemy.URL built with URL.create(...)."
            ) from None
    else:
        raise ConfigurationError(f"{key}: expected a URL string, got {type(value).__name__}.")
    if url.host is not None and "@" in url.host:
        # 'user:p@ss@host': the password ends at the first '@' and its tail becomes
        # part of the host, which repr() and error messages show.
        raise ConfigurationError(
            f"{key}: the host contains '@', so the password is probably cut short "
            "by an unescaped '@': percent-encode '@' in the password as %40."
        )
    if url.get_backend_name() not in _BACKENDS:
        raise ConfigurationError(
            f"{key}: unsupported database {url.get_backend_name()!r}; "
            "sanic-sqlalchemy supports sqlite, postgresql, mysql and mariadb."
        )
    try:
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise ConfigurationError(
            f"{key}: SQLAlchemy knows no driver {url.get_driver_name()!r} for "
            f"{url.get_backend_name()}; use 'sqlite+aiosqlite', 'postgresql+asyncpg' "
            "or 'mysql+asyncmy'."
        ) from None
    if not url.get_driver_name() or dialect.is_async is not True:
        raise ConfigurationError(
            f"{key}: {url.drivername!r} is not an asyncio driver; use "
            "'sqlite+aiosqlite', 'postgresql+asyncpg' or 'mysql+asyncmy'."
        )
    if backend_of(url) == "mysql" and dialect.driver not in _MYSQL_DRIVERS:
        raise ConfigurationError(
            f"{key}: the MySQL driver {dialect.driver!r} is not supported; use "
            "'mysql+asyncmy' (or 'mysql+aiomysql')."
        )
    if not _installed(dialect.driver):
        raise ConfigurationError(
            f"{key}: the {dialect.driver!r} driver package is not installed; install "
            f"it (pip install {dialect.driver}, or the sanic-sqlalchemy extra "
            "'postgresql' or 'mysql')."
        )
    return url


def _installed(module: str) -> bool:
    # Located, not imported: validating settings must not cost the driver's import.
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def pool_accepts_size(engine_options: Mapping[str, Any]) -> bool:
    """Whether the pool takes ``pool_size``, ``max_overflow`` and ``pool_timeout``.

    ``poolclass=NullPool`` (behind PgBouncer) and the other non-queue pools do not.
    """
    poolclass = engine_options.get("poolclass")
    return poolclass is None or issubclass(poolclass, QueuePool)


#: ``DATABASE_POOLCLASS`` as text: ``NullPool`` (a connection per checkout, closed at
#: check-in) or the default queue pool.
_POOLCLASS_NAMES: Mapping[str, type[Pool] | None] = {
    "nullpool": NullPool,
    "null": NullPool,
    "queuepool": None,
    "queue": None,
}


def poolclass_value(key: str, value: Any) -> type[Pool] | None:
    """The pool class to create engines with (``None``: SQLAlchemy's default queue
    pool), from a ``sqlalchemy.pool`` class or its name (``NullPool``, ``QueuePool``)."""
    if isinstance(value, type) and issubclass(value, Pool):
        return value
    if isinstance(value, str) and value.strip().lower() in _POOLCLASS_NAMES:
        return _POOLCLASS_NAMES[value.strip().lower()]
    raise ConfigurationError(
        f"{key}: expected 'NullPool' (a new connection per unit, for a pooler in front "
        "of the database), 'QueuePool' (the default) or a sqlalchemy.pool class, "
        f"got {value!r}."
    )


def transaction_pooling_value(raw: Mapping[str, tuple[str, Any]], backend: str) -> bool:
    """``DATABASE_TRANSACTION_POOLING``: only PostgreSQL has transaction poolers."""
    if "transaction_pooling" not in raw:
        return False
    enabled = bool_value(*raw["transaction_pooling"])
    if enabled and backend != "postgresql":
        raise ConfigurationError(
            f"{raw['transaction_pooling'][0]}: transaction pooling is supported for "
            f"PostgreSQL (PgBouncer, PgCat, Supavisor, RDS Proxy), not {backend}. "
            "Remove the setting, or point the URL at PostgreSQL."
        )
    return enabled


def read_urls_value(key: str, value: Any) -> tuple[URL, ...]:
    items: Iterable[Any]
    if isinstance(value, str):
        items = [part for part in (p.strip() for p in value.split(",")) if part]
    elif isinstance(value, URL):
        items = [value]
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise ConfigurationError(
            f"{key}: expected a list of URLs or a comma-separated string, "
            f"got {type(value).__name__}."
        )
    return tuple(url_value(key, item) for item in items)


def bool_value(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(f"{key}: expected true or false, got {value!r}.")


def int_value(key: str, value: Any, *, minimum: int) -> int:
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key}: expected a whole number, got {value!r}.") from None
    if number < minimum:
        raise ConfigurationError(f"{key}: must be at least {minimum}, got {number}.")
    return number


def float_value(key: str, value: Any, *, unit: str = "seconds") -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key}: expected a number of {unit}, got {value!r}.") from None
    if not number > 0:
        raise ConfigurationError(f"{key}: must be more than 0 {unit}, got {value!r}.")
    return number
