"""``db.read``: a session that can never change data.

Its synchronous half refuses to flush, runs each read in autocommit on a connection it
gives back at once (or on a replica, when the database has some), and, once the unit
has begun writing, runs its queries on the writing connection inside a read-only scope
(rule 12).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import InstanceState, Session, SessionTransaction
from sqlalchemy.util import greenlet_spawn

from ..._keys import READ_OPTION
from ...engine.backends import refused_as_read_only
from ...errors import ReadOnlyError, UnitStateError
from ...insight import attach
from ...readonly import refusals
from ..core import UnitCore, has_pending
from .common import UnitSession, refuse_close
from .writer import WriterForReading

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection


class ReadSyncSession(UnitSession):
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
        with unit.read_gate:
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

    def _before_query(self, unit: UnitCore) -> None:
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
        write = unit.write_sync
        if write is not None and has_pending(write):
            # In turn with the unit's other reads (asyncio.gather) and after any task
            # still writing: the first read flushes, the others find nothing pending.
            with unit.read_gate, unit.write_gate:
                if has_pending(write):
                    write.flush()
        if self._transaction is not None and unit.read_bound_to is not unit.writer_connection:
            with unit.read_gate:
                transaction = self._transaction
                if transaction is not None and unit.read_bound_to is not unit.writer_connection:
                    self._keep_held_connection(unit, transaction)

    def _keep_held_connection(self, unit: UnitCore, transaction: SessionTransaction) -> None:
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
        with unit.read_gate:
            if unit.writer_connection is not writer:
                raise UnitStateError(
                    "This db.read connection was the unit's writing connection, whose "
                    "transaction has ended since it was taken: take a new one with "
                    "`await db.read.connection()`, or use db.read.execute()."
                )
            with (
                unit.write_gate,
                unit.backend.read_inside_write(writer),
            ):
                try:
                    return buffered(call(writer))
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
        return refusals.pending_changes(kinds, at_end=at_end)

    def _read_on_a_live_connection(
        self, statement: Any, params: Any, kwargs: dict[str, Any]
    ) -> Any:
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

    def flush(self, objects: Any = None) -> None:
        if self.new or self.deleted or any(self.is_modified(obj) for obj in self.dirty):
            raise refusals.flush_refused()

    def rollback(self) -> None:
        # Never roll back on the database: once the unit writes, this session may be
        # reading through the writing connection, whose transaction is not ours.
        with self._unit.read_gate:
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


def _translate_read_only(unit: UnitCore, error: DBAPIError) -> None:
    refusal = refused_as_read_only(unit.backend, error)
    if refusal is not None:
        raise refusal from error


def _read_on_writer(
    session: ReadSyncSession,
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
        unit.write_gate,
        unit.backend.read_inside_write(writer),
    ):
        unit.reading_on_writer = True
        try:
            result = Session.execute(session, statement, params, **kwargs)
            # Buffer every row before the read-only scope ends.
            return buffered(result)
        finally:
            unit.reading_on_writer = False


@event.listens_for(ReadSyncSession, "after_begin")
def _on_read_begin(
    session: Session, _transaction: SessionTransaction, connection: Connection
) -> None:
    assert isinstance(session, ReadSyncSession)
    attach(connection, session._unit.stats)


class ReadSession(AsyncSession):
    """``db.read``: an ``AsyncSession`` that can never change data.

    Flushing pending changes raises ``ReadOnlyError`` before any SQL is sent, and a
    write statement is refused by the database itself (see the README for how each
    backend enforces it).  Once the unit has begun writing, queries see its writes.
    """

    sync_session_class = ReadSyncSession
    sync_session: ReadSyncSession

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        # `async with db.read as session:` gives the unit's session; the unit closes it.
        pass

    async def close(self) -> None:
        refuse_close(self.sync_session._unit, "db.read")
        await super().close()

    async def connection(
        self, bind_arguments: Any = None, execution_options: Any = None, **kw: Any
    ) -> AsyncConnection:
        """A connection held until the unit ends; once the unit writes, the writing
        connection, on which every statement runs read-only like ``db.read``'s own."""
        writer = await greenlet_spawn(self.sync_session.writer_for_reading)
        if writer is not None:
            engine = self.sync_session._unit.engines.write
            return WriterForReading(engine, writer, self.sync_session.run_on_writer)
        return await super().connection(bind_arguments, execution_options, **kw)


def buffered(result: Any) -> Any:
    """``result`` with every row read, for a read on the writing connection that must be
    done before its read-only scope ends."""
    if not getattr(result, "returns_rows", True):
        # PostgreSQL's SELECT FROM t, say: there are no rows to buffer (SQLAlchemy
        # would raise a bare NotImplementedError).
        raise UnitStateError(
            "db.read ran this statement on the unit's writing connection (the unit "
            "has written) and it returned no result columns, so there is nothing "
            "to read: select at least one column, or run it through db.write if "
            "it is not a query."
        )
    return result.freeze()()
