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
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql.base import PGDialect

from .sql import Claimed


class _NoLiteral(Exception):
    """A value that cannot be written as a literal."""


#: The columns whose few values recur from row to row (task names, queues, states):
#: their literals are written once, then looked up.
_RECURRING = frozenset({"name", "queue", "state"})
_recurring: dict[str, str] = {}


def _quoted(text: str) -> str:
    if "\x00" in text:
        raise _NoLiteral
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _values(row: dict[str, Any], columns: tuple[tuple[str, bool], ...]) -> str:
    """``row``'s values, in the order of ``columns`` (name, recurring), as literals."""
    literals = []
    for column, recurring in columns:
        value = row[column]
        kind = type(value)
        if kind is str:
            literal = _recurring.get(value) if recurring else None
            if literal is None:
                literal = _quoted(value)
                if recurring:
                    _recurring[value] = literal
        elif kind is int:
            literal = str(value)
        elif value is None:
            literal = "NULL"
        else:
            raise _NoLiteral  # a bool, a float, an int subclass: not from defer
        literals.append(literal)
    return "(" + ", ".join(literals) + ")"


@functools.lru_cache(maxsize=16)
def _texts(table: Table) -> tuple[tuple[tuple[str, bool], ...], str, str]:
    """The columns (name, whether its values recur), and the text around the values of
    the ``INSERT`` and the ``DELETE`` (quoted for PostgreSQL; built once per table)."""
    preparer = PGDialect().identifier_preparer  # type: ignore[no-untyped-call]
    name = preparer.format_table(table)
    columns = tuple((column.name, column.name in _RECURRING) for column in table.c)
    quoted = ", ".join(preparer.quote(column) for column, _ in columns)
    insert = f"INSERT INTO {name} ({quoted}) VALUES "
    delete = f"DELETE FROM {name} WHERE ({preparer.quote('id')}, {preparer.quote('claim')}) IN ("
    return columns, insert, delete


def carried_statements(
    table: Table,
    rows: Sequence[dict[str, Any]],
    *,
    wake: bool,
    finishing: Sequence[Claimed] = (),
) -> str | None:
    """SQL that stores ``rows`` (skipping ids already stored: keyed tasks), deletes the
    rows of the runs ``finishing`` that still hold their claims, and with ``wake``
    notifies the dispatchers; ``None`` when a value cannot be written as a literal."""
    columns, insert, delete = _texts(table)
    try:
        values = ", ".join([_values(row, columns) for row in rows])
        pairs = ", ".join(
            [f"({_quoted(claimed.id)}, {_quoted(claimed.claim)})" for claimed in finishing]
        )
    except _NoLiteral:
        return None
    sql = f"{insert}{values} ON CONFLICT (id) DO NOTHING;"
    if pairs:
        sql += f"{delete}{pairs});"
    if wake:
        # Delivered when the transaction commits, to every dispatcher listening.
        sql += f"SELECT pg_notify({_quoted(table.name)}, '{len(rows)}');"
    return sql
