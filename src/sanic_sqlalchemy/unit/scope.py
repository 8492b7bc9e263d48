"""The one ContextVar that holds a Database's current unit of work.

Child tasks inherit a copy of their parent's context, so they see the parent's unit;
``async with db:`` in a child task opens a unit of its own (see ``Database``).  When no
unit is set, an integration may supply one (Sanic: the current request's unit, created
on first use); ``step_outside()`` (in the task that runs them) and ``outside()`` (a
context to run something in) make neither count, for on-commit callbacks, which run
outside any unit.  ``enter_on_first_use`` makes current a unit that is opened only
if something asks for it (a durable task's run: most never touch the database).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, Final, Generic, TypeVar

#: The unit type a scope holds (``UnitOfWork``; generic, so that this module imports no unit).
U = TypeVar("U")


class _Outside(Generic[U]):
    """Marks a context as outside any unit, ambient ones included."""

    __slots__ = ()

    def unit(self) -> U | None:
        """The unit current here: none."""
        return None


OUTSIDE: Final[_Outside[Any]] = _Outside()


class OnFirstUse(_Outside[U]):
    """Marks a context whose unit ``open`` opens the first time it is asked for (in
    this context or a child task's: they share it), not before."""

    __slots__ = ("_closed", "_open", "opened")

    def __init__(self, open_unit: Callable[[], U]) -> None:
        self._open = open_unit
        self._closed = False
        #: The unit, once something asked for it.
        self.opened: U | None = None

    def unit(self) -> U | None:
        opened = self.opened
        if opened is None and not self._closed:
            opened = self.opened = self._open()
        return opened

    def close(self) -> None:
        """Open no unit from now on (what the unit was for is over: a child task that
        outlives it finds none, as outside any unit)."""
        self._closed = True


class UnitScope(Generic[U]):
    """Which unit is current for one ``Database`` in the running context."""

    __slots__ = ("_var", "provider", "why_none")

    def __init__(self, name: str) -> None:
        self._var: ContextVar[U | _Outside[U] | None] = ContextVar(name, default=None)
        #: Supplies the unit when none is set here (the Sanic request's unit).
        self.provider: Callable[[], U | None] | None = None
        #: Says why the provider gives no unit here, for the error that reports it
        #: (a websocket request gets none); called only on that error's path.
        self.why_none: Callable[[], str | None] | None = None

    def current(self) -> U | None:
        value = self._var.get()
        if value is None:
            provider = self.provider
            return provider() if provider is not None else None
        if isinstance(value, _Outside):
            return value.unit()
        return value

    def enter(self, unit: U) -> Token[U | _Outside[U] | None]:
        return self._var.set(unit)

    def enter_on_first_use(
        self, open_unit: Callable[[], U]
    ) -> tuple[OnFirstUse[U], Token[U | _Outside[U] | None]]:
        """Make current a unit that ``open_unit`` opens when first asked for; with the
        marker (its ``opened``) and the token that ``leave`` takes."""
        marker = OnFirstUse(open_unit)
        return marker, self._var.set(marker)

    def leave(self, token: Token[U | _Outside[U] | None]) -> None:
        try:
            self._var.reset(token)
        except ValueError:
            # Left from another context than the one that entered (the unit was
            # created in a child task, or an async generator was finalised elsewhere):
            # make sure no unit stays current here.
            self._var.set(None)

    def step_outside(self) -> None:
        """Make no unit of this scope current for the rest of the running context."""
        self._var.set(OUTSIDE)

    def outside(self) -> contextvars.Context:
        """A copy of the current context in which no unit of this scope is current."""
        context = contextvars.copy_context()
        context.run(self._var.set, OUTSIDE)
        return context
