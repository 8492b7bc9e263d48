"""What differs between PostgreSQL, MySQL/MariaDB and SQLite, in one place.

Each backend says how its connections are made read-only, how a read runs inside the
unit's writing transaction without being able to write (rule 12), how a refused write
is recognised, and how a dead connection is noticed without a round trip.

How read-only is enforced:

* PostgreSQL: read connections open with ``default_transaction_read_only=on`` in the
  start-up packet and run in autocommit, so a read costs one round trip and the server
  refuses any write.  Inside a writing transaction a read runs in a savepoint made
  ``READ ONLY`` and rolled back afterwards.
* MySQL/MariaDB: read connections run ``SET SESSION TRANSACTION READ ONLY`` once when
  opened (a session-wide setting also refuses DDL, which ``START TRANSACTION READ
  ONLY`` does not), and ask the server to flag every change of session state in its
  replies, so that a connection whose read-only mode was switched off is seen without a
  round trip.  Inside a writing transaction nothing can be made read-only: there the
  read guard (``readonly``), which lets only plain queries through, is the only defence.
  Every connection is opened without the driver's multi-statement capability, so the
  server itself refuses chained statements.
* SQLite: read connections set ``PRAGMA query_only`` once when opened.  Inside a
  writing transaction a read runs in a savepoint with ``query_only`` switched on.

On every backend the read guard refuses, before sending it, any statement that is not a
plain query; the database's read-only mode is the second line of defence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolResetState
from sqlalchemy.util import await_only

from .errors import ConfigurationError
from .insight.watch import OVERHEAD_OPTION, note_begin
from .settings import Settings

logger = logging.getLogger("sanic_sqlalchemy")

_SAVEPOINT = "sanic_sqlalchemy_read"
#: Seconds to keep retrying the one-time switch of a new SQLite file to WAL mode.
_WAL_SWITCH_TIMEOUT = 10.0


class Role(Enum):
    """What an engine is for: the unit's writes or its reads."""

    WRITE = "write"
    READ = "read"


class Backend:
    """Behaviour shared by every backend; subclasses fill in the differences."""

    name = ""
    #: Execution options of a read connection that streams rows (server-side cursor).
    streaming_options: Mapping[str, Any] = {}

    def url(self, url: URL) -> URL:
        """The URL to connect to, with this backend's defaults filled in."""
        return url

    def engine_options(self, role: Role, settings: Settings) -> dict[str, Any]:
        """Keyword arguments for ``create_async_engine`` specific to this backend."""
        if role is Role.WRITE:
            return {}
        # Reads run in autocommit: there is never a transaction to roll back, and
        # MySQL drivers would otherwise send ROLLBACK twice per unit (session close
        # and pool check-in), two round trips for nothing.
        return {"isolation_level": "AUTOCOMMIT", "skip_autocommit_rollback": True}

    def install(self, engine: AsyncEngine, role: Role) -> None:
        """Attach this backend's connection set-up to ``engine`` (and to it only)."""

    def is_read_only_violation(self, error: BaseException | None) -> bool:
        """True when the driver error says a write was refused as read-only."""
        return False

    def is_dead(self, driver_connection: Any) -> bool:
        """True when the connection is known dead without asking the server."""
        return False

    def is_unsafe_for(self, role: Role, driver_connection: Any) -> bool:
        """True when a pooled connection left its expected state (read-only, idle)."""
        return False

    def read_only_lost(self, driver_connection: Any) -> bool:
        """True when a statement switched a read connection's read-only mode off."""
        return False

    @contextlib.contextmanager
    def read_inside_write(self, connection: Connection) -> Iterator[None]:
        """Run one read on the unit's writing connection without letting it write."""
        yield

    def cleanup(self) -> None:
        """Release what the backend made for itself (a temporary database file)."""


def _merge_connect_args(options: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(options.get("connect_args", {}))
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**value, **merged[key]}
        else:
            merged.setdefault(key, value)
    return merged


class PostgreSQL(Backend):
    name = "postgresql"
    # asyncpg opens cursors only inside a transaction: a streamed read gets one (made
    # read-only by the connection's default); the pool restores autocommit at check-in.
    streaming_options: Mapping[str, Any] = {"isolation_level": "READ COMMITTED"}

    def engine_options(self, role: Role, settings: Settings) -> dict[str, Any]:
        options = super().engine_options(role, settings)
        if role is Role.READ:
            # asyncpg's rollback outside a transaction sends nothing already; asking the
            # connection whether it is in autocommit first would only cost time.
            del options["skip_autocommit_rollback"]
            options["connect_args"] = _merge_connect_args(
                settings.engine_options,
                {"server_settings": {"default_transaction_read_only": "on"}},
            )
        return options

    def install(self, engine: AsyncEngine, role: Role) -> None:
        if role is Role.READ:
            event.listen(engine.sync_engine, "handle_error", _postgresql_keep_cancelled_read)

    def is_read_only_violation(self, error: BaseException | None) -> bool:
        return getattr(error, "sqlstate", None) == "25006"

    def is_dead(self, driver_connection: Any) -> bool:
        return bool(driver_connection.is_closed())

    def is_unsafe_for(self, role: Role, driver_connection: Any) -> bool:
        if driver_connection.is_in_transaction():
            return True
        return role is Role.READ and self.read_only_lost(driver_connection)

    def read_only_lost(self, driver_connection: Any) -> bool:
        # PostgreSQL reports this setting to the client whenever it changes, so reading
        # it costs no round trip.
        setting = getattr(driver_connection.get_settings(), "default_transaction_read_only", "on")
        return bool(setting != "on")

    @contextlib.contextmanager
    def read_inside_write(self, connection: Connection) -> Iterator[None]:
        # Through SQLAlchemy, not the raw driver: a connection that died here must be
        # reported and invalidated like any other disconnect.
        _scope_statement(connection, f"SAVEPOINT {_SAVEPOINT}")
        _scope_statement(connection, "SET TRANSACTION READ ONLY")
        try:
            yield
        except Exception:
            _leave_savepoint(connection)
            raise
        # A cancellation skips this: the connection is then invalidated anyway.
        _leave_savepoint(connection)


def _postgresql_keep_cancelled_read(context: ExceptionContext) -> None:
    """Keep the connection of a read cancelled mid-statement instead of discarding it.

    SQLAlchemy discards any connection whose statement was interrupted.  For a read in
    autocommit that is never needed with asyncpg: it asks the server to cancel the
    statement, and the connection's next command waits until the server is done with
    the cancelled one, so nothing of it is left over.  A client time-out burst then
    costs no new connections.  A read inside a transaction (a streamed read) is still
    discarded: its transaction's state is unknown.
    """
    driver = _cancelled_driver(context)
    if driver is None or driver.is_closed() or driver.is_in_transaction():
        return
    context.is_disconnect = False


def _cancelled_driver(context: ExceptionContext) -> Any:
    """The driver connection whose statement was cancelled, if it is still in use."""
    if not isinstance(context.original_exception, asyncio.CancelledError):
        return None
    connection = context.connection
    if connection is None or connection.invalidated:
        return None
    return connection.connection.driver_connection


def _leave_savepoint(connection: Connection) -> None:
    _scope_statement(connection, f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
    _scope_statement(connection, f"RELEASE SAVEPOINT {_SAVEPOINT}")


#: The read-only scope's own statements are part of the read's time in ``unit.stats``,
#: not statements of the unit (nor repeats of one another).
_READ_SCOPE = {OVERHEAD_OPTION: "read"}
_BEGIN = {OVERHEAD_OPTION: "write"}


def _scope_statement(connection: Connection, statement: str) -> None:
    connection.exec_driver_sql(statement, execution_options=_READ_SCOPE)


class MySQL(Backend):
    name = "mysql"

    def url(self, url: URL) -> URL:
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})
        return url

    def engine_options(self, role: Role, settings: Settings) -> dict[str, Any]:
        options = super().engine_options(role, settings)
        if role is Role.WRITE:
            # The pool's own reset would send ROLLBACK after every COMMIT, a round trip
            # for nothing: _mysql_reset rolls back only a transaction still open.
            options["pool_reset_on_return"] = None
        return options

    def __init__(self, *, multi_statements: bool = False) -> None:
        #: Whether the write pool's connections may chain statements (never the read pool's).
        self.multi_statements = multi_statements
        #: One per read engine (the primary's, each replica's): KILL QUERY goes to the
        #: server that runs the statement.
        self._interrupters: list[_QueryInterrupter] = []

    def install(self, engine: AsyncEngine, role: Role) -> None:
        sync_engine = engine.sync_engine
        if role is Role.READ:
            interrupter = _QueryInterrupter()
            self._interrupters.append(interrupter)

            def connect_read(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
                interrupter.connect_params = {
                    key: value for key, value in cparams.items() if key != "async_creator_fn"
                }
                _mysql_connect_tracking_session_state(dialect, record, cargs, cparams)

            def set_up_read(dbapi_connection: Any, record: Any) -> None:
                _mysql_read_only_session(dbapi_connection, record)
                interrupter.adopt(dbapi_connection.driver_connection)

            event.listen(sync_engine, "do_connect", connect_read)
            event.listen(sync_engine, "connect", set_up_read)
            event.listen(sync_engine, "handle_error", _mysql_keep_interrupted_read)
        else:
            if not self.multi_statements:
                event.listen(sync_engine, "do_connect", _mysql_connect_single_statement)
            event.listen(sync_engine.pool, "reset", _mysql_reset)
            event.listen(sync_engine, "handle_error", _mysql_kill_cancelled)

    def is_unsafe_for(self, role: Role, driver_connection: Any) -> bool:
        if _mysql_in_transaction(driver_connection):
            return True
        return role is Role.READ and self.read_only_lost(driver_connection)

    def read_only_lost(self, driver_connection: Any) -> bool:
        # The server flags every reply to a statement that changed the session's state
        # (a SET of any kind, a USE, a PREPARE): on a read connection, none ever should.
        status = getattr(driver_connection, "server_status", _SESSION_STATE_CHANGED)
        return bool(status & _SESSION_STATE_CHANGED)

    def cleanup(self) -> None:
        for interrupter in self._interrupters:
            interrupter.close()
        self._interrupters.clear()

    def is_read_only_violation(self, error: BaseException | None) -> bool:
        args: tuple[Any, ...] = getattr(error, "args", ())
        return len(args) > 0 and args[0] == 1792

    def is_dead(self, driver_connection: Any) -> bool:
        return _mysql_is_dead(driver_connection)


#: MySQL's error for a statement ended by ``KILL QUERY``.
_QUERY_INTERRUPTED = 1317
#: Seconds to wait for KILL QUERY, then for the interrupted statement's reply.
_INTERRUPT_TIMEOUT = 2.0


class _QueryInterrupter:
    """Ends the statement of a cancelled read with ``KILL QUERY`` and waits for its reply.

    asyncmy closes a connection whose reply was cut by a cancellation (its protocol
    would be out of step), so every client time-out used to cost a new connection, plus
    one more to ``KILL`` the statement the server was still running.  Instead, the read
    connections' cursors run each statement in a task of its own; when the caller is
    cancelled, the statement is ended on the server through one long-lived connection
    kept for that, its error reply is read, and the connection stays in the pool.
    """

    def __init__(self) -> None:
        self.connect_params: dict[str, Any] = {}
        self._killer: Any = None
        self._lock: asyncio.Lock | None = None

    def adopt(self, driver: Any) -> None:
        """Make the cursors of the read connection ``driver`` interruptible."""
        make_cursor = driver.cursor

        def cursor(*args: Any, **kwargs: Any) -> _InterruptibleCursor:
            return _InterruptibleCursor(make_cursor(*args, **kwargs), driver, self)

        driver.cursor = cursor

    async def interrupt(self, driver: Any, cursor: Any, running: asyncio.Future[Any]) -> None:
        """End ``running`` (a statement of ``cursor`` on ``driver``) on the server, or
        close ``driver``."""
        try:
            await asyncio.wait_for(self._kill_query(int(driver.thread_id())), _INTERRUPT_TIMEOUT)
            await asyncio.wait([running], timeout=_INTERRUPT_TIMEOUT)
            if running.done() and not _interrupted(running):
                # The statement ended by itself before the KILL arrived, which then waits
                # for the connection's next statement: spend it here, not on the next unit.
                try:
                    await asyncio.wait_for(cursor.execute("DO 0"), _INTERRUPT_TIMEOUT)
                except Exception as error:
                    if not _is_interruption(error):
                        raise
        except Exception:
            logger.warning(
                "could not end a cancelled MySQL read with KILL QUERY; its connection is "
                "discarded instead",
                exc_info=True,
            )
        if not running.done():
            running.cancel()  # the driver then closes the connection: it is discarded
            await asyncio.wait([running])
        if running.cancelled():
            return
        outcome = running.exception()
        if outcome is not None and not _interrupted(running):
            logger.warning("a cancelled MySQL read ended with an error", exc_info=outcome)

    async def _kill_query(self, thread_id: int) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            for attempt in (1, 2):
                if self._killer is None or not self._killer.connected:
                    import asyncmy

                    params = dict(self.connect_params, autocommit=True)
                    params["connect_timeout"] = 2
                    self._killer = await asyncmy.connect(**params)
                try:
                    async with self._killer.cursor() as cursor:
                        await cursor.execute(f"KILL QUERY {thread_id:d}")
                    return
                except Exception:
                    self._killer.close()
                    self._killer = None
                    if attempt == 2:
                        raise

    def close(self) -> None:
        if self._killer is not None:
            self._killer.close()
            self._killer = None


def _interrupted(running: asyncio.Future[Any]) -> bool:
    """Whether ``running`` failed because KILL QUERY ended it."""
    return not running.cancelled() and _is_interruption(running.exception())


def _is_interruption(error: BaseException | None) -> bool:
    return error is not None and getattr(error, "args", (None,))[:1] == (_QUERY_INTERRUPTED,)


class _InterruptibleCursor:
    """An asyncmy cursor whose ``execute`` survives the caller's cancellation (see
    ``_QueryInterrupter``); everything else is the driver's cursor."""

    __slots__ = ("_cursor", "_driver", "_interrupter")

    def __init__(self, cursor: Any, driver: Any, interrupter: _QueryInterrupter) -> None:
        self._cursor = cursor
        self._driver = driver
        self._interrupter = interrupter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    async def __aenter__(self) -> _InterruptibleCursor:
        await self._cursor.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._cursor.__aexit__(*exc_info)

    async def execute(self, query: Any, args: Any = None) -> Any:
        running = asyncio.ensure_future(self._cursor.execute(query, args))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            if running.done():
                raise
            interrupting = asyncio.ensure_future(
                self._interrupter.interrupt(self._driver, self._cursor, running)
            )
            # The connection goes back to the pool only once its statement is over.
            while not interrupting.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(interrupting)
            raise


def _mysql_keep_interrupted_read(context: ExceptionContext) -> None:
    """Keep a read connection whose cancelled statement was ended by ``KILL QUERY``."""
    driver = _cancelled_driver(context)
    if driver is None:
        return
    if _mysql_is_dead(driver) or _mysql_in_transaction(driver):
        _mysql_kill_cancelled(context)
        return
    context.is_disconnect = False


def _mysql_kill_cancelled(context: ExceptionContext) -> None:
    """A cancelled statement keeps running on the server, in its transaction: kill it.

    The driver only closes its socket, which MySQL/MariaDB notices when the statement
    ends; meanwhile its locks are held.  ``KILL`` from a connection of its own ends the
    statement and rolls the transaction back at once.
    """
    driver = _cancelled_driver(context)
    engine = context.engine
    if driver is None or engine is None:
        return
    thread_id = getattr(driver, "thread_id", None)
    if thread_id is None:
        return
    dialect = engine.dialect
    args, kwargs = dialect.create_connect_args(engine.url)
    # Bounded: the cancellation may come from the network being down.
    kwargs["connect_timeout"] = 2
    statement = f"KILL {int(thread_id()):d}"

    def kill_now() -> None:
        # Through the dialect's own DBAPI adapter, outside the pool: works for any
        # asyncio MySQL driver SQLAlchemy supports.
        killer = dialect.loaded_dbapi.connect(*args, **kwargs)
        try:
            cursor = killer.cursor()
            cursor.execute(statement)
            cursor.close()
        finally:
            killer.close()

    try:
        kill_now()
    except Exception:
        logger.warning(
            "could not KILL a cancelled MySQL statement; the server ends it later", exc_info=True
        )


def _mysql_is_dead(driver_connection: Any) -> bool:
    return bool(getattr(driver_connection, "_stream_broken", False)) or not getattr(
        driver_connection, "connected", True
    )


def _mysql_in_transaction(driver_connection: Any) -> bool:
    # The server sends its transaction status with every reply: reading it is free.
    # A driver without this PyMySQL method is assumed to be in a transaction.
    status = getattr(driver_connection, "get_transaction_status", None)
    return status is None or bool(status())


def _mysql_reset(dbapi_connection: Any, _record: Any, reset_state: PoolResetState) -> None:
    """Roll back a connection returned to the pool only if a transaction is still open."""
    if not reset_state.terminate_only and _mysql_in_transaction(dbapi_connection.driver_connection):
        dbapi_connection.rollback()


#: Client capabilities (MySQL protocol): chaining statements with ';', and receiving
#: session state changes in the server's replies.
_CLIENT_MULTI_STATEMENTS = 1 << 16
_CLIENT_SESSION_TRACK = 1 << 23
#: Server status flag: the statement just run changed the session's state.
_SESSION_STATE_CHANGED = 1 << 14


def _mysql_connect_single_statement(
    dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]
) -> None:
    """Open connections without the multi-statement capability the drivers always ask
    for: the server then refuses a chained statement (``SELECT 1; DELETE …``)."""
    cparams["async_creator_fn"] = _capability_connector(dialect, clear=_CLIENT_MULTI_STATEMENTS)


def _mysql_connect_tracking_session_state(
    dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]
) -> None:
    cparams["async_creator_fn"] = _capability_connector(
        dialect, clear=_CLIENT_MULTI_STATEMENTS, add=_CLIENT_SESSION_TRACK
    )


def _capability_connector(dialect: Any, *, clear: int, add: int = 0) -> Any:
    # asyncmy and aiomysql both build a Connection object and negotiate the capabilities
    # in _client_flag when it connects; both set MULTI_STATEMENTS unconditionally.
    driver = dialect.loaded_dbapi
    module = getattr(driver, "asyncmy", None) or getattr(driver, "aiomysql", None)
    connection_class = getattr(getattr(module, "connection", None), "Connection", None)
    if connection_class is None:
        # Settings accept only asyncmy and aiomysql, naming the key; this is a version of
        # them laid out differently.
        raise ConfigurationError(
            f"this version of the MySQL driver {dialect.driver!r} is not supported (no "
            "Connection class where sanic-sqlalchemy looks for it); install the version "
            "of the sanic-sqlalchemy extra 'mysql'."
        )

    async def connect(*args: Any, **kwargs: Any) -> Any:
        connection = connection_class(*args, **kwargs)
        connection._client_flag = (connection._client_flag & ~clear) | add
        opening = getattr(connection, "connect", None) or connection._connect
        await opening()
        return connection

    return connect


def _mysql_read_only_session(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET SESSION session_track_state_change = ON")
        cursor.execute("SET SESSION TRANSACTION READ ONLY")
        # Both replies carry the "state changed" flag; a reply without it clears it, so
        # that the flag means "changed since the connection was set up".
        cursor.execute("DO 0")
    finally:
        cursor.close()


class SQLite(Backend):
    name = "sqlite"

    def __init__(self) -> None:
        self._ephemeral: str | None = None

    def url(self, url: URL) -> URL:
        database = url.database or ""
        if database in ("", ":memory:") or url.query.get("mode") == "memory":
            # Separate read and write pools cannot share one in-memory database, so
            # "in memory" becomes a private file that is deleted at dispose().
            if self._ephemeral is None:
                handle, self._ephemeral = tempfile.mkstemp(prefix="sanic-sqlalchemy-", suffix=".db")
                os.close(handle)
            return url.set(database=self._ephemeral, query={})
        return url

    def engine_options(self, role: Role, settings: Settings) -> dict[str, Any]:
        options = super().engine_options(role, settings)
        # sqlite3's busy timeout: how long a writer waits for another to finish.
        options["connect_args"] = _merge_connect_args(
            settings.engine_options, {"timeout": settings.pool_timeout}
        )
        return options

    def install(self, engine: AsyncEngine, role: Role) -> None:
        sync_engine = engine.sync_engine
        if role is Role.READ:
            event.listen(sync_engine, "connect", _sqlite_read_connection)
        else:
            event.listen(sync_engine, "connect", _sqlite_set_up)
            # The driver's own BEGIN handling breaks savepoints; emit BEGIN ourselves.
            # IMMEDIATE takes the write lock at once, so a transaction that read first
            # cannot fail later when it upgrades to writing.
            event.listen(sync_engine, "begin", _sqlite_begin_immediate)
        event.listen(sync_engine, "handle_error", _sqlite_interrupt_cancelled)
        # A COMMIT refused by a deferred constraint leaves SQLite's transaction open
        # (and its write lock held) while SQLAlchemy considers it over.
        event.listen(sync_engine.pool, "checkin", _sqlite_end_leftover_transaction)

    def is_unsafe_for(self, role: Role, driver_connection: Any) -> bool:
        return bool(driver_connection.in_transaction)

    def is_read_only_violation(self, error: BaseException | None) -> bool:
        return getattr(error, "sqlite_errorcode", None) == 8 or "readonly database" in str(error)

    @contextlib.contextmanager
    def read_inside_write(self, connection: Connection) -> Iterator[None]:
        _scope_statement(connection, f"SAVEPOINT {_SAVEPOINT}")
        _scope_statement(connection, "PRAGMA query_only = 1")
        try:
            yield
        finally:
            # After a cancellation the connection is invalidated: nothing to restore,
            # and a statement on it would replace the CancelledError.
            if not connection.invalidated:
                _scope_statement(connection, "PRAGMA query_only = 0")
                _leave_savepoint(connection)

    def cleanup(self) -> None:
        if self._ephemeral is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._ephemeral + suffix)
            self._ephemeral = None


def _sqlite_set_up(dbapi_connection: Any, _record: Any = None) -> None:
    """Every SQLite connection: our own BEGIN, foreign keys enforced, WAL journal."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() != "wal":
            _switch_to_wal(cursor)
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    # The journal mode is stored in the database file, so this runs once per file.
    # Switching needs a moment without other connections (two workers starting on a
    # new file), and SQLite answers "locked" at once instead of waiting: retry.
    delay, waited = 0.01, 0.0
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as error:
            if "locked" not in str(error) or waited > _WAL_SWITCH_TIMEOUT:
                raise
        await_only(asyncio.sleep(delay))
        waited += delay
        delay = min(delay * 2, 0.5)


def _sqlite_read_connection(dbapi_connection: Any, _record: Any) -> None:
    _sqlite_set_up(dbapi_connection)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA query_only = ON")
    finally:
        cursor.close()


def _sqlite_end_leftover_transaction(dbapi_connection: Any, _record: Any) -> None:
    if dbapi_connection is not None and dbapi_connection.driver_connection.in_transaction:
        dbapi_connection.rollback()


def _sqlite_interrupt_cancelled(context: ExceptionContext) -> None:
    """Stop a cancelled statement at once and let its connection really close.

    aiosqlite runs it in a thread that a cancellation does not stop: closing the
    connection would wait behind it.  And SQLAlchemy leaves the cursor of a cancelled
    statement open, so the closed connection stays a zombie that holds its lock until
    the garbage collector finalises the cursor.
    """
    if not isinstance(context.original_exception, asyncio.CancelledError):
        return
    connection = context.connection
    if connection is None or connection.invalidated:
        return
    driver = connection.connection.driver_connection
    sqlite_connection = getattr(driver, "_connection", None)
    if sqlite_connection is not None:
        sqlite_connection.interrupt()
    # (ExceptionContext.cursor is never set in SQLAlchemy 2.1: use the execution's.)
    cursor = getattr(context.execution_context, "cursor", None)
    if cursor is not None:
        cursor.close()


#: Execution option of a test's outer connection (``testing.rolled_back``): a deferred
#: BEGIN, so that code outside the test's units (DDL at server start) is not locked out
#: before the test writes.
DEFERRED_BEGIN = "sanic_sqlalchemy_deferred_begin"


def _sqlite_begin_immediate(connection: Connection) -> None:
    started = time.perf_counter()
    if connection.get_execution_options().get(DEFERRED_BEGIN):
        connection.exec_driver_sql("BEGIN", execution_options=_BEGIN)
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE", execution_options=_BEGIN)
    # The wait for the write lock, for the unit that begins on this connection next.
    note_begin(connection, time.perf_counter() - started)


def backend_for(settings: Settings) -> Backend:
    """The backend object for the database that ``settings`` points at."""
    backend = settings.backend
    if backend == "postgresql":
        return PostgreSQL()
    if backend == "mysql":
        return MySQL(multi_statements=settings.multi_statements)
    return SQLite()
