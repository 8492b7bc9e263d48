"""The two sessions of a unit: ``db.read``, which cannot write, and ``db.write``.

Both are ``AsyncSession`` subclasses whose synchronous halves carry the guard rails:
the read half refuses to flush and, once the unit has begun writing, runs its queries
on the writing connection inside a read-only scope (rule 12); the write half keeps one
task at a time on its connection and tells the unit about begins, commits and
savepoints so that on-commit callbacks follow the transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from .engines import refused_as_read_only
from .errors import ReadOnlyError
from .readonly import READ_OPTION
from .replicas.routing import UNREACHABLE, ReadRoute

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from .unit import UnitOfWork


class _UnitSession(Session):
    """What both halves share: their unit, and plain SQL strings taken as ``text()``.

    Every statement of the ORM passes through ``execute`` (``get``, ``refresh``, lazy
    and eager loads included), so the guard rails sit there rather than in a
    ``do_orm_execute`` listener, which would run each statement through SQLAlchemy's
    execution machinery twice.
    """

    _unit: UnitOfWork

    def execute(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        return self._run(_as_statement(statement), params, kwargs)

    def scalar(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        return self.execute(statement, params, **kwargs).scalar()

    def scalars(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        return self.execute(statement, params, **kwargs).scalars()

    def _run(self, statement: Any, params: Any, kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError


def _as_statement(statement: Any) -> Any:
    # A plain SQL string is taken as text(): its :name parameters are always bound.
    return text(statement) if isinstance(statement, str) else statement


class _ReadSyncSession(_UnitSession):
    """The synchronous half of ``db.read``."""

    def _run(self, statement: Any, params: Any, kwargs: dict[str, Any]) -> Any:
        unit = self._unit
        unit.check_readable()
        if unit.wrote and getattr(statement, "is_select", False):
            # The unit's writes may have changed rows this session loaded earlier.
            kwargs["execution_options"] = {
                **kwargs.get("execution_options", {}),
                "populate_existing": True,
            }
        # The turn is taken before looking at the writer: another task of the unit
        # may be mid-query on the read connection that a rebind would release.
        with unit.read_gate.hold(writing=False):
            writer = unit.writer_connection
            if unit.read_bound_to is not writer:
                # The unit began or ended a write transaction since the last read:
                # a new read transaction on the right connection (identity map kept).
                self._end_transaction()
                unit.read_bound_to = writer
            if writer is not None:
                try:
                    return _read_on_writer(self, statement, params, kwargs, writer)
                except DBAPIError as error:
                    # The read engine translates its own refusals; the writer's does not.
                    _translate_read_only(unit, error)
                    raise
            # A load issued while loading (selectinload), a streamed result or an
            # explicit db.read.connection() holds a connection: keep using it.
            keep = self.get_transaction() is not None
            if not keep and _streams(statement, kwargs):
                # Rows come from the connection as they are iterated: it stays
                # with the session (in a transaction where cursors need one).
                self.connection(execution_options=unit.backend.streaming_options)
                keep = True
            if keep:
                return Session.execute(self, statement, params, **kwargs)
            try:
                return self._read_on_a_live_connection(statement, params, kwargs)
            finally:
                # Reads run in autocommit and their rows are buffered: the
                # connection goes back to the pool now, not when the unit ends, so
                # a request awaiting something else meanwhile holds none.
                self._end_transaction()

    def _read_on_a_live_connection(
        self, statement: Any, params: Any, kwargs: dict[str, Any]
    ) -> Any:
        route = self._unit.read_route()
        if route is not None:
            return self._read_on_a_replica(route, statement, params, kwargs)
        try:
            return Session.execute(self, statement, params, **kwargs)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
        # The connection died as it was taken, before the event loop saw it close (the
        # checkout check had no way to know): a read in autocommit on a read-only
        # connection changed nothing, so it runs once more, on a fresh connection (the
        # pool replaces every connection older than the failure).
        self._end_transaction()
        return Session.execute(self, statement, params, **kwargs)

    def _read_on_a_replica(
        self, route: ReadRoute, statement: Any, params: Any, kwargs: dict[str, Any]
    ) -> Any:
        # The connection is taken first, on its own: a server that cannot be reached
        # has run nothing, so the unit moves to another one (or the primary) and no
        # request fails because one replica is down.
        retried = False
        while True:
            try:
                self.connection()
            except UNREACHABLE as error:
                self._end_transaction()
                if route.server_failed(error):
                    continue
                raise
            try:
                result = Session.execute(self, statement, params, **kwargs)
            except DBAPIError as error:
                if not error.connection_invalidated or retried:
                    raise
                # The server died mid-read: in autocommit on a read-only connection the
                # read changed nothing, so it runs again (elsewhere if it was a replica).
                retried = True
                self._end_transaction()
                route.server_failed(error)
                continue
            route.read_done()
            return result

    def get_bind(self, mapper: Any = None, *, bind: Any = None, **kwargs: Any) -> Any:
        if bind is None and not self._unit.wrote:
            route = self._unit.read_route()
            if route is not None:
                return route.bind()
        return super().get_bind(mapper, bind=bind, **kwargs)

    def flush(self, objects: Any = None) -> None:
        if self.new or self.deleted or any(self.is_modified(obj) for obj in self.dirty):
            raise ReadOnlyError(
                "db.read cannot write: it has pending changes (objects added, changed or "
                "deleted through it) and refuses to flush them. Make changes through "
                "db.write, e.g. `db.write.add(obj)`; nothing was sent to the database."
            )

    def rollback(self) -> None:
        # Never roll back on the database: once the unit writes, this session may be
        # reading through the writing connection, whose transaction is not ours.
        with self._unit.read_gate.hold(writing=False):
            self._end_transaction()
        self.expunge_all()

    def get(self, *args: Any, **kwargs: Any) -> Any:
        if self._unit.wrote:
            kwargs["populate_existing"] = True
        return super().get(*args, **kwargs)

    def _end_transaction(self) -> None:
        transaction = self.get_transaction()
        if transaction is not None:
            transaction.close()


class _WriteSyncSession(_UnitSession):
    """The synchronous half of ``db.write``."""

    def _run(self, statement: Any, params: Any, kwargs: dict[str, Any]) -> Any:
        unit = self._unit
        unit.check_writable()
        with unit.write_gate.hold(writing=True):
            return Session.execute(self, statement, params, **kwargs)

    def flush(self, objects: Any = None) -> None:
        unit = self._unit
        unit.check_writable()
        with unit.write_gate.hold(writing=True):
            super().flush(objects)

    def commit(self) -> None:
        unit = self._unit
        unit.check_writable()
        with unit.write_gate.hold(writing=True):
            super().commit()

    def rollback(self) -> None:
        with self._unit.write_gate.hold(writing=True):
            super().rollback()


def _streams(statement: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the result reads rows from the connection as it is iterated."""
    given = kwargs.get("execution_options")
    for options in (given, getattr(statement, "_execution_options", None)):
        if options and (options.get("stream_results") or options.get("yield_per")):
            return True
    return False


def _translate_read_only(unit: UnitOfWork, error: DBAPIError) -> None:
    refusal = refused_as_read_only(unit.backend, error)
    if refusal is not None:
        raise refusal from error


def _read_on_writer(
    session: _ReadSyncSession,
    statement: Any,
    params: Any,
    kwargs: dict[str, Any],
    writer: Connection,
) -> Any:
    unit = session._unit
    kwargs["bind_arguments"] = {**(kwargs.get("bind_arguments") or {}), "bind": writer}
    # The write engine's read guard checks only the statements marked as reads.
    kwargs["execution_options"] = {**(kwargs.get("execution_options") or {}), READ_OPTION: True}
    if unit.reading_on_writer:
        # A query issued while loading the first one (selectinload, a lazy load):
        # already inside the read-only scope.
        return Session.execute(session, statement, params, **kwargs)
    with (
        unit.write_gate.hold(writing=False),
        unit.backend.read_inside_write(writer),
    ):
        unit.reading_on_writer = True
        try:
            result = Session.execute(session, statement, params, **kwargs)
            # Buffer every row before the read-only scope ends.
            return result.freeze()()
        finally:
            unit.reading_on_writer = False


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
        callbacks.committed()
        if unit.writer_connection is not None:
            unit.capture_commit_position(unit.writer_connection)
    else:
        callbacks.savepoint_released(savepoint, _enclosing_savepoint(savepoint))


@event.listens_for(_WriteSyncSession, "after_soft_rollback")
def _on_write_rollback(session: Session, previous: SessionTransaction) -> None:
    assert isinstance(session, _WriteSyncSession)
    callbacks = session._unit.callbacks
    if previous.nested:
        callbacks.savepoint_rolled_back(previous)
    elif previous.parent is None:
        callbacks.rolled_back()


@event.listens_for(_WriteSyncSession, "after_transaction_end")
def _on_write_end(session: Session, transaction: SessionTransaction) -> None:
    assert isinstance(session, _WriteSyncSession)
    if transaction.parent is None:
        session._unit.write_ended()


def _enclosing_savepoint(savepoint: SessionTransaction) -> SessionTransaction | None:
    parent = savepoint.parent
    while parent is not None and not parent.nested:
        parent = parent.parent
    return parent


class ReadSession(AsyncSession):
    """``db.read``: an ``AsyncSession`` that can never change data.

    Flushing pending changes raises ``ReadOnlyError`` before any SQL is sent, and a
    write statement is refused by the database itself (see the README for how each
    backend enforces it).  Once the unit has begun writing, queries see its writes.
    """

    sync_session_class = _ReadSyncSession
    sync_session: _ReadSyncSession


class WriteSession(AsyncSession):
    """``db.write``: an ``AsyncSession`` whose work commits when the unit succeeds.

    An explicit ``await db.write.commit()`` runs the callbacks registered before it
    right after it succeeds; ``await db.write.rollback()`` drops them.
    """

    sync_session_class = _WriteSyncSession
    sync_session: _WriteSyncSession

    async def commit(self) -> None:
        # Shielded like the commit at the unit's end: a cancellation that arrives while
        # COMMIT is in flight waits for its outcome, so that a transaction that did
        # commit also runs its callbacks; the cancellation is re-raised afterwards.
        unit = self.sync_session._unit
        await unit.shielded(self._commit_then_callbacks())

    async def _commit_then_callbacks(self) -> None:
        await super().commit()
        await self.sync_session._unit.run_ready_callbacks()

    async def rollback(self) -> None:
        await super().rollback()
        self.sync_session._unit.callbacks.rolled_back()
