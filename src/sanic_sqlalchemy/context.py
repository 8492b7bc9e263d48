"""The one ContextVar that holds a Database's current unit of work.

Child tasks inherit a copy of their parent's context, so they see the parent's unit;
``async with db:`` in a child task opens a unit of its own (see ``Database``).
"""

from __future__ import annotations

import contextvars
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .unit import UnitOfWork


class UnitScope:
    """Which unit is current for one ``Database`` in the running context."""

    __slots__ = ("_var",)

    def __init__(self, name: str) -> None:
        self._var: ContextVar[UnitOfWork | None] = ContextVar(name, default=None)

    def current(self) -> UnitOfWork | None:
        return self._var.get()

    def enter(self, unit: UnitOfWork) -> Token[UnitOfWork | None]:
        return self._var.set(unit)

    def leave(self, token: Token[UnitOfWork | None]) -> None:
        try:
            self._var.reset(token)
        except ValueError:
            # Left from another context than the one that entered (an async
            # generator finalised elsewhere): make sure no unit stays current here.
            self._var.set(None)

    def outside(self) -> contextvars.Context:
        """A copy of the current context in which no unit of this scope is open."""
        context = contextvars.copy_context()
        context.run(self._var.set, None)
        return context
