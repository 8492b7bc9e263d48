"""``check``: build the settings of an app, a ``Database`` or a URL, connect to the
primary and to each replica with a short timeout and report what was found (latency,
version, whether the server keeps read connections read-only); the exit code is 1 when
anything is wrong.  URLs are always shown without their password.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL

from ..cluster.failover import address_of
from ..database import DatabaseCore as Database
from ..engine.engines import Engines
from ..errors import ReadOnlyError, SanicSQLAlchemyError
from ..settings import Settings
from .targets import databases, describe, render

_VERSION_QUERIES = {
    "postgresql": "SHOW server_version",
    "mysql": "SELECT version()",
    "sqlite": "SELECT sqlite_version()",
}
#: A write that a read connection must refuse; it is rolled back (or dropped) anyway.
_CHECK_TABLE = "sanic_sqlalchemy_check_write"


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
    #: ``host:port`` of the server that takes writes, when the URL names several hosts.
    primary_host: str | None = None


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
    if engines.primary_watch is not None:
        # Several hosts: the one the write pool picks (the first that accepts writes).
        async with engines.write.connect() as connection:
            raw = await connection.get_raw_connection()
            address = address_of(raw.driver_connection)
            if address is not None:
                report.primary_host = f"{address[0]}:{address[1]}"


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
                    f"was refused for another reason ({describe(error.args[0])}).",
                )
            )
        except Exception as error:  # reported with its key, and the exit code says so
            verb = "checking" if report.reachable else "cannot connect to"
            problems.append(Problem(key, f"{verb} {render(url)}: {describe(error)}"))
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


def _problem(prefix: str, error: BaseException) -> dict[str, str]:
    message = str(error)
    key, sep, rest = message.partition(": ")
    if sep and " " not in key:
        return {"key": key, "message": rest}
    return {"key": f"{prefix}URL", "message": message}


def print_check(results: list[dict[str, Any]]) -> None:
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
                    *([f"primary: {server['primary_host']}"] if server["primary_host"] else []),
                ]
                state = "  ".join(parts)
            else:
                state = "UNREACHABLE"
            print(f"  {server['role']:<8} {server['key']:<28} {server['url']}  {state}")
        for problem in result["problems"]:
            print(f"  problem  {problem['key']}: {problem['message']}")
    total = sum(len(result["problems"]) for result in results)
    print("OK" if total == 0 else f"{total} problem(s)")


async def check_target(target: str, timeout: float) -> list[dict[str, Any]]:
    results = []
    for db in databases(target):
        results.append(await check_database(db, timeout))
    return results
