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
    """A value ``_literal`` cannot write."""


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        if "\x00" in value:
            raise _NoLiteral
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _NoLiteral


@functools.lru_cache(maxsize=16)
def _texts(table: Table) -> tuple[tuple[str, ...], str, str]:
    """The columns' names, and the text around the values of the ``INSERT`` and the
    ``DELETE`` (quoted for PostgreSQL; built once per table)."""
    preparer = PGDialect().identifier_preparer  # type: ignore[no-untyped-call]
    name = preparer.format_table(table)
    columns = tuple(column.name for column in table.c)
    quoted = ", ".join(preparer.quote(column) for column in columns)
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
        values = ", ".join(
            "(" + ", ".join([_literal(row[column]) for column in columns]) + ")" for row in rows
        )
        pairs = ", ".join(
            f"({_literal(claimed.id)}, {_literal(claimed.claim)})" for claimed in finishing
        )
    except _NoLiteral:
        return None
    sql = f"{insert}{values} ON CONFLICT (id) DO NOTHING;"
    if pairs:
        sql += f"{delete}{pairs});"
    if wake:
        # Delivered when the transaction commits, to every dispatcher listening.
        sql += f"SELECT pg_notify({_literal(table.name)}, '{len(rows)}');"
    return sql
