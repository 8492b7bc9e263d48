"""The unit of work's life: two lazy sessions, then a cancellation-safe end.

A unit goes ACTIVE → COMMITTED or ROLLED_BACK (its write side is settled; reads may
go on, as while a streaming response is sent) → ENDED (both sessions closed).  The
end runs in a task of its own that a cancellation cannot interrupt: the connection
goes back to the pool and the transaction is finished even when the client hangs up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from contextvars import Token
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

from ..errors import UnitStateError
from ..insight import detach
from .core import STATE_MESSAGES, UnitCore, UnitState, has_pending
from .environment import Environment
from .gate import Gate
from .sessions import ReadSession, ReplicaReadSyncSession, WriteSession

logger = logging.getLogger("sanic_sqlalchemy")


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


class UnitOfWork(UnitCore):
    """One request's (or one ``async with db:`` block's) database work."""

    __slots__ = ("_read", "_write", "depth", "token")

    #: What the unit was handed, session classes included (``UnitCore`` knows it only as
    #: ``UnitNeeds``).
    _needs: Environment

    #: What async ``unit_begin`` listeners still have to do, for an opener in async code
    #: to await at once (``begin_heard``). Only the unit class of a database with
    #: listeners sets it (``listeners.ObservedUnit``); here it is always ``None``.
    beginning: Awaitable[None] | None = None

    def __init__(self, env: Environment, after: tuple[object, ...] = ()) -> None:
        super().__init__(env, after)
        self._read: ReadSession | None = None
        self._write: WriteSession | None = None
        #: How many ``async with db:`` blocks joined this unit beyond the first.
        self.depth = 0
        #: Restores the previous current unit when the unit ends.
        self.token: Token[Any] | None = None

    async def begin_heard(self) -> None:
        """Await what the async ``unit_begin`` listeners have to do (called right after
        opening the unit by an opener in async code, when ``beginning`` is set)."""

    def work_raised(self, error: BaseException) -> None:
        """The work of this unit raised ``error``, which its end will not be handed (a
        Sanic handler's, answered by an exception handler): for the listeners only."""

    @property
    def write_session(self) -> WriteSession | None:
        """The write session if it was created, without creating it."""
        return self._write

    @property
    def read_session(self) -> ReadSession | None:
        """The read session if it was created, without creating it."""
        return self._read

    @property
    def read(self) -> ReadSession:
        """The read-only session, created on first access."""
        if self.state is UnitState.ENDED:
            raise UnitStateError(STATE_MESSAGES[UnitState.ENDED])
        session = self._read
        if session is None:
            engines = self.engines
            session = self._needs.read_session_class(
                bind=engines.read,
                expire_on_commit=False,
                autoflush=False,
                # Decided per database, not per read: replica routing only with replicas
                # (None: the class's own synchronous half).
                sync_session_class=None if engines.replicas is None else ReplicaReadSyncSession,
            )
            sync = session.sync_session
            sync.join_transaction_mode = "rollback_only"
            sync._unit = self
            self._read = session
            self.read_sync = sync
        return session

    @property
    def write(self) -> WriteSession:
        """The write session, created on first access."""
        session = self._write
        if session is None:
            self.check_writable()
            env = self._needs
            outer = env.outer
            if outer is None:
                session = env.write_session_class(bind=self.engines.write, expire_on_commit=False)
            else:
                # A test's outer transaction: this unit's transaction is a savepoint.
                session = env.write_session_class(
                    bind=outer.connection,
                    expire_on_commit=False,
                    join_transaction_mode="create_savepoint",
                )
            sync = session.sync_session
            sync._unit = self
            self._write = session
            self.write_sync = sync
        elif self.state is not UnitState.ACTIVE:
            raise UnitStateError(STATE_MESSAGES[self.state])
        return session

    def absorb(self, inner: UnitCore) -> None:
        """Take over what ``inner`` (a unit of its own that ``@db.retry`` ran inside this
        one, as in a handler) leaves the client: its statistics and its commit's
        position, so that the response reports and carries them."""
        self.stats.absorb(inner.stats)
        if inner.commit_token is not None and self.owner is asyncio.current_task():
            self.commit_token = inner.commit_token

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
        read = self._read
        if success and read is not None and has_pending(read.sync_session):
            refusal = read.sync_session.refusal_of_pending_changes(at_end=True)
            if refusal is not None:
                # Changes made through db.read would be dropped without a word: the
                # unit fails instead, and its writes roll back with it.
                self.commit_failed = True
                await self.settle(False, refusal)
                raise refusal
        if self._write is None:
            # Nothing was written: no transaction to finish, no task to spawn.
            self.state = UnitState.COMMITTED if success else UnitState.ROLLED_BACK
            callbacks = self.callbacks
            if callbacks is not None:
                ready = callbacks.take_ready(include_pending=success)
                callbacks.drop_all()
                if success and ready:
                    await self.shielded(self.run_outside(ready))
            return
        await self.shielded(self._settle_write(self._write, success, error))

    async def _settle_write(
        self, write: WriteSession, success: bool, error: BaseException | None
    ) -> None:
        commit = success and self.commits_on_exit
        # A task of this unit cancelled mid-write may still be leaving the session.
        await self.write_gate.until_free()
        try:
            await greenlet_spawn(_finish_write, write.sync_session, commit, error)
        except BaseException:
            # Callbacks of an earlier commit of this unit that has not run them yet
            # (a transaction committed through its own object) still run: their data
            # is committed. Those waiting for this commit are dropped.
            callbacks = self.callbacks
            self.state = UnitState.ROLLED_BACK
            self.commit_failed = commit
            if callbacks is not None:
                committed = callbacks.take_ready()
                callbacks.drop_all()
                if committed:
                    await self.run_outside(committed)
            raise
        self.state = UnitState.COMMITTED if success else UnitState.ROLLED_BACK
        callbacks = self.callbacks
        if callbacks is None:
            return
        if commit or (success and not self.wrote):
            ready = callbacks.take_ready(include_pending=True)
        else:
            # commit_on_exit=False: what was registered since the last commit waited
            # for a commit that never came.
            ready = callbacks.take_ready()
            callbacks.drop_all()
        if ready:
            await self.run_outside(ready)

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
                self._read = self._write = self.read_sync = self.write_sync = None
                self.writer_connection = self.read_bound_to = None
                joined = self._needs.outer_sync
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
