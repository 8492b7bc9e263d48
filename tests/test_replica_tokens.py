"""Clients' position tokens on the real clusters: one per database, carried through
``@db.retry``, given as bytes, signed, and honoured long enough (issue 17, items 4-8)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sanic import json
from sqlalchemy import func, select, text

from sanic_sqlalchemy import ConfigurationError, Database, SanicSQLAlchemyError
from sanic_sqlalchemy.errors import TokenTypeError
from sanic_sqlalchemy.replicas.router import ReplicaSet
from sanic_sqlalchemy.testing import schema

from . import test_replicas
from .conftest import make_app
from .test_replicas import Base, Cluster, Item

# The clusters' fixtures of test_replicas, used here under the same names.
cluster = test_replicas.cluster
replicated = test_replicas.replicated

pytestmark = pytest.mark.server


async def _pause_all(cluster: Cluster) -> None:
    for index in range(len(cluster.replica_urls)):
        await cluster.pause(index)


async def _resume_all(cluster: Cluster) -> None:
    for index in range(len(cluster.replica_urls)):
        await cluster.resume(index)


async def _paused_write(cluster: Cluster, db: Database, name: str = "fresh") -> str:
    """Pause replay everywhere, commit a row; the commit's token."""
    await _pause_all(cluster)
    async with db as writing:
        db.write.add(Item(name=name))
    assert writing.commit_token is not None
    return writing.commit_token


async def _names(db: Database) -> list[str]:
    return list((await db.read.execute(select(Item.name))).scalars())


# -- item 4: two databases, two tokens ------------------------------------------------


@pytest.fixture
async def two_clusters(pg_cluster: Any, mariadb_cluster: Any) -> AsyncIterator[list[Cluster]]:
    """Both clusters, with the items table on every server of each."""
    clusters = [Cluster("postgresql", pg_cluster), Cluster("mysql", mariadb_cluster)]
    setups = [Database(c.primary_url, read_urls=c.replica_urls) for c in clusters]
    async with schema(setups[0], Base.metadata), schema(setups[1], Base.metadata):
        for each in clusters:
            await each.servers.wait_caught_up()
        yield clusters
        for each in clusters:
            await _resume_all(each)
    for setup in setups:
        await setup.dispose()


async def test_two_databases_with_replicas_each_carry_their_own_token(
    two_clusters: list[Cluster], serve: Any
) -> None:
    """A response that committed on two databases with replicas carries two tokens (a
    cookie and a header each, named after the config prefix); the client's next request
    reads both of its writes while replay is paused everywhere."""
    pg, maria = two_clusters
    app = make_app("two_tokens")
    db, analytics = Database(), Database(config_prefix="ANALYTICS_DATABASE_")
    db.init_app(app, url=pg.primary_url, read_urls=pg.replica_urls)
    analytics.init_app(app, url=maria.primary_url, read_urls=maria.replica_urls)

    @app.post("/both")
    async def write_both(request: Any) -> Any:
        db.write.add(Item(name="order"))
        analytics.write.add(Item(name="event"))
        return json({"ok": True}, status=201)

    @app.get("/both")
    async def read_both(request: Any) -> Any:
        return json({"db": await _names(db), "analytics": await _names(analytics)})

    served = await serve(app)
    await _pause_all(pg)
    await _pause_all(maria)
    created = await served.client.post("/both")
    assert created.status_code == 201
    assert created.headers["x-db-position"] != created.headers["x-analytics-db-position"]
    assert {"db_position", "analytics_db_position"} <= set(created.cookies)
    mine = (await served.client.get("/both")).json()  # both cookies go back by themselves
    assert mine == {"db": ["order"], "analytics": ["event"]}
    async with httpx.AsyncClient(base_url=served.url) as api:
        headers = {
            "X-DB-Position": created.headers["x-db-position"],
            "X-Analytics-DB-Position": created.headers["x-analytics-db-position"],
        }
        assert (await api.get("/both", headers=headers)).json() == mine
        # One database's token is no token for the other.
        swapped = {"X-DB-Position": headers["X-Analytics-DB-Position"]}
        assert (await api.get("/both", headers=swapped)).json()["db"] == []


async def test_two_databases_that_would_share_a_token_name_are_refused(
    two_clusters: list[Cluster],
) -> None:
    """Two databases with replicas in one app that would share a cookie or header name
    are a ConfigurationError at init_app, naming the keys to set."""
    pg, maria = two_clusters
    for shared in ({"token_cookie": "pos"}, {"token_header": "X-Pos"}):
        app = make_app("shared_names")
        first, second = Database(), Database(config_prefix="ANALYTICS_DATABASE_")
        first.init_app(app, url=pg.primary_url, read_urls=pg.replica_urls, **shared)
        with pytest.raises(ConfigurationError, match=r"ANALYTICS_DATABASE_TOKEN_COOKIE.*own names"):
            second.init_app(app, url=maria.primary_url, read_urls=maria.replica_urls, **shared)
    # Without replicas on one side there are no tokens to mix up.
    app = make_app("one_with_replicas")
    first, second = Database(), Database(config_prefix="ANALYTICS_DATABASE_")
    first.init_app(app, url=pg.primary_url, read_urls=pg.replica_urls, token_cookie="pos")
    second.init_app(app, url=maria.primary_url, token_cookie="pos")


# -- item 5: @db.retry keeps the client's position ------------------------------------


async def test_a_retried_function_reads_after_the_clients_token(
    cluster: Cluster, replicated: Database, serve: Any
) -> None:
    """Each attempt of ``@db.retry`` reads after the tokens of the unit it replaces: an
    outer ``db.unit(after=...)``'s, or the request's cookie or header."""
    db = replicated
    token = await _paused_write(cluster, db)

    @db.retry
    async def names_and_server() -> tuple[list[str], str]:
        return await _names(db), db.current_unit().read_from

    async with db.unit(after=token):
        assert await names_and_server() == (["fresh"], "primary")
    async with db:
        assert (await names_and_server())[0] == []  # no token: a paused replica

    app = make_app("retried_reads")
    app_db = Database()
    app_db.init_app(app, url=cluster.primary_url, read_urls=cluster.replica_urls)

    @app.get("/items")
    @app_db.retry
    async def items(request: Any) -> Any:
        return json({"names": await _names(app_db)})

    served = await serve(app)
    response = await served.client.get("/items", headers={"X-DB-Position": token})
    assert response.json() == {"names": ["fresh"]}
    await _resume_all(cluster)


# -- item 6: tokens as bytes, and what is not a token ------------------------------------


async def test_a_token_given_as_bytes_is_honoured(cluster: Cluster, replicated: Database) -> None:
    """``db.unit(after=...)`` honours a token given as bytes (what redis-py returns),
    alone or in a list, and refuses what is not a token with a library error."""
    db = replicated
    token = await _paused_write(cluster, db)
    for after in (token.encode(), [None, token.encode()]):
        async with db.unit(after=after) as unit:
            assert await _names(db) == ["fresh"]
            assert unit.read_from == "primary"
    with pytest.raises(TokenTypeError, match="expected a position token") as caught:
        db.unit(after=123)  # type: ignore[arg-type]
    assert isinstance(caught.value, SanicSQLAlchemyError)
    await _resume_all(cluster)


# -- item 7: only this application's tokens count -------------------------------------


async def test_forged_and_foreign_tokens_are_not_honoured(
    cluster: Cluster, replicated: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unsigned, forged and other applications' tokens send no read to the primary and
    cost no refresh of the positions; a token signed with the shared secret is honoured
    by every Database (worker, server) that has it."""
    secret = "the application's shared secret, 44 bytes!!"
    issuer = Database(cluster.primary_url, read_urls=cluster.replica_urls, token_secret=secret)
    reader = Database(cluster.primary_url, read_urls=cluster.replica_urls, token_secret=secret)
    stranger = Database(cluster.primary_url, read_urls=cluster.replica_urls, token_secret="x" * 32)
    try:
        await cluster.servers.wait_caught_up()
        genuine = await _paused_write(cluster, issuer)
        refreshes = 0
        refresh_if_stale = ReplicaSet.refresh_if_stale

        async def counted(self: ReplicaSet) -> None:
            nonlocal refreshes
            refreshes += 1
            await refresh_if_stale(self)

        version, tag, position, issued, signature = genuine.split(".")
        huge = "FFFFFFFF-FFFFFFFF" if cluster.backend == "postgresql" else "0-1-99999999999"
        forged = [
            f"1.{huge}.{int(time.time())}",
            f"{version}.{tag}.{huge}.{issued}.{signature}",
            f"{version}.{tag}.{position}.{issued}.{'A' * 22}",
        ]
        for db in (reader, stranger):
            async with db:
                await _names(db)  # the first refresh, which every new Database makes
        monkeypatch.setattr(ReplicaSet, "refresh_if_stale", counted)
        for db, token in [(reader, t) for t in forged] + [(stranger, genuine)]:
            async with db.unit(after=token) as unit:
                assert await _names(db) == []
                assert unit.read_from != "primary"
        assert refreshes == 0
        async with reader.unit(after=genuine) as unit:
            assert await _names(reader) == ["fresh"]
            assert unit.read_from == "primary"
    finally:
        await _resume_all(cluster)
        for db in (issuer, reader, stranger):
            await db.dispose()


def test_a_token_secret_is_checked() -> None:
    """A short token secret is a ConfigurationError that says how to make one."""
    url, replica = "postgresql+asyncpg://u@127.0.0.1/db", "postgresql+asyncpg://u@127.0.0.2/db"
    with pytest.raises(ConfigurationError, match=r"token_secret= \(argument\): .*token_urlsafe"):
        Database(url, read_urls=[replica], token_secret="short")


# -- item 8: a token outlives the lag limit ------------------------------------------------


def _smallest_accepted_ttl(cluster: Cluster, max_lag: float) -> float:
    ttl = max_lag
    while True:
        try:
            Database(
                cluster.primary_url,
                read_urls=cluster.replica_urls,
                replica_max_lag=max_lag,
                token_ttl=ttl,
            )
        except ConfigurationError:
            ttl += 0.5
        else:
            return ttl


async def test_no_stale_read_after_a_token_expires(cluster: Cluster, replicated: Database) -> None:
    """With the shortest TTL the settings accept for the lag limit, a client's reads see
    its write from the commit until well after its token expired: by then every replica
    still missing it has left the rotation (a TTL equal to the lag limit left a window of
    stale reads: issue time truncated to seconds, lag counted from the probe's answer).
    The token expires ``ttl`` after the commit at the latest; a replica still in the
    rotation then would serve a stale read at once (reads every 20 ms), and a paused
    replica does not come back: 1.5 s more of reads suffice."""
    max_lag = 1.0
    ttl = _smallest_accepted_ttl(cluster, max_lag)
    db = Database(
        cluster.primary_url,
        read_urls=cluster.replica_urls,
        replica_max_lag=max_lag,
        token_ttl=ttl,
    )
    try:
        async with db:
            await db.read.execute(text("SELECT 1"))  # the probe runs from here on
        await cluster.servers.wait_caught_up()
        token = await _paused_write(cluster, db)
        stale: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < ttl + 1.5:
            async with db.unit(after=token):
                count = (await db.read.execute(select(func.count()).select_from(Item))).scalar()
            if count != 1:
                stale.append(round(time.monotonic() - started, 2))
            await asyncio.sleep(0.02)
        assert stale == [], f"stale reads {stale} s after the commit (TTL {ttl:g} s)"
    finally:
        await _resume_all(cluster)
        await db.dispose()
