"""The ``sanic-sqlalchemy`` command: check a configuration, create or drop tables.

``check`` imports an app or a ``Database`` (``module:app``, ``module:db``) or takes a
URL, builds its settings, connects to the primary and to each replica with a short
timeout and reports what it found; the exit code is 1 when anything is wrong.
``create-all`` and ``drop-all`` run ``db.create_all`` / ``db.drop_all`` for a
``MetaData``.  URLs are always shown without their password.  ``check`` writes nothing
but its report to stdout (SQLAlchemy's echo goes to stderr), so ``--json`` stays JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import json
import os
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from .database import DatabaseCore as Database
from .engine.engines import Engines
from .errors import ReadOnlyError, SanicSQLAlchemyError
from .settings import Settings, public_url

_VERSION_QUERIES = {
    "postgresql": "SHOW server_version",
    "mysql": "SELECT version()",
    "sqlite": "SELECT sqlite_version()",
}
#: A write that a read connection must refuse; it is rolled back (or dropped) anyway.
_CHECK_TABLE = "sanic_sqlalchemy_check_write"


class CommandError(SanicSQLAlchemyError):
    """A target that cannot be loaded or used; the message says what to pass instead."""


@dataclasses.dataclass
class Problem:
    """One thing wrong with the configuration, under the key it belongs to."""

    key: str
    message: str


@dataclasses.dataclass
class ServerReport:
    """What ``check`` found out about one server."""

    role: str
    key: str
    url: str
    reachable: bool = False
    latency_ms: float | None = None
    version: str | None = None
    read_only: bool | None = None


def render(url: URL) -> str:
    """``url`` as text, its password and secret query parameters (``?password=``)
    masked."""
    return public_url(url)


def load(target: str) -> Any:
    """The object named by ``module:attribute`` (the current directory is importable)."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(
            f"{target!r}: expected MODULE:NAME, e.g. 'myapp.server:app' or 'myapp.db:db'."
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise CommandError(
                f"{target!r}: no module named {module_name!r} (run the command from the "
                "directory that contains it, or install the project)."
            ) from error
        raise
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise CommandError(f"{target!r}: {module_name!r} has no {attribute!r}.") from None
    return value


def databases(target: str) -> list[Database]:
    """The databases of ``target``: a URL, ``module:db`` or ``module:app``."""
    if "://" in target:
        return [Database(target)]
    value = load(target)
    if isinstance(value, Database):
        return [value]
    found = getattr(getattr(value, "request_class", None), "_sanic_sqlalchemy_databases", None)
    if isinstance(found, list) and found:
        return list(found)
    raise CommandError(
        f"{target!r} is neither a Database nor a Sanic app on which db.init_app(app) was "
        "called; pass MODULE:db, MODULE:app or a database URL."
    )


async def _probe(engines: Engines, report: ServerReport) -> None:
    backend = engines.backend.name
    started = time.perf_counter()
    async with engines.read.connect() as connection:
        report.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        report.reachable = True
        report.version = str((await connection.execute(text(_VERSION_QUERIES[backend]))).scalar())
        raw = await connection.get_raw_connection()
        try:
            report.read_only = await _refuses_write(backend, raw.driver_connection)
        finally:
            # The probe went around the library's guard: never pool this connection.
            raw.invalidate()


async def _refuses_write(backend: str, driver: Any) -> bool:
    """Whether the server itself refuses a write on this read connection.

    The statement goes to the driver directly, past the library's own guard, so that
    the database's answer is what counts.  A write refused for another reason (no
    privilege to create tables) raises ``CheckError``: nothing was verified.
    """
    create = f"CREATE TABLE {_CHECK_TABLE} (x INTEGER)"
    if backend == "postgresql":
        transaction = driver.transaction()
        await transaction.start()
        try:
            await driver.execute(create)
        except Exception as error:
            if type(error).__name__ == "ReadOnlySQLTransactionError":
                return True
            raise CheckError(error) from error
        finally:
            await transaction.rollback()
        return False
    if backend == "mysql":
        async with driver.cursor() as cursor:
            try:
                await cursor.execute(create)
            except Exception as error:
                # 1792: a read-only transaction; 1290: a server running --read-only.
                if error.args and error.args[0] in (1792, 1290):
                    return True
                raise CheckError(error) from error
            await cursor.execute(f"DROP TABLE {_CHECK_TABLE}")
        return False
    try:
        await driver.execute(create)
    except Exception as error:
        if "readonly" in str(error):
            return True
        raise CheckError(error) from error
    await driver.execute(f"DROP TABLE {_CHECK_TABLE}")
    return False


class CheckError(Exception):
    """The test write failed for a reason other than read-only enforcement."""


async def check_database(db: Database, timeout: float) -> dict[str, Any]:
    """Connect to the primary and each replica of ``db``; what was found, and problems."""
    prefix = db.config_prefix
    problems: list[Problem] = []
    try:
        settings = db.settings
    except SanicSQLAlchemyError as error:
        return {"prefix": prefix, "servers": [], "problems": [_problem(prefix, error)]}
    targets = [("primary", f"{prefix}URL", settings.url)] + [
        ("replica", f"{prefix}READ_URLS[{i}]", url) for i, url in enumerate(settings.read_urls)
    ]
    servers = []
    for role, key, url in targets:
        report = ServerReport(role, key, render(url))
        servers.append(report)
        missing = missing_sqlite_file(url)
        if missing is not None:
            # Connecting would create it: the application would then start on an empty
            # database instead of failing on the mistyped path.
            problems.append(
                Problem(
                    key,
                    f"the SQLite file {missing} does not exist (check creates none). "
                    "Correct the path, or create the database first.",
                )
            )
            continue
        single = dataclasses.replace(settings, url=url, read_urls=())
        engines: Engines | None = None
        # What a read connection that is not read-only means, once one was found.
        consequence = "db.read could change data."
        try:
            engines = Engines(single)
            await asyncio.wait_for(_probe(engines, report), timeout)
        except asyncio.TimeoutError:
            problems.append(
                Problem(
                    key,
                    f"no answer from {render(url)} within {timeout:g} s; is the "
                    "server running and reachable from here?",
                )
            )
        except ReadOnlyError:
            # The read guard discarded the connection before its first query: the server
            # said, as it opened, that the connection is not read-only.
            report.reachable = True
            report.read_only = False
            consequence = _READ_ONLY_OFF
        except CheckError as error:
            problems.append(
                Problem(
                    key,
                    "could not verify that read connections are read-only: the test write "
                    f"was refused for another reason ({_describe(error.args[0])}).",
                )
            )
        except Exception as error:  # reported with its key, and the exit code says so
            verb = "checking" if report.reachable else "cannot connect to"
            problems.append(Problem(key, f"{verb} {render(url)}: {_describe(error)}"))
        finally:
            if engines is not None:
                await engines.dispose()
        if report.read_only is False:
            problems.append(Problem(key, f"a read connection is not read-only: {consequence}"))
    return {
        "prefix": prefix,
        "backend": settings.backend,
        "pool": _pool(settings),
        "servers": [dataclasses.asdict(server) for server in servers],
        "problems": [dataclasses.asdict(problem) for problem in problems],
    }


def missing_sqlite_file(url: URL) -> Path | None:
    """The absolute path of the SQLite file ``url`` names when no such file exists;
    None for other backends, in-memory databases and files that exist."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if str(url.query.get("uri", "")).lower() in ("true", "1", "yes", "on"):
        # sqlite+aiosqlite:///file:app.db?mode=ro&uri=true
        if url.query.get("mode") == "memory":
            return None
        if database.startswith("file:"):
            database = urllib.parse.unquote(urllib.parse.urlsplit(database).path)
    if database in ("", ":memory:"):
        return None
    path = Path(database)
    return None if path.exists() else path.absolute()


_READ_ONLY_OFF = (
    "the server reports its read-only mode off (on PostgreSQL, is "
    "default_transaction_read_only overridden in connect_args' server_settings?), so "
    "db.read refuses every statement on it."
)


def _pool(settings: Settings) -> dict[str, Any]:
    return {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
        "pool_recycle": settings.pool_recycle,
    }


def _describe(error: BaseException) -> str:
    # The driver's own message (DBAPIError wraps it with the statement); never a URL.
    original = getattr(error, "orig", None) or error
    return f"{type(original).__name__}: {original}".strip()


def _problem(prefix: str, error: BaseException) -> dict[str, str]:
    message = str(error)
    key, sep, rest = message.partition(": ")
    if sep and " " not in key:
        return {"key": key, "message": rest}
    return {"key": f"{prefix}URL", "message": message}


def _print_check(results: list[dict[str, Any]]) -> None:
    for result in results:
        print(f"{result['prefix']}*  backend: {result.get('backend', '?')}")
        if "pool" in result:
            pool = ", ".join(f"{name}={value}" for name, value in result["pool"].items())
            print(f"  pool: {pool}")
        for server in result["servers"]:
            if server["reachable"]:
                # Latency and version are unknown when the probe stopped at connecting.
                parts = [
                    "ok",
                    *([f"{server['latency_ms']} ms"] if server["latency_ms"] is not None else []),
                    *([server["version"]] if server["version"] else []),
                    f"read-only: {'yes' if server['read_only'] else 'NO'}",
                ]
                state = "  ".join(parts)
            else:
                state = "UNREACHABLE"
            print(f"  {server['role']:<8} {server['key']:<28} {server['url']}  {state}")
        for problem in result["problems"]:
            print(f"  problem  {problem['key']}: {problem['message']}")
    total = sum(len(result["problems"]) for result in results)
    print("OK" if total == 0 else f"{total} problem(s)")


async def _check(target: str, timeout: float) -> list[dict[str, Any]]:
    results = []
    for db in databases(target):
        results.append(await check_database(db, timeout))
    return results


def _metadata(target: str) -> MetaData:
    value = load(target)
    if not isinstance(value, MetaData):
        raise CommandError(
            f"{target!r} is a {type(value).__name__}, not a MetaData; pass e.g. "
            "'myapp.models:Base.metadata'."
        )
    return value


def _one_database(target: str | None) -> Database:
    if target is None:
        target = os.environ.get("SANIC_DATABASE_URL")
        if not target:
            raise CommandError(
                "Which database? Pass --db MODULE:db (or MODULE:app, or a URL), or set "
                "SANIC_DATABASE_URL."
            )
    found = databases(target)
    if len(found) != 1:
        prefixes = ", ".join(db.config_prefix for db in found)
        raise CommandError(
            f"{target!r} has {len(found)} databases ({prefixes}); pass --db MODULE:db."
        )
    return found[0]


async def _tables(command: str, metadata: MetaData, db: Database) -> None:
    try:
        if command == "create-all":
            await db.create_all(metadata)
        else:
            await db.drop_all(metadata)
    finally:
        await db.dispose()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sanic-sqlalchemy", description="Check a sanic-sqlalchemy configuration."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="validate the settings and connect to every server")
    check.add_argument("target", metavar="APP_OR_DB", help="MODULE:app, MODULE:db or a URL")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per server (default 5)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    for name, help_text in (
        ("create-all", "create the tables of a MetaData that do not exist"),
        ("drop-all", "drop the tables of a MetaData (asks for --yes)"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("metadata", metavar="MODULE:METADATA")
        sub.add_argument(
            "--db", help="MODULE:db, MODULE:app or a URL (default: SANIC_DATABASE_URL)"
        )
        if name == "drop-all":
            sub.add_argument("--yes", action="store_true", help="really drop the tables")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit code (0: everything is fine)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            # Stdout is for the report only: SQLAlchemy's echo (a handler on sys.stdout as
            # it is when an engine is made) and whatever the target prints on import go
            # to stderr, so that --json stays JSON.
            with contextlib.redirect_stdout(sys.stderr):
                results = asyncio.run(_check(args.target, args.timeout))
            if args.json:
                print(json.dumps(results, indent=2))
            else:
                _print_check(results)
            return 0 if all(not result["problems"] for result in results) else 1
        if args.command == "drop-all" and not args.yes:
            print(
                "drop-all drops every table of the MetaData and their data; "
                "run it again with --yes.",
                file=sys.stderr,
            )
            return 1
        metadata = _metadata(args.metadata)
        db = _one_database(args.db)
        try:
            asyncio.run(_tables(args.command, metadata, db))
        except (OSError, SQLAlchemyError) as error:
            print(
                f"error: {args.command} on {render(db.settings.url)} failed: {_describe(error)}",
                file=sys.stderr,
            )
            return 1
        print(f"{args.command}: {len(metadata.tables)} table(s) on {render(db.settings.url)}")
        return 0
    except SanicSQLAlchemyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
