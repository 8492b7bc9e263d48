"""Which servers each pool asks for, read from the URL alone (no server needed)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from sanic_sqlalchemy.cluster.failover import (
    PrimaryWatch,
    hosts_of,
    read_target,
    several_hosts,
    with_write_target,
)
from sanic_sqlalchemy.engine.backends import PostgreSQL

TWO_HOSTS = "postgresql+asyncpg://app@/shop?host=db1:5432&host=db2:5433"


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("postgresql+asyncpg://app@db1:5432/shop", [("db1", 5432)]),
        (TWO_HOSTS, [("db1", 5432), ("db2", 5433)]),
        (
            "postgresql+asyncpg://app@/shop?host=db1,db2&port=5432,5433",
            [("db1", 5432), ("db2", 5433)],
        ),
    ],
)
def test_hosts_are_read_in_both_multi_host_forms(url: str, hosts: list[tuple[str, int]]) -> None:
    """``?host=a:p&host=b:q`` and ``?host=a,b&port=p,q`` name the same servers."""
    assert hosts_of(make_url(url)) == hosts
    assert several_hosts(make_url(url)) is (len(hosts) > 1)


def test_the_write_pool_asks_for_a_server_that_accepts_writes() -> None:
    """Several hosts: ``target_session_attrs=read-write``; the primary's read pool asks
    for ``primary`` (its connections are read-only by design)."""
    url = make_url(TWO_HOSTS)
    assert PostgreSQL().url(url).query["target_session_attrs"] == "read-write"
    assert read_target(url) == "primary"


def test_a_single_host_url_is_left_as_it_is() -> None:
    """One host: no target added, nothing asked of the read pool."""
    url = make_url("postgresql+asyncpg://app@db1:5432/shop")
    assert PostgreSQL().url(url) == url
    assert read_target(url) is None


def test_the_users_own_target_wins() -> None:
    """A URL that sets ``target_session_attrs`` keeps it; with ``any`` the read pool
    asks for nothing more either."""
    url = make_url(TWO_HOSTS + "&target_session_attrs=any")
    assert with_write_target(url) == url
    assert read_target(url) is None
    assert read_target(make_url(TWO_HOSTS + "&target_session_attrs=read-write")) == "primary"


def test_the_read_pool_tries_the_known_primary_first() -> None:
    """Once the write pool found the primary, read connections try it first."""
    watch = PrimaryWatch(make_url(TWO_HOSTS))
    params = {"host": ["db1", "db2"], "port": [5432, 5433], "target_session_attrs": "read-write"}
    assert watch.read_params(params)["host"] == ["db1", "db2"]
    watch.address = ("db2", 5433)
    moved = watch.read_params(params)
    assert (moved["host"], moved["port"]) == (["db2", "db1"], [5433, 5432])
    assert moved["target_session_attrs"] == "primary"
    watch.lost()
    assert watch.read_params(params)["host"] == ["db1", "db2"]
