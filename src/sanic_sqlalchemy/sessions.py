"""The two sessions of a unit: ``db.read``, which cannot write, and ``db.write``.

Both are ``AsyncSession`` subclasses whose synchronous halves carry the guard rails:
the read half refuses to flush and, once the unit has begun writing, runs its queries
on the writing connection inside a read-only scope (rule 12); the write half keeps one
task at a time on its connection and tells the unit about begins, commits and
savepoints so that on-commit callbacks follow the transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from sqlalchemy import event, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, AsyncSessionTransaction
from sqlalchemy.orm import InstanceState, Session, SessionTransaction
from sqlalchemy.util import greenlet_spawn

from .engines import refused_as_read_only
from .errors import ReadOnlyError, UnitStateError
from .insight import attach
from .readonly import READ_OPTION
from .replicas.routing import UNREACHABLE, ReadRoute

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from .unit import UnitOfWork

_O = TypeVar("_O", bound=object)


class _UnitSession(Session):
    """What both halves share: their unit, and plain SQL strings taken as ``text()``.

    Every statement of the ORM passes through ``execute`` (``get``, ``refresh``, lazy
    and eager loads included), so the guard rails sit there rather than in a
    ``do_orm_execute`` listener, which would run each statement through SQLAlchemy's
    execution machinery twice.
    """

    _unit: UnitOfWork

    def execute(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        bound = kwargs.keys() - _SESSION_KEYWORDS
        if bound:
            # The hand-written wrappers' call style: execute("… :id", id=1).
            params = {**(params or {}), **{name: kwargs.pop(name) for name in bound}}
        return self._run(_as_statement(statement), params, kwargs)

    def scalar(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        return self.execute(statement, params, **kwargs).scalar()

    def scalars(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        return self.execute(statement, params, **kwargs).scalars()

    def _run(self, statement: Any, params: Any, kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError


#: Keywords of ``Session.execute`` itself; any other keyword is a bound parameter.
_SESSION_KEYWORDS = frozenset(
    {"execution_options", "bind_arguments", "_parent_execute_state", "_add_event"}
)


def _as_statement(statement: Any) -> Any:
    # A plain SQL string is taken as text(): its :name parameters are always bound.
    return text(statement) if isinstance(statement, str) else statement


class _ReadSyncSession(_UnitSession):
    """The synchronous half of ``db.read``."""

    def _run(self, statement: Any, params: Any, kwargs: dict[str, Any]) -> Any:
        unit = self._unit
        unit.check_readable()
        self._before_query(unit)
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

    def _before_query(self, unit: UnitOfWork) -> None:
        """What a query of ``db.read`` needs first, as one session's autoflush would:
        changes made through ``db.read`` are refused (a refresh would overwrite them),
        and ``db.write``'s pending changes are flushed so that the query sees them (a
        failing flush raises here, as an autoflush would).  A read connection this
        session holds stays open when reads move to or from the writing connection.

        A few attribute checks when there is nothing to do.
        """
        if has_pending(self):
            refusal = self.refusal_of_pending_changes(at_end=False)
            if refusal is not None:
                raise refusal
        write = unit.write_session
        if write is not None and has_pending(write.sync_session):
            # In turn with the unit's other reads (asyncio.gather) and after any task
            # still writing: the first read flushes, the others find nothing pending.
            with unit.read_gate.hold(writing=False), unit.write_gate.hold(writing=False):
                if has_pending(write.sync_session):
                    write.sync_session.flush()
        if self._transaction is not None and unit.read_bound_to is not unit.writer_connection:
            with unit.read_gate.hold(writing=False):
                transaction = self._transaction
                if transaction is not None and unit.read_bound_to is not unit.writer_connection:
                    self._keep_held_connection(unit, transaction)

    def _keep_held_connection(self, unit: UnitOfWork, transaction: SessionTransaction) -> None:
        """Move reads between the writing connection and a held read connection
        (``db.read.connection()``, a stream being iterated) without closing the latter.

        The read transaction would otherwise be ended to bind it afresh; instead only
        the entry of the writing connection that ended is dropped from it.
        """
        connections = transaction._connections
        if unit.engines.read.sync_engine not in connections:
            return  # nothing held: the ordinary rebind ends the transaction
        previous = unit.read_bound_to
        if previous is not None and connections.pop(previous, None) is not None:
            entry = connections.get(previous.engine)
            if entry is not None and entry[0] is previous:
                del connections[previous.engine]
        unit.read_bound_to = unit.writer_connection

    def writer_for_reading(self) -> Connection | None:
        """The unit's writing connection once ``db.write``'s pending changes are
        flushed, or ``None`` when no write transaction is open."""
        unit = self._unit
        unit.check_readable()
        self._before_query(unit)
        return unit.writer_connection

    def run_on_writer(self, writer: Connection, call: Callable[[Connection], Any]) -> Any:
        """Run ``call(writer)`` as a read of this unit: read-only, rows buffered.

        ``call`` marks its statement with ``READ_OPTION``, so that the write engine's
        read guard checks it like any read."""
        unit = self._unit
        unit.check_readable()
        self._before_query(unit)
        with unit.read_gate.hold(writing=False):
            if unit.writer_connection is not writer:
                raise UnitStateError(
                    "This db.read connection was the unit's writing connection, whose "
                    "transaction has ended since it was taken: take a new one with "
                    "`await db.read.connection()`, or use db.read.execute()."
                )
            with (
                unit.write_gate.hold(writing=False),
                unit.backend.read_inside_write(writer),
            ):
                try:
                    return call(writer).freeze()()
                except DBAPIError as error:
                    _translate_read_only(unit, error)
                    raise

    def refusal_of_pending_changes(self, *, at_end: bool) -> ReadOnlyError | None:
        """The ``ReadOnlyError`` naming the objects added, changed or deleted through
        ``db.read``, or ``None`` when it holds no such change."""
        if not has_pending(self):
            return None
        new = [_describe(state) for state in self._new]
        deleted = [_describe(state) for state in self._deleted]
        changed = [_describe(inspect(obj)) for obj in self.dirty if self.is_modified(obj)]
        if not (new or deleted or changed):
            return None
        kinds = [
            f"{label} {', '.join(sorted(names))}"
            for label, names in (("new", new), ("changed", changed), ("deleted", deleted))
            if names
        ]
        outcome = (
            "so the unit failed and its writes were rolled back; nothing was committed"
            if at_end
            else "refused before this query, whose results would overwrite them"
        )
        return ReadOnlyError(
            f"db.read holds changes it can never write ({'; '.join(kinds)}), {outcome}. "
            "Change objects through db.write: `db.write.add(obj)` moves an object that "
            "db.read loaded into db.write, or load it there, e.g. "
            "`await db.write.get(Model, id)`."
        )

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
        stats = unit.stats
        with unit.write_gate.hold(writing=True):
            stats.flushing = True
            try:
                super().flush(objects)
            finally:
                stats.flushing = False

    def commit(self) -> None:
        unit = self._unit
        unit.check_writable()
        with unit.write_gate.hold(writing=True):
            super().commit()

    def rollback(self) -> None:
        stats = self._unit.stats
        with self._unit.write_gate.hold(writing=True):
            # ROLLBACK (TO SAVEPOINT) is time in the database; a statement timed on
            # its own inside it (a savepoint's) is part of that time, not added to it.
            before, started = stats.write_time, perf_counter()
            try:
                super().rollback()
            finally:
                stats.write_time = before + (perf_counter() - started)

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
        read = self._unit.read_session
        if read is not None and state.session_id == read.sync_session.hash_key:
            # An object db.read loaded, given to db.write (add, delete, or reached by
            # their cascades): it moves here, with the changes made to it.
            read.sync_session._expunge_states([state])
        return super()._before_attach(state, obj)


def has_pending(session: Session) -> bool:
    """Whether ``session`` holds changes a flush would send (cheap: no history check)."""
    return bool(session._new or session._deleted or session.identity_map._modified)


def _describe(state: InstanceState[Any]) -> str:
    """``User(1)`` for a loaded object, ``User (not yet stored)`` for a new one."""
    name = state.class_.__name__
    identity = state.identity
    if identity is None:
        return f"{name} (not yet stored)"
    return f"{name}({', '.join(map(repr, identity))})"


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
        unit.stats.committed()
        callbacks.committed()
        if unit.writer_connection is not None:
            unit.capture_commit_position(unit.writer_connection)
    else:
        callbacks.savepoint_released(savepoint, _enclosing_savepoint(savepoint))


@event.listens_for(_WriteSyncSession, "before_commit")
@event.listens_for(_WriteSyncSession, "after_flush_postexec")
def _on_write_committing(session: Session, _context: Any = None) -> None:
    # The COMMIT's time (unit.stats) runs from the start of the commit or the end of
    # its flush, whichever is last, to after_commit.
    assert isinstance(session, _WriteSyncSession)
    session._unit.stats.mark()


@event.listens_for(_ReadSyncSession, "after_begin")
def _on_read_begin(
    session: Session, _transaction: SessionTransaction, connection: Connection
) -> None:
    assert isinstance(session, _ReadSyncSession)
    attach(connection, session._unit.stats)


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
        unit = session._unit
        unit.write_ended()
        # A commit made its callbacks ready before this; a transaction that ended any
        # other way (rollback, close, reset, invalidate) threw its data away.
        unit.callbacks.rolled_back()


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

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        # `async with db.read as session:` gives the unit's session; the unit closes it.
        pass

    async def close(self) -> None:
        _refuse_close(self.sync_session._unit, "db.read")
        await super().close()

    async def connection(
        self, bind_arguments: Any = None, execution_options: Any = None, **kw: Any
    ) -> AsyncConnection:
        """A connection held until the unit ends; once the unit writes, the writing
        connection, on which every statement runs read-only like ``db.read``'s own."""
        writer = await greenlet_spawn(self.sync_session.writer_for_reading)
        if writer is not None:
            return _WriterForReading(self, writer)
        return await super().connection(bind_arguments, execution_options, **kw)


class _WriterForReading(AsyncConnection):
    """``db.read.connection()`` in a unit that writes: its writing connection, through
    which statements run inside the read-only scope of rule 12, rows buffered.

    It is not the writing connection's own proxy (that stays ``db.write``'s), and it
    refuses what would reach the connection past that scope.
    """

    def __init__(self, session: ReadSession, writer: Connection) -> None:
        # Deliberately not AsyncConnection.__init__: that would register this object
        # as the proxy of the writer, which db.write.connection() then returns.
        self.engine = session.sync_session._unit.engines.write
        self.sync_engine = writer.engine
        self.sync_connection = writer
        self._reader = session.sync_session

    async def execute(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        options = {**(execution_options or {}), READ_OPTION: True}
        return await greenlet_spawn(
            self._reader.run_on_writer,
            self.sync_connection,
            lambda writer: writer.execute(statement, parameters, execution_options=options),
        )

    async def exec_driver_sql(
        self, statement: str, parameters: Any = None, execution_options: Any = None
    ) -> Any:
        options = {**(execution_options or {}), READ_OPTION: True}
        return await greenlet_spawn(
            self._reader.run_on_writer,
            self.sync_connection,
            lambda writer: writer.exec_driver_sql(statement, parameters, options),
        )

    async def scalar(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        result = await self.execute(statement, parameters, execution_options=execution_options)
        return result.scalar()

    async def scalars(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        result = await self.execute(statement, parameters, execution_options=execution_options)
        return result.scalars()

    async def close(self) -> None:
        pass  # the connection is db.write's: the unit gives it back when it ends

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        pass

    def _refuse(self, what: str) -> NoReturn:
        raise UnitStateError(
            f"{what} is not available on db.read.connection() in a unit that writes: "
            "it is the unit's writing connection, shared read-only. Use execute(), "
            "exec_driver_sql(), scalar() or scalars() on it (rows are buffered), or "
            "db.write for anything else."
        )

    def stream(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        self._refuse("stream()")

    def stream_scalars(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        self._refuse("stream_scalars()")

    async def run_sync(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        self._refuse("run_sync()")

    def begin(self) -> NoReturn:
        self._refuse("begin()")

    def begin_nested(self) -> NoReturn:
        self._refuse("begin_nested()")

    async def commit(self) -> NoReturn:
        self._refuse("commit()")

    async def rollback(self) -> NoReturn:
        self._refuse("rollback()")

    async def invalidate(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        self._refuse("invalidate()")

    async def execution_options(self, **_options: Any) -> NoReturn:
        self._refuse("execution_options()")

    async def get_raw_connection(self) -> NoReturn:
        self._refuse("get_raw_connection()")


class WriteSession(AsyncSession):
    """``db.write``: an ``AsyncSession`` whose work commits when the unit succeeds.

    An explicit ``await db.write.commit()`` runs the callbacks registered before it
    right after it succeeds; ``await db.write.rollback()`` drops them.
    """

    sync_session_class = _WriteSyncSession
    sync_session: _WriteSyncSession

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        # `async with db.write as session:` gives the unit's session and leaves it to
        # the unit, which commits it (or rolls it back) when it ends. An exception
        # leaving the block goes on to end the unit, which then rolls back.
        pass

    async def close(self) -> None:
        _refuse_close(self.sync_session._unit, "db.write")
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
        await unit.shielded(self._commit_then_callbacks())

    async def _commit_then_callbacks(self) -> None:
        await super().commit()
        await self.sync_session._unit.run_ready_callbacks()

    async def rollback(self) -> None:
        await super().rollback()
        self.sync_session._unit.callbacks.rolled_back()


def _refuse_close(unit: UnitOfWork, name: str) -> None:
    if not unit.ended:
        raise UnitStateError(
            f"{name}.close() was called inside a live unit of work: the unit closes its "
            "sessions itself when it ends, after committing (or rolling back) db.write; "
            "closing by hand would throw its writes away. Remove the close() (and use "
            f"`{name}` directly rather than `async with {name}:`); to discard the "
            "writes, call `await db.write.rollback()`."
        )


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
