"""What the runner and the dispatcher need of ``db.tasks`` and of its ``Database``, as
``Protocol``\\ s, so that they do not import the registry that uses them."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..engine.engines import Engines
    from ..settings import Settings
    from ..unit import Environment, UnitOfWork, UnitScope
    from .decorator import Task, TaskOptions
    from .sql import Claimed


class TaskDatabase(Protocol):
    """What the tasks need of their ``Database`` (``database.DatabaseCore``)."""

    @property
    def scope(self) -> UnitScope[UnitOfWork]: ...

    @property
    def environment(self) -> Environment: ...

    @property
    def engines(self) -> Engines: ...

    @property
    def settings(self) -> Settings: ...

    @property
    def configured(self) -> bool: ...

    @property
    def joined(self) -> Any: ...

    def open_unit(self, after: tuple[object, ...] = ()) -> UnitOfWork: ...

    def current_unit(self, name: str = ...) -> UnitOfWork: ...


class TaskHost(Protocol):
    """``db.tasks`` as a run and a dispatcher see it (``registry.TaskRegistry``)."""

    @property
    def db(self) -> TaskDatabase: ...

    @property
    def registered(self) -> Mapping[str, Task[Any, Any]]: ...

    @property
    def table(self) -> Table: ...

    @property
    def default_options(self) -> TaskOptions: ...

    @property
    def limit(self) -> int:
        """How many runs the process starts at once."""

    async def position_token(self) -> tuple[object, ...]:
        """With replicas, a token the run's reads must wait for."""

    async def claim(self, limit: int, ids: list[str] | None = None) -> list[Claimed]:
        """Claim up to ``limit`` due tasks, in a transaction of its own."""

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A transaction for the tasks table's own statements."""

    async def finish(self, claims: list[Claimed]) -> int:
        """Delete the rows of runs that wrote nothing (one statement per
        ``CLAIMS_PER_STATEMENT``)."""

    async def renew(self, claims: list[Claimed]) -> None:
        """Keep these runs' claims alive for another lease."""

    async def hand_back(self, claims: list[Claimed]) -> None:
        """Return these runs' tasks to the waiting ones, their attempts not counted."""

    async def notify(self) -> None:
        """Wake the dispatchers listening (PostgreSQL)."""
