"""A private PostgreSQL primary and streaming standby whose roles a test may switch.

``FailoverPair`` keeps two nodes, ``a`` and ``b``, on fixed loopback ports; ``url`` names
both (``?host=127.0.0.1:A&host=127.0.0.1:B``), whichever is primary.  A test stops the
primary (``await stop_primary()``), promotes the standby (``await promote()``), or fences
the primary read-only while it runs (``await fence_primary()``); after each test
``reset()`` (run by ``clusters._reset_clusters``) makes the node that lost its role a
standby of the new primary again, cloned afresh (about a second), so that every test
starts from a primary and a caught-up standby.  Settings keep it fast: ``fsync`` off, a
small WAL, a standby that retries its primary every 200 ms.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .clusters import (
    _PG_CONF,
    _PG_HBA,
    POLL_INTERVAL,
    _blocking,
    _Cluster,
    _make_dir,
    _make_root,
    _pg_fetchval,
    _PostgresNode,
    _register,
    _require,
    pg_cluster_unavailable_reason,
)

_FAILOVER_CONF = """
max_wal_size = 64MB
min_wal_size = 32MB
wal_keep_size = 64MB
"""


class FailoverPair(_Cluster):
    """A primary and a standby that trade places (see the module)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.nodes = [_PostgresNode(_make_dir(root / name, "postgres")) for name in ("a", "b")]
        self.primary_index = 0
        #: Whether a test changed the roles (what ``reset`` has to undo).
        self._switched = False

    @property
    def primary(self) -> _PostgresNode:
        return self.nodes[self.primary_index]

    @property
    def standby(self) -> _PostgresNode:
        return self.nodes[1 - self.primary_index]

    @property
    def url(self) -> str:
        """Both nodes, in a fixed order: the library must find the primary itself."""
        hosts = "&".join(f"host=127.0.0.1:{node.port}" for node in self.nodes)
        return f"postgresql+asyncpg://postgres@/postgres?{hosts}"

    @property
    def primary_url(self) -> str:
        return self.primary.url

    @property
    def replica_urls(self) -> list[str]:
        return [self.standby.url]

    # -- set-up ------------------------------------------------------------------

    def start(self) -> None:
        """Blocking: initdb and start ``a`` as the primary, clone ``b`` as its standby."""
        primary = self.primary
        primary.initdb()
        with (primary.data / "postgresql.conf").open("a") as conf:
            conf.write(_PG_CONF + _FAILOVER_CONF)
        (primary.data / "pg_hba.conf").write_text(_PG_HBA)
        primary.start()
        self._clone(self.standby)

    def _clone(self, node: _PostgresNode) -> None:
        shutil.rmtree(node.data, ignore_errors=True)
        node._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port),
            "-U", "postgres", "-D", str(node.data), "-R", "-X", "stream",
            "-c", "fast", "--no-sync",
        )  # fmt: skip
        node.start()

    # -- what tests do -----------------------------------------------------------

    async def stop_primary(self) -> None:
        """``pg_ctl stop -m fast``: sessions end, WAL reaches the standby first."""
        self._switched = True
        await asyncio.to_thread(self.primary.stop, "fast")

    async def promote(self) -> None:
        """``pg_ctl promote -w``: the standby takes writes once this returns."""
        self._switched = True
        standby = self.standby
        await asyncio.to_thread(
            standby._run, "pg_ctl", "promote", "-w", "-t", "30", "-D", str(standby.data)
        )
        self.primary_index = 1 - self.primary_index

    async def fence_primary(self) -> None:
        """Make the running primary refuse writes (``default_transaction_read_only``
        on, configuration reloaded), as a failover tool fencing the old primary does:
        its open sessions stay, and their next write fails with SQLSTATE 25006."""
        self._switched = True
        primary = self.primary
        await _pg_fetchval(primary, "ALTER SYSTEM SET default_transaction_read_only = on")
        await _pg_fetchval(primary, "SELECT pg_reload_conf()")

    async def scalar(self, url: str, sql: str, *args: Any) -> Any:
        """The first value ``sql`` returns on the current primary."""
        return await _pg_fetchval(self.primary, sql, *args)

    # -- between tests -----------------------------------------------------------

    def reset(self) -> None:
        """Blocking: the primary runs and takes writes, and the node that lost its role
        (or a test left stopped) is cloned afresh as its standby."""
        if not self._switched:
            return
        self._switched = False
        primary, standby = self.primary, self.standby
        if primary.postmaster_pid() is None:
            primary.start()
        _blocking(_pg_fetchval(primary, "ALTER SYSTEM RESET default_transaction_read_only"))
        _blocking(_pg_fetchval(primary, "SELECT pg_reload_conf()"))
        if standby.postmaster_pid() is None or not _blocking(
            _pg_fetchval(standby, "SELECT pg_is_in_recovery()")
        ):
            standby.stop(mode="immediate")
            self._clone(standby)

    async def wait_caught_up(self, timeout: float = 30.0, replicas: Any = None) -> str:
        """Wait until the standby has replayed the primary's current WAL position; return
        it (``pg_lsn`` text).  ``replicas`` is ignored: there is one standby."""
        target = await _pg_fetchval(self.primary, "SELECT pg_current_wal_lsn()::text")
        deadline = time.monotonic() + timeout
        while not await _pg_fetchval(
            self.standby,
            "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
            target,
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby did not replay WAL to {target} in {timeout} s")
            await asyncio.sleep(POLL_INTERVAL)
        return str(target)

    async def _resume(self, index: int) -> None:
        raise NotImplementedError

    def _stop_servers(self) -> None:
        for node in self.nodes:
            node.stop(mode="immediate")


@pytest.fixture(scope="session")
def failover_pair() -> Iterator[FailoverPair]:
    """A primary and a standby for the session, roles restored after each test."""
    _require(pg_cluster_unavailable_reason())
    pair = FailoverPair(_make_root("sanic-sqlalchemy-failover-", "postgres"))
    _register(pair)
    try:
        pair.start()
        yield pair
    finally:
        pair.close()
