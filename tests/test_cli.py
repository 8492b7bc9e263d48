"""The ``sanic-sqlalchemy`` command, run as a real child process against real databases:
forked by ``tests/forkserver.py`` (Python's start-up paid once), and started from
scratch as ``python -m sanic_sqlalchemy`` and as the console script."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from sanic_sqlalchemy import Database

from .forkserver import FORKS


@dataclass
class Result:
    """What the command printed and its exit code."""

    code: int
    out: str
    err: str


async def run(cwd: Path, *args: str) -> Result:
    """``python -m sanic_sqlalchemy ARGS`` in ``cwd``: a child of the fork server, whose
    imports are done already (``tests/forkserver.py``)."""
    return await python(cwd, "-m", "sanic_sqlalchemy", *args)


async def python(cwd: Path, *argv: str) -> Result:
    """``python ARGV`` (``-m MODULE ...`` or ``-c CODE``) in ``cwd``, forked by the fork
    server, with this process's environment."""
    code, out, err = await asyncio.to_thread(FORKS.run, list(argv), cwd, dict(os.environ), 60)
    return Result(code, out, err)


async def run_started(cwd: Path, *args: str) -> Result:
    """``python -m sanic_sqlalchemy ARGS`` in ``cwd``, a Python started for it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sanic_sqlalchemy",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def module(cwd: Path, name: str, source: str) -> None:
    """Write ``name.py`` into ``cwd``, where the command imports it from."""
    (cwd / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def existing(url: str) -> str:
    """``url``, its SQLite file created (empty) first: ``check`` creates no file."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).touch()
    return url


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a server that hangs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


async def test_check_reports_a_healthy_database(
    existing: str, backend: str, tmp_path: Path
) -> None:
    """``check URL`` reports the backend, the server version and a read connection
    that the server itself keeps read-only, and exits 0."""
    result = await run(tmp_path, "check", existing)
    assert result.code == 0, result.out + result.err
    assert f"backend: {backend}" in result.out
    assert "read-only: yes" in result.out
    assert result.out.rstrip().endswith("OK")


async def test_check_json_is_for_scripts(existing: str, backend: str, tmp_path: Path) -> None:
    """``check --json`` prints one report per database, with pool settings and servers."""
    result = await run(tmp_path, "check", existing, "--json")
    assert result.code == 0, result.err
    (report,) = json.loads(result.out)
    assert report["backend"] == backend
    assert report["problems"] == []
    assert report["pool"]["pool_size"] == 10
    (server,) = report["servers"]
    assert server["role"] == "primary"
    assert server["key"] == "DATABASE_URL"
    assert server["reachable"] is True
    assert server["read_only"] is True
    assert server["version"]


async def test_check_an_app_checks_each_of_its_databases(existing: str, tmp_path: Path) -> None:
    """``check module:app`` checks every database of the app, under its prefix."""
    url = existing
    (tmp_path / "a.db").touch()
    module(
        tmp_path,
        "cli_app",
        f"""
        from sanic import Sanic
        from sanic_sqlalchemy import Database

        db = Database()
        analytics = Database(config_prefix="ANALYTICS_DATABASE_")
        app = Sanic("cli_app")
        app.config.DATABASE_URL = {url!r}
        app.config.ANALYTICS_DATABASE_URL = "sqlite+aiosqlite:///{tmp_path / "a.db"}"
        db.init_app(app)
        analytics.init_app(app)
        """,
    )
    result = await run(tmp_path, "check", "cli_app:app", "--json")
    assert result.code == 0, result.out + result.err
    reports = json.loads(result.out)
    assert [report["prefix"] for report in reports] == ["DATABASE_", "ANALYTICS_DATABASE_"]
    assert [report["servers"][0]["key"] for report in reports] == [
        "DATABASE_URL",
        "ANALYTICS_DATABASE_URL",
    ]


async def test_check_a_database_object(existing: str, tmp_path: Path) -> None:
    """``check module:db`` takes a ``Database`` that has its URL."""
    module(
        tmp_path, "cli_db", f"from sanic_sqlalchemy import Database\ndb = Database({existing!r})\n"
    )
    result = await run(tmp_path, "check", "cli_db:db")
    assert result.code == 0, result.out + result.err


async def test_check_json_stays_json_with_echo_on(existing: str, tmp_path: Path) -> None:
    """With ``echo`` on (SQLAlchemy logs to stdout), ``check --json`` prints JSON only:
    the echo goes to stderr, and the text report keeps stdout to itself too."""
    module(
        tmp_path,
        "cli_echo",
        f"from sanic_sqlalchemy import Database\ndb = Database({existing!r}, echo=True)\n",
    )
    result = await run(tmp_path, "check", "cli_echo:db", "--json")
    assert result.code == 0, result.out + result.err
    (report,) = json.loads(result.out)
    assert report["problems"] == []
    assert "INFO sqlalchemy.engine.Engine" in result.err
    result = await run(tmp_path, "check", "cli_echo:db")
    assert result.code == 0, result.out + result.err
    assert "sqlalchemy.engine" not in result.out
    assert result.out.rstrip().endswith("OK")


async def test_a_started_python_answers_as_the_forked_child(tmp_path: Path) -> None:
    """The same command, started from scratch as ``python -m sanic_sqlalchemy`` and
    forked by the fork server the other tests use, gives the same exit code, the same
    report on stdout and the echo on stderr, for a target imported from ``cwd``; and
    the same usage error (argparse's exit 2)."""
    (tmp_path / "e.db").touch()
    module(
        tmp_path,
        "cli_both",
        "from sanic_sqlalchemy import Database\n"
        f"db = Database('sqlite+aiosqlite:///{tmp_path / 'e.db'}', echo=True)\n",
    )
    started = await run_started(tmp_path, "check", "cli_both:db", "--json")
    forked = await run(tmp_path, "check", "cli_both:db", "--json")
    assert (started.code, forked.code) == (0, 0), started.err + forked.err
    reports = []
    for result in (started, forked):
        (report,) = json.loads(result.out)
        for server in report["servers"]:
            assert server.pop("latency_ms") >= 0
        reports.append(report)
        assert "INFO sqlalchemy.engine.Engine" in result.err
    assert reports[0] == reports[1]
    assert started.err.count("sqlalchemy.engine") == forked.err.count("sqlalchemy.engine")
    # A usage error: argparse's SystemExit(2) and its message.
    started, forked = await run_started(tmp_path, "check"), await run(tmp_path, "check")
    assert (started.code, started.out, started.err) == (forked.code, forked.out, forked.err)
    assert started.code == 2 and "required: APP_OR_DB" in started.err


async def test_a_missing_sqlite_file_is_a_problem_and_is_not_created(tmp_path: Path) -> None:
    """``check`` on a SQLite path that does not exist (a typo) reports it under its key,
    exits 1 and creates no file, in text and in ``--json``, relative paths included."""
    for database, path in (
        (str(tmp_path / "tpyo.db"), tmp_path / "tpyo.db"),
        ("relative/tpyo.db", tmp_path / "relative" / "tpyo.db"),
    ):
        url = f"sqlite+aiosqlite:///{database}"
        result = await run(tmp_path, "check", url)
        assert result.code == 1, result.out + result.err
        assert f"problem  DATABASE_URL: the SQLite file {path} does not exist" in result.out
        assert result.out.rstrip().endswith("1 problem(s)")
        result = await run(tmp_path, "check", url, "--json")
        assert result.code == 1, result.out + result.err
        (report,) = json.loads(result.out)
        assert [problem["key"] for problem in report["problems"]] == ["DATABASE_URL"]
        assert not path.exists()


async def test_a_bad_setting_is_reported_with_its_key(tmp_path: Path) -> None:
    """A bad value in ``app.config`` fails ``check`` with the key and the fix, exit 1."""
    module(
        tmp_path,
        "bad_app",
        """
        from sanic import Sanic
        from sanic_sqlalchemy import Database

        db = Database()
        app = Sanic("bad_app")
        app.config.DATABASE_URL = "sqlite+aiosqlite://"
        app.config.DATABASE_POOL_SIZE = "many"
        db.init_app(app)
        """,
    )
    result = await run(tmp_path, "check", "bad_app:app")
    assert result.code == 1
    assert result.err == "error: DATABASE_POOL_SIZE: expected a whole number, got 'many'.\n"


async def test_a_bad_url_is_a_clear_error(tmp_path: Path) -> None:
    """A URL with an unknown driver fails with the key and the drivers to use, exit 1,
    and without its password."""
    result = await run(tmp_path, "check", "postgresql+asyncpgg://ada:s3cret@localhost/app")
    assert result.code == 1
    assert "SQLAlchemy knows no driver 'asyncpgg' for postgresql" in result.err
    assert "Traceback" not in result.err
    assert "s3cret" not in result.out + result.err


async def test_a_refused_connection_is_a_problem(tmp_path: Path) -> None:
    """A server that refuses connections is reported under ``DATABASE_URL``, password
    masked, exit 1."""
    url = "postgresql+asyncpg://ada:s3cret@127.0.0.1:1/app"
    result = await run(tmp_path, "check", url)
    assert result.code == 1
    assert "UNREACHABLE" in result.out
    assert "DATABASE_URL: cannot connect to postgresql+asyncpg://ada:***@127.0.0.1:1/app" in (
        result.out
    )
    assert "s3cret" not in result.out + result.err


@pytest.mark.backends("postgresql", "mysql")
async def test_a_password_in_the_query_string_is_never_printed(url: str, tmp_path: Path) -> None:
    """``?password=`` (which the drivers log in with) is masked like the URL's own
    password, in text and in ``--json``, whether or not the server accepts it."""
    secret = "s3cret-in-query"
    with_secret = make_url(url).update_query_dict({"password": secret}).render_as_string(False)
    for extra in ((), ("--json",)):
        result = await run(tmp_path, "check", with_secret, *extra)
        assert secret not in result.out + result.err
        assert "password=***" in result.out, result.out + result.err


@pytest.mark.backends("postgresql")
async def test_a_read_connection_that_is_not_read_only_fails_the_check(
    url: str, tmp_path: Path
) -> None:
    """A read URL whose server lets read connections write (connect_args overriding the
    ``default_transaction_read_only`` the library sends) fails ``check`` under its key,
    as not read-only and not as unreachable, exit 1, in text and in ``--json``, without
    the password."""
    parsed = make_url(url)
    # The test server may trust loopback and ignore it; a password to hide either way.
    password = parsed.password or "s3cret-hidden"
    module(
        tmp_path,
        "cli_writable",
        f"""
        from sqlalchemy.engine import make_url
        from sanic_sqlalchemy import Database

        db = Database(
            make_url({url!r}).set(password={password!r}),
            connect_args={{"server_settings": {{"default_transaction_read_only": "off"}}}},
        )
        """,
    )
    result = await run(tmp_path, "check", "cli_writable:db")
    assert result.code == 1, result.out + result.err
    assert "UNREACHABLE" not in result.out
    assert "read-only: NO" in result.out
    assert (
        "problem  DATABASE_URL: a read connection is not read-only: the server reports its "
        "read-only mode off (on PostgreSQL, is default_transaction_read_only overridden in "
        "connect_args' server_settings?), so db.read refuses every statement on it.\n"
    ) in result.out
    assert result.out.rstrip().endswith("1 problem(s)")
    assert password not in result.out + result.err

    result = await run(tmp_path, "check", "cli_writable:db", "--json")
    assert result.code == 1, result.out + result.err
    (report,) = json.loads(result.out)
    (server,) = report["servers"]
    assert (server["reachable"], server["read_only"]) == (True, False)
    assert [problem["key"] for problem in report["problems"]] == ["DATABASE_URL"]
    assert "not read-only" in report["problems"][0]["message"]
    assert password not in result.out + result.err


@pytest.mark.parametrize("scheme", ["postgresql+asyncpg", "mysql+asyncmy"])
async def test_a_server_that_never_answers_fails_quickly(
    silent_server: int, tmp_path: Path, scheme: str
) -> None:
    """A server that accepts the connection but never answers fails within
    ``--timeout``, with a message that says so, exit 1."""
    started = time.monotonic()
    result = await run(
        tmp_path, "check", f"{scheme}://ada:s3cret@127.0.0.1:{silent_server}/app", "--timeout", "1"
    )
    assert time.monotonic() - started < 15
    assert result.code == 1
    assert f"DATABASE_URL: no answer from {scheme}://ada:***@127.0.0.1:{silent_server}/app " in (
        result.out
    )
    assert "within 1 s" in result.out
    assert "s3cret" not in result.out + result.err


async def test_a_target_that_is_not_there(tmp_path: Path) -> None:
    """A module or attribute that does not exist is a one-line error, exit 1."""
    result = await run(tmp_path, "check", "no_such_module:app")
    assert (result.code, result.err) == (
        1,
        "error: 'no_such_module:app': no module named 'no_such_module' (run the command "
        "from the directory that contains it, or install the project).\n",
    )
    module(tmp_path, "plain", "app = 42\n")
    result = await run(tmp_path, "check", "plain:app")
    assert result.code == 1
    assert "is neither a Database nor a Sanic app" in result.err


def tables(url: str, tmp_path: Path) -> str:
    """A module with a MetaData of one table whose name is unique to this test."""
    name = f"cli_{uuid.uuid4().hex[:10]}"
    module(
        tmp_path,
        "cli_models",
        f"""
        from sqlalchemy import Column, Integer, MetaData, Table
        from sanic_sqlalchemy import Database

        metadata = MetaData()
        Table({name!r}, metadata, Column("id", Integer, primary_key=True))
        db = Database({url!r})
        """,
    )
    return name


async def table_names(url: str) -> list[str]:
    """The tables that exist in the database of ``url``."""
    db = Database(url)
    try:
        async with db.engine.connect() as connection:
            return await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    finally:
        await db.dispose()


async def test_create_all_then_drop_all(url: str, tmp_path: Path) -> None:
    """``create-all`` creates the tables of a MetaData; ``drop-all`` drops them only
    with ``--yes``."""
    name = tables(url, tmp_path)
    result = await run(tmp_path, "create-all", "cli_models:metadata", "--db", "cli_models:db")
    assert result.code == 0, result.err
    assert "create-all: 1 table(s) on" in result.out
    assert name in await table_names(url)

    result = await run(tmp_path, "drop-all", "cli_models:metadata", "--db", "cli_models:db")
    assert result.code == 1
    assert "run it again with --yes" in result.err
    assert name in await table_names(url)

    result = await run(
        tmp_path, "drop-all", "cli_models:metadata", "--db", "cli_models:db", "--yes"
    )
    assert result.code == 0, result.err
    assert name not in await table_names(url)


async def test_create_all_on_a_url_hides_the_password(tmp_path: Path) -> None:
    """``--db`` takes a URL too; a server that is down is a one-line error, exit 1,
    without the password."""
    tables("sqlite+aiosqlite://", tmp_path)
    url = "postgresql+asyncpg://ada:s3cret@127.0.0.1:1/app"
    result = await run(tmp_path, "create-all", "cli_models:metadata", "--db", url)
    assert result.code == 1
    assert result.err.startswith(
        "error: create-all on postgresql+asyncpg://ada:***@127.0.0.1:1/app failed: "
    )
    assert "s3cret" not in result.out + result.err
    assert make_url(url).password == "s3cret"


async def test_create_all_wants_a_metadata(tmp_path: Path) -> None:
    """A target that is not a ``MetaData`` says what to pass instead."""
    tables("sqlite+aiosqlite://", tmp_path)
    result = await run(tmp_path, "create-all", "cli_models:db", "--db", "cli_models:db")
    assert result.code == 1
    assert "is a Database, not a MetaData; pass e.g. 'myapp.models:Base.metadata'" in result.err


@pytest.mark.server
@pytest.mark.parametrize("name", ["pg_cluster", "mariadb_cluster"])
async def test_check_connects_to_each_replica(
    request: pytest.FixtureRequest, name: str, tmp_path: Path
) -> None:
    """``check`` reports the primary and every replica, read-only each, and a replica
    that is down as a problem under its ``DATABASE_READ_URLS`` index, exit 1."""
    cluster = request.getfixturevalue(name)
    replicas = list(cluster.replica_urls)
    module(
        tmp_path,
        "cli_replicated",
        "from sanic_sqlalchemy import Database\n"
        f"db = Database({cluster.primary_url!r}, read_urls={replicas!r})\n",
    )
    result = await run(tmp_path, "check", "cli_replicated:db", "--json")
    assert result.code == 0, result.out + result.err
    (report,) = json.loads(result.out)
    servers = report["servers"]
    assert [server["key"] for server in servers] == ["DATABASE_URL"] + [
        f"DATABASE_READ_URLS[{index}]" for index in range(len(replicas))
    ]
    assert [server["read_only"] for server in servers] == [True] * (1 + len(replicas))

    await cluster.stop_replica(0)
    result = await run(tmp_path, "check", "cli_replicated:db", "--timeout", "2")
    assert result.code == 1
    assert "DATABASE_READ_URLS[0]: " in result.out
    assert "1 problem(s)" in result.out


async def test_the_console_script_is_installed(tmp_path: Path) -> None:
    """The ``sanic-sqlalchemy`` script of ``[project.scripts]`` runs the same command."""
    script = Path(sys.executable).parent / "sanic-sqlalchemy"
    process = await asyncio.create_subprocess_exec(
        script, "check", "sqlite+aiosqlite://", cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert out.decode().rstrip().endswith("OK")
