"""The read guard against the real servers, on a generated corpus of hostile text.

Each statement hides a call that would outlive its unit on a pooled read connection (a
session lock, a changed setting, a user variable) behind comments, quotes, escapes,
prefixes, numbers and every control and several non-ASCII characters at the positions
where the servers' scanners decide something.  The property, for every statement: the
guard refuses it, or the server, running it on the read connection, leaves nothing
behind (it ran a harmless query or failed).  Then one test per reported bypass, through
``db.read``, outside and inside a writing unit.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from sanic_sqlalchemy import Database, ReadOnlyError
from sanic_sqlalchemy.errors import UnitStateError
from sanic_sqlalchemy.testing import schema

from .conftest import backend_url
from .models import Base, User

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Every control character, the space, characters the scanners treat specially, and
#: non-ASCII ones (letters to the servers, some not to Python's \\w; a 4-byte one).
CHARACTERS = [chr(code) for code in range(0x20)] + [
    " ",
    "\x7f",
    "\x80",
    "\x85",
    "\xa0",
    "\xad",
    "\xe9",
    "\u017f",
    "\u0131",
    "\u0660",
    "\u2028",
    "\u20ac",
    "\ufeff",
    "\uff07",
    "\U0001d400",
    "'",
    '"',
    "`",
    "\\",
    "$",
    "-",
    "/",
    "*",
    "#",
    "!",
    "e",
    "x",
    "0",
    ".",
]

#: What hides the payload in one reading and not in another: comment starts, quotes,
#: prefixed strings, dollar quotes, executable comments.
OPENERS = [
    "--",
    "#",
    "/*",
    "/*!",
    "/*M!",
    "/*!50700",
    "'",
    '"',
    "`",
    "E'",
    "B'",
    "X'",
    "N'",
    "U&'",
    'U&"',
    "$$",
    "$",
    "\\",
    "1e1",
    "1.",
    ".5",
    "x",
]
QUOTES = ["'", '"', "`", "$$", "*/"]

#: Per backend: the payloads (each valid right after ``SELECT 1``) and what they leave.
PAYLOADS = {
    "postgresql": [
        ", pg_advisory_lock(4242)",
        ", set_config(chr(115)||chr(46)||chr(99), chr(108), false)",
    ],
    "mysql": [", GET_LOCK(0x73616e6963, 0)", " INTO @sanic_corpus"],
}
_LEFTOVERS = {
    "postgresql": (
        "SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND pid = pg_backend_pid()), current_setting('s.c', true), "
        "current_setting('statement_timeout')"
    ),
    "mysql": "SELECT IS_USED_LOCK('sanic'), IS_USED_LOCK('sanic_lock'), @sanic_corpus, @v",
}
_CLEAN: dict[str, list[tuple[Any, ...]]] = {
    "postgresql": [(0, None, "0"), (0, "", "0")],
    "mysql": [(None, None, None, None)],
}
_RESET = {
    "postgresql": [
        "SELECT pg_advisory_unlock_all()",
        "RESET statement_timeout",
        "RESET s.c",
    ],
    # The last statement clears the flag of a changed session, which the guard reads.
    "mysql": ["SELECT RELEASE_ALL_LOCKS()", "SET @sanic_corpus = NULL, @v = NULL", "SELECT 1"],
}


def corpus(backend: str) -> Iterator[str]:
    """The generated statements for ``backend``: structured families, then random ones."""
    for payload in PAYLOADS[backend]:
        for opener in OPENERS:
            for char in CHARACTERS:
                # A comment or quote that the character may end, or not.
                yield f"SELECT 1 {opener}{char}{payload}"
                yield f"SELECT 1 {opener}{char}\n{payload}"
                for quote in QUOTES:
                    # Something the character may open, hiding the payload in a quote
                    # one reading sees and another does not.
                    yield f"SELECT 1 {opener}{char}{quote}\n{payload} -- {quote}"
                # The character ending a name (or not) before a prefix or a quote.
                yield f"SELECT 1 AS x{char}{opener}'{payload} -- '"
            # The character after the dashes of the closing comment.
            yield f"SELECT 1 {char}'\n{payload} --{char}'"
        for char in CHARACTERS:
            # Dollar-quote tags, and dollars inside names.
            yield f"SELECT ${char}$ ' ${char}${payload} -- '"
            yield f"SELECT $a{char}$ ' $a{char}${payload} -- '"
            yield f"SELECT 1 AS x{char}$${payload} -- $$"
            # Numbers the character may end (or not).
            yield f"SELECT 1{char}{payload.lstrip(', ')}"
            yield f"SELECT 1e1{char}{payload}"
            # Continued strings, comments nested or not.
            yield f"SELECT B''{char}'\\'{payload} -- '"
            yield f"SELECT E''{char}'\\'{payload} -- '"
            yield f"SELECT 1 /* /*{char}*/{payload} -- */"
            yield f"SELECT 1 /*{char}/ */{payload} -- */"
    for number in ("1e1", "1.", ".5", "1.5e+1", "0x61", "0b1", "1e", "1_0", "1$$"):
        yield f"SELECT {number}INTO @sanic_corpus"
        yield f"SELECT {number}INTO @sanic_corpus FROM dual"
    if backend == "postgresql":
        for name in _unicode_spellings("pg_advisory_lock"):
            yield f"SELECT {name}(4242)"
        for name in _unicode_spellings("set_config"):
            yield f"SELECT {name}('s.c', 'l', false)"
    rng = random.Random(17)
    fragments = [*OPENERS, *QUOTES, *CHARACTERS, "\n", "\r", " ", "*/", "''", "\\'", ";"]
    for _ in range(3000):
        before = "".join(rng.choice(fragments) for _ in range(rng.randint(1, 5)))
        after = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 4)))
        yield f"SELECT 1 {before}{rng.choice(PAYLOADS[backend])}{after}"


def _unicode_spellings(name: str) -> list[str]:
    """``name`` as ``U&"…"`` names: escaped letters, the long form, UESCAPE clauses."""
    letter = name.index("_") + 1
    code = f"{ord(name[letter]):04x}"
    head, tail = name[:letter], name[letter + 1 :]
    every = "".join(f"\\{ord(char):04x}" for char in name)
    return [
        f'U&"{head}\\{code}{tail}"',
        f'U&"{head}\\+00{code}{tail}"',
        f"U&\"{head}!{code}{tail}\" UESCAPE '!'",
        f'U&"{head}!{code}{tail}" /* c */ uescape $$!$$',
        f'pg_catalog.U&"{head}\\{code}{tail}"',
        f'U&"{every}"',
    ]


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["postgresql", "mysql"])
async def corpus_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, Database]]:
    """One Database per server with a single pooled read connection, as in production."""
    backend: str = request.param
    database = Database(backend_url(backend, tmp_path_factory.mktemp(backend)), pool_size=1)
    async with schema(database, Base.metadata):
        async with database:
            database.write.add(User(id=1, name="Ada", email="a@x.org"))
        yield backend, database
    await database.dispose()


async def _leftovers(backend: str, connection: AsyncConnection) -> tuple[Any, ...]:
    """What the read connection holds, asked past the guard on its raw driver."""
    raw: Any = (await connection.get_raw_connection()).driver_connection
    if backend == "mysql":
        async with raw.cursor() as cursor:
            await cursor.execute(_LEFTOVERS[backend])
            return tuple(await cursor.fetchone())
    return tuple(await raw.fetchrow(_LEFTOVERS[backend]))


async def _reset(backend: str, connection: AsyncConnection) -> None:
    raw: Any = (await connection.get_raw_connection()).driver_connection
    for statement in _RESET[backend]:
        if backend == "mysql":
            async with raw.cursor() as cursor:
                await cursor.execute(statement)
        else:
            await raw.execute(statement)


async def _run(connection: AsyncConnection, statement: str) -> str:
    """ "refused", "failed" (the server refused it), "ran", or "lost" when the guard
    found that the previous statement changed the session."""
    try:
        await connection.exec_driver_sql(statement)
    except ReadOnlyError as error:
        if not str(error).startswith("db.read refused this statement before"):
            return "lost"
        return "refused"
    except DBAPIError:
        return "failed"
    return "ran"


async def test_generated_corpus_leaves_nothing_on_the_read_connection(
    corpus_db: tuple[str, Database],
) -> None:
    """Every generated statement is refused, or runs or fails on the server without
    leaving a lock, a setting or a variable on the read connection."""
    backend, db = corpus_db
    statements = list(dict.fromkeys(corpus(backend)))
    outcomes: dict[str, int] = {"refused": 0, "failed": 0, "ran": 0}
    async with db.engines.read.connect() as connection:
        await _reset(backend, connection)
        clean = await _leftovers(backend, connection)
        assert clean in _CLEAN[backend]
        sent: list[str] = []
        for statement in statements:
            outcome = await _run(connection, statement)
            assert outcome != "lost", f"{sent[-1]!r} changed the read connection's session"
            outcomes[outcome] += 1
            if outcome != "refused":
                sent.append(statement)
        if await _leftovers(backend, connection) != clean:
            # Name the statements that leaked, one at a time.
            leaked = []
            for statement in sent:
                await _reset(backend, connection)
                await _run(connection, statement)
                if await _leftovers(backend, connection) != clean:
                    leaked.append(statement)
            await _reset(backend, connection)
            pytest.fail(f"{len(leaked)} statement(s) got past the guard: {leaked[:20]!r}")
    # The corpus exercised both sides: many refusals, and many statements sent.
    assert outcomes["refused"] > 1000 and outcomes["ran"] + outcomes["failed"] > 1000, outcomes


#: The reported bypasses, each accepted before the lexer followed the servers.
BYPASSES = {
    "postgresql": [
        "SELECT 1 --x\r, pg_advisory_lock(4242)",
        "SELECT 1 --x\r, set_config('statement_timeout', '1ms', false)",
        'SELECT U&"pg_adv\\0069sory_lock"(4242)',
        "SELECT U&\"pg_adv!0069sory_lock\" UESCAPE '!'(4242)",
        "SELECT U&\"set_\\0063onfig\"('statement_timeout', '1ms', false)",
        "SELECT $€$ ' $€$, pg_advisory_lock(4242) -- '",
        "SELECT 1 AS x€$$, pg_advisory_lock(4242) -- $$",
        "SELECT 1 /*! ' */ , pg_advisory_lock(4242) -- ' */",
        "SELECT * FROM ts_stat('SELECT to_tsvector(set_config(''statement_timeout'', "
        "''1ms'', false))')",
        "SELECT ts_rewrite(to_tsquery('a'), 'SELECT to_tsquery(''a''), "
        "to_tsquery(set_config(''statement_timeout'', ''1ms'', false))')",
    ],
    "mysql": [
        "SELECT 1 --\x01 '\n, GET_LOCK('sanic_lock', 0) -- '",
        "SELECT 1 --\x7f '\n, GET_LOCK('sanic_lock', 0) -- '",
        "SELECT 1 --\x01 '\nINTO @v -- '",
        "SELECT 1e1INTO @v",
        "SELECT .5INTO @v",
        "SELECT 1.INTO @v",
        "SELECT 1 /*!99999 ' */, GET_LOCK('sanic_lock', 0) -- ' */",
    ],
}


class _Rollback(Exception):
    """Ends a unit with a rollback, after it showed it was still usable."""


@pytest.mark.parametrize(
    ("corpus_db", "statement"),
    [(backend, statement) for backend, statements in BYPASSES.items() for statement in statements],
    indirect=["corpus_db"],
)
async def test_reported_bypasses_are_refused(
    corpus_db: tuple[str, Database], statement: str
) -> None:
    """Each reported bypass is refused before it is sent, outside and inside a writing
    unit, and the pooled read connection holds nothing in the next unit."""
    backend, db = corpus_db
    async with db:
        with pytest.raises(ReadOnlyError, match=r"^db\.read refused this statement before"):
            await db.read.execute(text(statement))
    with pytest.raises(_Rollback):
        async with db:
            db.write.add(User(id=2, name="Bob", email="b@x.org"))
            await db.write.flush()
            with pytest.raises(ReadOnlyError, match=r"^db\.read refused this statement before"):
                await db.read.execute(text(statement))
            assert (await db.read.execute(select(User.id).where(User.id == 2))).scalar() == 2
            raise _Rollback
    async with db.engines.read.connect() as connection:
        assert await _leftovers(backend, connection) in _CLEAN[backend]


@pytest.mark.parametrize("corpus_db", ["postgresql"], indirect=True)
async def test_a_read_without_result_columns_on_the_writer(
    corpus_db: tuple[str, Database],
) -> None:
    """A query without result columns (PostgreSQL's ``SELECT FROM t``; MySQL's rowless
    ``SELECT … INTO`` is refused before it is sent) through db.read in a writing unit is
    a UnitStateError that says what to do, not SQLAlchemy's NotImplementedError; the
    unit goes on."""
    _, db = corpus_db
    with pytest.raises(_Rollback):
        async with db:
            db.write.add(User(id=2, name="Bob", email="b@x.org"))
            await db.write.flush()
            with pytest.raises(UnitStateError, match=r"no result columns.*db\.write"):
                await db.read.execute(text("SELECT FROM users"))
            assert (await db.read.execute(select(User.id).where(User.id == 2))).scalar() == 2
            raise _Rollback
