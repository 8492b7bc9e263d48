"""``db.read.connection()`` in a unit that writes: the writing connection, shared
read-only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import greenlet_spawn

from ..._keys import READ_OPTION
from ...errors import UnitStateError

#: Runs a call on the writing connection as a read of the unit (``_ReadSyncSession``).
RunOnWriter = Callable[[Connection, Callable[[Connection], Any]], Any]


class WriterForReading(AsyncConnection):
    """``db.read.connection()`` in a unit that writes: its writing connection, through
    which statements run inside the read-only scope of rule 12, rows buffered.

    It is not the writing connection's own proxy (that stays ``db.write``'s), and it
    refuses what would reach the connection past that scope.
    """

    def __init__(self, engine: AsyncEngine, writer: Connection, run: RunOnWriter) -> None:
        # Deliberately not AsyncConnection.__init__: that would register this object
        # as the proxy of the writer, which db.write.connection() then returns.
        self.engine = engine
        self.sync_engine = writer.engine
        self.sync_connection = writer
        self._run = run

    async def execute(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        options = {**(execution_options or {}), READ_OPTION: True}
        return await greenlet_spawn(
            self._run,
            self.sync_connection,
            lambda writer: writer.execute(statement, parameters, execution_options=options),
        )

    async def exec_driver_sql(
        self, statement: str, parameters: Any = None, execution_options: Any = None
    ) -> Any:
        options = {**(execution_options or {}), READ_OPTION: True}
        return await greenlet_spawn(
            self._run,
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
