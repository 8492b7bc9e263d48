"""PostgreSQL write connections whose ``COMMIT`` can carry statements.

asyncpg sends ``COMMIT`` as a simple-protocol query, which may hold several statements:
statements handed to ``carry_on_commit`` go in the same message, ahead of it, and cost
no round trip of their own (a unit's durable tasks are stored this way).  Should one of
them fail, the server skips the ``COMMIT`` and the transaction rolls back as a whole.
The write engine's connections are of this class (unless the application names its
own ``connection_class``); until statements are handed to it, it only passes each
``execute`` on.  Imported only with PostgreSQL (asyncpg is an optional dependency).
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg  # type: ignore[import-untyped]

logger = logging.getLogger("sanic_sqlalchemy")

#: What asyncpg's ``Transaction.commit`` sends for a top-level transaction.
_COMMIT = "COMMIT;"
#: How the transactions asyncpg begins and rolls back start: after either, statements
#: still waiting were meant for a transaction that did not commit.
_OTHER_ENDS = ("BEGIN", "ROLLBACK")


class CarryingConnection(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection that sends statements with its next ``COMMIT``."""

    __slots__ = ("carried",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: SQL waiting for the ``COMMIT`` of the transaction under way (``None``: none).
        self.carried: str | None = None

    def carry_on_commit(self, statements: str) -> bool:
        """Send ``statements`` (complete SQL with literal values, each ended by ``;``)
        in the message that commits the transaction under way; whether they will be
        (not when no transaction has begun on the server: SQLAlchemy's asyncpg driver
        begins one with the first statement, and commits none before)."""
        if not self.is_in_transaction():
            return False
        self.carried = statements if self.carried is None else self.carried + statements
        return True

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        carried = self.carried
        if carried is None or args:
            return await super().execute(query, *args, timeout=timeout)  # type: ignore[no-any-return]
        if query != _COMMIT:
            if query.startswith(_OTHER_ENDS):
                self.carried = None
            return await super().execute(query, timeout=timeout)  # type: ignore[no-any-return]
        self.carried = None
        try:
            return await super().execute(carried + query, timeout=timeout)  # type: ignore[no-any-return]
        except Exception as error:
            if not self.is_closed() and self.is_in_transaction():
                # A carried statement failed, so the server skipped the COMMIT and keeps
                # the (aborted) transaction open, which asyncpg and SQLAlchemy now think
                # ended: end it here, or the pool would hand it to the next unit.
                await self._roll_back_after(error)
            raise

    async def _roll_back_after(self, error: Exception) -> None:
        try:
            await super().execute("ROLLBACK;")
        except Exception as failure:
            logger.error(
                "rolling back after a failed commit failed; the connection is closed",
                exc_info=failure,
            )
            if hasattr(error, "add_note"):  # Python >= 3.11
                error.add_note(f"sanic-sqlalchemy: the rollback also failed: {failure!r}")
            self.terminate()
