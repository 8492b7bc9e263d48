"""Classifying SQL text on the read path, without parsing more than we must.

The database refuses writes on a read-only connection by itself; these checks cover
what it cannot refuse: statements that would switch the connection's read-only mode
off or leave a transaction open in the pool, and (on MySQL/MariaDB, where part of a
read-write transaction cannot be made read-only) anything that is not a plain query.
"""

from __future__ import annotations

import re

# Comments, quoted strings and quoted identifiers, removed before looking at keywords
# so that ``SELECT '; DROP TABLE x'`` stays a SELECT.
_NOISE = re.compile(
    r"""
      --[^\n]*            # line comment
    | \#[^\n]*            # MySQL line comment
    | /\*.*?\*/           # block comment
    | '(?:[^'\\]|\\.|'')*'  # string literal
    | "(?:[^"\\]|\\.|"")*"  # quoted identifier (or MySQL string)
    | `[^`]*`             # MySQL quoted identifier
    | \$(\w*)\$.*?\$\1\$  # PostgreSQL dollar-quoted string
    """,
    re.VERBOSE | re.DOTALL,
)
_WORD = re.compile(r"[A-Za-z_]+")

#: Statements that change the state of the connection or its transaction.  On the
#: read path they could switch read-only off for the next user of the pooled
#: connection, or leave it inside a transaction.
SESSION_CONTROL = frozenset(
    {
        "ABORT",
        "ATTACH",
        "BEGIN",
        "CALL",
        "COMMIT",
        "DETACH",
        "DISCARD",
        "DO",
        "END",
        "HANDLER",
        "LOAD",
        "LOCK",
        "PRAGMA",
        "PREPARE",
        "RELEASE",
        "RESET",
        "ROLLBACK",
        "SAVEPOINT",
        "SET",
        "START",
        "UNLOCK",
        "USE",
        "XA",
    }
)

#: Keywords that begin a statement which reads and changes nothing.
_QUERY_STARTS = frozenset({"SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "VALUES", "TABLE"})
_DATA_CHANGES = frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "REPLACE",
        "MERGE",
        "CREATE",
        "ALTER",
        "DROP",
        "TRUNCATE",
        "RENAME",
        "GRANT",
        "REVOKE",
        "ANALYZE",
        "OPTIMIZE",
        "INTO",
    }
)


def keywords(sql: str) -> list[str]:
    """The upper-cased words of ``sql`` outside comments, strings and quoted names."""
    return [word.upper() for word in _WORD.findall(_NOISE.sub(" ", sql))]


#: SQLite pragmas that only report (``PRAGMA table_info(users)``); SQLAlchemy's own
#: reflection uses them.  Any other pragma, and any ``PRAGMA x = value``, is refused.
_REPORTING_PRAGMAS = frozenset(
    {
        "TABLE_INFO",
        "TABLE_XINFO",
        "TABLE_LIST",
        "INDEX_LIST",
        "INDEX_INFO",
        "INDEX_XINFO",
        "FOREIGN_KEY_LIST",
        "FOREIGN_KEY_CHECK",
        "DATABASE_LIST",
        "COLLATION_LIST",
        "FUNCTION_LIST",
        "PRAGMA_LIST",
        "COMPILE_OPTIONS",
        "INTEGRITY_CHECK",
        "QUICK_CHECK",
    }
)


def session_control_keyword(sql: str) -> str | None:
    """The first keyword of ``sql`` if it controls the session or transaction."""
    words = keywords(sql)
    if not words or words[0] not in SESSION_CONTROL:
        return None
    if words[0] == "PRAGMA" and _is_reporting_pragma(sql, words):
        return None
    return words[0]


def _is_reporting_pragma(sql: str, words: list[str]) -> bool:
    if "=" in _NOISE.sub(" ", sql):
        return False
    name = words[1:]
    if len(name) > 1 and name[0] in ("MAIN", "TEMP"):
        name = name[1:]  # PRAGMA main.table_info(...)
    return bool(name) and name[0] in _REPORTING_PRAGMAS


def is_plain_query(sql: str) -> bool:
    """True when ``sql`` only reads: a SELECT (or WITH … SELECT), SHOW or EXPLAIN.

    ``SELECT … INTO`` and ``EXPLAIN ANALYZE`` (which runs its statement) do not count,
    and neither does a ``WITH`` whose body changes data.
    """
    words = keywords(sql)
    if not words:
        return False
    first = words[0]
    if first == "WITH":
        return not _DATA_CHANGES.intersection(words)
    if first not in _QUERY_STARTS:
        return False
    if first == "EXPLAIN" and ("ANALYZE" in words[1:3] or "ANALYSE" in words[1:3]):
        return False
    return "INTO" not in words
