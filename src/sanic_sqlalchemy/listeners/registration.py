"""``db.listen`` and ``@db.listens_for``: registering listeners on a database.

Registering decides, once, what the database's units cost: the first ``unit_begin``,
``unit_end`` or ``callback_error`` listener makes its units ``ObservedUnit``\\ s from
then on (units already open are not told); a database that has none keeps plain units.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

from ..errors import ListenerTypeError, UnknownEventError
from ..unit import Environment, UnitOfWork
from .dispatch import EVENTS, UNIT_EVENTS, Listener, ListenerSet
from .events import CallbackError, TaskEnd, UnitBegin, UnitEnd
from .observed import ObservedUnit

_Begin = TypeVar("_Begin", bound=Callable[[UnitBegin], object])
_End = TypeVar("_End", bound=Callable[[UnitEnd], object])
_Error = TypeVar("_Error", bound=Callable[[CallbackError], object])
_Task = TypeVar("_Task", bound=Callable[[TaskEnd], object])
_L = TypeVar("_L", bound=Listener)


class Listening:
    """The listener registration of ``DatabaseCore``."""

    #: What every unit of the database is handed (``DatabaseCore.environment``).
    environment: Environment
    #: The class of the database's units: ``UnitOfWork`` until a unit listener is
    #: registered, ``ObservedUnit`` after.
    unit_class: type[UnitOfWork] = UnitOfWork
    _listeners: ListenerSet | None = None

    @overload
    def listen(
        self, name: Literal["unit_begin"], listener: Callable[[UnitBegin], object], /
    ) -> None: ...
    @overload
    def listen(
        self, name: Literal["unit_end"], listener: Callable[[UnitEnd], object], /
    ) -> None: ...
    @overload
    def listen(
        self, name: Literal["callback_error"], listener: Callable[[CallbackError], object], /
    ) -> None: ...
    @overload
    def listen(
        self, name: Literal["task_end"], listener: Callable[[TaskEnd], object], /
    ) -> None: ...

    def listen(self, name: str, listener: Listener, /) -> None:
        """Call ``listener(event)`` at every ``name`` event of this database, after the
        listeners registered before it.

        ``name``: ``"unit_begin"``, ``"unit_end"``, ``"callback_error"`` or
        ``"task_end"`` (the event classes are in ``sanic_sqlalchemy.listeners``).  The
        listener may be async: it is awaited before the unit ends (a ``unit_begin``
        listener at once only where the unit is opened in async code).  One that raises
        is logged and changes nothing.  Register listeners at start-up, before the
        units they should hear about are opened.
        """
        _check_name(name)
        if not callable(listener):
            raise ListenerTypeError(
                f"db.listen({name!r}, ...) needs a function (sync or async) that takes the "
                f"event, got {listener!r}."
            )
        listeners = self._listeners
        if listeners is None:
            listeners = self._listeners = ListenerSet()
            self.environment.listeners = listeners
        listeners.add(name, listener)
        if name in UNIT_EVENTS:
            # Decided here, once: the units opened from now on tell the listeners.
            self.unit_class = ObservedUnit

    @overload
    def listens_for(self, name: Literal["unit_begin"], /) -> Callable[[_Begin], _Begin]: ...
    @overload
    def listens_for(self, name: Literal["unit_end"], /) -> Callable[[_End], _End]: ...
    @overload
    def listens_for(self, name: Literal["callback_error"], /) -> Callable[[_Error], _Error]: ...
    @overload
    def listens_for(self, name: Literal["task_end"], /) -> Callable[[_Task], _Task]: ...

    def listens_for(self, name: str, /) -> Callable[[_L], _L]:
        """``@db.listens_for("unit_end")``: ``db.listen`` as a decorator, which returns
        the function unchanged."""
        _check_name(name)

        def register(listener: _L) -> _L:
            self.listen(name, listener)  # type: ignore[call-overload]
            return listener

        return register


def _check_name(name: Any) -> None:
    if name not in EVENTS:
        known = ", ".join(repr(event) for event in EVENTS)
        raise UnknownEventError(
            f"{name!r} is not an event of sanic-sqlalchemy; listen for one of {known} "
            '(db.listen("unit_end", record) or @db.listens_for("unit_end")).'
        )
