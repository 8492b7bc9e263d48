"""``db.write``: the session whose work commits when the unit succeeds.

Its synchronous half keeps one task at a time on its connection and tells the unit
about begins, commits and savepoints, so that on-commit callbacks follow the
transaction (a released savepoint hands its callbacks on, a rolled-back one drops them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction
from sqlalchemy.orm import InstanceState, Session, SessionTransaction

from ...errors import UnitStateError
from ...hooks import TaskOutbox
from ..core import has_pending
from .common import UnitSession, refuse_close

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

_O = TypeVar("_O", bound=object)

#: Why ``await db.write.commit()`` is refused in a unit that ``@db.retry`` runs.
RETRIED_COMMIT = (
    "await db.write.commit() inside @db.retry: a retry runs the whole function again "
    "in a new unit, so work committed before a conflict would stay committed and be "
    "done (and its on-commit callbacks run) a second time. Remove the commit: the "
    "attempt commits when the function returns (use `await db.write.flush()` for "
    "generated ids, `async with db.write.begin():` for a savepoint), or retry only the "
    "part after it."
)


class _WriteSyncSession(UnitSession):
    """The synchronous half of ``db.write``."""

    def _run(self, statement: Any, params: Any, kwargs: dict[str, Any]) -> Any:
        unit = self._unit
        unit.check_writable()
        with unit.write_turn:
            return Session.execute(self, statement, params, **kwargs)

    def flush(self, objects: Any = None) -> None:
        unit = self._unit
        unit.check_writable()
        with unit.write_turn:
            unit.stats.flushed(super().flush, objects)

    def commit(self) -> None:
        unit = self._unit
        unit.check_writable()
        with unit.write_turn:
            super().commit()

    def rollback(self) -> None:
        with self._unit.write_turn:
            self._unit.stats.rolled_back(super().rollback)

    # A session held past its unit's commit (an injected handler parameter, a local
    # variable) refuses new work as ``db.write`` does then, instead of taking changes
    # that nothing would flush.

    def add(self, instance: object, *, _warn: bool = True) -> None:
        self._unit.check_writable()
        super().add(instance, _warn=_warn)

    def delete(self, instance: object) -> None:
        self._unit.check_writable()
        super().delete(instance)

    def merge(self, instance: _O, *, load: bool = True, options: Any = None) -> _O:
        self._unit.check_writable()
        return super().merge(instance, load=load, options=options)

    def begin(self, nested: bool = False) -> SessionTransaction:
        # In a unit that commits by itself, a begin() block is part of the unit: a
        # savepoint, released into the unit's transaction (rolled back alone if the
        # block raises). With commit_on_exit=False the user owns the commits: a
        # begin() outside a transaction is a real one, committed at the block's end.
        if not nested and (self._unit.commits_on_exit or self.in_transaction()):
            nested = True
        return super().begin(nested=nested)

    def _before_attach(self, state: InstanceState[Any], obj: object) -> bool:
        read = self._unit.read_sync
        if read is not None and state.session_id == read.hash_key:
            # An object db.read loaded, given to db.write (add, delete, or reached by
            # their cascades): it moves here, with the changes made to it.
            read._expunge_states([state])
        return super()._before_attach(state, obj)


@event.listens_for(_WriteSyncSession, "after_begin")
def _on_write_begin(
    session: Session, _transaction: SessionTransaction, connection: Connection
) -> None:
    assert isinstance(session, _WriteSyncSession)
    session._unit.write_began(connection)


@event.listens_for(_WriteSyncSession, "after_commit")
def _on_write_commit(session: Session) -> None:
    assert isinstance(session, _WriteSyncSession)
    unit = session._unit
    callbacks = unit.callbacks
    savepoint = session.get_nested_transaction()
    if savepoint is None:
        unit.stats.committed()
        if callbacks is not None:
            callbacks.committed()
        engines = unit._engines
        if engines is not None and engines.replicas is not None:
            # Only with replicas: the position the client's next reads must reach.
            unit.capture_commit_position(unit.writer_connection)
    elif callbacks is not None:
        callbacks.savepoint_released(savepoint, _enclosing_savepoint(savepoint))


class _FollowsTransaction(Protocol):
    """What follows the write transaction's savepoints: the on-commit queue
    (``unit.callbacks``) and, with durable tasks, the unit's task outbox."""

    def savepoint_rolled_back(self, savepoint: object, /) -> None: ...

    def rolled_back(self) -> None: ...


def _soft_rollback(follower: _FollowsTransaction, previous: SessionTransaction) -> None:
    """A savepoint rolled back (drop what it held) or the whole transaction did."""
    if previous.nested:
        follower.savepoint_rolled_back(previous)
    elif previous.parent is None:
        follower.rolled_back()


@event.listens_for(_WriteSyncSession, "before_commit")
@event.listens_for(_WriteSyncSession, "after_flush_postexec")
def _on_write_committing(session: Session, _context: Any = None) -> None:
    # The COMMIT's time (unit.stats) runs from the start of the commit or the end of
    # its flush, whichever is last, to after_commit.
    assert isinstance(session, _WriteSyncSession)
    session._unit.stats.mark()


@event.listens_for(_WriteSyncSession, "after_soft_rollback")
def _on_write_rollback(session: Session, previous: SessionTransaction) -> None:
    assert isinstance(session, _WriteSyncSession)
    callbacks = session._unit.callbacks
    if callbacks is not None:
        _soft_rollback(callbacks, previous)


@event.listens_for(_WriteSyncSession, "after_transaction_end")
def _on_write_end(session: Session, transaction: SessionTransaction) -> None:
    assert isinstance(session, _WriteSyncSession)
    if transaction.parent is None:
        unit = session._unit
        unit.write_ended()
        # A commit made its callbacks ready before this; a transaction that ended any
        # other way (rollback, close, reset, invalidate) threw its data away.
        callbacks = unit.callbacks
        if callbacks is not None:
            callbacks.rolled_back()


def _enclosing_savepoint(savepoint: SessionTransaction) -> SessionTransaction | None:
    parent = savepoint.parent
    while parent is not None and not parent.nested:
        parent = parent.parent
    return parent


class WriteSession(AsyncSession):
    """``db.write``: an ``AsyncSession`` whose work commits when the unit succeeds.

    An explicit ``await db.write.commit()`` runs the callbacks registered before it
    right after it succeeds (inside ``@db.retry`` it raises ``UnitStateError``: the
    retry commits each attempt itself); ``await db.write.rollback()`` drops them.
    """

    sync_session_class = _WriteSyncSession
    sync_session: _WriteSyncSession

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        # `async with db.write as session:` gives the unit's session and leaves it to
        # the unit, which commits it (or rolls it back) when it ends. An exception
        # leaving the block goes on to end the unit, which then rolls back.
        pass

    async def close(self) -> None:
        refuse_close(self.sync_session._unit, "db.write")
        await super().close()

    def begin(self) -> AsyncSessionTransaction:
        """A block of work that is part of the unit: ``async with db.write.begin():``.

        Where the unit commits by itself (``commit_on_exit``, the default) the block is
        a savepoint: its work is released into the unit's transaction when the block
        ends and commits with the unit; an exception leaving the block rolls back the
        block's work alone.  With ``commit_on_exit=False`` and no transaction open, the
        block is a transaction of its own that commits at the block's end and runs the
        callbacks registered before it, like ``await db.write.commit()``.
        """
        return _UnitTransaction(self)

    async def commit(self) -> None:
        # Shielded like the commit at the unit's end: a cancellation that arrives while
        # COMMIT is in flight waits for its outcome, so that a transaction that did
        # commit also runs its callbacks; the cancellation is re-raised afterwards.
        unit = self.sync_session._unit
        if unit.retrying:
            raise UnitStateError(RETRIED_COMMIT)
        await unit.shielded(self._commit_then_callbacks())

    async def _commit_then_callbacks(self) -> None:
        await super().commit()
        await self.sync_session._unit.run_ready_callbacks()

    async def rollback(self) -> None:
        await super().rollback()
        callbacks = self.sync_session._unit.callbacks
        if callbacks is not None:
            callbacks.rolled_back()


class _UnitTransaction(AsyncSessionTransaction):
    """``db.write.begin()``: runs the callbacks its commit made ready, as an explicit
    ``commit()`` does (a savepoint's wait for the unit's commit)."""

    __slots__ = ()

    async def commit(self) -> None:
        unit = self.session.sync_session._unit  # type: ignore[attr-defined]
        await unit.shielded(self._then_callbacks(super().commit()))

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        unit = self.session.sync_session._unit  # type: ignore[attr-defined]
        await unit.shielded(self._then_callbacks(super().__aexit__(type_, value, traceback)))

    async def _then_callbacks(self, ending: Any) -> None:
        await ending
        await self.session.sync_session._unit.run_ready_callbacks()  # type: ignore[attr-defined]


class _TaskWriteSyncSession(_WriteSyncSession):
    """The synchronous half of ``db.write`` in a database with durable tasks: it also
    stores the unit's deferred tasks with its commit (``hooks.TaskOutbox``), and they
    follow its savepoints as callbacks do.  A database gets it once a task is
    registered (``with_task_outbox``), so that others pay nothing for tasks."""

    def commit(self) -> None:
        try:
            super().commit()
        except DBAPIError as error:
            # The COMMIT may have carried the tasks' statements (PostgreSQL), whose
            # failure the outbox explains (their table missing).
            outbox: TaskOutbox | None = getattr(self._unit, "outbox", None)
            replacement = None if outbox is None else outbox.commit_error(error)
            if replacement is None:
                raise
            raise replacement from error


@event.listens_for(_TaskWriteSyncSession, "before_commit")
def _store_tasks(session: Session) -> None:
    assert isinstance(session, _TaskWriteSyncSession)
    if session.get_nested_transaction() is not None:
        return  # a savepoint's commit: its tasks wait for the unit's
    # The unit's own commit: its tasks are stored now, in its transaction, after the
    # commit's flush (which SQLAlchemy would run after this hook), so that tasks that
    # the flush's ORM events defer are stored too, and on PostgreSQL the transaction
    # has begun, for its COMMIT to carry them.
    if has_pending(session):
        session.flush()
    unit = session._unit
    outbox: TaskOutbox | None = getattr(unit, "outbox", None)
    if outbox is not None:
        outbox.before_commit(session, unit.transaction_connection)


@event.listens_for(_TaskWriteSyncSession, "after_commit")
def _tasks_committed(session: Session) -> None:
    # After the base class's listener, which captured the commit's position.
    assert isinstance(session, _TaskWriteSyncSession)
    unit = session._unit
    outbox: TaskOutbox | None = getattr(unit, "outbox", None)
    if outbox is None:
        return
    savepoint = session.get_nested_transaction()
    if savepoint is None:
        outbox.committed(unit.commit_token)
    else:
        outbox.savepoint_released(savepoint, _enclosing_savepoint(savepoint))


@event.listens_for(_TaskWriteSyncSession, "after_soft_rollback")
def _tasks_rolled_back(session: Session, previous: SessionTransaction) -> None:
    assert isinstance(session, _TaskWriteSyncSession)
    outbox: TaskOutbox | None = getattr(session._unit, "outbox", None)
    if outbox is not None:
        _soft_rollback(outbox, previous)


@event.listens_for(_TaskWriteSyncSession, "after_transaction_end")
def _tasks_ended(session: Session, transaction: SessionTransaction) -> None:
    # Committed tasks were handed on at after_commit; a transaction that ended any
    # other way (rollback, close, reset, invalidate) stored none.
    assert isinstance(session, _TaskWriteSyncSession)
    if transaction.parent is None:
        outbox: TaskOutbox | None = getattr(session._unit, "outbox", None)
        if outbox is not None:
            outbox.rolled_back()


def with_task_outbox(cls: type[WriteSession]) -> type[WriteSession]:
    """``cls`` (a ``WriteSession`` class) with a synchronous half that stores deferred
    tasks: decided once, when a database registers its first task."""
    sync: type[Session] = cls.sync_session_class
    if issubclass(sync, _TaskWriteSyncSession):
        return cls
    if sync is not _WriteSyncSession:
        # A session class of the application's own: its behaviour, plus the tasks'.
        sync = type(sync.__name__, (sync, _TaskWriteSyncSession), {})
    else:
        sync = _TaskWriteSyncSession
    made: type[WriteSession] = type(
        cls.__name__, (cls,), {"sync_session_class": sync, "__module__": cls.__module__}
    )
    return made


def stores_tasks(session: Session) -> bool:
    """Whether ``session`` (db.write's synchronous half) stores deferred tasks."""
    return isinstance(session, _TaskWriteSyncSession)
