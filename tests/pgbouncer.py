"""A private PgBouncer in transaction mode, in front of the test PostgreSQL server.

``with pgbouncer_sync(url) as bouncer:`` writes a configuration into a new temporary
folder, starts Debian's ``pgbouncer`` there on a free loopback port (as the ``postgres``
OS user: PgBouncer refuses to run as root), waits until it answers, and on the way out
stops it and removes the folder.  ``bouncer.url`` is ``url`` through the pooler.

The server pool is small (``pool_size`` server connections per database and user), so
consecutive transactions of one client land on different server connections and many
clients share each one: whatever relies on session state breaks here as it would in
production.  The ``pgbouncer_url`` fixture shares one PgBouncer per test session.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from .conftest import backend_url, backends_required
from .pgserver import OS_USER, _free_port

PGBOUNCER = os.environ.get("TEST_PGBOUNCER", "/usr/sbin/pgbouncer")
#: Server connections PgBouncer keeps per database and user.
POOL_SIZE = 2
#: Seconds PgBouncer may take to start or stop.
START_TIMEOUT = 15.0


class PgBouncer:
    """One running PgBouncer: its folder, port and the URL through it."""

    def __init__(self, root: Path, target: str, pool_size: int) -> None:
        self.root = root
        self.target = make_url(target)
        self.pool_size = pool_size
        self.port = _free_port()
        self.log = root / "pgbouncer.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The target URL with its host and port replaced by PgBouncer's."""
        through = self.target.set(host="127.0.0.1", port=self.port)
        return through.render_as_string(hide_password=False)

    def _write_config(self) -> Path:
        target = self.target
        user = target.username or "postgres"
        (self.root / "users.txt").write_text(f'"{user}" "{target.password or ""}"\n')
        config = self.root / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={target.host or '127.0.0.1'} port={target.port or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            f"logfile = {self.log}\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'users.txt'}\n"
            "pool_mode = transaction\n"
            # Each transaction takes the next server connection, not the last one used.
            "server_round_robin = 1\n"
            f"default_pool_size = {self.pool_size}\n"
            "reserve_pool_size = 0\n"
            "max_client_conn = 1000\n"
            # Transaction mode resets nothing between clients, as in production.
            "server_reset_query =\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        for path in (self.root, config, self.root / "users.txt"):
            shutil.chown(path, OS_USER, OS_USER)
        return config

    def start(self) -> None:
        config = self._write_config()
        # As the postgres user straight away, not through runuser: on SIGTERM runuser
        # waits 2 s after its child has exited.
        self.process = subprocess.Popen(
            [PGBOUNCER, str(config)],
            user=OS_USER,
            group=OS_USER,
            extra_groups=[],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not answer in {START_TIMEOUT:g} s:\n{self.log_tail()}")

    async def open_server_connections(self) -> None:
        """Make PgBouncer open all its server connections (it opens them only when
        transactions overlap), so that round robin spreads transactions over them."""
        clients = [
            await asyncpg.connect(
                make_url(self.url)
                .set(drivername="postgresql")
                .render_as_string(hide_password=False),
                statement_cache_size=0,
            )
            for _ in range(self.pool_size)
        ]
        try:
            for client in clients:
                await client.execute("BEGIN")
            for client in clients:
                await client.execute("ROLLBACK")
        finally:
            for client in clients:
                await client.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # The whole group, to be sure.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def unavailable_reason() -> str | None:
    """Why PgBouncer cannot be started here, or ``None`` when it can."""
    if not Path(PGBOUNCER).exists():
        return f"{PGBOUNCER} not found (apt-get install pgbouncer)"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "starting PgBouncer as the postgres user needs root"
    return None


@contextlib.contextmanager
def pgbouncer_sync(target: str, pool_size: int = POOL_SIZE) -> Iterator[PgBouncer]:
    """A running PgBouncer in transaction mode in front of ``target`` (a PostgreSQL
    URL); stopped and its folder removed on exit, always."""
    root = Path(tempfile.mkdtemp(prefix="sanic-sqlalchemy-pgbouncer-"))
    bouncer = PgBouncer(root, target, pool_size)
    try:
        bouncer.start()
        asyncio.run(bouncer.open_server_connections())
        yield bouncer
    finally:
        try:
            bouncer.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pgbouncer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    """One PgBouncer in transaction mode for the whole session, in front of the test
    PostgreSQL database (``TEST_POSTGRES_URL``)."""
    reason = unavailable_reason()
    if reason is not None:
        if backends_required():
            pytest.fail(reason)
        pytest.skip(reason)
    target = backend_url("postgresql", tmp_path_factory.mktemp("unused"))
    with pgbouncer_sync(target) as bouncer:
        yield bouncer
