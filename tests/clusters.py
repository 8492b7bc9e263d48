"""Real replicated database clusters for the replica tests, one of each per session.

``pg_cluster``: a PostgreSQL 15 primary and two hot-standby replicas fed by streaming
replication (one physical slot each), made with ``initdb`` and ``pg_basebackup -R -X
stream``.  ``mariadb_cluster``: a MariaDB 10.11 primary writing a ROW binary log with
GTIDs in strict mode, and one read-only replica following it with
``MASTER_USE_GTID=slave_pos``.  Every server is private: a temporary folder, a free
loopback port, ``fsync`` (or its MariaDB equivalents) off, and it is stopped and the
folder removed at the end of the session whatever happened; an ``atexit`` hook does the
same if the session never reaches its teardown.

URLs, as strings (SQLAlchemy URLs, no password)::

    pg_cluster.primary_url       postgresql+asyncpg://postgres@127.0.0.1:PORT/postgres
    pg_cluster.replica_urls      the same for each replica: it is the same database
    mariadb_cluster.primary_url  mysql+asyncmy://root@127.0.0.1:PORT/test
    mariadb_cluster.replica_urls the same for the replica

PostgreSQL uses the built-in ``postgres`` database (replication copies the whole
cluster, so there is nothing to create); MariaDB uses ``test``, created on the primary
and replicated.  On the MariaDB replica ``read_only`` is on and ``root@127.0.0.1`` lacks
``READ_ONLY ADMIN`` (revoked on the primary, so the revocation replicates): a write
through the replica URL fails as it would for an application user, instead of silently
forking the replica's GTID history.  MariaDB ``server_id``: 1 for the primary, 2 for
the replica (``server_ids`` lists them in URL order).

Both clusters have ``await stop_replica(i, kill=False)`` and ``await start_replica(i)``
(same port: the URL stays valid), ``await wait_caught_up(timeout, replicas=None)``
(by default every replica that runs and replays), ``await scalar(url, sql)`` (one
value from any member, autocommit), ``is_replica(url)``, ``replica_index(url)`` and
``is_running(i)``.  PostgreSQL adds ``await pause_replay(i)`` / ``resume_replay(i)``
(``pg_wal_replay_pause()``), MariaDB ``await stop_sql_thread(i)`` /
``start_sql_thread(i)`` (``STOP SLAVE SQL_THREAD``).  The async methods open a
connection of their own per call (each test has an event loop of its own) and run
blocking commands in a thread, so a replica can be stopped under load from the test's
loop.

A cluster outlives the test that breaks it, so after every test ``_reset_clusters``
calls ``reset()``: the replicas stopped through these methods start again, paused replay
resumes, and every replica catches up; free when the test changed nothing.  Changes
made behind the cluster's back (``pg_wal_replay_pause()`` sent by a test itself) are
not undone.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Collection, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import make_url

from .conftest import backends_required
from .pgserver import PG_BIN, PostgresServer, PostgresServerError, _free_port
from .pgserver import unavailable_reason as _pg_unavailable_reason

_T = TypeVar("_T")

#: Seconds ``wait_caught_up`` waits by default (and the reset between tests).
CATCH_UP_TIMEOUT = 30.0
#: Seconds between two looks at a replica's position.
POLL_INTERVAL = 0.01
#: Seconds a server may take to start or stop.
SERVER_TIMEOUT = 60.0

MARIADBD = Path(os.environ.get("TEST_MARIADBD", "/usr/sbin/mariadbd"))
MARIADB_INSTALL_DB = Path(os.environ.get("TEST_MARIADB_INSTALL_DB", "/usr/bin/mariadb-install-db"))
MARIADB_OS_USER = "mysql"


def _require(reason: str | None) -> None:
    """Skip (fail in CI, like a missing backend) when the servers cannot be started."""
    if reason is not None:
        if backends_required():
            pytest.fail(reason)
        pytest.skip(reason)


def _blocking(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` to completion from synchronous code, outside any event loop.

    A thread of its own with its own loop: the caller may be a fixture that runs while
    pytest-asyncio holds the current loop, which ``asyncio.run`` here would replace.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


def _make_root(prefix: str, owner: str | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        shutil.chown(root, owner, owner)
    return root


def _make_dir(path: Path, owner: str | None) -> Path:
    path.mkdir(mode=0o700)
    if owner is not None:
        shutil.chown(path, owner, owner)
    return path


class _Cluster:
    """What both clusters share: URLs, the state tests changed, clean-up."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: The replica servers, by index (each with ``start()`` and ``stop()``).
        self.replicas: list[Any] = []
        #: Replicas stopped, and replicas whose replay is paused, by this cluster's methods.
        self._stopped: set[int] = set()
        self._paused: set[int] = set()
        self._closed = False

    @property
    def primary_url(self) -> str:
        """The primary's SQLAlchemy URL."""
        raise NotImplementedError

    @property
    def replica_urls(self) -> list[str]:
        """Each replica's SQLAlchemy URL, by index; stable across restarts."""
        raise NotImplementedError

    def is_replica(self, url: str) -> bool:
        """Whether ``url`` (any rendering, with or without password) names a replica."""
        return self._port(url) in {self._port(replica) for replica in self.replica_urls}

    def replica_index(self, url: str) -> int:
        """The index in ``replica_urls`` of the replica that ``url`` names."""
        port = self._port(url)
        for index, replica in enumerate(self.replica_urls):
            if self._port(replica) == port:
                return index
        raise ValueError(f"{url} is not one of this cluster's replicas")

    def is_running(self, index: int) -> bool:
        """Whether replica ``index`` runs (it does unless ``stop_replica`` stopped it)."""
        self._check_index(index)
        return index not in self._stopped

    @staticmethod
    def _port(url: str) -> int | None:
        return make_url(url).port

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.replica_urls):
            raise IndexError(f"replica {index}: the cluster has {len(self.replica_urls)}")

    def _replicas_to_wait_for(self, replicas: Collection[int] | None) -> list[int]:
        if replicas is None:
            return [
                i
                for i in range(len(self.replica_urls))
                if i not in self._stopped and i not in self._paused
            ]
        for index in replicas:
            self._check_index(index)
        return sorted(replicas)

    # -- between tests and at the end ------------------------------------------

    def reset(self) -> None:
        """Blocking: every replica running and replaying again, then caught up."""
        if not self._stopped and not self._paused:
            return
        for index in sorted(self._stopped):
            self._start_replica(index)
        for index in sorted(self._paused):
            _blocking(self._resume(index))
        _blocking(self.wait_caught_up())

    async def wait_caught_up(
        self, timeout: float = CATCH_UP_TIMEOUT, replicas: Collection[int] | None = None
    ) -> str:
        raise NotImplementedError

    async def start_replica(self, index: int) -> None:
        """Start replica ``index`` again on its port; it replicates, not paused (a
        paused replay or a stopped SQL thread does not survive a restart)."""
        self._check_index(index)
        await asyncio.to_thread(self._start_replica, index)

    def _start_replica(self, index: int) -> None:
        self.replicas[index].start()
        self._stopped.discard(index)
        self._paused.discard(index)

    async def _resume(self, index: int) -> None:
        raise NotImplementedError

    def _stop_servers(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop every server and remove the folder; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_servers()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            _LIVE.discard(self)
            atexit.unregister(self.close)


#: Clusters started and not yet closed: what ``_reset_clusters`` resets.
_LIVE: set[_Cluster] = set()


def _register(cluster: _Cluster) -> None:
    _LIVE.add(cluster)
    atexit.register(cluster.close)
    _close_on_sigterm()


def _close_on_sigterm() -> None:
    """Make SIGTERM (a CI timeout, ``kill``) stop the clusters before the process dies.

    By default SIGTERM ends Python without ``finally`` or ``atexit``, and PostgreSQL,
    daemonized by ``pg_ctl``, would outlive us.  Only installed over the default action.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def close_and_die(signum: int, _frame: object) -> None:
        for cluster in list(_LIVE):
            with contextlib.suppress(Exception):
                cluster.close()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, close_and_die)


# == PostgreSQL ===============================================================

_PG_CONF = """
# sanic-sqlalchemy test cluster: copied to the replicas by pg_basebackup.
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on
shared_buffers = 16MB
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 200ms
"""

_PG_HBA = """
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 trust
local   replication  all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
"""


class _PostgresNode(PostgresServer):
    """A cluster member: keeps its port across restarts, so its URL stays valid."""

    def start(self) -> None:
        if self.port == 0:
            super().start()
            return
        self._run(
            "pg_ctl", "start", "-w", "-t", str(int(SERVER_TIMEOUT)), "-D", str(self.data),
            "-l", str(self.log), "-o", self._options(),
        )  # fmt: skip

    def dsn(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "user": "postgres"}


async def _pg_fetchval(node: _PostgresNode, sql: str, *args: Any) -> Any:
    import asyncpg

    connection = await asyncpg.connect(**node.dsn(), database="postgres", timeout=10)
    try:
        return await connection.fetchval(sql, *args)
    finally:
        await connection.close()


class PostgresCluster(_Cluster):
    """A PostgreSQL primary with two streaming hot-standby replicas (see the module)."""

    def __init__(self, root: Path, replicas: int = 2) -> None:
        super().__init__(root)
        self.primary = _PostgresNode(_make_dir(root / "primary", "postgres"))
        self.replicas = [
            _PostgresNode(_make_dir(root / f"replica{i}", "postgres")) for i in range(replicas)
        ]

    @property
    def primary_url(self) -> str:
        return self.primary.url

    @property
    def replica_urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]

    def start(self) -> None:
        """Blocking: initdb, start the primary, clone and start each replica."""
        self.primary.initdb()
        with (self.primary.data / "postgresql.conf").open("a") as conf:
            conf.write(_PG_CONF)
        (self.primary.data / "pg_hba.conf").write_text(_PG_HBA)
        self.primary.start()
        # One after the other: side by side, one's checkpoint can recycle WAL that the
        # other still streams, and on two cores it saves nothing.
        for index in range(len(self.replicas)):
            self._clone(index)

    def _clone(self, index: int) -> None:
        replica = self.replicas[index]
        # -R writes standby.signal and primary_conninfo, -C -S a slot of its own; a fast
        # checkpoint, or pg_basebackup waits for a spread one.
        replica._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port),
            "-U", "postgres", "-D", str(replica.data), "-R", "-X", "stream",
            "-C", "-S", f"replica{index}", "-c", "fast", "--no-sync",
        )  # fmt: skip
        replica.start()

    def _stop_servers(self) -> None:
        errors: list[BaseException] = []
        for node in [*self.replicas, self.primary]:
            try:
                node.stop(mode="immediate")
            except PostgresServerError as error:
                errors.append(error)
        if errors:
            raise errors[0]

    # -- replicas ------------------------------------------------------------

    async def stop_replica(self, index: int, *, kill: bool = False) -> None:
        """Stop replica ``index`` (``pg_ctl stop -m fast``; ``kill``: ``-m immediate``)."""
        self._check_index(index)
        await asyncio.to_thread(self._stop_replica, index, "immediate" if kill else "fast")

    def _stop_replica(self, index: int, mode: str) -> None:
        self._stopped.add(index)
        self.replicas[index].stop(mode=mode)

    async def pause_replay(self, index: int) -> None:
        """``pg_wal_replay_pause()`` on replica ``index``: it applies no more WAL."""
        self._check_index(index)
        self._paused.add(index)
        await _pg_fetchval(self.replicas[index], "SELECT pg_wal_replay_pause()")

    async def resume_replay(self, index: int) -> None:
        """``pg_wal_replay_resume()`` on replica ``index``."""
        self._check_index(index)
        await self._resume(index)

    async def _resume(self, index: int) -> None:
        await _pg_fetchval(self.replicas[index], "SELECT pg_wal_replay_resume()")
        self._paused.discard(index)

    async def scalar(self, url: str, sql: str, *args: Any) -> Any:
        """The first value ``sql`` returns on the server ``url`` names (autocommit)."""
        node = self.primary if not self.is_replica(url) else self.replicas[self.replica_index(url)]
        if self._port(url) != node.port:
            raise ValueError(f"{url} is not a server of this cluster")
        return await _pg_fetchval(node, sql, *args)

    async def wait_caught_up(
        self, timeout: float = CATCH_UP_TIMEOUT, replicas: Collection[int] | None = None
    ) -> str:
        """Wait until replicas have replayed the primary's current WAL position.

        ``replicas``: indices; by default every replica running and not paused.  Returns
        the position (``pg_lsn`` text); raises ``TimeoutError`` naming the laggard.
        """
        indices = self._replicas_to_wait_for(replicas)
        target = await _pg_fetchval(self.primary, "SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        for index in indices:
            replica = self.replicas[index]
            while True:
                done = await _pg_fetchval(
                    replica,
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
                    target,
                )
                if done:
                    break
                if time.monotonic() > deadline:
                    replayed = await _pg_fetchval(replica, "SELECT pg_last_wal_replay_lsn()::text")
                    raise TimeoutError(
                        f"replica {index} replayed WAL to {replayed} in {timeout} s, "
                        f"not to the primary's {target}"
                    )
                await asyncio.sleep(POLL_INTERVAL)
        return str(target)


def pg_cluster_unavailable_reason() -> str | None:
    """Why a PostgreSQL cluster cannot be started here, or ``None`` when it can."""
    reason = _pg_unavailable_reason()
    if reason is None and not (PG_BIN / "pg_basebackup").exists():
        reason = f"pg_basebackup not found in {PG_BIN}"
    return reason


@contextlib.contextmanager
def start_postgres_cluster(replicas: int = 2) -> Iterator[PostgresCluster]:
    """A running PostgreSQL cluster; stopped and its folder removed on exit, always."""
    _require(pg_cluster_unavailable_reason())
    cluster = PostgresCluster(_make_root("sanic-sqlalchemy-pgc-", "postgres"), replicas)
    _register(cluster)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


# == MariaDB ==================================================================


class MariaDBServerError(RuntimeError):
    """A MariaDB server did not install, start or stop; the message has its log."""


def _mariadb_os_user() -> str | None:
    """Who runs the servers: ``mysql`` when we are root (mariadbd refuses root)."""
    return MARIADB_OS_USER if os.geteuid() == 0 else None


class _MariaDBNode:
    """One private ``mariadbd``: its datadir, socket, pid file and error log in ``root``."""

    def __init__(self, root: Path, server_id: int, *, replica: bool) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "error.log"
        self.server_id = server_id
        self.replica = replica
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql+asyncmy://root@127.0.0.1:{self.port}/test"

    def _options(self) -> list[str]:
        options = [
            "--no-defaults",  # never the system server's /etc/mysql/my.cnf
            f"--datadir={self.data}",
            "--bind-address=127.0.0.1",
            f"--port={self.port}",
            f"--socket={self.root / 'mysqld.sock'}",
            f"--pid-file={self.root / 'mysqld.pid'}",
            f"--log-error={self.log}",
            f"--server-id={self.server_id}",
            "--relay-log=relay-bin",
            "--gtid-strict-mode=ON",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            # Small and not durable against a machine crash, which tests never cause;
            # a killed server keeps its commits (written to the OS, not synced), so its
            # binary log and mysql.gtid_slave_pos agree again after crash recovery.
            "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=8M",
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-doublewrite=0",
            "--sync-binlog=0",
        ]
        if self.replica:
            # No binary log of its own: what a replica applied is recorded only in
            # mysql.gtid_slave_pos, in the same InnoDB transaction as the data, so a
            # killed replica resumes exactly where it was (with a binary log too, the
            # two could disagree after a kill and strict mode stops replication).
            options.append("--read-only=ON")
        else:
            options += ["--log-bin=mariadb-bin", "--binlog-format=ROW"]
        return options

    def install(self) -> None:
        """``mariadb-install-db``: system tables, root without password on 127.0.0.1."""
        command = [
            str(MARIADB_INSTALL_DB), "--no-defaults", f"--datadir={self.data}",
            "--auth-root-authentication-method=normal", "--skip-test-db",
            "--skip-name-resolve", "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=8M",
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command,
                cwd=self.root,
                user=_mariadb_os_user(),
                capture_output=True,
                text=True,
                timeout=SERVER_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise MariaDBServerError(f"mariadb-install-db took over {SERVER_TIMEOUT} s") from error
        if done.returncode != 0:
            raise MariaDBServerError(
                f"mariadb-install-db exited with {done.returncode}\n{done.stdout}{done.stderr}"
            )

    def start(self) -> None:
        """Start on its port (a free one the first time) and wait until it answers."""
        first = self.port == 0
        for attempt in range(3):
            if first:
                self.port = _free_port()
            try:
                self._start_once()
                return
            except MariaDBServerError as error:
                # Another process may have taken the free port meanwhile: try another.
                if not first or attempt == 2 or "Address already in use" not in str(error):
                    raise

    def _start_once(self) -> None:
        self.process = subprocess.Popen(
            [str(MARIADBD), *self._options()],
            cwd=self.root,
            user=_mariadb_os_user(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Out of the terminal's process group: a Ctrl-C reaches pytest, whose
            # clean-up stops the servers in order.
            start_new_session=True,
        )
        deadline = time.monotonic() + SERVER_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None:
                self.process = None
                raise MariaDBServerError(f"mariadbd exited during start-up\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise MariaDBServerError(f"mariadbd did not answer in {SERVER_TIMEOUT} s")
            time.sleep(POLL_INTERVAL)

    def _answers(self) -> bool:
        """Whether the server sends its handshake (protocol 10) on a new connection."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                greeting = sock.recv(5)
        except OSError:
            return False
        return len(greeting) == 5 and greeting[4] == 10

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown) or SIGKILL, and wait; SIGKILL when SIGTERM hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=SERVER_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise MariaDBServerError(
                f"mariadbd ignored SIGTERM for {SERVER_TIMEOUT} s\n{self.log_tail()}"
            ) from None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return "(no server log)"
        return "server log:\n" + "\n".join(text.splitlines()[-lines:])


async def _mariadb_fetchval(node: _MariaDBNode, sql: str) -> Any:
    import asyncmy

    connection = await asyncmy.connect(
        host="127.0.0.1", port=node.port, user="root", autocommit=True, connect_timeout=10
    )
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(sql)
            row = await cursor.fetchone()
        return None if row is None else row[0]
    finally:
        await connection.ensure_closed()


async def _mariadb_replication_status(node: _MariaDBNode) -> str:
    """The replication threads' state and last errors, from ``SHOW SLAVE STATUS``."""
    import asyncmy

    connection = await asyncmy.connect(
        host="127.0.0.1", port=node.port, user="root", autocommit=True, connect_timeout=10
    )
    try:
        async with connection.cursor(asyncmy.cursors.DictCursor) as cursor:
            await cursor.execute("SHOW SLAVE STATUS")
            row = await cursor.fetchone()
    finally:
        await connection.ensure_closed()
    if row is None:
        return "replication not configured"
    keys = ("Slave_IO_Running", "Slave_SQL_Running", "Last_IO_Error", "Last_SQL_Error")
    return ", ".join(f"{key}: {row[key]!r}" for key in keys)


def _gtid_positions(text: str | None) -> dict[int, int]:
    """``'0-1-42,1-3-7'`` as ``{domain: sequence number}``."""
    positions: dict[int, int] = {}
    for gtid in filter(None, (text or "").replace(" ", "").split(",")):
        domain, _server, sequence = gtid.split("-")
        positions[int(domain)] = int(sequence)
    return positions


class MariaDBCluster(_Cluster):
    """A MariaDB primary (binary log, GTIDs) with one read-only replica (see the module)."""

    def __init__(self, root: Path, replicas: int = 1) -> None:
        super().__init__(root)
        owner = _mariadb_os_user()
        self.primary = _MariaDBNode(_make_dir(root / "primary", owner), 1, replica=False)
        self.replicas = [
            _MariaDBNode(_make_dir(root / f"replica{i}", owner), 2 + i, replica=True)
            for i in range(replicas)
        ]

    @property
    def primary_url(self) -> str:
        return self.primary.url

    @property
    def replica_urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]

    @property
    def server_ids(self) -> list[int]:
        """``@@server_id`` of the primary, then of each replica."""
        return [node.server_id for node in [self.primary, *self.replicas]]

    def start(self) -> None:
        """Blocking: install once, copy for the replicas, start all, replicate."""
        self.primary.install()
        # Each replica starts from a copy of the freshly installed primary, before the
        # primary has written anything: replication from the first GTID does the rest.
        for replica in self.replicas:
            shutil.copytree(self.primary.data, replica.data, symlinks=True)
            if (owner := _mariadb_os_user()) is not None:
                _chown_tree(replica.data, owner)
        self.primary.start()
        _blocking(self._prepare_primary())
        for replica in self.replicas:
            replica.start()
            _blocking(self._follow(replica))
        _blocking(self.wait_caught_up())

    async def _prepare_primary(self) -> None:
        # Without READ_ONLY ADMIN root obeys the replicas' read_only like any client.
        await _mariadb_fetchval(self.primary, "REVOKE READ_ONLY ADMIN ON *.* FROM root@'127.0.0.1'")
        await _mariadb_fetchval(self.primary, "CREATE DATABASE test")

    async def _follow(self, replica: _MariaDBNode) -> None:
        await _mariadb_fetchval(
            replica,
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', "
            f"MASTER_PORT={self.primary.port}, MASTER_USER='root', "
            "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
        )
        await _mariadb_fetchval(replica, "START SLAVE")

    def _stop_servers(self) -> None:
        errors: list[BaseException] = []
        for node in [*self.replicas, self.primary]:
            try:
                node.stop()
            except MariaDBServerError as error:
                errors.append(error)
        if errors:
            raise errors[0]

    # -- replicas ------------------------------------------------------------

    async def stop_replica(self, index: int, *, kill: bool = False) -> None:
        """Stop replica ``index``'s server (SIGTERM: clean shutdown; ``kill``: SIGKILL)."""
        self._check_index(index)
        await asyncio.to_thread(self._stop_replica, index, kill)

    def _stop_replica(self, index: int, kill: bool) -> None:
        self._stopped.add(index)
        self.replicas[index].stop(kill=kill)

    async def stop_sql_thread(self, index: int) -> None:
        """``STOP SLAVE SQL_THREAD`` on replica ``index``: events arrive, none applies."""
        self._check_index(index)
        self._paused.add(index)
        await _mariadb_fetchval(self.replicas[index], "STOP SLAVE SQL_THREAD")

    async def start_sql_thread(self, index: int) -> None:
        """``START SLAVE SQL_THREAD`` on replica ``index``."""
        self._check_index(index)
        await self._resume(index)

    async def _resume(self, index: int) -> None:
        await _mariadb_fetchval(self.replicas[index], "START SLAVE SQL_THREAD")
        self._paused.discard(index)

    async def scalar(self, url: str, sql: str) -> Any:
        """The first value ``sql`` returns on the server ``url`` names (autocommit)."""
        node = self.primary if not self.is_replica(url) else self.replicas[self.replica_index(url)]
        if self._port(url) != node.port:
            raise ValueError(f"{url} is not a server of this cluster")
        return await _mariadb_fetchval(node, sql)

    async def wait_caught_up(
        self, timeout: float = CATCH_UP_TIMEOUT, replicas: Collection[int] | None = None
    ) -> str:
        """Wait until replicas' ``@@gtid_slave_pos`` covers the primary's ``@@gtid_binlog_pos``.

        ``replicas``: indices; by default every replica running with its SQL thread.
        Returns the primary's position; raises ``TimeoutError`` naming the laggard.
        """
        indices = self._replicas_to_wait_for(replicas)
        target_text = await _mariadb_fetchval(self.primary, "SELECT @@gtid_binlog_pos")
        target = _gtid_positions(target_text)
        deadline = time.monotonic() + timeout
        for index in indices:
            while True:
                reached_text = await _mariadb_fetchval(
                    self.replicas[index], "SELECT @@gtid_slave_pos"
                )
                reached = _gtid_positions(reached_text)
                if all(reached.get(domain, -1) >= seq for domain, seq in target.items()):
                    break
                if time.monotonic() > deadline:
                    status = await _mariadb_replication_status(self.replicas[index])
                    raise TimeoutError(
                        f"replica {index} reached GTID {reached_text!r} in {timeout} s, "
                        f"not the primary's {target_text!r} ({status})"
                    )
                await asyncio.sleep(POLL_INTERVAL)
        return str(target_text)


def _chown_tree(path: Path, owner: str) -> None:
    shutil.chown(path, owner, owner)
    for directory, names, files in os.walk(path):
        for name in [*names, *files]:
            shutil.chown(Path(directory) / name, owner, owner)


def mariadb_cluster_unavailable_reason() -> str | None:
    """Why a MariaDB cluster cannot be started here, or ``None`` when it can."""
    for binary in (MARIADBD, MARIADB_INSTALL_DB):
        if not binary.exists():
            return f"{binary} not found"
    if _mariadb_os_user() is not None:
        import pwd

        try:
            pwd.getpwnam(MARIADB_OS_USER)
        except KeyError:
            return f"there is no {MARIADB_OS_USER!r} OS user to run MariaDB as"
    return None


@contextlib.contextmanager
def start_mariadb_cluster(replicas: int = 1) -> Iterator[MariaDBCluster]:
    """A running MariaDB cluster; stopped and its folder removed on exit, always."""
    _require(mariadb_cluster_unavailable_reason())
    cluster = MariaDBCluster(_make_root("sanic-sqlalchemy-mdb-", _mariadb_os_user()), replicas)
    _register(cluster)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


# == fixtures =================================================================


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL primary with two streaming replicas, shared by the session."""
    with start_postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def mariadb_cluster() -> Iterator[MariaDBCluster]:
    """A MariaDB primary with one GTID replica, shared by the session."""
    with start_mariadb_cluster() as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _reset_clusters() -> Iterator[None]:
    """After each test, the clusters it changed run and replay again, caught up."""
    yield
    for cluster in list(_LIVE):
        cluster.reset()
