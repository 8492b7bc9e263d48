"""``db.read`` cannot change data: the database refuses, and so does the library."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, insert, inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from sanic_sqlalchemy import ConfigurationError, Database, ReadOnlyError
from sanic_sqlalchemy.readonly import Dialect, refusal
from sanic_sqlalchemy.testing import StatementLog, schema

from .conftest import count_users
from .models import Base, User

WRITES = [
    "INSERT INTO users (id, name, email) VALUES (50, 'x', 'x@example.com')",
    "UPDATE users SET name = 'changed'",
    "DELETE FROM users",
    "CREATE TABLE read_only_probe (id INTEGER)",
    "DROP TABLE users",
]


async def seed(db: Database) -> None:
    async with db:
        db.write.add(User(id=1, name="Ada", email="ada@example.com"))


async def names(db: Database) -> list[str]:
    async with db:
        return list((await db.read.execute(select(User.name))).scalars().all())


@pytest.mark.parametrize("statement", WRITES)
async def test_raw_writes_are_refused_before_sending(db: Database, statement: str) -> None:
    """INSERT, UPDATE, DELETE, CREATE and DROP through ``db.read`` are refused before
    anything is sent, and change nothing."""
    await seed(db)
    with pytest.raises(ReadOnlyError, match="refused this statement before sending it") as caught:
        async with db:
            await db.read.execute(text(statement))
    assert caught.value.__context__ is None  # no error of the driver's: nothing was sent
    assert await names(db) == ["Ada"]
    async with db.engines.write.connect() as connection:
        exists = await connection.run_sync(lambda sync: inspect(sync).has_table("read_only_probe"))
    assert exists is False


async def _driver_execute(backend: str, driver: Any, sql: str) -> None:
    if backend == "postgresql":
        await driver.execute(sql)
    elif backend == "mysql":
        async with driver.cursor() as cursor:
            await cursor.execute(sql)
    else:
        await driver.execute(sql)


@pytest.mark.parametrize("statement", WRITES)
async def test_read_connections_are_read_only_on_the_server(
    db: Database, backend: str, statement: str
) -> None:
    """Past the library's own checks (the raw driver connection of the read pool), the
    database itself refuses every write: the second line of defence."""
    await seed(db)
    async with db.engines.read.connect() as connection:
        raw = await connection.get_raw_connection()
        with pytest.raises(Exception) as caught:
            await _driver_execute(backend, raw.driver_connection, statement)
        assert db.engines.backend.is_read_only_violation(caught.value), caught.value
    assert await names(db) == ["Ada"]


@pytest.mark.parametrize(
    "statement",
    [
        insert(User).values(id=50, name="x", email="x@example.com"),
        update(User).values(name="changed"),
        delete(User),
    ],
    ids=["insert", "update", "delete"],
)
async def test_core_writes_are_refused(db: Database, statement: object) -> None:
    """Core DML executed through ``db.read`` is refused and changes nothing."""
    await seed(db)
    with pytest.raises(ReadOnlyError):
        async with db:
            await db.read.execute(statement)  # type: ignore[call-overload]
    assert await names(db) == ["Ada"]


async def test_orm_flush_is_refused_before_any_sql(db: Database) -> None:
    """Flushing pending objects through ``db.read`` raises before sending anything."""
    await seed(db)
    log = StatementLog(db)
    try:
        async with db:
            user = (await db.read.execute(select(User))).scalar_one()
            sent = len(log.statements)
            user.name = "changed"
            db.read.add(User(id=2, name="Bob", email="bob@example.com"))
            with pytest.raises(ReadOnlyError, match="refuses to flush"):
                await db.read.flush()
            with pytest.raises(ReadOnlyError):
                await db.read.commit()
            assert len(log.statements) == sent
            db.read.expunge_all()  # else the unit's end refuses them too (issue 9)
    finally:
        log.detach()
    assert await names(db) == ["Ada"]


async def test_read_statement_costs_one_round_trip(db: Database) -> None:
    """A read outside any write transaction sends just the query: no BEGIN, no ROLLBACK."""
    await seed(db)
    log = StatementLog(db)
    try:
        async with db:
            await db.read.execute(select(User).where(User.id == 1))
    finally:
        log.detach()
    assert [role for role, _ in log.statements] == ["read"]
    assert log.statements[0][1].lstrip().upper().startswith("SELECT")


@pytest.mark.parametrize(
    "statement",
    [
        "SET default_transaction_read_only = off",
        "SET SESSION TRANSACTION READ WRITE",
        "BEGIN",
        "START TRANSACTION READ WRITE",
        "COMMIT",
        "PRAGMA query_only = 0",
        "/* sneaky */ SET transaction_read_only = 0",
    ],
)
async def test_session_control_is_refused(db: Database, statement: str) -> None:
    """Statements that could switch read-only off or open a transaction are refused."""
    await seed(db)
    with pytest.raises(ReadOnlyError, match="refused this statement before sending it"):
        async with db:
            await db.read.execute(text(statement))
    with pytest.raises(ReadOnlyError):
        async with db:
            await db.read.execute(text("DELETE FROM users"))
    assert await names(db) == ["Ada"]


@pytest.mark.parametrize("statement", ["SET default_transaction_read_only = off", "BEGIN"])
async def test_session_control_is_refused_on_a_held_connection(
    db: Database, statement: str
) -> None:
    """SQL sent straight to ``await db.read.connection()`` (driver SQL included) passes
    the same guard as ``db.read.execute``: the session never sees it."""
    await seed(db)
    for run in ("exec_driver_sql", "execute"):
        with pytest.raises(ReadOnlyError, match="refused this statement before sending it"):
            async with db:
                connection = await db.read.connection()
                if run == "exec_driver_sql":
                    await connection.exec_driver_sql(statement)
                else:
                    await connection.execute(text(statement))
    async with db:
        connection = await db.read.connection()
        with pytest.raises(ReadOnlyError):
            await connection.exec_driver_sql("DELETE FROM users")
    assert await names(db) == ["Ada"]


@pytest.mark.parametrize("statement", WRITES)
async def test_refused_inside_a_writing_unit_and_unit_stays_usable(
    db: Database, statement: str
) -> None:
    """After the unit wrote, ``db.read`` still refuses writes and the unit still commits."""
    await seed(db)
    async with db:
        db.write.add(User(id=2, name="Bob", email="bob@example.com"))
        await db.write.flush()
        with pytest.raises(ReadOnlyError):
            await db.read.execute(text(statement))
        assert sorted((await db.read.execute(select(User.name))).scalars().all()) == [
            "Ada",
            "Bob",
        ]
        db.write.add(User(id=3, name="Cy", email="cy@example.com"))
    assert sorted(await names(db)) == ["Ada", "Bob", "Cy"]


async def test_commit_through_read_cannot_commit_the_write(db: Database) -> None:
    """``COMMIT`` through ``db.read`` in a writing unit is refused; a failure still rolls back."""
    with pytest.raises(RuntimeError):
        async with db:
            db.write.add(User(id=1, name="Ada", email="ada@example.com"))
            await db.write.flush()
            with pytest.raises(ReadOnlyError):
                await db.read.execute(text("COMMIT"))
            raise RuntimeError("fail the unit")
    assert await count_users(db) == 0


async def test_hostile_string_through_read_is_a_parameter(db: Database) -> None:
    """A hostile value bound into a ``db.read`` query is compared, never executed."""
    await seed(db)
    hostile = "x'; DELETE FROM users; --"
    async with db:
        result = await db.read.execute(
            text("SELECT count(*) FROM users WHERE name = :name"), {"name": hostile}
        )
        assert result.scalar_one() == 0
    assert await names(db) == ["Ada"]


_SNEAKY = {
    # Functions of the database's own that switch read-only off: the text checks cannot
    # see into them, so the connection's reported state is the line of defence.
    "postgresql": (
        "CREATE OR REPLACE FUNCTION sneaky() RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM "
        "set_config('default_transaction_read_only', 'off', false) $$",
        "DROP FUNCTION IF EXISTS sneaky()",
        "SELECT pg_backend_pid()",
    ),
    "mysql": (
        "CREATE FUNCTION sneaky() RETURNS INT NOT DETERMINISTIC "
        "BEGIN SET @@session.tx_read_only = 0; RETURN 1; END",
        "DROP FUNCTION IF EXISTS sneaky",
        "SELECT CONNECTION_ID()",
    ),
}


@pytest.mark.backends("postgresql", "mysql")
async def test_read_only_switched_off_inside_a_function_is_caught(url: str, backend: str) -> None:
    """A query whose function switches read-only off cannot be followed by anything on the
    same held connection, and its connection is discarded before another unit gets it."""
    create, drop, whoami = _SNEAKY[backend]
    db = Database(url, pool_size=1)
    try:
        async with db:
            await db.write.execute(text(drop))
            await db.write.execute(text(create))
        with pytest.raises(ReadOnlyError, match="switched its connection's read-only mode off"):
            async with db:
                await db.read.connection()
                await db.read.execute(text("SELECT sneaky()"))
                await db.read.execute(text("SELECT 1"))
        async with db:
            poisoned = (await db.read.execute(text(whoami))).scalar_one()
            await db.read.execute(text("SELECT sneaky()"))
        async with db:
            # The connection went back to the pool read-write: it is discarded, not reused.
            assert (await db.read.execute(text(whoami))).scalar_one() != poisoned
        async with db.engines.read.connect() as connection:
            raw = await connection.get_raw_connection()
            with pytest.raises(Exception) as caught:
                await _driver_execute(
                    backend, raw.driver_connection, "CREATE TABLE sneaky_t (id INTEGER)"
                )
            assert db.engines.backend.is_read_only_violation(caught.value), caught.value
    finally:
        async with db:
            await db.write.execute(text(drop))
        await db.dispose()


def test_statement_classification() -> None:
    """The policy sees through comments and strings and catches DML hidden in WITH."""
    for dialect in Dialect:
        assert refusal("  -- note\n set x = 1", dialect) is not None
        assert refusal("SELECT 'SET x'", dialect) is None
        assert refusal("SELECT * FROM t WHERE a = 'DELETE'", dialect) is None
        assert refusal("with x as (select 1) select * from x", dialect) is None
        assert refusal("WITH x AS (SELECT 1) DELETE FROM t", dialect) is not None
        assert refusal("SELECT 1 INTO @v", dialect) is not None
        assert refusal("EXPLAIN ANALYZE DELETE FROM t", dialect) is not None
        assert refusal("UPDATE t SET a = 1", dialect) is not None
        assert refusal("", dialect) is not None
    sqlite = Dialect.SQLITE
    assert refusal("PRAGMA table_info(users)", sqlite) is None
    assert refusal("PRAGMA main.table_info('users')", sqlite) is None
    assert refusal("PRAGMA query_only(0)", sqlite) == "PRAGMA query_only is not a reporting pragma"
    assert refusal("PRAGMA query_only = OFF", sqlite) == "it changes a PRAGMA setting"


@pytest.mark.backends("mysql")
async def test_mysql_reads_send_no_rollback(url: str) -> None:
    """On MySQL/MariaDB a read unit sends its query and nothing else: no ROLLBACK at the end."""
    db = Database(url, pool_size=1)

    async def rollbacks_so_far() -> int:
        async with db:
            row = (await db.read.execute(text("SHOW SESSION STATUS LIKE 'Com_rollback'"))).one()
            return int(row[1])

    try:
        before = await rollbacks_so_far()
        for _ in range(5):
            async with db:
                await db.read.execute(text("SELECT 1"))
        assert await rollbacks_so_far() == before
    finally:
        await db.dispose()


@pytest.mark.backends("mysql")
async def test_mysql_committed_writes_send_no_rollback(url: str) -> None:
    """On MySQL/MariaDB a committed write unit is not followed by a ROLLBACK when its
    connection goes back to the pool; a failed one is rolled back."""
    db = Database(url, pool_size=1)

    async def status(name: str) -> int:
        async with db:
            row = (await db.write.execute(text(f"SHOW SESSION STATUS LIKE '{name}'"))).one()
            return int(row[1])

    try:
        async with db:
            await db.write.execute(text("CREATE TEMPORARY TABLE notes (body TEXT)"))
        rollbacks, commits = await status("Com_rollback"), await status("Com_commit")
        for n in range(5):
            async with db:
                await db.write.execute(text("INSERT INTO notes VALUES (:n)"), {"n": str(n)})
        assert await status("Com_commit") >= commits + 5
        assert await status("Com_rollback") == rollbacks
        with pytest.raises(RuntimeError):
            async with db:
                await db.write.execute(text("INSERT INTO notes VALUES ('lost')"))
                raise RuntimeError("the unit fails")
        assert await status("Com_rollback") == rollbacks + 1
        async with db:
            bodies = (await db.write.execute(text("SELECT body FROM notes"))).scalars().all()
        assert sorted(bodies) == ["0", "1", "2", "3", "4"]
    finally:
        await db.dispose()


@pytest.mark.backends("mysql")
async def test_mysql_server_refuses_chained_statements(db: Database) -> None:
    """The library's MySQL/MariaDB connections cannot chain statements: the server itself
    refuses ``SELECT 1; DELETE …`` through db.write."""
    await seed(db)
    with pytest.raises(DBAPIError, match="1064"):
        async with db:
            await db.write.execute(text("SELECT 1; DELETE FROM users"))
    assert await names(db) == ["Ada"]


@pytest.mark.backends("mysql")
async def test_mysql_multi_statements_opt_in_is_for_db_write_only(url: str) -> None:
    """``multi_statements=True`` lets db.write chain statements; db.read still refuses
    them, and its connections still could not run them."""
    db = Database(url, pool_size=1, multi_statements=True)
    async with schema(db, Base.metadata):
        await seed(db)
        async with db:
            await db.write.execute(
                text("UPDATE users SET name = 'A' WHERE id = 1; UPDATE users SET email = 'e'")
            )
        assert await names(db) == ["A"]
        with pytest.raises(ReadOnlyError, match="more than one statement"):
            async with db:
                await db.read.execute(text("SELECT 1; SELECT 2"))
        async with db.engines.read.connect() as connection:
            raw = await connection.get_raw_connection()
            with pytest.raises(Exception, match="1064"):
                async with raw.driver_connection.cursor() as cursor:
                    await cursor.execute("SELECT 1; SELECT 2")
    await db.dispose()


@pytest.mark.backends("sqlite", "postgresql")
def test_multi_statements_is_refused_where_it_cannot_apply(url: str) -> None:
    """``multi_statements`` on a backend whose driver never chains statements is a
    configuration error, raised at once."""
    with pytest.raises(ConfigurationError, match="multi_statements= \\(argument\\): chained"):
        Database(url, multi_statements=True)


async def test_in_lists_pass_the_guard(db: Database) -> None:
    """A query with an ``IN`` list (a parameter SQLAlchemy expands when the statement
    runs, written ``__[POSTCOMPILE_…]`` in the compiled text) reads through ``db.read`` on
    every backend, outside a writing unit and inside one."""
    await seed(db)
    query = select(User.name).where(User.id.in_([1, 2, 3]))
    async with db:
        assert list((await db.read.execute(query)).scalars()) == ["Ada"]
    async with db:
        db.write.add(User(id=2, name="Grace", email="grace@example.com"))
        await db.write.flush()
        assert sorted((await db.read.execute(query)).scalars()) == ["Ada", "Grace"]
