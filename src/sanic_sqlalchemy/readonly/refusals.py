"""Every way ``db.read`` refuses to write, in one place: the ``ReadOnlyError`` for each.

The guard refuses statements before they are sent (``refused``, ``read_only_lost``), the
read session refuses changes made through it (``pending_changes``, ``flush_refused``),
and a write the server itself refused becomes ``server_refused``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ReadOnlyError


def refused(reason: str) -> ReadOnlyError:
    """A statement the read path refuses before sending it, and why."""
    return ReadOnlyError(
        f"db.read refused this statement before sending it: {reason}. Nothing was sent "
        "to the database. Run it through db.write (`await db.write.execute(...)`) if it "
        "is meant to change something."
    )


def read_only_lost() -> ReadOnlyError:
    """A statement on a held read connection whose read-only mode was switched off."""
    return ReadOnlyError(
        "db.read refused this statement: a previous statement switched its "
        "connection's read-only mode off, so the connection was discarded. "
        "Run writes through db.write."
    )


def server_refused() -> ReadOnlyError:
    """The database refused a write because the connection or transaction is read-only."""
    return ReadOnlyError(
        "db.read cannot write: the database refused the statement as read-only and "
        "nothing was changed. Run writes through db.write."
    )


def flush_refused() -> ReadOnlyError:
    """``db.read`` was asked to flush objects added, changed or deleted through it."""
    return ReadOnlyError(
        "db.read cannot write: it has pending changes (objects added, changed or "
        "deleted through it) and refuses to flush them. Make changes through "
        "db.write, e.g. `db.write.add(obj)`; nothing was sent to the database."
    )


def pending_changes(kinds: Sequence[str], *, at_end: bool) -> ReadOnlyError:
    """``db.read`` holds changes (``kinds``: "new User(1)" and the like) that it can never
    write: found before a query (which would overwrite them) or at the unit's end."""
    outcome = (
        "so the unit failed and its writes were rolled back; nothing was committed"
        if at_end
        else "refused before this query, whose results would overwrite them"
    )
    return ReadOnlyError(
        f"db.read holds changes it can never write ({'; '.join(kinds)}), {outcome}. "
        "Change objects through db.write: `db.write.add(obj)` moves an object that "
        "db.read loaded into db.write, or load it there, e.g. "
        "`await db.write.get(Model, id)`."
    )
