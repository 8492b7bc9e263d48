"""What the read path accepts: one query, and nothing that outlives it.

An allow-list, not a block-list: a statement is accepted only when its first keyword
begins a query (``SELECT``, ``WITH``, ``VALUES``, ``TABLE``, ``SHOW``, ``DESCRIBE``,
``EXPLAIN`` and SQLite's reporting pragmas).  Inside an accepted statement, what a query
can still do beyond reading is refused by name: ``INTO`` (files, variables, new tables),
locking clauses, data-changing parts of a ``WITH``, ``EXPLAIN ANALYZE``, MySQL's user
variable assignment, and functions that take session locks, change settings, notify,
touch server files or administer the server.  The same rules hold on every backend.
"""

from __future__ import annotations

from .lexer import Dialect, LexError, Token, UnterminatedQuote, readings, tokens

_SEPARATOR = ("punct", ";")
_QUERY_STARTS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN"})
_MYSQL_QUERY_STARTS = frozenset({"DESCRIBE", "DESC"})

#: SQLite pragmas that only report (SQLAlchemy's reflection uses them).
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

#: Functions a query may call that do more than read, by what they do.  A name ending
#: in ``*`` stands for every function with that prefix.
_FUNCTIONS: dict[str, str] = {
    "PG_ADVISORY_*": "takes or releases an advisory lock, which a pooled connection would keep",
    "PG_TRY_ADVISORY_*": "takes an advisory lock, which a pooled connection would keep",
    "GET_LOCK": "takes a named lock, which a pooled connection would keep",
    "RELEASE_LOCK": "releases a named lock held by the connection",
    "RELEASE_ALL_LOCKS": "releases the named locks held by the connection",
    "SET_CONFIG": "changes a setting of the connection",
    "PG_NOTIFY": "sends a notification",
    "NEXTVAL": "advances a sequence",
    "SETVAL": "changes a sequence",
    "LO_*": "works on large objects and server files",
    "DBLINK*": "runs SQL on another connection",
    "QUERY_TO_XML*": "runs the SQL text it is given, unchecked",
    "TS_STAT": "runs the SQL text it is given, unchecked",
    "TS_REWRITE": "runs the SQL text it may be given, unchecked",
    "CURSOR_TO_XML*": "reads from a cursor of the connection",
    "PG_TERMINATE_BACKEND": "administers the server",
    "PG_CANCEL_BACKEND": "administers the server",
    "PG_RELOAD_CONF": "administers the server",
    "PG_ROTATE_LOGFILE*": "administers the server",
    "PG_SWITCH_WAL": "administers the server",
    "PG_CREATE_RESTORE_POINT": "administers the server",
    "PG_BACKUP_*": "administers the server",
    "PG_START_BACKUP": "administers the server",
    "PG_STOP_BACKUP": "administers the server",
    "PG_PROMOTE": "administers the server",
    "PG_WAL_REPLAY_*": "administers the server",
    "PG_STAT_RESET*": "administers the server",
    "PG_LOG_BACKEND_MEMORY_CONTEXTS": "administers the server",
    "PG_CREATE_*_REPLICATION_SLOT": "administers the server",
    "PG_DROP_REPLICATION_SLOT": "administers the server",
    "PG_COPY_*": "administers the server",
    "PG_REPLICATION_SLOT_ADVANCE": "administers the server",
    "PG_LOGICAL_*": "administers the server",
    "PG_REPLICATION_ORIGIN_*": "administers the server",
    "PG_FILE_*": "writes server files",
    "LOAD_EXTENSION": "loads code into the database",
}
_EXACT = {name: why for name, why in _FUNCTIONS.items() if "*" not in name}
_PATTERNS = [(name.split("*"), why) for name, why in _FUNCTIONS.items() if "*" in name]
_PATTERN_STARTS = tuple({parts[0] for parts, _why in _PATTERNS})
#: Words that, anywhere in a query, send it to the detailed check.
_CHECKED_WORDS = frozenset(
    {"INTO", "FOR", "LOCK", "UPDATE", "DELETE", "MERGE", "INSERT", "ANALYZE", "ANALYSE", "NEXT"}
)
_ASSIGN = ("punct", ":=")
_OPEN = ("punct", "(")


def refusal(sql: str, dialect: Dialect) -> str | None:
    """Why the read path refuses ``sql`` (one phrase), or ``None`` when it is a query.

    Text that reads differently depending on server settings the client cannot see
    (whether backslashes escape quotes, MySQL's ``ANSI_QUOTES``) is checked in every way
    it can be read.  A way in which the text does not even split into tokens (an
    unterminated string) is one in which the server could not parse it either, so it
    runs nothing; every way that splits must pass.
    """
    unreadable: LexError | None = None
    readable = False
    for reading in readings(sql, dialect):
        try:
            found = tokens(sql, dialect, reading)
        except UnterminatedQuote as error:
            unreadable = error
            continue
        except LexError as error:
            return f"it cannot be read with certainty ({error})"
        readable = True
        reason = _judge(found, dialect)
        if reason is not None:
            return reason
    if not readable:
        return f"it cannot be read with certainty ({unreadable})"
    return None


def _judge(found: list[Token], dialect: Dialect) -> str | None:
    start = 0
    while start < len(found) and found[start][1] == "(":
        start += 1  # (SELECT …) UNION (SELECT …)
    if start == len(found):
        return "it holds no statement"
    if _SEPARATOR in found[:-1]:
        return "it holds more than one statement (a ';' followed by more SQL)"
    kind, first = found[start]
    starts = _QUERY_STARTS | _MYSQL_QUERY_STARTS if dialect is Dialect.MYSQL else _QUERY_STARTS
    if kind == "word" and first == "PRAGMA" and dialect is Dialect.SQLITE:
        return _judge_pragma(found[start + 1 :])
    if kind != "word" or first not in starts:
        shown = first if kind == "word" else "that"
        return (
            f"it is not a query ({shown} …); the read path takes SELECT, WITH … SELECT, "
            "VALUES, TABLE, SHOW, DESCRIBE and EXPLAIN only"
        )
    return _judge_query(found, dialect)


def _judge_query(found: list[Token], dialect: Dialect) -> str | None:
    if not _suspicious(found):
        return None  # the common case, decided with set operations
    return _first_refusal(found)


def _suspicious(found: list[Token]) -> bool:
    """Whether ``found`` holds anything the detailed check could refuse."""
    if _ASSIGN in found:
        return True
    words = {value for kind, value in found if kind == "word"}
    if not words.isdisjoint(_CHECKED_WORDS):
        return True
    called = {found[index - 1][1] for index, token in enumerate(found) if token == _OPEN and index}
    return any(_function(name) is not None for name in called)


def _first_refusal(found: list[Token]) -> str | None:
    explain = found[0][1] in ("EXPLAIN", "DESCRIBE", "DESC")
    last = len(found) - 1
    for index, (kind, value) in enumerate(found):
        following = found[index + 1][1] if index < last else ""
        if kind == "punct":
            if value == ":=":
                # MySQL's user-variable assignment (PostgreSQL's named arguments take =>).
                return (
                    "it assigns a variable (:=), which would outlive the unit on a pooled "
                    "connection"
                )
            continue
        if kind != "word" and kind != "name":
            continue
        if kind == "word":
            if value == "INTO":
                return "SELECT … INTO writes (a file, a variable or a new table)"
            if (value == "FOR" and following in ("UPDATE", "SHARE", "NO", "KEY")) or (
                value == "LOCK" and following == "IN"
            ):
                return (
                    "it is a locking read (FOR UPDATE, FOR SHARE, LOCK IN SHARE MODE), whose "
                    "locks belong to the transaction of db.write"
                )
            if value in ("UPDATE", "DELETE", "MERGE") or (value == "INSERT" and following != "("):
                return f"it changes data ({value} inside the query)"
            if explain and value in ("ANALYZE", "ANALYSE"):
                return "EXPLAIN ANALYZE runs the statement it explains"
            if value == "NEXT" and following == "VALUE":
                return "it advances a sequence (NEXT VALUE FOR)"
        if following == "(":
            why = _function(value)
            if why is not None:
                return f"it calls {value.lower()}(), which {why}"
    return None


def _function(name: str) -> str | None:
    why = _EXACT.get(name)
    if why is not None or not name.startswith(_PATTERN_STARTS):
        return why
    for parts, why in _PATTERNS:
        if _matches(name, parts):
            return why
    return None


def _matches(name: str, parts: list[str]) -> bool:
    # parts: the pattern split at each "*", e.g. ["PG_CREATE_", "_REPLICATION_SLOT"].
    if not name.startswith(parts[0]) or not name.endswith(parts[-1]):
        return False
    return len(name) >= len(parts[0]) + len(parts[-1])


def _judge_pragma(rest: list[Token]) -> str | None:
    names = [value for kind, value in rest if kind in ("word", "name")]
    if names and names[0] in ("MAIN", "TEMP") and len(rest) > 1 and rest[1][1] == ".":
        names = names[1:]  # PRAGMA main.table_info(…)
    if ("punct", "=") in rest:
        return "it changes a PRAGMA setting"
    if not names or names[0] not in _REPORTING_PRAGMAS:
        shown = names[0].lower() if names else ""
        return f"PRAGMA {shown} is not a reporting pragma"
    return None
