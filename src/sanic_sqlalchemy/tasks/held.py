"""Statements on the rows that runs hold: deleted once runs that wrote nothing ended,
their claims renewed, handed back at a stop.  However many runs there are (a backlog
after the database stalled), a statement names at most ``CLAIMS_PER_STATEMENT`` of
them.  Shared by ``TaskRegistry`` as a base class (what it needs of it is ``Held``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

from .host import TaskHost
from .sql import Claimed, done_many_statement, hand_back_statement, in_chunks, renew_statement


class Held(TaskHost, Protocol):
    """What the statements on held rows need of ``db.tasks``."""

    def statement(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection for statements that need no transaction around them."""


class HeldRows:
    """``finish``, ``renew`` and ``hand_back`` of ``db.tasks``."""

    async def finish(self: Held, claims: list[Claimed]) -> int:
        """Delete the rows of these runs that wrote nothing (still held): how many."""
        deleted = 0
        async with self.statement() as connection:
            for chunk in in_chunks(claims):
                result = await connection.execute(*done_many_statement(self.table, chunk))
                deleted += int(result.rowcount)
        return deleted

    async def renew(self: Held, claims: list[Claimed]) -> None:
        """Keep these runs' claims alive for another lease."""
        await _update_held(self, renew_statement, claims)

    async def hand_back(self: Held, claims: list[Claimed]) -> None:
        """Return these runs' tasks to the waiting ones, their attempts not counted."""
        await _update_held(self, hand_back_statement, claims)


async def _update_held(
    host: Held,
    statement: Callable[[Table, Sequence[Claimed]], Executable],
    claims: list[Claimed],
) -> None:
    """Run ``statement`` on the rows these runs hold, in one transaction."""
    async with host.transaction() as connection:
        for chunk in in_chunks(claims):
            await connection.execute(statement(host.table, chunk))
