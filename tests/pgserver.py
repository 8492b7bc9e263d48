"""A private PostgreSQL 15 server for tests that stop, restart or break the server.

``async with postgres_server() as server:`` runs ``initdb`` in a new temporary folder,
starts the server on a free loopback port (Unix socket in that folder too) as the
``postgres`` OS user, and on the way out stops it and removes the folder, whatever
happened in between.  ``server.url`` is an asyncpg URL for its ``postgres`` database;
``await server.restart()`` runs ``pg_ctl restart -w`` without blocking the event loop.

The blocking ``PostgresServer`` methods (``start``, ``stop``, ``restart``) and the
``postgres_server_sync()`` context manager serve synchronous code.

We run as root, and PostgreSQL refuses to run as root: every server command goes
through ``runuser -u postgres --`` (or ``su postgres -c`` where ``runuser`` is
missing).  ``fsync`` is off: the tests restart the server process, never the machine,
so committed data still reaches the files through the operating system.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from .conftest import backends_required

PG_BIN = Path(os.environ.get("TEST_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"
#: Seconds any one server command (initdb, start, stop, restart) may take.
COMMAND_TIMEOUT = 60.0


class PostgresServerError(RuntimeError):
    """A server command failed; the message carries its output and the server log."""


def unavailable_reason() -> str | None:
    """Why a private server cannot be started here, or ``None`` when it can."""
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        return f"PostgreSQL binaries not found in {PG_BIN}"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "starting a private PostgreSQL server needs root (to run it as postgres)"
    try:
        import pwd

        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"there is no {OS_USER!r} OS user to run PostgreSQL as"
    return None


def _require_binaries() -> None:
    reason = unavailable_reason()
    if reason is not None:
        if backends_required():
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_postgres(argv: list[str]) -> list[str]:
    if shutil.which("runuser"):
        return ["runuser", "-u", OS_USER, "--", *argv]
    return ["su", OS_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]


class PostgresServer:
    """One private PostgreSQL cluster in ``root``: its data, socket and log."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "server.log"
        self.port = 0

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (asyncpg) of the cluster's ``postgres`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    # -- blocking commands ------------------------------------------------------

    def _run(self, *argv: str) -> str:
        command = _as_postgres([str(PG_BIN / argv[0]), *argv[1:]])
        try:
            done = subprocess.run(
                command,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise PostgresServerError(
                f"{shlex.join(command)} took longer than {COMMAND_TIMEOUT} s\n{self.log_tail()}"
            ) from error
        if done.returncode != 0:
            raise PostgresServerError(
                f"{shlex.join(command)} exited with {done.returncode}\n"
                f"{done.stdout}{done.stderr}\n{self.log_tail()}"
            )
        return done.stdout

    def _options(self) -> str:
        return (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c max_connections=100"
        )

    def initdb(self) -> None:
        """Create the cluster: trust authentication, superuser ``postgres``."""
        self._run(
            "initdb",
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
            str(self.data),
        )

    def start(self) -> None:
        """Start on a free loopback port and wait until it accepts connections."""
        for attempt in range(3):
            self.port = _free_port()
            try:
                self._run(
                    "pg_ctl", "start", "-w", "-t", "30", "-D", str(self.data),
                    "-l", str(self.log), "-o", self._options(),
                )  # fmt: skip
                return
            except PostgresServerError as error:
                # Another process may have taken the port in the meantime: try another.
                if attempt == 2 or "could not bind" not in str(error):
                    raise

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m mode -w``: same port, every connection is cut."""
        self._run(
            "pg_ctl", "restart", "-w", "-t", "30", "-m", mode, "-D", str(self.data),
            "-l", str(self.log), "-o", self._options(),
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs; kill the postmaster if ``pg_ctl`` cannot."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        try:
            self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", mode, "-D", str(self.data))
        except PostgresServerError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise

    def postmaster_pid(self) -> int | None:
        """The postmaster's process id while the server runs, else ``None``."""
        try:
            first_line = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            pid = int(first_line)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            return None
        return pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "server log:\n" + "\n".join(text.splitlines()[-lines:])

    # -- the same, without blocking the event loop -----------------------------

    async def restart_async(self, mode: str = "fast") -> None:
        await asyncio.to_thread(self.restart, mode)


def _make_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="sanic-sqlalchemy-pg-"))
    # mkdtemp makes a 0700 folder owned by root: hand it to postgres, and make sure
    # postgres can reach it through its parents.
    shutil.chown(root, OS_USER, OS_USER)
    root.chmod(0o700)
    return root


def _remove(server: PostgresServer | None, root: Path) -> None:
    try:
        if server is not None:
            server.stop(mode="immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server_sync() -> Iterator[PostgresServer]:
    """A running private server; stopped and its folder removed on exit, always."""
    _require_binaries()
    root = _make_root()
    server: PostgresServer | None = None
    try:
        server = PostgresServer(root)
        server.initdb()
        server.start()
        yield server
    finally:
        _remove(server, root)


@contextlib.asynccontextmanager
async def postgres_server() -> AsyncIterator[PostgresServer]:
    """``postgres_server_sync()`` for async code: the slow commands run in a thread."""
    _require_binaries()
    root = await asyncio.to_thread(_make_root)
    server: PostgresServer | None = None
    try:
        server = PostgresServer(root)
        await asyncio.to_thread(server.initdb)
        await asyncio.to_thread(server.start)
        yield server
    finally:
        # Shielded: a cancelled test must not leave a server behind.
        await asyncio.shield(asyncio.to_thread(_remove, server, root))
