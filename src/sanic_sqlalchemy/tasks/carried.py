"""A unit's tasks written out as SQL with literal values, for its ``COMMIT`` to carry.

On PostgreSQL (asyncpg) the statements that store a unit's tasks, wake the
dispatchers and finish the runs that wrote nothing are sent in the same message as the
unit's ``COMMIT`` (``engine.backends.carried_commit``): no round trip and no trip
through SQLAlchemy's execution of their own.  A simple-protocol message takes no
parameters, so the values are written as literals: integers, ``NULL`` and
``E'...'`` strings (with backslash and quote escaped, which is exact whatever
``standard_conforming_strings`` says).  A value that cannot be written so (a string
holding NUL, which PostgreSQL's text cannot store either) makes ``carried_statements``
return ``None``, and the tasks go with a statement of their own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql.base import PGDialect

from .deferred import Deferred
from .sql import Claimed


class _NoLiteral(Exception):
    """A value that cannot be written as a literal."""


#: The tasks table's columns, in the order ``_row`` writes their values.
_COLUMNS = (
    "id",
    "name",
    "queue",
    "payload",
    "state",
    "attempts",
    "max_attempts",
    "run_at",
    "lease_until",
    "claim",
    "created_at",
    "error",
)

#: The literals of a task's name and queue, which recur from row to row: written once.
_NAMES: dict[tuple[str, str], str] = {}
_NAMES_KEPT = 4096


def _quoted(text: str) -> str:
    if "\x00" in text:
        raise _NoLiteral
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _names(entry: Deferred) -> str:
    key = (entry.name, entry.queue)
    literal = _NAMES.get(key)
    if literal is None:
        if len(_NAMES) >= _NAMES_KEPT:
            _NAMES.clear()  # names made up at run time: keep the memory bounded
        literal = _NAMES[key] = f"{_quoted(entry.name)}, {_quoted(entry.queue)}"
    return literal


def _row(entry: Deferred, claim: str | None, lease_until: int, now: int) -> str:
    """``entry``'s row as literals at ``now``, claimed by ``claim`` or waiting (its id
    and the claim were made in this process, of hex digits and dashes: they need no
    escaping)."""
    head = f"('{entry.id}', {_names(entry)}, {_quoted(entry.payload)}, "
    if claim is None:
        return (
            f"{head}'pending', 0, {entry.max_attempts}, {now + entry.delay_ms}, NULL, NULL, "
            f"{now}, NULL)"
        )
    return (
        f"{head}'running', 1, {entry.max_attempts}, {now + entry.delay_ms}, {lease_until}, "
        f"'{claim}', {now}, NULL)"
    )


@functools.lru_cache(maxsize=16)
def _texts(table: Table) -> tuple[str, str]:
    """The text around the values of the ``INSERT`` and the ``DELETE`` (quoted for
    PostgreSQL; built once per table)."""
    preparer = PGDialect().identifier_preparer  # type: ignore[no-untyped-call]
    if tuple(column.name for column in table.c) != _COLUMNS:
        raise ValueError(f"{table.name} is not a tasks table (tasks.table.task_table)")
    name = preparer.format_table(table)
    quoted = ", ".join(preparer.quote(column) for column in _COLUMNS)
    insert = f"INSERT INTO {name} ({quoted}) VALUES "
    delete = f"DELETE FROM {name} WHERE ({preparer.quote('id')}, {preparer.quote('claim')}) IN ("
    return insert, delete


def carried_statements(
    table: Table,
    rows: Sequence[tuple[Deferred, str | None]],
    lease_until: int,
    now: int,
    *,
    keyed: bool,
    wake: bool,
    finishing: Sequence[Claimed] = (),
) -> str | None:
    """SQL that stores ``rows`` at ``now`` (each deferred call with the claim it is
    stored under, or ``None``; with ``keyed``, some have a key's id, and ids already
    stored are skipped), deletes the rows of the runs ``finishing`` that still hold
    their claims, and with ``wake`` notifies the dispatchers; ``None`` when a value
    cannot be written as a literal."""
    insert, delete = _texts(table)
    try:
        values = [_row(entry, claim, lease_until, now) for entry, claim in rows]
        sql = insert + ", ".join(values)
        # Only a keyed id can be stored already; a random one needs no conflict check.
        sql += " ON CONFLICT (id) DO NOTHING;" if keyed else ";"
        if finishing:
            # Read from the table (a row may have been written by anyone): quoted.
            pairs = ", ".join([f"({_quoted(one.id)}, '{one.claim}')" for one in finishing])
            sql += f"{delete}{pairs});"
    except _NoLiteral:
        return None
    if wake:
        # Delivered when the transaction commits, to every dispatcher listening.
        sql += f"SELECT pg_notify({_quoted(table.name)}, '{len(rows)}');"
    return sql
