"""Hostile SQL through ``db.read``: refused before it is sent, on every backend, in and
outside a writing unit, leaving nothing behind on the one pooled read connection."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, inspect, literal_column, select, text

from sanic_sqlalchemy import Database, ReadOnlyError
from sanic_sqlalchemy.testing import schema

from .conftest import BACKENDS, backend_url
from .models import Base, User

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: Files the statements below would write on the database server (loopback only).
_MARK = uuid.uuid4().hex[:8]
OUTFILE = f"/tmp/sanic_sqlalchemy_{_MARK}_out.csv"
PROGRAM_FILE = f"/tmp/sanic_sqlalchemy_{_MARK}_program"

HOSTILE = [
    # Chained statements, with strings, comments and quoted names in between.
    "SELECT 1; DELETE FROM users",
    "SELECT 1;DELETE FROM users",
    "SELECT 1 ;\nDROP TABLE users",
    "SELECT 1; SET SESSION TRANSACTION READ WRITE",
    "SELECT ';' ; DELETE FROM users",
    'SELECT 1 AS "a;b"; DELETE FROM users',
    "SELECT 1 /* ; */ ; DELETE FROM users",
    "SELECT 1 -- note\n; DELETE FROM users",
    "SELECT name FROM users WHERE name = 'x' OR 1 = 1; DROP TABLE users --",
    "TABLE users; DELETE FROM users",
    "(SELECT 1); DELETE FROM users",
    "SELECT $$;$$; DELETE FROM users",
    "SELECT 'a\\'; DELETE FROM users; -- '",
    'SELECT "a\\"; DELETE FROM users; -- "',
    # Not a query at all, whatever comes first.
    "/* leading */ DELETE FROM users",
    "\ufeffDELETE FROM users",
    "\u00a0DELETE FROM users",
    "\t\n\f DELETE FROM users",
    "SET @v = 1",
    "SET default_transaction_read_only = off",
    "BEGIN",
    "COMMIT",
    "START TRANSACTION READ WRITE",
    "LISTEN sanic_channel",
    "NOTIFY sanic_channel",
    "VACUUM",
    "ANALYZE users",
    "REINDEX TABLE users",
    "CLUSTER users",
    "CHECKPOINT",
    f"COPY (SELECT 1) TO PROGRAM 'touch {PROGRAM_FILE}'",
    "DECLARE c CURSOR FOR SELECT 1",
    "DO $$ BEGIN DELETE FROM users; END $$",
    "CALL some_procedure()",
    "HANDLER users OPEN",
    "USE test",
    "PREPARE s FROM 'DELETE FROM users'",
    "LOCK TABLES users WRITE",
    "PRAGMA query_only = 0",
    "PRAGMA writable_schema = 1",
    f"ATTACH DATABASE '{OUTFILE}' AS other",
    # Executable comments are code on MySQL/MariaDB, comments elsewhere.
    "/*! DELETE FROM users */",
    # Queries that write or lock.
    f"SELECT id FROM users INTO OUTFILE '{OUTFILE}'",
    f"SELECT id FROM users INTO DUMPFILE '{OUTFILE}'",
    "SELECT id INTO @v FROM users",
    "SELECT * INTO new_users FROM users",
    "WITH d AS (DELETE FROM users RETURNING id) SELECT * FROM d",
    "WITH u AS (UPDATE users SET name = 'x' RETURNING id) SELECT * FROM u",
    "WITH i AS (INSERT INTO users (id, name, email) VALUES (9, 'x', 'y') RETURNING id) "
    "SELECT * FROM i",
    "SELECT * FROM users FOR UPDATE",
    "SELECT * FROM users FOR SHARE",
    "SELECT * FROM users FOR NO KEY UPDATE",
    "SELECT * FROM users LOCK IN SHARE MODE",
    "EXPLAIN ANALYZE DELETE FROM users",
    "EXPLAIN (ANALYZE, FORMAT JSON) DELETE FROM users",
    # Session state that would outlive the unit on a pooled connection.
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_try_advisory_lock_shared(1)",
    "SELECT pg_catalog.pg_advisory_lock (1)",
    'SELECT "pg_advisory_lock"(1)',
    "SELECT GET_LOCK('sanic_lock', 0)",
    "SELECT get_lock /* between */ ('sanic_lock', 0)",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT @v := 1",
    "SELECT pg_notify('sanic_channel', 'x')",
    f"SELECT lo_export(0, '{OUTFILE}')",
    "SELECT NEXTVAL(some_sequence)",
    # Text that cannot be read with certainty.
    "SELECT 1 /* unterminated",
    "SELECT 'unterminated",
]

#: Hostile on MySQL/MariaDB, where executable comments are code (or, versioned or
#: MariaDB's /*M!, code on some servers only); ordinary comments on the other backends,
#: which run what is left, a plain query.
EXECUTABLE_COMMENTS = [
    f"SELECT id FROM users /*! INTO OUTFILE '{OUTFILE}' */",
    "SELECT 1 /*!50700 ; DELETE FROM users */",
    "SELECT 1 /*M! ; DELETE FROM users */",
    "SELECT 1 /*M!100100 INTO @v */",
]

#: Built with Core rather than text: the guard sees what they compile to (SQLite
#: compiles no locking clause at all).
CONSTRUCTS: dict[str, Any] = {
    "with_for_update": select(User).with_for_update(),
    "func.pg_advisory_lock": select(func.pg_advisory_lock(1)),
    "func.get_lock": select(func.get_lock("sanic_lock", 0)),
    "suffix_with INTO OUTFILE": select(User.id).suffix_with(f"INTO OUTFILE '{OUTFILE}'"),
    "literal_column chained": select(literal_column("1; DELETE FROM users")),
}


#: Each backend's tables once the module's schema exists.
_TABLES_AT_START: dict[str, list[str]] = {}


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=BACKENDS)
async def hostile_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[str, Database]]:
    """One Database per backend for the whole module, with a pool of one connection."""
    backend: str = request.param
    url = backend_url(backend, tmp_path_factory.mktemp(backend))
    database = Database(url, pool_size=1, pool_timeout=5)
    async with schema(database, Base.metadata):
        async with database:
            database.write.add_all(
                [User(id=1, name="Ada", email="a@x.org"), User(id=2, name="Bob", email="b@x.org")]
            )
        async with database.engines.write.connect() as connection:
            tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        # What "no new table" compares with: the test database may hold others' tables.
        _TABLES_AT_START[backend] = sorted(tables)
        yield backend, database
    await database.dispose()


async def _unchanged(backend: str, db: Database) -> None:
    """The data, the read connection, locks and the server's files are as before."""
    async with db:
        assert (await db.read.execute(select(User.name).order_by(User.id))).scalars().all() == [
            "Ada",
            "Bob",
        ]
    async with db.engines.write.connect() as connection:
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
        assert sorted(tables) == _TABLES_AT_START[backend]
        if backend == "postgresql":
            held = await connection.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
            assert held.scalar_one() == 0
            listening = text("SELECT count(*) FROM pg_listening_channels()")
            assert (await connection.execute(listening)).scalar_one() == 0
        elif backend == "mysql":
            lock = await connection.execute(text("SELECT IS_USED_LOCK('sanic_lock')"))
            assert lock.scalar_one() is None
    # The one pooled read connection still refuses writes on the server itself.
    async with db.engines.read.connect() as connection:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        with pytest.raises(Exception) as caught:
            if backend == "mysql":
                async with driver.cursor() as cursor:
                    await cursor.execute("DELETE FROM users")
            else:
                await driver.execute("DELETE FROM users")
        assert db.engines.backend.is_read_only_violation(caught.value), caught.value
        if backend == "mysql":
            async with driver.cursor() as cursor:
                await cursor.execute("SELECT @v")
                assert (await cursor.fetchone()) == (None,)
    assert not any(map(os.path.exists, (OUTFILE, PROGRAM_FILE)))


def _assert_refused(error: ReadOnlyError) -> None:
    message = str(error)
    assert message.startswith("db.read refused this statement before sending it: ")
    assert "db.write" in message


class _Rollback(Exception):
    """Ends a unit with a rollback, after it showed it was still usable."""


@pytest.mark.parametrize("statement", HOSTILE)
async def test_hostile_text_outside_a_writing_unit(
    hostile_db: tuple[str, Database], statement: str
) -> None:
    """Each hostile statement is refused with a ReadOnlyError and leaves nothing behind."""
    backend, db = hostile_db
    async with db:
        with pytest.raises(ReadOnlyError) as caught:
            await db.read.execute(text(statement))
        _assert_refused(caught.value)
        assert (await db.read.execute(text("SELECT 1"))).scalar_one() == 1
    await _unchanged(backend, db)


@pytest.mark.parametrize("statement", HOSTILE)
async def test_hostile_text_inside_a_writing_unit(
    hostile_db: tuple[str, Database], statement: str
) -> None:
    """Inside a unit that has written, each hostile statement is refused and the unit
    goes on: its reads see its write, and its write would still commit."""
    backend, db = hostile_db
    with pytest.raises(_Rollback):
        async with db:
            db.write.add(User(id=3, name="Cy", email="c@x.org"))
            await db.write.flush()
            with pytest.raises(ReadOnlyError) as caught:
                await db.read.execute(text(statement))
            _assert_refused(caught.value)
            assert (await db.read.execute(select(func.count()).select_from(User))).scalar() == 3
            await db.write.execute(text("UPDATE users SET name = 'Cyd' WHERE id = 3"))
            raise _Rollback
    await _unchanged(backend, db)


@pytest.mark.parametrize("statement", EXECUTABLE_COMMENTS)
async def test_executable_comments(hostile_db: tuple[str, Database], statement: str) -> None:
    """Executable comments are refused where the server would run them, and read as
    the comments they are on PostgreSQL and SQLite."""
    backend, db = hostile_db
    async with db:
        if backend == "mysql":
            with pytest.raises(ReadOnlyError) as caught:
                await db.read.execute(text(statement))
            _assert_refused(caught.value)
        else:
            assert (await db.read.execute(text(statement))).all()
    await _unchanged(backend, db)


@pytest.mark.parametrize("name", list(CONSTRUCTS))
async def test_hostile_constructs_are_refused(hostile_db: tuple[str, Database], name: str) -> None:
    """Core constructs that lock, take session locks or smuggle text are judged by what
    they compile to, outside and inside a writing unit."""
    backend, db = hostile_db
    construct = CONSTRUCTS[name]
    if name == "with_for_update" and backend == "sqlite":
        construct = select(User).with_for_update().suffix_with("FOR UPDATE")
    async with db:
        with pytest.raises(ReadOnlyError) as caught:
            await db.read.execute(construct)
        _assert_refused(caught.value)
    with pytest.raises(_Rollback):
        async with db:
            db.write.add(User(id=3, name="Cy", email="c@x.org"))
            await db.write.flush()
            with pytest.raises(ReadOnlyError):
                await db.read.execute(construct)
            raise _Rollback
    await _unchanged(backend, db)


async def test_hostile_sql_through_a_held_connection(hostile_db: tuple[str, Database]) -> None:
    """Driver SQL on a held ``db.read.connection()`` passes the same guard."""
    backend, db = hostile_db
    for statement in ("SELECT 1; DELETE FROM users", "SELECT GET_LOCK('sanic_lock', 0)"):
        async with db:
            connection = await db.read.connection()
            with pytest.raises(ReadOnlyError) as caught:
                await connection.exec_driver_sql(statement)
            _assert_refused(caught.value)
    await _unchanged(backend, db)


#: Queries the read path must let through (per backend where the syntax is the server's).
ACCEPTED: dict[str, list[str]] = {
    "all": [
        "SELECT 1;",
        "SELECT 1 ; -- a trailing note",
        "SELECT 'a; DELETE FROM users' AS note",
        "SELECT name FROM users WHERE name <> 'INTO' /* ; DROP */ ORDER BY id",
        "select replace(name, 'a', 'b') from users",
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3) "
        "SELECT count(*) FROM c",
        "SELECT * FROM (SELECT 1 AS a) AS x UNION ALL SELECT 2",
        "VALUES (1), (2)",
        "EXPLAIN SELECT * FROM users",
        "\n\t SELECT 1",
    ],
    "postgresql": [
        "SELECT $$it's; fine$$ AS text",
        "SELECT E'a\\'; b' AS escaped",
        "SELECT /* outer /* nested ; */ still comment */ 1",
        "TABLE users",
        "SHOW server_version",
        "SELECT users.name::text FROM users",
        "(SELECT 1) UNION (SELECT 2)",
    ],
    "mysql": [
        "SELECT INSERT('abc', 1, 1, 'x')",
        "SELECT 'it\\'s; fine'",
        "SELECT `name` FROM `users`",
        "SHOW TABLES",
        "DESCRIBE users",
        "SELECT 1 # a MySQL comment ; DELETE",
        "SELECT 1 - -1",
        "(SELECT 1) UNION (SELECT 2)",
    ],
    "sqlite": [
        "SELECT [name] FROM [users]",
        "PRAGMA table_info(users)",
        "PRAGMA main.index_list('users')",
    ],
}


async def test_plain_queries_pass(hostile_db: tuple[str, Database]) -> None:
    """Queries with strings, comments, quoted names and the backend's own syntax run
    through db.read unchanged, outside and inside a writing unit."""
    backend, db = hostile_db
    for statement in ACCEPTED["all"] + ACCEPTED[backend]:
        async with db:
            await db.read.execute(text(statement))
        with pytest.raises(_Rollback):
            async with db:
                db.write.add(User(id=3, name="Cy", email="c@x.org"))
                await db.write.flush()
                await db.read.execute(text(statement))
                raise _Rollback
    await _unchanged(backend, db)


async def test_reflection_runs_on_the_read_path(hostile_db: tuple[str, Database]) -> None:
    """SQLAlchemy's reflection (what ``MetaData.reflect`` and Alembic's autogenerate send)
    passes the read guard on every backend."""
    _, db = hostile_db

    def reflect(sync: Any) -> list[str]:
        inspector = inspect(sync)
        for name in inspector.get_table_names():
            inspector.get_columns(name)
            inspector.get_foreign_keys(name)
            inspector.get_indexes(name)
            inspector.get_unique_constraints(name)
        return sorted(inspector.get_table_names())

    async with db:
        connection = await db.read.connection()
        assert {"orders", "users"} <= set(await connection.run_sync(reflect))
