"""What both sessions of a unit share: the unit they belong to, plain SQL taken as
``text()``, bound parameters as keywords, and the refusal of a manual ``close()``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from ...errors import UnitStateError
from ..core import UnitCore


class UnitSession(Session):
    """What both halves share: their unit, and plain SQL strings taken as ``text()``.

    Every statement of the ORM passes through ``execute`` (``get``, ``refresh``, lazy
    and eager loads included), so the guard rails sit there rather than in a
    ``do_orm_execute`` listener, which would run each statement through SQLAlchemy's
    execution machinery twice.
    """

    _unit: UnitCore

    def execute(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        bound = kwargs.keys() - _SESSION_KEYWORDS
        if bound:
            # The hand-written wrappers' call style: execute("… :id", id=1).
            params = {**(params or {}), **{name: kwargs.pop(name) for name in bound}}
        if isinstance(statement, str):
            # A plain SQL string is taken as text(): its :name parameters are always bound.
            statement = text(statement)
        return self._run(statement, params, kwargs)

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


def refuse_close(unit: UnitCore, name: str) -> None:
    """Refuse ``db.read.close()`` / ``db.write.close()`` inside a live unit."""
    if not unit.ended:
        raise UnitStateError(
            f"{name}.close() was called inside a live unit of work: the unit closes its "
            "sessions itself when it ends, after committing (or rolling back) db.write; "
            "closing by hand would throw its writes away. Remove the close() (and use "
            f"`{name}` directly rather than `async with {name}:`); to discard the "
            "writes, call `await db.write.rollback()`."
        )
