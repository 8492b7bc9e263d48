"""The unit of work: two lazy sessions, a callback queue and a cancellation-safe end.

A unit goes ACTIVE → COMMITTED or ROLLED_BACK (its write side is settled; reads may
go on, as while a streaming response is sent) → ENDED (both sessions closed).  The
end runs in a task of its own that a cancellation cannot interrupt: the connection
goes back to the pool and the transaction is finished even when the client hangs up.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

from .callbacks import Callback, CallbackQueue, run_callbacks
from .errors import UnitStateError
from .gate import Gate
from .insight import UnitStats, attach, detach
from .replicas.positions import issue_token
from .replicas.probe import commit_position
from .replicas.routing import ReadRoute, wanted_position
from .sessions import ReadSession, WriteSession, has_pending

if TYPE_CHECKING:
    from contextvars import Token

    from sqlalchemy.engine import Connection

    from .context import _Outside
    from .database import Database
    from .dialects import Backend
    from .engines import Engines

logger = logging.getLogger("sanic_sqlalchemy")
_T = TypeVar("_T")


class UnitState(Enum):
    """Where a unit of work is in its life."""

    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"
    ENDED = "ended"


_STATE_MESSAGES = {
    UnitState.COMMITTED: (
        "db.write cannot be used: this unit has already committed (in Sanic, the "
        "response has started: a streaming response commits before its headers are "
        "sent). Write before responding, or open a new unit with `async with db:`."
    ),
    UnitState.ROLLED_BACK: (
        "db.write cannot be used: this unit has already rolled back (in Sanic, an "
        "error response has started). Open a new unit with `async with db:`."
    ),
    UnitState.ENDED: (
        "This unit of work has ended and its sessions are closed (in Sanic: the request "
        "has been answered; a task it started needs a unit of its own). Use db.read and "
        "db.write inside `async with db:` (or a request), not after it."
    ),
}


def _finish_write(session: Session, commit: bool, error: BaseException | None) -> None:
    """Commit or roll back the write session, then close it: one trip into SQLAlchemy's
    greenlet for both, where ``AsyncSession`` would take two."""
    try:
        if session.in_transaction():
            if commit:
                session.commit()
            else:
                _roll_back(session, error)
    finally:
        _close_logged(session)


def _roll_back(session: Session, error: BaseException | None) -> None:
    try:
        session.rollback()
    except Exception as failure:
        # The unit is failing already, or has nothing to keep: a rollback that fails
        # (typically because the connection died, which ends the server's transaction
        # anyway) must not replace the error the caller is about to see; it is logged
        # and noted on that error. The connection is discarded when the session closes.
        logger.error(
            "rolling back a unit of work failed; its connection is discarded", exc_info=failure
        )
        if error is not None and hasattr(error, "add_note"):  # Python >= 3.11
            error.add_note(f"sanic-sqlalchemy: the rollback also failed: {failure!r}")


def _close_logged(session: Session) -> None:
    try:
        session.close()
    except Exception:
        # Closing returns the connection to the pool, which discards it if it cannot be
        # reset; whatever the unit committed stays committed.
        logger.error("closing a session failed; its connection is discarded", exc_info=True)


class UnitOfWork:
    """One request's (or one ``async with db:`` block's) database work."""

    # Slots: one unit per request, and fewer objects for the cyclic GC to look at.
    __slots__ = (
        "_after",
        "_commit_on_exit",
        "_database",
        "_engines",
        "_read",
        "_route",
        "_write",
        "callbacks",
        "commit_failed",
        "commit_token",
        "depth",
        "owner",
        "read_bound_to",
        "read_gate",
        "reading_on_writer",
        "retrying",
        "state",
        "stats",
        "token",
        "write_gate",
        "writer_connection",
        "wrote",
    )

    def __init__(
        self, database: Database, commit_on_exit: bool, after: tuple[object, ...] = ()
    ) -> None:
        self._database = database
        #: Clients' position tokens: reads only from replicas that have reached them.
        self._after = after
        self._route: ReadRoute | None = None
        #: The position of this unit's last commit, for ``db.unit(after=...)`` (only
        #: with replicas; None until a write commits).
        self.commit_token: str | None = None
        self._engines: Engines | None = None
        self._commit_on_exit = commit_on_exit
        self._read: ReadSession | None = None
        self._write: WriteSession | None = None
        self.state = UnitState.ACTIVE
        self.owner = asyncio.current_task()
        #: How many ``async with db:`` blocks joined this unit beyond the first.
        self.depth = 0
        #: Restores the previous current unit when the unit ends.
        self.token: Token[UnitOfWork | _Outside | None] | None = None
        self.callbacks = CallbackQueue()
        self.read_gate = Gate()
        self.write_gate = Gate()
        #: The connection of the open write transaction, which reads then share (a
        #: test's outer connection, always: see ``Database.joined``).
        self.writer_connection: Connection | None = database.joined_sync
        #: The connection the read session's current transaction is bound to.
        self.read_bound_to: Connection | None = None
        self.reading_on_writer = False
        #: Whether a write transaction ever began: reads then refresh loaded objects.
        self.wrote = False
        #: Whether the unit tried to commit and could not (its writes rolled back).
        self.commit_failed = False
        #: What the unit asked of the database, and how long it took.
        self.stats = UnitStats()
        #: Whether ``@db.retry`` runs this unit (a retried function called inside
        #: joins it instead of opening its own).
        self.retrying = False

    @property
    def settled(self) -> bool:
        """Whether the write side is finished (committed or rolled back)."""
        return self.state is not UnitState.ACTIVE

    @property
    def ended(self) -> bool:
        """Whether both sessions are closed."""
        return self.state is UnitState.ENDED

    @property
    def commits_on_exit(self) -> bool:
        """Whether a successful end commits (``commit_on_exit``)."""
        return self._commit_on_exit

    @property
    def write_session(self) -> WriteSession | None:
        """The write session if it was created, without creating it."""
        return self._write

    @property
    def read_session(self) -> ReadSession | None:
        """The read session if it was created, without creating it."""
        return self._read

    # -- sessions ---------------------------------------------------------------

    @property
    def engines(self) -> Engines:
        if self._engines is None:
            self._engines = self._database.engines
        return self._engines

    @property
    def backend(self) -> Backend:
        return self.engines.backend

    @property
    def read(self) -> ReadSession:
        """The read-only session, created on first access."""
        session = self._read
        if session is None:
            self.check_readable()
            session = self._database.read_session_class(
                bind=self.engines.read, expire_on_commit=False, autoflush=False
            )
            session.sync_session.join_transaction_mode = "rollback_only"
            session.sync_session._unit = self
            self._read = session
        elif self.state is UnitState.ENDED:
            raise UnitStateError(_STATE_MESSAGES[UnitState.ENDED])
        return session

    @property
    def write(self) -> WriteSession:
        """The write session, created on first access."""
        session = self._write
        if session is None:
            self.check_writable()
            joined = self._database.joined
            write_class = self._database.write_session_class
            if joined is None:
                session = write_class(bind=self.engines.write, expire_on_commit=False)
            else:
                # A test's outer transaction: this unit's transaction is a savepoint.
                session = write_class(
                    bind=joined, expire_on_commit=False, join_transaction_mode="create_savepoint"
                )
            session.sync_session._unit = self
            self._write = session
        elif self.state is not UnitState.ACTIVE:
            raise UnitStateError(_STATE_MESSAGES[self.state])
        return session

    def check_readable(self) -> None:
        if self.state is UnitState.ENDED:
            raise UnitStateError(_STATE_MESSAGES[UnitState.ENDED])

    def check_writable(self) -> None:
        if self.state is not UnitState.ACTIVE:
            raise UnitStateError(_STATE_MESSAGES[self.state])

    # -- replicas ---------------------------------------------------------------

    def read_route(self) -> ReadRoute | None:
        """Where reads outside the writer go, when the database has replicas."""
        route = self._route
        if route is None:
            engines = self.engines
            replicas = engines.replicas
            if replicas is None:
                return None
            settings = engines.settings.replicas
            wanted = wanted_position(self._after, replicas.backend, settings.token_ttl)
            route = self._route = ReadRoute(replicas, engines.read, settings, wanted)
        return route

    def want(self, tokens: tuple[object, ...]) -> None:
        """Read only from replicas that reached ``tokens`` too (before the first read)."""
        if not tokens:
            return
        route = self._route
        if route is not None and route.read_from is not None:
            logger.debug("position tokens given after the unit's first read are ignored")
            return
        self._after += tokens
        self._route = None  # made again, with every token, at the first read

    @property
    def read_from(self) -> str:
        """``"primary"`` or the URL (without password) of the replica serving reads."""
        route = self._route
        if route is None or self.wrote:
            return "primary"
        return route.read_from or "primary"

    def capture_commit_position(self, connection: Connection) -> None:
        """Right after a commit on ``connection``: remember its position as a token."""
        if self._engines is None or self._engines.replicas is None:
            return
        try:
            position = commit_position(connection, self._engines.backend.name)
        except Exception:
            logger.warning(
                "could not read the commit's position; the client's next reads may go "
                "to the primary only by the lag limit",
                exc_info=True,
            )
            return
        if position is not None and position.encode():
            self.commit_token = issue_token(position)

    @property
    def holds_writes(self) -> bool:
        """Whether ``db.write`` holds changes not yet flushed."""
        write = self._write
        return write is not None and has_pending(write.sync_session)

    def absorb(self, inner: UnitOfWork) -> None:
        """Take over what ``inner`` (a unit of its own that ``@db.retry`` ran inside this
        one, as in a handler) leaves the client: its statistics and its commit's
        position, so that the response reports and carries them."""
        self.stats.absorb(inner.stats)
        if inner.commit_token is not None and self.owner is asyncio.current_task():
            self.commit_token = inner.commit_token

    def write_began(self, connection: Connection) -> None:
        self.writer_connection = connection
        self.wrote = True
        attach(connection, self.stats)

    def write_ended(self) -> None:
        self.writer_connection = self._database.joined_sync

    # -- callbacks --------------------------------------------------------------

    def on_commit(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Queue ``func(*args, **kwargs)`` for after the commit of the current work."""
        if self.state is not UnitState.ACTIVE:
            raise UnitStateError(
                f"db.on_commit cannot be used: this unit has already {self.state.value}, "
                "so no later commit will run the callback. Call it directly instead."
            )
        savepoint = None
        if self._write is not None:
            savepoint = self._write.sync_session.get_nested_transaction()
        callback = Callback(func, args, kwargs, savepoint)
        self.callbacks.add(callback)
        capture = self._database.capture
        if capture is not None:
            capture.registered(callback)

    async def run_ready_callbacks(self) -> None:
        """Run the callbacks made ready by a commit that just succeeded."""
        ready = self.callbacks.take_ready()
        if ready:
            await self._run_outside(ready)

    async def _run_outside(self, callbacks: list[Callback]) -> None:
        # Always inside a task started by shielded(), whose context is a copy: leaving
        # the unit here leaves it for that task only, so that callbacks run outside
        # any unit while the commit before them ran inside it (ORM event listeners of
        # its flush may register callbacks).
        self._database.scope.step_outside()
        capture = self._database.capture
        if capture is not None and not capture.ready(callbacks):
            return
        await run_callbacks(callbacks, self._database.on_callback_error)

    # -- the end ----------------------------------------------------------------

    async def settle(self, success: bool, error: BaseException | None = None) -> None:
        """Commit (on success) or roll back the write side; run or drop callbacks.

        Reads keep working afterwards until ``end()``.  A failing commit raises,
        after rolling back and dropping the callbacks; so does a success while
        ``db.read`` holds changes (``ReadOnlyError``), which would otherwise be lost.
        ``error`` is the exception the unit is failing with, if any: a rollback
        failure is noted on it, not raised.
        """
        if self.state is not UnitState.ACTIVE:
            return
        if success and self._read is not None:
            refusal = self._read.sync_session.refusal_of_pending_changes(at_end=True)
            if refusal is not None:
                # Changes made through db.read would be dropped without a word: the
                # unit fails instead, and its writes roll back with it.
                self.commit_failed = True
                await self.settle(False, refusal)
                raise refusal
        if self._write is None:
            # Nothing was written: no transaction to finish, no task to spawn.
            self.state = UnitState.COMMITTED if success else UnitState.ROLLED_BACK
            if success and self.callbacks:
                await self.shielded(
                    self._run_outside(self.callbacks.take_ready(include_pending=True))
                )
            else:
                self.callbacks.drop_all()
            return
        await self.shielded(self._settle_write(self._write, success, error))

    async def _settle_write(
        self, write: WriteSession, success: bool, error: BaseException | None
    ) -> None:
        commit = success and self._commit_on_exit
        # A task of this unit cancelled mid-write may still be leaving the session.
        await self.write_gate.until_free()
        try:
            await greenlet_spawn(_finish_write, write.sync_session, commit, error)
        except BaseException:
            # Callbacks of an earlier commit of this unit that has not run them yet
            # (a transaction committed through its own object) still run: their data
            # is committed. Those waiting for this commit are dropped.
            committed = self.callbacks.take_ready()
            self.callbacks.drop_all()
            self.state = UnitState.ROLLED_BACK
            self.commit_failed = commit
            if committed:
                await self._run_outside(committed)
            raise
        self.state = UnitState.COMMITTED if success else UnitState.ROLLED_BACK
        if commit or (success and not self.wrote):
            ready = self.callbacks.take_ready(include_pending=True)
        else:
            # commit_on_exit=False: what was registered since the last commit waited
            # for a commit that never came.
            ready = self.callbacks.take_ready()
            self.callbacks.drop_all()
        if ready:
            await self._run_outside(ready)

    async def end(self, success: bool, error: BaseException | None = None) -> None:
        """Settle the unit if not yet settled, then close both sessions."""
        try:
            await self.settle(success, error)
        finally:
            if self.state is not UnitState.ENDED:
                self.state = UnitState.ENDED
                read = self._read
                # The sessions point back at the unit: dropping these references lets
                # reference counting free a finished unit at once, not the cyclic GC.
                self._read = self._write = None
                self.writer_connection = self.read_bound_to = None
                joined = self._database.joined_sync
                if joined is not None:
                    # The test's outer connection outlives the unit: what runs on it
                    # next is not this unit's.
                    detach(joined, self.stats)
                if read is not None:
                    if read.sync_session.get_transaction() is None and self.read_gate.free:
                        # Each read gave its connection back as it finished: closing
                        # only detaches the loaded objects, with no I/O a cancellation
                        # could cut.
                        read.sync_session.close()
                    else:
                        await self.shielded(self._close_when_free(read, self.read_gate))

    @staticmethod
    async def _close_when_free(session: AsyncSession, gate: Gate) -> None:
        # A task of this unit cancelled mid-read (asyncio.gather returns as soon as one
        # of its tasks is cancelled) may still be leaving the session: let it finish.
        await gate.until_free()
        await greenlet_spawn(_close_logged, session.sync_session)

    async def shielded(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` to completion even if the calling task is cancelled meanwhile.

        The work runs in its own task, in a copy of the caller's context: still inside
        the unit (ORM event listeners of a flush at commit may call ``db.on_commit``),
        until it runs callbacks, which run outside any unit (and may open their own).
        A cancellation of the caller is re-raised once the work is done.
        """
        # The unit is set explicitly, not left to an integration's provider (which may
        # only answer the task that owns the request's unit).
        context = contextvars.copy_context()
        context.run(self._database.scope.enter, self)
        task = context.run(asyncio.get_running_loop().create_task, work)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            while not task.done():
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    continue
                except BaseException:
                    break
            if not task.cancelled() and task.exception() is not None:
                logger.error(
                    "the end of a cancelled unit of work failed",
                    exc_info=task.exception(),
                )
            raise
