"""MySQL and MariaDB (asyncmy, aiomysql): read-only sessions, single statements, and
cancelled statements ended on the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolResetState

from ...errors import ConfigurationError
from ...settings import Settings
from .base import Backend, Role, cancelled_driver, leftover_description

logger = logging.getLogger("sanic_sqlalchemy")


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

    checks_leftover_state = True

    def leftover_state(self, dbapi_connection: Any) -> str | None:
        # A changed setting or variable already shows in every reply (session state
        # tracking, read_only_lost); named locks (GET_LOCK) do not. RELEASE_ALL_LOCKS()
        # says how many the session held, and releases them in the same round trip.
        if self.read_only_lost(dbapi_connection.driver_connection):
            # Read before the query below, whose reply clears the flag.
            return "a changed session setting or variable"
        return leftover_description(
            dbapi_connection,
            "SELECT CASE WHEN RELEASE_ALL_LOCKS() > 0 THEN 'named locks (GET_LOCK)' END",
        )

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
    driver = cancelled_driver(context)
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
    driver = cancelled_driver(context)
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
