"""Splitting SQL text into the tokens a server would see, per dialect.

The read path decides on tokens, never on raw text, so that a keyword inside a string,
a comment or a quoted name is not mistaken for code, and code hidden where one server
reads it (MySQL's executable comments ``/*! … */``) is not mistaken for a comment.
Each dialect follows its server's own scanner (PostgreSQL's ``scan.l``, MariaDB's
``sql_lex.cc``, SQLite's ``tokenize.c``) where the difference could hide code: which
characters end a ``--`` comment or may follow the dashes, which comments nest, which
characters make up a name (every non-ASCII one) and so where a quote or a dollar-quote
can start, which quotes take backslash escapes, how numbers end, and PostgreSQL's
``U&"…"`` names, whose escapes are decoded before the policy reads them.

Where the rules depend on a server setting the client cannot see (backslash escapes
under MySQL's ``NO_BACKSLASH_ESCAPES`` or PostgreSQL's ``standard_conforming_strings``,
MySQL's ``ANSI_QUOTES``), the caller lexes the text in every way it can be read
(``readings``) and keeps the strictest verdict.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple


class Dialect(Enum):
    """The lexical rules of one database family."""

    POSTGRESQL = "postgresql"
    MYSQL = "mysql"
    SQLITE = "sqlite"


class LexError(ValueError):
    """The text cannot be split with confidence (an unterminated string or comment)."""


class UnterminatedQuote(LexError):
    """A string or quoted name never closes: the server cannot parse the text either."""


class Reading(NamedTuple):
    """One way a server may read text, by settings of its session the client cannot see."""

    #: ``\\`` escapes a quote inside ``'…'`` (PostgreSQL with ``standard_conforming_strings``
    #: off; MySQL without ``NO_BACKSLASH_ESCAPES``, in ``"…"`` too unless ``ansi_quotes``).
    backslash_escapes: bool
    #: MySQL's ``ANSI_QUOTES``: ``"…"`` is a quoted name, where ``\\`` escapes nothing.
    ansi_quotes: bool = False


#: A significant token, ``(kind, value)``: kind is "word" (value upper-cased), "name" (a
#: quoted identifier, upper-cased), "string" (value empty), "number" or "punct".
Token = tuple[str, str]
_STRING: Token = ("string", "")

# Every non-ASCII character belongs to a name on all three servers (they read bytes of
# 0x80 and above as letters), so "x€$$" is one name on PostgreSQL, not x, € and a $$
# string.
_LETTER = "A-Za-z_\x80-\U0010ffff"
_PG_NAME = rf"[{_LETTER}][{_LETTER}0-9$]*"
_MYSQL_NAME_CHAR = rf"[{_LETTER}0-9$]"
_SPACE = r"(?P<space>[ \t\n\r\f\v]+)"
_PUNCT = r"(?P<punct>:=|::|<=|>=|<>|!=|=>|\|\||->|.)"
_EXPONENT = r"(?:[eE][+-]?[0-9]+)?"
# PostgreSQL's (before 15) and SQLite's numbers: a name right after one is a token of
# its own (PostgreSQL 15 and later refuse it as "trailing junk", SQLite as illegal).
_NUMBER = rf"(?P<number>(?:[0-9]+(?:\.(?!\.)[0-9]*)?|\.[0-9]+){_EXPONENT})"
_CLOSE = r"(?P<close>\*/)"
_NAME_DOUBLE = r'(?P<name>"(?:[^"]|"")*")'
_NAME_BACKTICK = r"(?P<backtick>`(?:[^`]|``)*`)"

# PostgreSQL joins string constants separated by whitespace holding a newline into one
# constant of the first one's kind (scan.l's {quotecontinue}): B'' '\…' read across such
# a break takes no backslash escapes, E'' '…' takes them.  Spaces, at most one comment
# (it runs to the line's end), a newline, then spaces and whole comment lines.
_PG_CONTINUE = r"[ \t\f\v]*(?:--[^\n\r]*)?[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*[\n\r])*"
_PG_PLAIN_BODY = "'(?:[^']|'')*'"
_PG_ESCAPED_BODY = r"'(?:[^'\\]|\\.|'')*'"
_PG_BIT_BODY = "'[^']*'"  # B'…' and X'…' end at the first quote: '' ends them too


def _pg_string(group: str, prefix: str, body: str) -> str:
    return f"(?P<{group}>{prefix}{body}(?:{_PG_CONTINUE}{body})*)"


def _quoted(quote: str, escapes: bool) -> str:
    if escapes:
        return rf"{quote}(?:[^{quote}\\]|\\.|{quote}{quote})*{quote}"
    return f"{quote}(?:[^{quote}]|{quote}{quote})*{quote}"


def _compile(*parts: str, lone: str = "'\"`") -> re.Pattern[str]:
    # The last alternative of _PUNCT takes any other character, so every position of
    # the text matches something: an unterminated quote is a lone quote character.
    lone_quote = f"(?P<lone>[{re.escape(lone)}])"
    return re.compile("|".join((_SPACE, *parts, lone_quote, _PUNCT)), re.DOTALL)


def _postgresql(escapes: bool) -> re.Pattern[str]:
    plain = _PG_ESCAPED_BODY if escapes else _PG_PLAIN_BODY
    return _compile(
        # Prefixed strings and names first: at the start of a token, E'…' is an escape
        # string, not the name E (inside a name, the name rule has consumed the E).
        r'(?P<uname>[uU]&"(?:[^"]|"")*")',
        _pg_string("string", "[uU]&", _PG_PLAIN_BODY),
        _pg_string("estring", "[eE]", _PG_ESCAPED_BODY),
        _pg_string("bstring", "[bBxX]", _PG_BIT_BODY),
        rf"(?P<word>{_PG_NAME})",
        _NUMBER,
        r"(?P<comment>--[^\n\r]*)",
        r"(?P<nested>/\*)",
        _CLOSE,
        _pg_string("plain", "", plain),
        _NAME_DOUBLE,
        r"(?P<param>\$[0-9]+)",
        rf"(?P<dollar>\$(?:[{_LETTER}][{_LETTER}0-9]*)?\$)",
    )


def _mysql(escapes: bool, ansi_quotes: bool) -> re.Pattern[str]:
    name = _MYSQL_NAME_CHAR
    return _compile(
        # sql_lex.cc: 0x…/0b… and 1e5 are numbers only when no name character follows
        # (1e5abc is 1e5 then abc); otherwise text starting with a digit is a name.
        rf"(?P<number>0x[0-9a-fA-F]+(?!{name})|0b[01]+(?!{name})|[0-9]+[eE][+-]?[0-9]+"
        rf"|[0-9]+\.(?!\.)[0-9]*{_EXPONENT}|[0-9]+(?!{name})|\.[0-9]+{_EXPONENT})",
        rf"(?P<word>{name}+)",
        # -- starts a comment when a space or any control character follows it (or
        # nothing): MariaDB's my_isspace() || my_iscntrl().  A newline right after the
        # dashes ends that comment at once.
        r"(?P<comment>--(?=[\x01-\x20\x7f]|\Z)[^\n]*|\#[^\n]*)",
        r"(?P<executable>/\*M?!)",
        _CLOSE,
        r"(?P<block>/\*.*?\*/)",
        r"(?P<unterminated>/\*)",
        f"(?P<plain>{_quoted(chr(39), escapes)})",
        f"(?P<name>{_quoted(chr(34), escapes and not ansi_quotes)})",
        _NAME_BACKTICK,
        # A quoted name in MariaDB's MSSQL mode, a syntax error otherwise.
        r"(?P<bracket_mysql>\[)",
    )


def _sqlite() -> re.Pattern[str]:
    return _compile(
        rf"(?P<word>{_PG_NAME})",
        _NUMBER,
        r"(?P<comment>--[^\n]*)",
        # /*! … */ is an ordinary comment here: SQLite has no executable comments.
        r"(?P<block>/\*.*?\*/)",
        r"(?P<unterminated>/\*)",
        _CLOSE,
        f"(?P<plain>{_PG_PLAIN_BODY})",
        _NAME_DOUBLE,
        _NAME_BACKTICK,
        r"(?P<bracket>\[[^\]]*\])",
        lone="'\"`[",
    )


_PATTERNS: dict[tuple[Dialect, Reading], re.Pattern[str]] = {
    (Dialect.SQLITE, Reading(False)): _sqlite(),
}
for _escapes in (False, True):
    _PATTERNS[Dialect.POSTGRESQL, Reading(_escapes)] = _postgresql(_escapes)
    for _ansi in (False, True):
        _PATTERNS[Dialect.MYSQL, Reading(_escapes, _ansi)] = _mysql(_escapes, _ansi)

#: How each server reads text without a backslash (settings then make no difference).
_DEFAULT = {
    Dialect.POSTGRESQL: (Reading(False),),
    Dialect.MYSQL: (Reading(True),),
    Dialect.SQLITE: (Reading(False),),
}
#: Every way text with a backslash may be read: ANSI_QUOTES without NO_BACKSLASH_ESCAPES
#: is MySQL's third way (backslashes escape in '…' and not in "…").
_WITH_BACKSLASH = {
    Dialect.POSTGRESQL: (Reading(False), Reading(True)),
    Dialect.MYSQL: (Reading(False), Reading(True), Reading(True, ansi_quotes=True)),
    Dialect.SQLITE: (Reading(False),),
}
_DIGITS = frozenset("0123456789")


def readings(sql: str, dialect: Dialect) -> tuple[Reading, ...]:
    """Every way ``dialect``'s server may read ``sql``, by settings the client cannot see."""
    return (_WITH_BACKSLASH if "\\" in sql else _DEFAULT)[dialect]


def tokens(sql: str, dialect: Dialect, reading: Reading) -> list[Token]:
    """The significant tokens of ``sql`` (no spaces, no comments) under ``dialect``'s rules
    and one ``reading`` of it.

    The contents of MySQL's executable comments (``/*! … */``) are tokens like any other
    code; a PostgreSQL ``U&"…"`` name is decoded.  Raises ``UnterminatedQuote`` for an
    unterminated string or quoted name, ``LexError`` for anything else the servers could
    read differently (an unterminated comment, a NUL character, a versioned comment).
    """
    if "\x00" in sql:
        raise LexError("a NUL character, where the servers stop reading at different points")
    pattern = _PATTERNS[dialect, reading]
    out: list[Token] = []
    append = out.append
    in_executable = False
    position = 0
    length = len(sql)
    while position < length:
        # Every character matches some alternative, so the matches are contiguous; the
        # loop restarts only after skipping a nested comment or a dollar-quoted string.
        for found in pattern.finditer(sql, position):
            kind = found.lastgroup
            if kind == "word":
                append(("word", found.group().upper()))
            elif kind == "space" or kind == "comment":
                pass
            elif kind == "punct":
                append(("punct", found.group()))
            elif kind == "plain" or kind == "string" or kind == "estring" or kind == "bstring":
                if _after_uescape(out):
                    append(("string", _uescape_string(found.group())))
                else:
                    append(_STRING)
            elif kind == "number" or kind == "param":
                append(("number", found.group()))
            elif kind == "name" or kind == "backtick":
                value = found.group()
                append(("name", value[1:-1].replace(value[0] * 2, value[0]).upper()))
            elif kind == "uname":
                append(("uname", found.group()[3:-1].replace('""', '"')))
            elif kind == "bracket":
                append(("name", found.group()[1:-1].upper()))
            elif kind == "block":
                if in_executable:
                    raise LexError("a comment inside an executable comment")
            elif kind == "executable":
                if in_executable:
                    raise LexError("an executable comment inside another one")
                _check_executable(sql, found)
                in_executable = True
            elif kind == "close":
                if not in_executable:
                    raise LexError("*/ outside a comment")
                in_executable = False
            elif kind == "nested":
                position = _skip_nested_comment(sql, found.end())
                break
            elif kind == "dollar":
                tag = found.group()
                end = sql.find(tag, found.end())
                if end < 0:
                    raise UnterminatedQuote("an unterminated dollar-quoted string")
                if _after_uescape(out):
                    append(("string", sql[found.end() : end]))
                else:
                    append(_STRING)
                position = end + len(tag)
                break
            elif kind == "lone":
                raise UnterminatedQuote(f"an unterminated quote at {found.group()!r}")
            elif kind == "bracket_mysql":
                raise LexError("a [, which starts a quoted name in MariaDB's MSSQL mode")
            else:
                raise LexError(f"an unterminated comment at {found.group()!r}")
        else:
            position = length
    if in_executable:
        raise LexError("an unterminated executable comment")
    if dialect is Dialect.POSTGRESQL:
        return _decode_unicode_names(out)
    return out


def _after_uescape(out: list[Token]) -> bool:
    """Whether the next string is the escape character of a ``U&"…" UESCAPE`` clause."""
    return len(out) > 1 and out[-1] == ("word", "UESCAPE") and out[-2][0] == "uname"


def _check_executable(sql: str, found: re.Match[str]) -> None:
    """Refuse the executable comments that some servers run and others skip."""
    if "M" in found.group():
        raise LexError("a MariaDB executable comment (/*M! … */), which MySQL skips")
    if _DIGITS.issuperset(sql[found.end() : found.end() + 5]) and found.end() + 5 <= len(sql):
        raise LexError(
            "a versioned comment (/*!NNNNN … */), which a server runs or skips by its version"
        )


def _skip_nested_comment(sql: str, position: int) -> int:
    """The index just past a PostgreSQL block comment (they nest) whose ``/*`` ends
    at ``position``.

    scan.l reads whichever of ``/*`` and ``*/`` starts first, so ``/*/`` opens a level."""
    depth = 1
    while True:
        end = sql.find("*/", position)
        if end < 0:
            raise LexError("an unterminated /* comment")
        opening = sql.find("/*", position, end + 1)
        if opening >= 0:
            depth += 1
            position = opening + 2
            continue
        depth -= 1
        position = end + 2
        if depth == 0:
            return position


def _uescape_string(text: str) -> str:
    """The value of the plain string constant after ``UESCAPE`` (one character)."""
    if text[0] != "'":
        raise LexError("UESCAPE followed by other than a plain string")
    return text[1:-1].replace("''", "'")


_HEX = frozenset("0123456789abcdefABCDEF")


def _decode_unicode_names(found: list[Token]) -> list[Token]:
    """``found`` with each ``U&"…"`` name decoded (its ``UESCAPE 'c'`` clause dropped),
    as PostgreSQL's parser does before it looks the name up."""
    if not any(kind == "uname" for kind, _value in found):
        return found
    out: list[Token] = []
    index = 0
    while index < len(found):
        kind, value = found[index]
        index += 1
        if kind != "uname":
            out.append((kind, value))
            continue
        escape = "\\"
        if index < len(found) and found[index] == ("word", "UESCAPE"):
            if index + 1 >= len(found) or found[index + 1][0] != "string":
                raise LexError("UESCAPE without its escape character")
            escape = found[index + 1][1]
            if len(escape) != 1 or escape in _HEX or escape in "+'\" \t\n\r\f\v":
                raise LexError(f"an invalid UESCAPE character {escape!r}")
            index += 2
        out.append(("name", _unescape(value, escape).upper()))
    return out


def _unescape(text: str, escape: str) -> str:
    """A ``U&"…"`` name's text with its escapes (``\\XXXX``, ``\\+XXXXXX``) decoded."""
    out: list[str] = []
    position = 0
    while True:
        found = text.find(escape, position)
        if found < 0:
            out.append(text[position:])
            break
        out.append(text[position:found])
        rest = text[found + 1 :]
        if rest[:1] == escape:
            out.append(escape)
            position = found + 2
            continue
        long_form = rest[:1] == "+"
        digits = rest[1:7] if long_form else rest[:4]
        if len(digits) != (6 if long_form else 4) or not _HEX.issuperset(digits):
            raise LexError("an invalid Unicode escape in a U& name")
        code = int(digits, 16)
        if not 0 < code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            # PostgreSQL also accepts a UTF-16 surrogate pair; refusing it costs nothing.
            raise LexError("an invalid or surrogate Unicode escape in a U& name")
        out.append(chr(code))
        position = found + 1 + len(digits) + long_form
    return "".join(out)
