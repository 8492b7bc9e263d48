"""The frozen settings model: from explicit arguments first, then ``app.config``.

Every value is checked once, when the settings are built, and a bad value is reported
with the key it came from.  URLs stay ``sqlalchemy.URL`` objects so that a password is
never rendered into a log line or an error message.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sqlalchemy.engine import URL

from ..errors import ConfigurationError
from .values import (
    backend_of,
    bool_value,
    float_value,
    int_value,
    name_value,
    pool_accepts_size,
    poolclass_value,
    public_url,
    read_urls_value,
    transaction_pooling_value,
    url_value,
)

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
    "DATABASE_POOLCLASS": "poolclass",
    "DATABASE_TRANSACTION_POOLING": "transaction_pooling",
    "DATABASE_COMMIT_ON_EXIT": "commit_on_exit",
    "DATABASE_MULTI_STATEMENTS": "multi_statements",
    "DATABASE_REPLICA_MAX_LAG": "replica_max_lag",
    "DATABASE_REPLICA_FALLBACK": "replica_fallback",
    "DATABASE_REPLICA_WAIT": "replica_wait",
    "DATABASE_TOKEN_COOKIE": "token_cookie",
    "DATABASE_TOKEN_HEADER": "token_header",
    "DATABASE_TOKEN_TTL": "token_ttl",
    "DATABASE_TOKEN_SECRET": "token_secret",
    "DATABASE_SERVER_TIMING": "server_timing",
    "DATABASE_SLOW_QUERY_MS": "slow_query_ms",
    "DATABASE_SLOW_QUERY_PARAMS": "slow_query_params",
    "DATABASE_REPEATED_QUERY_WARN": "repeated_query_warn",
    "DATABASE_TASKS_TABLE": "tasks_table",
    "DATABASE_TASKS_POLL": "tasks_poll",
    "DATABASE_TASKS_BACKEND": "tasks_backend",
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


#: Seconds a token's TTL must exceed the replica lag limit by.  Lag is measured from the
#: first probe of the primary that saw a commit: the probe asks about once a second
#: (``replicas.router.PROBE_INTERVAL``) and may wait up to as long again for the
#: primary's answer before asking anew, so a replica's measured lag can fall short of
#: its true lag by up to two seconds; one more second covers the clocks of several
#: servers (a token issued on one and read on another).  A token that expires before
#: every replica still missing its write has left the rotation sends reads to one.
TOKEN_TTL_MARGIN = 3.0
#: Bytes of a token secret, at least (``DATABASE_TOKEN_SECRET``).
MIN_TOKEN_SECRET_BYTES = 16
#: The secret that signs tokens when ``DATABASE_TOKEN_SECRET`` is not set: made once per
#: process, so tokens are honoured only by the process that issued them.
_PROCESS_SECRET = secrets.token_bytes(32)


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
    #: Seconds a client's position token is honoured; at least ``max_lag`` plus
    #: ``TOKEN_TTL_MARGIN``.
    token_ttl: float = 60.0
    #: The key that signs tokens (``DATABASE_TOKEN_SECRET``, else made per process).
    token_secret: bytes = field(default=_PROCESS_SECRET, repr=False)
    #: Whether ``token_secret`` was configured (False: made for this process only, so
    #: several workers or servers would refuse each other's tokens).
    token_secret_configured: bool = False


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
class QueueTarget:
    """An existing queue that committed tasks are relayed to (``DATABASE_TASKS_BACKEND``
    set to ``taskiq:module:broker`` or ``celery:module:app``); imported when the
    database is configured, not here."""

    #: ``taskiq`` or ``celery``.
    kind: str
    module: str
    attribute: str
    #: The key the value came from, to name it in errors.
    key: str


@dataclass(frozen=True)
class TasksSettings:
    """Where durable tasks are stored and how often a dispatcher looks for due ones."""

    #: The table of deferred tasks (``DATABASE_TASKS_TABLE``).
    table: str = "sanic_sqlalchemy_tasks"
    #: Seconds between a dispatcher's looks for due tasks (``DATABASE_TASKS_POLL``);
    #: PostgreSQL wakes it at once through LISTEN/NOTIFY as well.
    poll: float = 1.0
    #: Where committed tasks run (``DATABASE_TASKS_BACKEND``): ``None`` for ``local``
    #: (in the application's processes), else the queue they are relayed to.
    backend: QueueTarget | None = None


#: A table name every backend takes unquoted: letters, digits, underscores (at most 63
#: characters, PostgreSQL's limit).
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


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
    #: PostgreSQL behind a pooler in transaction mode (PgBouncer, PgCat, Supavisor, RDS
    #: Proxy): no session state, every read in a ``BEGIN READ ONLY`` transaction.
    transaction_pooling: bool = False
    replicas: ReplicaSettings = field(default_factory=ReplicaSettings)
    insight: InsightSettings = field(default_factory=InsightSettings)
    tasks: TasksSettings = field(default_factory=TasksSettings)
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
        if "poolclass" in raw:
            poolclass = poolclass_value(*raw["poolclass"])
            if poolclass is not None:
                engine_options["poolclass"] = poolclass

        if "url" not in raw:
            raise ConfigurationError(
                "No database URL: pass one to Database(url) or db.init_app(app, url), "
                f"or set {prefix}URL in app.config (SANIC_{prefix}URL in the "
                "environment), e.g. 'postgresql+asyncpg://user@host/dbname'."
            )
        url = url_value(*raw["url"])
        if not pool_accepts_size(engine_options):
            for keyword in ("pool_size", "max_overflow", "pool_timeout"):
                if keyword in raw:
                    raise ConfigurationError(
                        f"{raw[keyword][0]}: {engine_options['poolclass'].__name__} "
                        "keeps no connections waiting, so this setting cannot apply; "
                        "remove it (or the poolclass)."
                    )
        read_urls = read_urls_value(*raw["read_urls"]) if "read_urls" in raw else ()
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
            echo=bool_value(*raw["echo"]) if "echo" in raw else False,
            pool_size=int_value(*raw["pool_size"], minimum=1)
            if "pool_size" in raw
            else DEFAULT_POOL_SIZE,
            max_overflow=int_value(*raw["max_overflow"], minimum=0)
            if "max_overflow" in raw
            else DEFAULT_MAX_OVERFLOW,
            pool_timeout=float_value(*raw["pool_timeout"])
            if "pool_timeout" in raw
            else DEFAULT_POOL_TIMEOUT,
            pool_recycle=int_value(*raw["pool_recycle"], minimum=-1)
            if "pool_recycle" in raw
            else default_recycle,
            commit_on_exit=bool_value(*raw["commit_on_exit"]) if "commit_on_exit" in raw else True,
            multi_statements=_multi_statements(raw, backend),
            transaction_pooling=transaction_pooling_value(raw, backend),
            replicas=_replica_settings(raw, backend, read_urls, prefix),
            insight=_insight_settings(raw, prefix),
            tasks=_tasks_settings(raw),
            engine_options=engine_options,
        )
        return settings


def _multi_statements(raw: Mapping[str, tuple[str, Any]], backend: str) -> bool:
    if "multi_statements" not in raw:
        return False
    enabled = bool_value(*raw["multi_statements"])
    if enabled and backend != "mysql":
        raise ConfigurationError(
            f"{raw['multi_statements'][0]}: chained statements can only be allowed on "
            f"MySQL/MariaDB; the {backend} driver never runs more than one statement per "
            "call. Remove the setting."
        )
    return enabled


def _tasks_settings(raw: Mapping[str, tuple[str, Any]]) -> TasksSettings:
    defaults = TasksSettings()
    table = defaults.table
    if "tasks_table" in raw:
        key, value = raw["tasks_table"]
        if not isinstance(value, str) or not _TABLE_NAME.fullmatch(value):
            raise ConfigurationError(
                f"{key}: expected a table name of letters, digits and underscores (at "
                f"most 63, not starting with a digit), such as {defaults.table!r}; "
                f"got {value!r}."
            )
        table = value
    poll = float_value(*raw["tasks_poll"]) if "tasks_poll" in raw else defaults.poll
    backend = _queue_target(*raw["tasks_backend"]) if "tasks_backend" in raw else None
    return TasksSettings(table=table, poll=poll, backend=backend)


#: ``taskiq:package.module:broker`` or ``celery:package.module:app``.
_QUEUE_TARGET = re.compile(
    r"(?P<kind>taskiq|celery):(?P<module>[A-Za-z_][\w.]*):(?P<attribute>[A-Za-z_]\w*)"
)


def _queue_target(key: str, value: Any) -> QueueTarget | None:
    text = value.strip() if isinstance(value, str) else value
    if text == "local":
        return None
    match = _QUEUE_TARGET.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigurationError(
            f"{key}: expected 'local' (tasks run in the application's processes), "
            "'taskiq:module:broker' (a taskiq broker, e.g. 'taskiq:shop.queue:broker') "
            "or 'celery:module:app' (a Celery app, e.g. 'celery:shop.queue:app'); "
            f"got {value!r}."
        )
    return QueueTarget(match["kind"], match["module"], match["attribute"], key)


def _insight_settings(raw: Mapping[str, tuple[str, Any]], prefix: str) -> InsightSettings:
    slow_ms = None
    if "slow_query_ms" in raw:
        key, value = raw["slow_query_ms"]
        slow_ms = float_value(key, value, unit="milliseconds")
    return InsightSettings(
        prefix=prefix,
        server_timing=bool_value(*raw["server_timing"]) if "server_timing" in raw else False,
        slow_query_ms=slow_ms,
        slow_query_params=bool_value(*raw["slow_query_params"])
        if "slow_query_params" in raw
        else False,
        repeated_query_warn=int_value(*raw["repeated_query_warn"], minimum=1)
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
    max_lag = float_value(*raw["replica_max_lag"]) if "replica_max_lag" in raw else defaults.max_lag
    ttl = float_value(*raw["token_ttl"]) if "token_ttl" in raw else defaults.token_ttl
    if ttl < max_lag + TOKEN_TTL_MARGIN:
        key = raw["token_ttl"][0] if "token_ttl" in raw else raw["replica_max_lag"][0]
        raise ConfigurationError(
            f"{key}: the token TTL ({ttl:g} s) must exceed the replica lag limit "
            f"({max_lag:g} s) by {TOKEN_TTL_MARGIN:g} s at least: once a client's token "
            "expires, a replica still missing its write must have left the rotation, "
            "and a replica's lag is known only to about a probe interval (plus the "
            f"clocks of several servers). Set {prefix}TOKEN_TTL to "
            f"{max_lag + TOKEN_TTL_MARGIN:g} or more, or lower {prefix}REPLICA_MAX_LAG."
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
        wait = 0.0 if str(value).strip() in ("0", "0.0") else float_value(key, value)
    cookie, header = default_token_names(prefix)
    secret = _token_secret(raw)
    return ReplicaSettings(
        max_lag=max_lag,
        fallback=fallback,
        wait=wait,
        token_cookie=name_value(raw, "token_cookie", _COOKIE_NAME, cookie),
        token_header=name_value(raw, "token_header", _HEADER_NAME, header),
        token_ttl=ttl,
        token_secret=_PROCESS_SECRET if secret is None else secret,
        token_secret_configured=secret is not None,
    )


def _token_secret(raw: Mapping[str, tuple[str, Any]]) -> bytes | None:
    if "token_secret" not in raw:
        return None
    key, value = raw["token_secret"]
    secret = value.encode() if isinstance(value, str) else value
    if not isinstance(secret, bytes) or len(secret.strip()) < MIN_TOKEN_SECRET_BYTES:
        raise ConfigurationError(
            f"{key}: expected a secret of {MIN_TOKEN_SECRET_BYTES} characters or more, "
            "the same in every worker and server of the application (it signs the "
            'position tokens clients carry); make one with `python -c "import secrets; '
            'print(secrets.token_urlsafe(32))"`.'
        )
    return secret


def default_token_names(prefix: str) -> tuple[str, str]:
    """The token cookie and header of the database whose keys start with ``prefix``:
    ``db_position`` and ``X-DB-Position`` for ``DATABASE_``, and names of its own for
    any other prefix (``analytics_db_position`` and ``X-Analytics-DB-Position`` for
    ``ANALYTICS_DATABASE_``), so that two databases of one app never share one."""
    if prefix == DEFAULT_PREFIX:
        return ReplicaSettings.token_cookie, ReplicaSettings.token_header
    words = [word for word in prefix.removesuffix(DEFAULT_PREFIX).split("_") if word]
    return (
        "_".join(word.lower() for word in words) + "_db_position",
        "X-" + "-".join(word.capitalize() for word in words) + "-DB-Position",
    )


def token_name_clash(first: Settings, second: Settings) -> str | None:
    """What two databases of one app with replicas would share (a cookie or header
    name), or None: one's token would replace the other's in the client."""
    if not (first.read_urls and second.read_urls):
        return None
    a, b = first.replicas, second.replicas
    if a.token_cookie == b.token_cookie:
        return f"the cookie {a.token_cookie!r}"
    if a.token_header.lower() == b.token_header.lower():
        return f"the header {a.token_header!r}"
    return None
