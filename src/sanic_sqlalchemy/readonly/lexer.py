"""Splitting SQL text into the tokens a server would see, per dialect.

The read path decides on tokens, never on raw text, so that a keyword inside a string,
a comment or a quoted name is not mistaken for code, and code hidden where one server
reads it (MySQL's executable comments ``/*! … */``) is not mistaken for a comment.
Each dialect's rules differ where it matters: which comments nest, whether ``--`` needs
a space after it, which quotes delimit strings and whether backslash escapes in them.

Where the rules depend on a server setting the client cannot see (backslash escapes
under MySQL's ``NO_BACKSLASH_ESCAPES`` or PostgreSQL's ``standard_conforming_strings``),
the caller lexes the text both ways and keeps the stricter verdict.
"""

from __future__ import annotations

import re
from enum import Enum


class Dialect(Enum):
    """The lexical rules of one database family."""

    POSTGRESQL = "postgresql"
    MYSQL = "mysql"
    SQLITE = "sqlite"


class LexError(ValueError):
    """The text cannot be split with confidence (an unterminated string or comment)."""


class UnterminatedQuote(LexError):
    """A string or quoted name never closes: the server cannot parse the text either."""


#: A significant token, ``(kind, value)``: kind is "word" (value upper-cased), "name" (a
#: quoted identifier, upper-cased), "string" (value empty), "number" or "punct".
Token = tuple[str, str]
_STRING: Token = ("string", "")


# Words: letters, digits, _ and $ (PostgreSQL and MySQL allow $ inside names).
_SPACE = r"(?P<space>[ \t\n\r\f\v]+)"
_WORD = r"(?P<word>[^\W\d][\w$]*)"
_NUMBER = r"(?P<number>\d[\w.$]*)"
_PUNCT = r"(?P<punct>:=|::|<=|>=|<>|!=|=>|\|\||->|[^\w\s'\"`])"
_BLOCK = r"(?P<block>/\*.*?\*/)"
# MySQL/MariaDB executable comments (/*! , /*!50700 , /*M! , /*M!100100): their text is
# code, read as such on every backend (elsewhere they would be odd comments at best).
_EXECUTABLE = r"(?P<executable>/\*M?!\d*)"
_CLOSE = r"(?P<close>\*/)"
_NAME_DOUBLE = r'(?P<name>"(?:[^"]|"")*")'
_NAME_BACKTICK = r"(?P<backtick>`(?:[^`]|``)*`)"


def _string(escapes: bool) -> str:
    if escapes:
        return r"(?P<string>'(?:[^'\\]|\\.|'')*')"
    return r"(?P<string>'(?:[^']|'')*')"


def _mysql_double(escapes: bool) -> str:
    # A string in MySQL (unless ANSI_QUOTES makes it a quoted name): read as a name so
    # that a function called by a quoted name is still seen.
    if escapes:
        return r'(?P<name>"(?:[^"\\]|\\.|"")*")'
    return _NAME_DOUBLE


def _compile(*parts: str) -> re.Pattern[str]:
    # Anything no alternative matched (an unterminated quote or comment) is "bad".
    return re.compile("|".join((_SPACE, *parts, r"(?P<bad>.)")), re.DOTALL)


_PATTERNS: dict[tuple[Dialect, bool], re.Pattern[str]] = {}
# Most tokens are spaces and words: they come first.  Everything that starts with a
# character a word or a number cannot start with follows, punctuation last.
for _escapes in (False, True):
    _PATTERNS[Dialect.POSTGRESQL, _escapes] = _compile(
        # E'…' is an escape string, not the word E.
        r"(?P<word>(?![eE]')[^\W\d][\w$]*)",
        _NUMBER,
        r"(?P<comment>--[^\n]*)",
        _EXECUTABLE,
        _CLOSE,
        r"(?P<nested>/\*)",
        r"(?P<estring>[eE]'(?:[^'\\]|\\.|'')*')",
        _string(_escapes),
        _NAME_DOUBLE,
        r"(?P<param>\$\d+)",
        r"(?P<dollar>\$(?:[^\W\d]\w*)?\$)",
        _PUNCT,
    )
    _PATTERNS[Dialect.MYSQL, _escapes] = _compile(
        _WORD,
        _NUMBER,
        r"(?P<comment>--(?:[ \t\n\r\f\v][^\n]*|$)|\#[^\n]*)",
        _EXECUTABLE,
        _CLOSE,
        _BLOCK,
        r"(?P<unterminated>/\*)",
        _string(_escapes),
        _mysql_double(_escapes),
        _NAME_BACKTICK,
        _PUNCT,
    )
    _PATTERNS[Dialect.SQLITE, _escapes] = _compile(
        _WORD,
        _NUMBER,
        r"(?P<comment>--[^\n]*)",
        _EXECUTABLE,
        _CLOSE,
        _BLOCK,
        r"(?P<unterminated>/\*)",
        _string(False),
        _NAME_DOUBLE,
        _NAME_BACKTICK,
        r"(?P<bracket>\[[^\]]*\])",
        _PUNCT,
    )


def tokens(sql: str, dialect: Dialect, *, backslash_escapes: bool) -> list[Token]:
    """The significant tokens of ``sql`` (no spaces, no comments) under ``dialect``'s rules.

    ``backslash_escapes`` says whether ``\\`` escapes a quote inside a string literal.
    The contents of executable comments (MySQL's ``/*! … */``) are tokens like any other
    code.  Raises ``LexError`` for an unterminated string, quoted name or comment.
    """
    pattern = _PATTERNS[dialect, backslash_escapes]
    out: list[Token] = []
    append = out.append
    in_executable = False
    position = 0
    length = len(sql)
    while position < length:
        # Every character matches some alternative ("bad" at worst), so the matches are
        # contiguous; the loop restarts only after skipping a nested comment or a
        # dollar-quoted string by hand.
        for found in pattern.finditer(sql, position):
            kind = found.lastgroup
            if kind == "word":
                append(("word", found.group().upper()))
            elif kind == "space" or kind == "comment":
                pass
            elif kind == "punct":
                append(("punct", found.group()))
            elif kind == "string" or kind == "estring":
                append(_STRING)
            elif kind == "number" or kind == "param":
                append(("number", found.group()))
            elif kind == "name" or kind == "backtick":
                value = found.group()
                append(("name", value[1:-1].replace(value[0] * 2, value[0]).upper()))
            elif kind == "bracket":
                append(("name", found.group()[1:-1].upper()))
            elif kind == "block":
                if in_executable:
                    raise LexError("a comment inside an executable comment")
            elif kind == "executable":
                if in_executable:
                    raise LexError("an executable comment inside another one")
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
                append(_STRING)
                position = end + len(tag)
                break
            elif found.group() in "'\"`[":
                raise UnterminatedQuote(f"an unterminated quote at {found.group()!r}")
            else:
                raise LexError(f"an unterminated comment or unexpected {found.group()!r}")
        else:
            position = length
    if in_executable:
        raise LexError("an unterminated executable comment")
    return out


def _skip_nested_comment(sql: str, position: int) -> int:
    """The index just past a PostgreSQL block comment (they nest) whose ``/*`` ends
    at ``position``."""
    depth = 1
    while True:
        end = sql.find("*/", position)
        if end < 0:
            raise LexError("an unterminated /* comment")
        opening = sql.find("/*", position, end)
        if opening >= 0:
            depth += 1
            position = opening + 2
            continue
        depth -= 1
        position = end + 2
        if depth == 0:
            return position
