"""Frozen, validated settings: from explicit arguments first, then ``app.config``.

Every value is checked once, when the settings are built, and a bad value is reported
with the key it came from.  URLs stay ``sqlalchemy.URL`` objects so that a password is
never rendered into a log line or an error message.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import Pool, QueuePool

from .errors import ConfigurationError

#: Settings read from ``app.config`` (and so from ``SANIC_``-prefixed variables),
#: mapped to the keyword that passes the same setting explicitly.
CONFIG_KEYS: Mapping[str, str] = {
    "DATABASE_URL": "url",
    "DATABASE_READ_URLS": "read_urls",
    "DATABASE_ECHO": "echo",
    "DATABASE_POOL_SIZE": "pool_size",
    "DATABASE_MAX_OVERFLOW": "max_overflow",
    "DATABASE_POOL_TIMEOUT": "pool_timeout",
    "DATABASE_POOL_RECYCLE": "pool_recycle",
    "DATABASE_COMMIT_ON_EXIT": "commit_on_exit",
    "DATABASE_MULTI_STATEMENTS": "multi_statements",
    "DATABASE_REPLICA_MAX_LAG": "replica_max_lag",
    "DATABASE_REPLICA_FALLBACK": "replica_fallback",
    "DATABASE_REPLICA_WAIT": "replica_wait",
    "DATABASE_TOKEN_COOKIE": "token_cookie",
    "DATABASE_TOKEN_HEADER": "token_header",
    "DATABASE_TOKEN_TTL": "token_ttl",
    "DATABASE_SERVER_TIMING": "server_timing",
    "DATABASE_SLOW_QUERY_MS": "slow_query_ms",
    "DATABASE_SLOW_QUERY_PARAMS": "slow_query_params",
    "DATABASE_REPEATED_QUERY_WARN": "repeated_query_warn",
}
_KEY_FOR = {keyword: key for key, keyword in CONFIG_KEYS.items()}
#: The prefix of the keys in ``CONFIG_KEYS``; ``Database(config_prefix=...)`` replaces it.
DEFAULT_PREFIX = "DATABASE_"

#: A fixed-size pool: under load, overflow connections are opened and closed over
#: and over (hundreds a second), which costs more than waiting for a pooled one.
DEFAULT_POOL_SIZE = 10
DEFAULT_MAX_OVERFLOW = 0
DEFAULT_POOL_TIMEOUT = 10.0
#: MySQL and MariaDB drop connections idle longer than ``wait_timeout``; proxies
#: and firewalls often do so much sooner.
DEFAULT_MYSQL_POOL_RECYCLE = 3600

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_BACKENDS = ("sqlite", "postgresql", "mysql", "mariadb")
#: The asyncio MySQL/MariaDB drivers whose connections ``dialects`` knows how to open.
_MYSQL_DRIVERS = ("asyncmy", "aiomysql")


class ReplicaFallback(Enum):
    """What reads do when no replica can serve them."""

    PRIMARY = "primary"
    ERROR = "error"


@dataclass(frozen=True)
class ReplicaSettings:
    """How reads are routed to replicas and how clients' positions travel."""

    #: Seconds a replica may lag before it leaves the rotation.
    max_lag: float = 30.0
    fallback: ReplicaFallback = ReplicaFallback.PRIMARY
    #: Seconds to wait for a replica to reach a client's position (0: use the primary).
    wait: float = 0.0
    token_cookie: str = "db_position"
    token_header: str = "X-DB-Position"
    #: Seconds a client's position token is honoured; at least ``max_lag``.
    token_ttl: float = 60.0


@dataclass(frozen=True)
class InsightSettings:
    """What a unit reports about its statements beyond ``unit.stats``."""

    #: The ``app.config`` prefix of this database, to name its keys in messages.
    prefix: str = DEFAULT_PREFIX
    #: Send a ``Server-Timing`` header with the request's database time (reveals it).
    server_timing: bool = False
    #: Log statements slower than this many milliseconds (None: never).
    slow_query_ms: float | None = None
    #: Put the statement's parameters in the slow-statement log (they may be secrets).
    slow_query_params: bool = False
    #: Warn when one unit runs the same statement more than this many times.
    repeated_query_warn: int | None = None

    @property
    def watches_statements(self) -> bool:
        """Whether each statement needs looking at beyond counting and timing it."""
        return self.slow_query_ms is not None or self.repeated_query_warn is not None


@dataclass(frozen=True)
class Settings:
    """Everything needed to build the engines of one ``Database``."""

    url: URL
    read_urls: tuple[URL, ...] = ()
    echo: bool = False
    pool_size: int = DEFAULT_POOL_SIZE
    max_overflow: int = DEFAULT_MAX_OVERFLOW
    pool_timeout: float = DEFAULT_POOL_TIMEOUT
    pool_recycle: int | None = None
    commit_on_exit: bool = True
    #: MySQL/MariaDB: let db.write chain statements with ';' (db.read never can).
    multi_statements: bool = False
    replicas: ReplicaSettings = field(default_factory=ReplicaSettings)
    insight: InsightSettings = field(default_factory=InsightSettings)
    engine_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        """``sqlite``, ``postgresql`` or ``mysql`` (MariaDB counts as ``mysql``)."""
        return backend_of(self.url)

    @classmethod
    def build(
        cls,
        explicit: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        prefix: str = DEFAULT_PREFIX,
    ) -> Settings:
        """Merge explicit keyword values over ``config`` values and validate them all.

        ``explicit`` holds keywords (``url``, ``pool_size``…) whose value is not None;
        ``config`` is a mapping such as ``app.config``, read under ``prefix``
        (``ANALYTICS_DATABASE_URL`` for ``ANALYTICS_DATABASE_``).  Keywords that are
        not settings are passed on to ``create_async_engine`` unchanged.
        """
        raw: dict[str, tuple[str, Any]] = {}
        for default_key, keyword in CONFIG_KEYS.items():
            key = prefix + default_key.removeprefix(DEFAULT_PREFIX)
            if config is not None and config.get(key) is not None:
                raw[keyword] = (key, config[key])
        engine_options: dict[str, Any] = {}
        for keyword, value in explicit.items():
            if value is None:
                continue
            if keyword in _KEY_FOR:
                raw[keyword] = (f"{keyword}= (argument)", value)
            else:
                engine_options[keyword] = value
        if "poolclass" in engine_options:
            _poolclass(engine_options["poolclass"])

        if "url" not in raw:
            raise ConfigurationError(
                "No database URL: pass one to Database(url) or db.init_app(app, url), "
                f"or set {prefix}URL in app.config (SANIC_{prefix}URL in the "
                "environment), e.g. 'postgresql+asyncpg://user@host/dbname'."
            )
        url = _url(*raw["url"])
        if not pool_accepts_size(engine_options):
            for keyword in ("pool_size", "max_overflow", "pool_timeout"):
                if keyword in raw:
                    raise ConfigurationError(
                        f"{raw[keyword][0]}: {engine_options['poolclass'].__name__} "
                        "keeps no connections waiting, so this setting cannot apply; "
                        "remove it (or the poolclass)."
                    )
        read_urls = _read_urls(*raw["read_urls"]) if "read_urls" in raw else ()
        backend = backend_of(url)
        for read_url in read_urls:
            if read_url.get_backend_name() != url.get_backend_name():
                raise ConfigurationError(
                    f"{raw['read_urls'][0]}: replica {public_url(read_url)} is not a "
                    f"{url.get_backend_name()} URL like the primary {public_url(url)}."
                )
        default_recycle = DEFAULT_MYSQL_POOL_RECYCLE if backend == "mysql" else None
        settings = cls(
            url=url,
            read_urls=read_urls,
            echo=_bool(*raw["echo"]) if "echo" in raw else False,
            pool_size=_int(*raw["pool_size"], minimum=1)
            if "pool_size" in raw
            else DEFAULT_POOL_SIZE,
            max_overflow=_int(*raw["max_overflow"], minimum=0)
            if "max_overflow" in raw
            else DEFAULT_MAX_OVERFLOW,
            pool_timeout=_float(*raw["pool_timeout"])
            if "pool_timeout" in raw
            else DEFAULT_POOL_TIMEOUT,
            pool_recycle=_int(*raw["pool_recycle"], minimum=-1)
            if "pool_recycle" in raw
            else default_recycle,
            commit_on_exit=_bool(*raw["commit_on_exit"]) if "commit_on_exit" in raw else True,
            multi_statements=_multi_statements(raw, backend),
            replicas=_replica_settings(raw, backend, read_urls, prefix),
            insight=_insight_settings(raw, prefix),
            engine_options=engine_options,
        )
        return settings


def _multi_statements(raw: Mapping[str, tuple[str, Any]], backend: str) -> bool:
    if "multi_statements" not in raw:
        return False
    enabled = _bool(*raw["multi_statements"])
    if enabled and backend != "mysql":
        raise ConfigurationError(
            f"{raw['multi_statements'][0]}: chained statements can only be allowed on "
            f"MySQL/MariaDB; the {backend} driver never runs more than one statement per "
            "call. Remove the setting."
        )
    return enabled


def _insight_settings(raw: Mapping[str, tuple[str, Any]], prefix: str) -> InsightSettings:
    slow_ms = None
    if "slow_query_ms" in raw:
        key, value = raw["slow_query_ms"]
        slow_ms = _float(key, value, unit="milliseconds")
    return InsightSettings(
        prefix=prefix,
        server_timing=_bool(*raw["server_timing"]) if "server_timing" in raw else False,
        slow_query_ms=slow_ms,
        slow_query_params=_bool(*raw["slow_query_params"]) if "slow_query_params" in raw else False,
        repeated_query_warn=_int(*raw["repeated_query_warn"], minimum=1)
        if "repeated_query_warn" in raw
        else None,
    )


_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")


def _replica_settings(
    raw: Mapping[str, tuple[str, Any]], backend: str, read_urls: tuple[URL, ...], prefix: str
) -> ReplicaSettings:
    if read_urls and backend == "sqlite":
        raise ConfigurationError(
            f"{raw['read_urls'][0]}: SQLite has no replicas; remove the setting."
        )
    defaults = ReplicaSettings()
    max_lag = _float(*raw["replica_max_lag"]) if "replica_max_lag" in raw else defaults.max_lag
    ttl = _float(*raw["token_ttl"]) if "token_ttl" in raw else defaults.token_ttl
    if ttl < max_lag:
        key = raw["token_ttl"][0] if "token_ttl" in raw else raw["replica_max_lag"][0]
        raise ConfigurationError(
            f"{key}: the token TTL ({ttl:g} s) may not be shorter than the replica lag "
            f"limit ({max_lag:g} s): a client's write could still be missing on a replica "
            f"that is in the rotation after its token expired. Raise {prefix}TOKEN_TTL or "
            f"lower {prefix}REPLICA_MAX_LAG."
        )
    fallback = defaults.fallback
    if "replica_fallback" in raw:
        key, value = raw["replica_fallback"]
        try:
            fallback = ReplicaFallback(str(value).strip().lower())
        except ValueError:
            raise ConfigurationError(
                f"{key}: expected 'primary' or 'error', got {value!r}."
            ) from None
    wait = defaults.wait
    if "replica_wait" in raw:
        key, value = raw["replica_wait"]
        wait = 0.0 if str(value).strip() in ("0", "0.0") else _float(key, value)
    return ReplicaSettings(
        max_lag=max_lag,
        fallback=fallback,
        wait=wait,
        token_cookie=_name(raw, "token_cookie", _COOKIE_NAME, defaults.token_cookie),
        token_header=_name(raw, "token_header", _HEADER_NAME, defaults.token_header),
        token_ttl=ttl,
    )


def _name(
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


def _url(key: str, value: Any) -> URL:
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


def _poolclass(value: Any) -> None:
    if not (isinstance(value, type) and issubclass(value, Pool)):
        raise ConfigurationError(
            "poolclass= (argument): expected a sqlalchemy.pool class such as NullPool, "
            f"got {value!r}."
        )


def _read_urls(key: str, value: Any) -> tuple[URL, ...]:
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
    return tuple(_url(key, item) for item in items)


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigurationError(f"{key}: expected true or false, got {value!r}.")


def _int(key: str, value: Any, *, minimum: int) -> int:
    try:
        if isinstance(value, (bool, float)):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key}: expected a whole number, got {value!r}.") from None
    if number < minimum:
        raise ConfigurationError(f"{key}: must be at least {minimum}, got {number}.")
    return number


def _float(key: str, value: Any, *, unit: str = "seconds") -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key}: expected a number of {unit}, got {value!r}.") from None
    if not number > 0:
        raise ConfigurationError(f"{key}: must be more than 0 {unit}, got {value!r}.")
    return number
