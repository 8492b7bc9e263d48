"""The replicated clusters of ``tests/clusters.py`` replicate, refuse writes on replicas,
hold rows back while replay is paused, and survive a replica's restart."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncmy.errors
import asyncpg
import pytest

from .clusters import MariaDBCluster, PostgresCluster, _blocking, _gtid_positions

pytestmark = pytest.mark.server


@pytest.fixture
async def pg_table(pg_cluster: PostgresCluster) -> AsyncIterator[str]:
    """A fresh table ``(id int)`` on the PostgreSQL primary, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await pg_cluster.scalar(pg_cluster.primary_url, f"CREATE TABLE {name} (id int)")
    yield name
    await pg_cluster.scalar(pg_cluster.primary_url, f"DROP TABLE {name}")


@pytest.fixture
async def mariadb_table(mariadb_cluster: MariaDBCluster) -> AsyncIterator[str]:
    """A fresh table ``(id int)`` on the MariaDB primary, dropped afterwards."""
    name = f"test.t_{uuid.uuid4().hex[:12]}"
    await mariadb_cluster.scalar(mariadb_cluster.primary_url, f"CREATE TABLE {name} (id int)")
    yield name
    await mariadb_cluster.scalar(mariadb_cluster.primary_url, f"DROP TABLE {name}")


async def _pg_ids(cluster: PostgresCluster, url: str, table: str) -> list[int]:
    ids = await cluster.scalar(
        url, f"SELECT coalesce(array_agg(id ORDER BY id), '{{}}') FROM {table}"
    )
    return list(ids)


async def _mariadb_ids(cluster: MariaDBCluster, url: str, table: str) -> list[int]:
    ids = await cluster.scalar(url, f"SELECT group_concat(id ORDER BY id) FROM {table}")
    return [int(i) for i in ids.split(",")] if ids else []


# -- PostgreSQL ------------------------------------------------------------------


def test_pg_urls_are_distinct_loopback_servers(pg_cluster: PostgresCluster) -> None:
    """The primary and both replicas listen on distinct loopback ports of one database."""
    urls = [pg_cluster.primary_url, *pg_cluster.replica_urls]
    assert len(pg_cluster.replica_urls) == 2
    assert len(set(urls)) == 3
    for url in urls:
        assert url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
        assert url.endswith("/postgres")
    assert not pg_cluster.is_replica(pg_cluster.primary_url)
    assert [pg_cluster.replica_index(url) for url in pg_cluster.replica_urls] == [0, 1]


async def test_pg_replicas_are_read_only_hot_standbys(pg_cluster: PostgresCluster) -> None:
    """Only the primary is out of recovery; a replica refuses a write."""
    assert await pg_cluster.scalar(pg_cluster.primary_url, "SELECT pg_is_in_recovery()") is False
    for url in pg_cluster.replica_urls:
        assert await pg_cluster.scalar(url, "SELECT pg_is_in_recovery()") is True
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await pg_cluster.scalar(url, "CREATE TABLE refused (id int)")


async def test_pg_row_reaches_every_replica(pg_cluster: PostgresCluster, pg_table: str) -> None:
    """A row committed on the primary is on each replica once wait_caught_up returns."""
    await pg_cluster.scalar(pg_cluster.primary_url, f"INSERT INTO {pg_table} VALUES (1)")
    await pg_cluster.wait_caught_up()
    for url in pg_cluster.replica_urls:
        assert await _pg_ids(pg_cluster, url, pg_table) == [1]


async def test_pg_paused_replay_holds_rows_back(pg_cluster: PostgresCluster, pg_table: str) -> None:
    """A paused replica lacks a new row the other has, and gets it once resumed."""
    primary, (paused, running) = pg_cluster.primary_url, pg_cluster.replica_urls
    await pg_cluster.wait_caught_up()
    await pg_cluster.pause_replay(0)
    assert await pg_cluster.scalar(paused, "SELECT pg_get_wal_replay_pause_state()") != (
        "not paused"
    )
    await pg_cluster.scalar(primary, f"INSERT INTO {pg_table} VALUES (1)")
    await pg_cluster.wait_caught_up()  # the replicas that replay: replica 1
    assert await _pg_ids(pg_cluster, running, pg_table) == [1]
    assert await _pg_ids(pg_cluster, paused, pg_table) == []
    with pytest.raises(TimeoutError, match="replica 0 replayed WAL to"):
        await pg_cluster.wait_caught_up(timeout=0.2, replicas=[0])

    await pg_cluster.resume_replay(0)
    await pg_cluster.wait_caught_up()
    assert await _pg_ids(pg_cluster, paused, pg_table) == [1]


@pytest.mark.parametrize("kill", [False, True], ids=["fast", "kill"])
async def test_pg_stopped_replica_catches_up_after_start(
    pg_cluster: PostgresCluster, pg_table: str, kill: bool
) -> None:
    """A stopped replica refuses connections, and after start has the rows it missed."""
    url = pg_cluster.replica_urls[1]
    await pg_cluster.stop_replica(1, kill=kill)
    assert not pg_cluster.is_running(1)
    with pytest.raises(OSError):
        await pg_cluster.scalar(url, "SELECT 1")
    await pg_cluster.scalar(pg_cluster.primary_url, f"INSERT INTO {pg_table} VALUES (1)")
    await pg_cluster.wait_caught_up()  # replica 0 only

    await pg_cluster.start_replica(1)
    assert pg_cluster.replica_urls[1] == url
    await pg_cluster.wait_caught_up()
    assert await _pg_ids(pg_cluster, url, pg_table) == [1]


def test_pg_reset_restores_a_broken_cluster(pg_cluster: PostgresCluster) -> None:
    """reset() (run after every test) restarts a stopped replica and resumes a paused one."""
    _blocking(pg_cluster.stop_replica(0))
    _blocking(pg_cluster.pause_replay(1))
    pg_cluster.reset()
    assert pg_cluster.is_running(0)
    for url in pg_cluster.replica_urls:
        state = _blocking(pg_cluster.scalar(url, "SELECT pg_get_wal_replay_pause_state()"))
        assert state == "not paused"


# -- MariaDB ---------------------------------------------------------------------


def test_mariadb_urls_are_distinct_loopback_servers(mariadb_cluster: MariaDBCluster) -> None:
    """The primary and its replica listen on distinct loopback ports, database test."""
    urls = [mariadb_cluster.primary_url, *mariadb_cluster.replica_urls]
    assert len(set(urls)) == 2
    for url in urls:
        assert url.startswith("mysql+asyncmy://root@127.0.0.1:")
        assert url.endswith("/test")
    assert mariadb_cluster.replica_index(mariadb_cluster.replica_urls[0]) == 0
    assert mariadb_cluster.server_ids == [1, 2]


async def test_mariadb_replica_is_read_only(
    mariadb_cluster: MariaDBCluster, mariadb_table: str
) -> None:
    """The replica has read_only on, its own server_id, and refuses root's writes."""
    primary, (replica,) = mariadb_cluster.primary_url, mariadb_cluster.replica_urls
    assert await mariadb_cluster.scalar(primary, "SELECT @@read_only") == 0
    assert await mariadb_cluster.scalar(replica, "SELECT @@read_only") == 1
    assert await mariadb_cluster.scalar(primary, "SELECT @@server_id") == 1
    assert await mariadb_cluster.scalar(replica, "SELECT @@server_id") == 2
    assert await mariadb_cluster.scalar(replica, "SELECT @@gtid_strict_mode") == 1
    await mariadb_cluster.wait_caught_up()
    with pytest.raises(asyncmy.errors.OperationalError, match="read-only"):
        await mariadb_cluster.scalar(replica, f"INSERT INTO {mariadb_table} VALUES (1)")


async def test_mariadb_row_reaches_the_replica(
    mariadb_cluster: MariaDBCluster, mariadb_table: str
) -> None:
    """A row committed on the primary is on the replica once wait_caught_up returns."""
    await mariadb_cluster.scalar(
        mariadb_cluster.primary_url, f"INSERT INTO {mariadb_table} VALUES (1)"
    )
    position = await mariadb_cluster.wait_caught_up()
    assert _gtid_positions(position)
    replica = mariadb_cluster.replica_urls[0]
    assert await _mariadb_ids(mariadb_cluster, replica, mariadb_table) == [1]


async def test_mariadb_stopped_sql_thread_holds_rows_back(
    mariadb_cluster: MariaDBCluster, mariadb_table: str
) -> None:
    """With its SQL thread stopped the replica lacks a new row, and gets it once started."""
    primary, (replica,) = mariadb_cluster.primary_url, mariadb_cluster.replica_urls
    await mariadb_cluster.wait_caught_up()
    await mariadb_cluster.stop_sql_thread(0)
    await mariadb_cluster.scalar(primary, f"INSERT INTO {mariadb_table} VALUES (1)")
    with pytest.raises(TimeoutError, match="replica 0 reached GTID"):
        await mariadb_cluster.wait_caught_up(timeout=0.2, replicas=[0])
    assert await _mariadb_ids(mariadb_cluster, replica, mariadb_table) == []

    await mariadb_cluster.start_sql_thread(0)
    await mariadb_cluster.wait_caught_up()
    assert await _mariadb_ids(mariadb_cluster, replica, mariadb_table) == [1]


@pytest.mark.parametrize("kill", [False, True], ids=["term", "kill"])
async def test_mariadb_stopped_replica_catches_up_after_start(
    mariadb_cluster: MariaDBCluster, mariadb_table: str, kill: bool
) -> None:
    """A stopped replica refuses connections, and after start has the rows it missed."""
    url = mariadb_cluster.replica_urls[0]
    await mariadb_cluster.stop_replica(0, kill=kill)
    with pytest.raises(asyncmy.errors.OperationalError):
        await mariadb_cluster.scalar(url, "SELECT 1")
    await mariadb_cluster.scalar(
        mariadb_cluster.primary_url, f"INSERT INTO {mariadb_table} VALUES (1)"
    )

    await mariadb_cluster.start_replica(0)
    assert mariadb_cluster.replica_urls[0] == url
    await mariadb_cluster.wait_caught_up()
    assert await _mariadb_ids(mariadb_cluster, url, mariadb_table) == [1]
    assert await mariadb_cluster.scalar(url, "SELECT @@read_only") == 1


def test_mariadb_reset_restores_a_broken_cluster(mariadb_cluster: MariaDBCluster) -> None:
    """reset() (run after every test) restarts a stopped SQL thread and a stopped replica."""
    url = mariadb_cluster.replica_urls[0]
    running = (
        "SELECT variable_value FROM information_schema.global_status"
        " WHERE variable_name = 'SLAVE_RUNNING'"
    )
    _blocking(mariadb_cluster.stop_sql_thread(0))
    assert _blocking(mariadb_cluster.scalar(url, running)) == "OFF"
    mariadb_cluster.reset()
    assert _blocking(mariadb_cluster.scalar(url, running)) == "ON"

    _blocking(mariadb_cluster.stop_replica(0))
    mariadb_cluster.reset()
    assert mariadb_cluster.is_running(0)
    assert _blocking(mariadb_cluster.scalar(url, running)) == "ON"


def test_gtid_positions_read_every_domain() -> None:
    """A GTID position becomes each domain's sequence number; an empty one is empty."""
    assert _gtid_positions("0-1-42,3-2-7") == {0: 42, 3: 7}
    assert _gtid_positions("") == {}
    assert _gtid_positions(None) == {}
