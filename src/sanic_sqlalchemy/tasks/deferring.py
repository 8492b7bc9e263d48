"""``task.defer(...)``: the call checked, encoded and kept in the unit's outbox.

No round trip: the unit's write transaction begins (so that its end commits, storing
the task, even if nothing else is written), and the call waits in the outbox for the
commit, tagged with the savepoint open now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import UnitStateError
from ..unit.sessions import stores_tasks
from .deferred import Deferred, new_task_id
from .outbox import Outbox
from .payload import encode, encode_call

if TYPE_CHECKING:
    from ..unit import UnitOfWork
    from .decorator import Task


def keep_call(
    unit: UnitOfWork,
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    delay: float,
    key: str | None,
    new_outbox: Callable[[UnitOfWork], Outbox],
) -> str:
    """Keep ``task``'s call in ``unit`` for its commit (the unit's first deferred call
    makes its outbox with ``new_outbox``); return the task's id."""
    keyed = key is not None
    immediate = delay == 0
    if immediate and not keyed:
        # Run by this process after the commit, with these arguments when plain.
        payload, arguments = encode_call(task.name, args, kwargs)
    else:
        payload, arguments = encode(task.name, args, kwargs), None
    session = unit.write.sync_session  # UnitStateError once the unit settled
    outbox = getattr(unit, "outbox", None)
    if not isinstance(outbox, Outbox):
        # Checked once per unit: its db.write's class does not change.
        if not stores_tasks(session):
            raise UnitStateError(
                f"{task.deferring}: this unit's db.write was made before the first "
                "@db.task of its database was registered, so it cannot store tasks. "
                "Define tasks at import time (in modules imported before any unit "
                "opens), not inside a unit."
            )
        outbox = unit.outbox = new_outbox(unit)
    session._autobegin_t()  # no round trip; the unit's end will commit (and store) it
    options = task.options
    entry = Deferred(
        task.keyed_id(key) if key is not None else new_task_id(),
        options.name,
        options.queue,
        options.max_attempts,
        payload,
        int(delay * 1000),
        session.get_nested_transaction(),
        immediate,
        keyed,
        arguments,
    )
    return outbox.add(entry)
