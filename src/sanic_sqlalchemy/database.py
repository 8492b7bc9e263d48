"""``DatabaseCore``: settings, engines and units of work, tied together without any web
framework (``sanic.Database`` adds ``init_app`` on top of it)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from .engine.engines import Engines
from .errors import ConfigurationError, EngineNotInitialisedError, NoActiveUnitError
from .hooks import CallbackErrorHook
from .insight import UnitStats
from .listeners import Listening
from .replicas.tokens import given_tokens
from .retry import RetryPolicy, retrying
from .settings import DEFAULT_PREFIX, Settings
from .tasks import TaskRegistry
from .unit import Environment, UnitOfWork, UnitScope, UnitState
from .unit.outcome import error_commits
from .unit.sessions import ReadSession, WriteSession

if TYPE_CHECKING:
    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

P = ParamSpec("P")
T = TypeVar("T")
_S = TypeVar("_S", ReadSession, WriteSession)
_ids = itertools.count(1)
#: Seconds ``dispose()`` lets task runs of this process finish before handing them back.
TASKS_GRACE = 10.0

_NO_UNIT = (
    "{name} was used outside a unit of work. Use it inside a Sanic request handler "
    "(after db.init_app(app)), or open a unit yourself:\n\n"
    "    async with db:\n"
    "        ...\n"
)


class DatabaseCore(Listening):
    """The database of an application: ``db.read``, ``db.write`` and ``db.on_commit``.

    Create one (``sanic_sqlalchemy.Database``) at module level; nothing connects and no
    configuration is read until ``init_app`` (in Sanic) or the first unit of work (in
    scripts, workers, tests).
    Keyword options other than the documented settings (``echo``, ``pool_size``,
    ``max_overflow``, ``pool_timeout``, ``pool_recycle``) go to
    ``create_async_engine`` unchanged.  ``config_prefix`` names the ``app.config``
    keys this database reads (``ANALYTICS_DATABASE_`` reads ``ANALYTICS_DATABASE_URL``
    and so on), so that several databases can serve one app.  ``read_session_class``
    and ``write_session_class`` (subclasses of ``ReadSession`` and ``WriteSession``)
    are the classes of this database's ``db.read`` and ``db.write``: with sanic-ext, a
    handler parameter annotated with one of them receives that session.
    """

    def __init__(
        self,
        url: Any = None,
        *,
        read_urls: Any = None,
        commit_on_exit: bool | None = None,
        on_callback_error: CallbackErrorHook | None = None,
        config_prefix: str = DEFAULT_PREFIX,
        read_session_class: type[ReadSession] = ReadSession,
        write_session_class: type[WriteSession] = WriteSession,
        **options: Any,
    ) -> None:
        self.config_prefix = _prefix(config_prefix)
        #: The classes of ``db.read`` and ``db.write`` (and the annotations that
        #: sanic-ext injects them for).
        self.read_session_class = _session_class(
            "read_session_class", read_session_class, ReadSession
        )
        self.write_session_class = _session_class(
            "write_session_class", write_session_class, WriteSession
        )
        self._explicit: dict[str, Any] = {
            "url": url,
            "read_urls": read_urls,
            "commit_on_exit": commit_on_exit,
            **options,
        }
        self._engines: Engines | None = None
        self._disposing: asyncio.Future[None] | None = None
        self.scope: UnitScope[UnitOfWork] = UnitScope(f"sanic_sqlalchemy_unit_{next(_ids)}")
        #: What every unit of this database is handed (the test kit joins it to a
        #: rolled-back test's transaction there).
        self.environment = Environment(
            engines=self.current_engines,
            scope=self.scope,
            read_session_class=self.read_session_class,
            write_session_class=self.write_session_class,
            on_callback_error=on_callback_error,
        )
        self._settings: Settings | None = None
        #: Durable tasks: ``@db.task``, the tasks table, running and looking after them.
        self.tasks = TaskRegistry(self)
        #: ``@db.task``: see ``TaskRegistry.task`` and the README's "Durable tasks".
        self.task = self.tasks.task
        if url is not None:
            self.configure(Settings.build(self._explicit, prefix=self.config_prefix))

    # -- configuration and engines ---------------------------------------------

    def configure(self, settings: Settings) -> None:
        """Use ``settings`` from now on (``init_app`` builds them from ``app.config``)."""
        self._settings = settings
        self.environment.commit_on_exit = settings.commit_on_exit
        self.tasks.use(settings.tasks)

    def configure_from(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        config_prefix: str | None = None,
        **given: Any,
    ) -> None:
        """Configure the database without a web framework: build the settings from
        ``given`` (``None`` values ignored), then the ``Database(...)`` call, then
        ``config`` (a mapping such as ``app.config`` or ``os.environ``, read under the
        prefix); a missing or bad setting raises ``ConfigurationError`` naming its key.

        This is how tests, scripts and workers that build no app give a module-level
        ``Database()`` its URL: ``db.configure_from(url="sqlite+aiosqlite:///t.db")``
        (``init_app`` calls it with ``app.config``).  Engines already made keep the
        settings they were made with until ``await db.dispose()``.
        """
        if config_prefix is not None:
            self.config_prefix = _prefix(config_prefix)
        explicit = dict(self._explicit)
        explicit.update({key: value for key, value in given.items() if value is not None})
        self.configure(Settings.build(explicit, config, self.config_prefix))

    @property
    def joined(self) -> AsyncConnection | None:
        """The connection of a rolled-back test that every unit joins (the test kit's
        ``rolled_back``), or ``None``: set through ``db.environment``."""
        outer = self.environment.outer
        return None if outer is None else outer.connection

    @property
    def configured(self) -> bool:
        """Whether a URL is known (from ``Database(url)``, ``configure_from`` or
        ``init_app``)."""
        return self._settings is not None

    @property
    def on_callback_error(self) -> CallbackErrorHook | None:
        """Called as ``hook(error, callback)`` when an on-commit callback raises."""
        return self.environment.on_callback_error

    @on_callback_error.setter
    def on_callback_error(self, hook: CallbackErrorHook | None) -> None:
        self.environment.on_callback_error = hook

    @property
    def settings(self) -> Settings:
        """The validated settings; ``EngineNotInitialisedError`` before any URL is known."""
        if self._settings is None:
            prefix = self.config_prefix
            raise EngineNotInitialisedError(
                "No database URL is configured yet: pass one to Database(url), call "
                f"db.init_app(app) (which reads {prefix}URL from app.config), set "
                f"SANIC_{prefix}URL before the app starts, or, without an app (tests, "
                "scripts), call db.configure_from(url=...)."
            )
        return self._settings

    @property
    def engines(self) -> Engines:
        """The engines of the running event loop, created on first use."""
        return self.current_engines()

    def current_engines(self) -> Engines:
        """``db.engines`` as a method: what each unit is handed to find its engines."""
        engines = self._engines
        if engines is None:
            engines = self._engines = Engines(self.settings)
        else:
            engines.check_loop()
        return engines

    @property
    def engine(self) -> AsyncEngine:
        """The write engine of the running event loop, for DDL, migrations and tools.

        It has the same settings and pool as ``db.write`` (create it first, in the
        loop that will use it).  Work done on it is not part of any unit of work.
        """
        return self.engines.write

    async def create_all(self, metadata: MetaData, **kwargs: Any) -> None:
        """Create the tables of ``metadata`` that do not exist yet, in one transaction.

        ``kwargs`` go to ``MetaData.create_all`` (``tables=[...]``, ``checkfirst=``).
        """
        async with self.engine.begin() as connection:
            await connection.run_sync(metadata.create_all, **kwargs)

    async def drop_all(self, metadata: MetaData, **kwargs: Any) -> None:
        """Drop the tables of ``metadata`` that exist, in one transaction."""
        async with self.engine.begin() as connection:
            await connection.run_sync(metadata.drop_all, **kwargs)

    def replace_engines(self, engines: Engines | None) -> Engines | None:
        """Use ``engines`` from now on (``None``: made again on first use) and return the
        ones used so far, disposing neither (the test kit serves a server in a loop of
        its own beside the test's engines)."""
        previous, self._engines = self._engines, engines
        return previous

    async def start(self) -> None:
        """Create the engines in the running loop (Sanic calls this at server start).

        While a test isolates the database (a rolled-back test), the test kit decides
        instead: a server in the test's loop keeps the test's engines, so that its
        units join the test's transaction.
        """
        isolation = self.environment.isolation
        if isolation is not None:
            await isolation.server_starting()
            return
        if self._engines is not None:
            await self.dispose()
        engines = self._engines = Engines(self.settings)
        if engines.replicas is not None:
            # Replicas serve reads from the first requests on.
            await engines.replicas.refresh()

    async def dispose(self) -> None:
        """Close every pooled connection; the next unit creates fresh engines.

        Durable-task runs of this process get ``TASKS_GRACE`` seconds to finish first;
        the rest are handed back (run again later, no attempt counted).  A second call
        while a disposal is under way (a worker told to stop twice) waits for that
        disposal instead of returning before it is done.  While a test isolates the
        database, the test kit decides instead: a server the test stops must not take
        the test's connection with it.
        """
        isolation = self.environment.isolation
        if isolation is not None:
            await isolation.server_stopped()
            return
        if self.tasks.running:
            # Runs of this process need the engines to finish or be handed back.
            await self.tasks.stop(TASKS_GRACE)
        engines, self._engines = self._engines, None
        if engines is not None:
            self._disposing = asyncio.ensure_future(engines.dispose())
        disposing = self._disposing
        if disposing is None:
            return
        try:
            await asyncio.shield(disposing)
        finally:
            if disposing.done() and self._disposing is disposing:
                self._disposing = None

    # -- units of work ---------------------------------------------------------

    def open_unit(self, after: tuple[object, ...] = ()) -> UnitOfWork:
        """A new unit of work, not yet current anywhere (see ``async with db``)."""
        if self._settings is None:
            self.settings  # noqa: B018 (raises EngineNotInitialisedError, naming the fix)
        outer = self.environment.outer
        if outer is None:
            return self.unit_class(self.environment, after)
        # A rolled-back test: units take turns on its one connection.
        outer.admit()
        unit = self.unit_class(self.environment, after)
        outer.joined(unit)
        return unit

    def unit(self, *, after: str | bytes | Iterable[str | bytes | None] | None = None) -> UnitBlock:
        """``async with db.unit(after=token):`` — ``async with db:`` whose reads come
        only from replicas that have reached ``after`` (a ``unit.commit_token``, as
        ``str`` or ``bytes``, or several: the furthest counts), else from the primary.

        Invalid, forged or expired tokens are ignored (they come from clients); a value
        that is not a token at all (``after=123``) raises ``TokenTypeError``.  Joining
        a unit that is already open adds the tokens to it, as long as it has not read
        yet.
        """
        return UnitBlock(self, given_tokens(after))

    async def __aenter__(self) -> UnitOfWork:
        current = self.scope.current()
        if (
            current is not None
            and current.state is UnitState.ACTIVE
            and current.owner is asyncio.current_task()
        ):
            current.depth += 1
            return current
        # No unit here, another task's (a child task gets its own), or one whose
        # write side is settled (a handler that streams): a fresh, independent unit.
        unit = self.open_unit()
        if unit.beginning is not None:
            await unit.begin_heard()  # async unit_begin listeners, in the block's context
        unit.token = self.scope.enter(unit)
        return unit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        unit = self.scope.current()
        if unit is None:
            raise NoActiveUnitError("`async with db:` exited without an open unit.")
        if unit.depth:
            unit.depth -= 1
            return
        try:
            await unit.end(error_commits(exc), exc)
        finally:
            if unit.token is not None:
                self.scope.leave(unit.token)

    def current_unit(self, name: str = "db.read") -> UnitOfWork:
        """The open unit of the running task; ``NoActiveUnitError`` if there is none."""
        unit = self.scope.current()
        if unit is None:
            explain = self.scope.why_none
            why = explain() if explain is not None else None
            raise NoActiveUnitError((why or _NO_UNIT).format(name=name))
        return unit

    @property
    def stats(self) -> UnitStats:
        """The current unit's statements and time in the database (``unit.stats``)."""
        return self.current_unit("db.stats").stats

    @property
    def read(self) -> ReadSession:
        """The current unit's read-only session (``NoActiveUnitError`` outside a unit)."""
        return self.current_unit("db.read").read

    @property
    def write(self) -> WriteSession:
        """The current unit's write session (``NoActiveUnitError`` outside a unit)."""
        return self.current_unit("db.write").write

    def on_commit(self, func: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Run ``func(*args, **kwargs)`` once the current unit's data is committed.

        ``func`` may be sync or async.  It is dropped if the transaction rolls back.
        """
        self.current_unit("db.on_commit").on_commit(func, args, kwargs)

    @overload
    def retry(self, func: Callable[P, Awaitable[T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...

    @overload
    def retry(
        self, *, attempts: int = 3, backoff: float = 0.05, max_backoff: float = 1.0
    ) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]: ...

    def retry(
        self,
        func: Callable[..., Any] | None = None,
        *,
        attempts: int = 3,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
    ) -> Any:
        """``@db.retry`` / ``@db.retry(attempts=5)``: run the async function in a unit
        of its own, and again after a serialization failure or a deadlock.

        Each attempt commits (or rolls back) before the next may begin; a failed
        attempt's callbacks never run.  Between attempts it waits a random time of up
        to ``backoff * 2**(n-1)`` seconds, at most ``max_backoff``.  A Sanic handler
        can be decorated (below its route decorator); called inside a unit that has
        already written it raises ``UnitStateError``.
        """
        policy = RetryPolicy(attempts=attempts, backoff=backoff, max_backoff=max_backoff)
        if func is not None:
            return retrying(self.scope, self.open_unit, func, policy)

        def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
            return retrying(self.scope, self.open_unit, function, policy)

        return decorate

    def after_commit(self, func: Callable[P, Any]) -> Callable[P, None]:
        """Decorate ``func`` so that each call is scheduled with ``db.on_commit``.

        Works on SQLAlchemy ORM event listeners too (``after_insert`` on a model):
        their work then happens only if the unit commits.
        """

        @functools.wraps(func)
        def schedule(*args: P.args, **kwargs: P.kwargs) -> None:
            self.on_commit(func, *args, **kwargs)

        return schedule

    # Names kept from the hand-written DBSession wrappers this library replaces.
    add_post_process = on_commit
    post_process = after_commit


def _prefix(value: Any) -> str:
    if not isinstance(value, str) or re.fullmatch(r"[A-Z][A-Z0-9_]*", value) is None:
        raise ConfigurationError(
            f"config_prefix= (argument): expected upper-case letters such as "
            f"'ANALYTICS_DATABASE_', got {value!r}."
        )
    return value


def _session_class(name: str, value: Any, base: type[_S]) -> type[_S]:
    if not (isinstance(value, type) and issubclass(value, base)):
        raise ConfigurationError(
            f"{name}= (argument): expected {base.__name__} or a subclass of it "
            f"(class AnalyticsRead({base.__name__}): ...), got {value!r}."
        )
    return value


class UnitBlock:
    """The ``async with`` block of ``db.unit(after=...)``."""

    __slots__ = ("_db", "_tokens")

    def __init__(self, db: DatabaseCore, tokens: tuple[object, ...]) -> None:
        self._db = db
        self._tokens = tokens

    async def __aenter__(self) -> UnitOfWork:
        unit = await self._db.__aenter__()
        unit.want(self._tokens)
        return unit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._db.__aexit__(exc_type, exc, tb)
