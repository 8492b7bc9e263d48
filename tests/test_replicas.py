"""Read replicas on real clusters: a PostgreSQL primary with two streaming replicas and a
MariaDB primary with one, started by the suite (``tests/clusters.py``)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Integer, String, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sanic_sqlalchemy import ConfigurationError, Database, ReadOnlyError
from sanic_sqlalchemy.errors import ReplicaUnavailableError
from sanic_sqlalchemy.replicas.positions import parse_position
from sanic_sqlalchemy.testing import schema

pytestmark = pytest.mark.server


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "replicated_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))


_WHO = {"postgresql": "SELECT inet_server_port()", "mysql": "SELECT @@port"}


class Cluster:
    """One interface over both clusters' fixtures."""

    def __init__(self, backend: str, servers: Any) -> None:
        self.backend = backend
        self.servers = servers
        self.primary_url = servers.primary_url
        self.replica_urls = list(servers.replica_urls)
        self.ports = {make_url(url).port: f"replica {i}" for i, url in enumerate(self.replica_urls)}
        self.ports[make_url(self.primary_url).port] = "primary"

    async def pause(self, index: int) -> None:
        if self.backend == "postgresql":
            await self.servers.pause_replay(index)
        else:
            await self.servers.stop_sql_thread(index)

    async def resume(self, index: int) -> None:
        if self.backend == "postgresql":
            await self.servers.resume_replay(index)
        else:
            await self.servers.start_sql_thread(index)

    async def who(self, db: Database) -> str:
        """Which server served this unit's reads (asked of the server itself)."""
        port = (await db.read.execute(text(_WHO[self.backend]))).scalar()
        return self.ports[int(port)]


@pytest.fixture(params=["postgresql", "mysql"])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    backend: str = request.param
    name = "pg_cluster" if backend == "postgresql" else "mariadb_cluster"
    return Cluster(backend, request.getfixturevalue(name))


@pytest.fixture
async def replicated(cluster: Cluster) -> AsyncIterator[Database]:
    """A Database on the cluster with the items table on every server."""
    db = Database(cluster.primary_url, read_urls=cluster.replica_urls, pool_size=3)
    async with schema(db, Base.metadata):
        await cluster.servers.wait_caught_up()
        yield db
    await db.dispose()


async def _read_servers(cluster: Cluster, db: Database, units: int, **unit: Any) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(units):
        async with db.unit(**unit) as opened:
            served = await cluster.who(db)
            assert opened.read_from == ("primary" if served == "primary" else opened.read_from)
            seen[served] += 1
    return seen


async def test_reads_spread_over_replicas_and_writes_go_to_the_primary(
    cluster: Cluster, replicated: Database
) -> None:
    """Units read from the replicas, round robin, and write on the primary."""
    db = replicated
    seen = await _read_servers(cluster, db, 10)
    replicas = [f"replica {i}" for i in range(len(cluster.replica_urls))]
    assert set(seen) == set(replicas)
    assert max(seen.values()) - min(seen.values()) <= 1
    async with db as unit:
        served = await cluster.who(db)
        assert unit.read_from == cluster.replica_urls[int(served.split()[1])]
        db.write.add(Item(name="on the primary"))
        await db.write.flush()
        # Once the unit writes, its reads see its write: on the primary.
        assert await cluster.who(db) == "primary"
        assert unit.read_from == "primary"


async def test_a_commit_token_reads_its_own_write_while_replay_is_paused(
    cluster: Cluster, replicated: Database
) -> None:
    """With replay paused on every replica, a unit given the writer's token reads its
    write from the primary, while units without it keep reading from the replicas."""
    db = replicated
    for index in range(len(cluster.replica_urls)):
        await cluster.pause(index)
    async with db as writing:
        db.write.add(Item(name="fresh"))
    token = writing.commit_token
    assert isinstance(token, str)
    async with db.unit(after=token) as unit:
        names = (await db.read.execute(select(Item.name))).scalars().all()
        assert names == ["fresh"]
        assert unit.read_from == "primary"
    async with db as other:
        assert (await db.read.execute(select(func.count()).select_from(Item))).scalar() == 0
        assert other.read_from != "primary"
    for index in range(len(cluster.replica_urls)):
        await cluster.resume(index)
    await cluster.servers.wait_caught_up()
    # Caught up: the same token is now served by a replica.
    async with db.unit(after=token) as unit:
        assert (await db.read.execute(select(Item.name))).scalars().all() == ["fresh"]
        assert unit.read_from != "primary"


@pytest.mark.parametrize("cluster", ["postgresql"], indirect=True)  # two replicas
async def test_a_token_prefers_a_replica_that_has_caught_up(
    cluster: Cluster, replicated: Database
) -> None:
    """With one replica paused and another replaying, a token's reads go to the one that
    has its write."""
    db = replicated
    await cluster.pause(0)
    async with db as writing:
        db.write.add(Item(name="fresh"))
    await cluster.servers.wait_caught_up(replicas=[1])
    for _ in range(4):
        async with db.unit(after=writing.commit_token) as unit:
            assert (await db.read.execute(select(Item.name))).scalars().all() == ["fresh"]
            assert unit.read_from == cluster.replica_urls[1]
    await cluster.resume(0)


async def test_one_replica_down_fails_no_read_and_all_down_fall_back(
    cluster: Cluster, replicated: Database
) -> None:
    """Stopping a replica while units read fails none of them; with every replica down
    reads go to the primary; restarted replicas serve again."""
    db = replicated
    stopping = asyncio.ensure_future(cluster.servers.stop_replica(0))
    seen = await _read_servers(cluster, db, 100)
    await stopping
    seen = await _read_servers(cluster, db, 50)
    assert "replica 0" not in seen
    for index in range(1, len(cluster.replica_urls)):
        await cluster.servers.stop_replica(index)
    assert await _read_servers(cluster, db, 50) == Counter({"primary": 50})
    for index in range(len(cluster.replica_urls)):
        await cluster.servers.start_replica(index)
    await cluster.servers.wait_caught_up()
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        seen = await _read_servers(cluster, db, 10)
        if "primary" not in seen:
            break
        await asyncio.sleep(0.5)
    assert "primary" not in seen


async def test_fallback_error_names_the_replicas(cluster: Cluster) -> None:
    """With ``replica_fallback="error"`` and no replica up, reads raise an error that
    names the replicas (without passwords)."""
    db = Database(cluster.primary_url, read_urls=cluster.replica_urls, replica_fallback="error")
    try:
        for index in range(len(cluster.replica_urls)):
            await cluster.servers.stop_replica(index)
        with pytest.raises(
            ReplicaUnavailableError, match="DATABASE_REPLICA_FALLBACK=error"
        ) as caught:
            async with db:
                await db.read.execute(text("SELECT 1"))
        for url in cluster.replica_urls:
            assert make_url(url).set(password=None).render_as_string() in str(caught.value)
    finally:
        await db.dispose()


async def test_a_lagging_replica_leaves_the_rotation_and_comes_back(
    cluster: Cluster, replicated: Database
) -> None:
    """A replica behind by more than the lag limit serves no unit until it catches up."""
    db = Database(
        cluster.primary_url,
        read_urls=cluster.replica_urls,
        replica_max_lag=1,
        token_ttl=4,
    )
    try:
        await cluster.pause(0)
        async with db:
            db.write.add(Item(name="moves the primary on"))
        await asyncio.sleep(2.5)  # two probes: replica 0 is now more than 1 s behind
        seen = await _read_servers(cluster, db, 10)
        assert "replica 0" not in seen
        await cluster.resume(0)
        await cluster.servers.wait_caught_up()
        await asyncio.sleep(1.5)  # the next probe sees it caught up
        assert "replica 0" in await _read_servers(cluster, db, 10)
    finally:
        await db.dispose()


async def _switch_wal_segment(db: Database) -> str | None:
    """Switch the idle primary to a new WAL segment; the token of the unit that did it.

    That unit's transaction writes no commit record, so its token is the insert
    position right after the switch: past the new segment's page header, where a
    caught-up replica's replay never goes (it stops at the segment's start).
    """
    async with db:
        db.write.add(Item(name="so that the segment has something to switch from"))
    async with db as switching:
        await db.write.execute(text("SELECT pg_switch_wal()"))
    return switching.commit_token


def _strict_db(cluster: Cluster) -> Database:
    """A Database whose reads fail rather than fall back when no replica qualifies."""
    return Database(
        cluster.primary_url,
        read_urls=cluster.replica_urls,
        replica_max_lag=1,
        replica_fallback="error",
    )


@pytest.mark.parametrize("cluster", ["postgresql"], indirect=True)
async def test_a_wal_segment_switch_leaves_caught_up_replicas_in_the_rotation(
    cluster: Cluster, replicated: Database
) -> None:
    """After ``pg_switch_wal()`` on an idle primary, caught-up replicas stay in the
    rotation past the lag limit (with ``fallback=error`` nothing may fall back)."""
    await _switch_wal_segment(replicated)
    await cluster.servers.wait_caught_up()
    db = _strict_db(cluster)
    try:
        for wait in (0, 2.5):  # then two probes of the idle primary: past the lag limit
            await asyncio.sleep(wait)
            async with db as unit:
                await db.read.execute(text("SELECT 1"))
                assert unit.read_from in cluster.replica_urls
        for _ in range(4):
            async with db as unit:
                await db.read.execute(text("SELECT 1"))
                assert unit.read_from in cluster.replica_urls
    finally:
        await db.dispose()


@pytest.mark.parametrize("cluster", ["postgresql"], indirect=True)
async def test_a_token_taken_at_a_page_boundary_is_reached(
    cluster: Cluster, replicated: Database
) -> None:
    """A commit token taken right after a page header (here, a segment switch's) is
    reached by replicas that replayed everything, so its reads go to them."""
    db = _strict_db(cluster)
    try:
        token = await _switch_wal_segment(db)
        assert token is not None
        await cluster.servers.wait_caught_up()
        async with db.unit(after=token) as unit:
            await db.read.execute(text("SELECT 1"))
            assert unit.read_from in cluster.replica_urls
    finally:
        await db.dispose()


async def test_a_replica_that_never_answers_delays_no_token(
    cluster: Cluster, replicated: Database
) -> None:
    """A replica that accepts connections and never answers (a local listener) adds
    nothing to units that carry a token: the refresh a token needs waits only for the
    servers that answer, never for one in backoff (it waited ~2 s for every one)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        hung = make_url(cluster.replica_urls[0]).set(port=port).render_as_string(False)
        db = Database(cluster.primary_url, read_urls=[*cluster.replica_urls, hung])
        try:
            waited, served = 0.0, set()
            for index in range(5):
                async with db as writing:
                    db.write.add(Item(name=f"write {index}"))
                await cluster.servers.wait_caught_up()
                started = time.monotonic()
                async with db.unit(after=writing.commit_token) as unit:
                    # Beyond the cached positions: the positions are refreshed.
                    await db.read.execute(text("SELECT 1"))
                    served.add(unit.read_from)
                waited += time.monotonic() - started
            assert waited < 1.5
            # The answering replicas still serve (a read may fall back to the primary
            # when a probe is slow on a loaded machine, which is correct, not the point).
            assert served & set(cluster.replica_urls)
        finally:
            await db.dispose()


async def test_read_only_holds_on_replicas(cluster: Cluster, replicated: Database) -> None:
    """The read path refuses writes and hostile SQL on replicas as on the primary."""
    db = replicated
    for statement in (
        "DELETE FROM replicated_items",
        "SELECT 1; DELETE FROM replicated_items",
        "SELECT * FROM replicated_items FOR UPDATE",
    ):
        with pytest.raises(ReadOnlyError, match="refused this statement before sending it"):
            async with db as unit:
                await db.read.execute(text("SELECT 1"))
                assert unit.read_from != "primary"
                await db.read.execute(text(statement))


_SECRET = "s3cret-r3plica"


async def _replica_user(cluster: Cluster) -> str:
    """A user that logs in to the replicas with ``_SECRET`` (PostgreSQL's test cluster
    trusts loopback and ignores it; MariaDB's checks it)."""
    if cluster.backend == "postgresql":
        return "postgres"
    for statement in (
        f"CREATE USER IF NOT EXISTS 'reader'@'127.0.0.1' IDENTIFIED BY '{_SECRET}'",
        "GRANT SELECT ON test.* TO 'reader'@'127.0.0.1'",
    ):
        await cluster.servers.scalar(cluster.primary_url, statement)
    await cluster.servers.wait_caught_up()  # the user replicates
    return "reader"


async def test_read_from_never_shows_a_password(cluster: Cluster, replicated: Database) -> None:
    """``unit.read_from`` names the replica without its password, whether the URL carries
    it after the user name or as ``?password=`` (which the driver uses to log in)."""
    user = await _replica_user(cluster)
    plain = [make_url(url).set(username=user) for url in cluster.replica_urls]
    read_urls = [plain[0].set(password=_SECRET), plain[-1].update_query_dict({"password": _SECRET})]
    db = Database(cluster.primary_url, read_urls=read_urls)
    try:
        shown = set()
        for _ in range(4):
            async with db as unit:
                await db.read.execute(select(func.count()).select_from(Item))
                assert unit.read_from is not None and _SECRET not in unit.read_from
                shown.add(unit.read_from)
        assert shown == {plain[0].render_as_string(), plain[-1].render_as_string()}
    finally:
        await db.dispose()


async def test_hostile_tokens_change_nothing(cluster: Cluster, replicated: Database) -> None:
    """Forged, oversized and garbage tokens are ignored: reads stay on the replicas and
    nothing fails."""
    db = replicated
    for token in (
        "'; DROP TABLE replicated_items; --",
        "1.FFFFFFFF-FFFFFFFF.1",
        "1.99999-99999-99999999999.9999999999",
        "x" * 100_000,
        "1.0/0.0",
    ):
        async with db.unit(after=token) as unit:
            await db.read.execute(select(func.count()).select_from(Item))
            assert unit.read_from != "primary"
    async with db:
        assert (await db.read.execute(select(func.count()).select_from(Item))).scalar() == 0


async def test_a_token_beyond_the_primary_does_not_pin_reads(
    cluster: Cluster, replicated: Database
) -> None:
    """A well-formed token ahead of anything the primary reached is capped at the
    primary's position, so caught-up replicas still serve it."""
    db = Database(cluster.primary_url, read_urls=cluster.replica_urls, replica_wait=2)
    huge = "FFFFFFF/FFFFFFFF" if cluster.backend == "postgresql" else "0-1-99999999999"
    beyond = parse_position(huge, cluster.backend)
    assert beyond is not None
    await cluster.servers.wait_caught_up()
    try:
        replicas = db.engines.replicas
        assert replicas is not None
        token = replicas.tokens.issue(beyond)  # signed: only such a token counts
        async with db.unit(after=token) as unit:
            await db.read.execute(text("SELECT 1"))
            assert unit.read_from != "primary"
    finally:
        await db.dispose()


def test_replica_settings_are_validated() -> None:
    """A TTL shorter than the lag limit, an unknown fallback and replicas for SQLite are
    configuration errors, raised at once with the key."""
    url = "postgresql+asyncpg://u@127.0.0.1/db"
    replica = "postgresql+asyncpg://u@127.0.0.2/db"
    with pytest.raises(ConfigurationError, match=r"token_ttl= \(argument\): the token TTL"):
        Database(url, read_urls=[replica], token_ttl=10, replica_max_lag=30)
    with pytest.raises(ConfigurationError, match="expected 'primary' or 'error'"):
        Database(url, read_urls=[replica], replica_fallback="sometimes")
    with pytest.raises(ConfigurationError, match="SQLite has no replicas"):
        Database("sqlite+aiosqlite:///x.db", read_urls=["sqlite+aiosqlite:///y.db"])
    with pytest.raises(ConfigurationError, match="not a valid cookie or header name"):
        Database(url, read_urls=[replica], token_cookie="bad cookie;")


# -- in Sanic ------------------------------------------------------------------------


def _replica_app(cluster: Cluster, **options: Any) -> Any:
    from sanic import json

    from .conftest import make_app

    app = make_app("replicas")
    db = Database()
    db.init_app(app, url=cluster.primary_url, read_urls=cluster.replica_urls, **options)

    @app.post("/items")
    async def add(request: Any) -> Any:
        db.write.add(Item(name=request.json["name"]))
        return json({"ok": True}, status=201)

    @app.get("/items")
    async def items(request: Any) -> Any:
        names = list((await db.read.execute(select(Item.name))).scalars())
        served = await cluster.who(db)
        return json({"names": names, "served": served, "read_from": db.current_unit().read_from})

    return app


async def test_a_client_reads_its_own_write_on_its_next_request(
    cluster: Cluster, replicated: Database, serve: Any
) -> None:
    """The response of a committing request carries its position (cookie and header);
    the client's next request reads its write while replay is paused, and a client
    without it goes on reading from the replicas."""
    served = await serve(_replica_app(cluster))
    for index in range(len(cluster.replica_urls)):
        await cluster.pause(index)
    writer = served.client
    created = await writer.post("/items", json={"name": "mine"})
    assert created.status_code == 201
    token = created.headers["x-db-position"]
    cookie = created.headers["set-cookie"]
    assert cookie.startswith(f"db_position={token};")
    for attribute in ("Path=/", "HttpOnly", "SameSite=Lax", "Max-Age=60"):
        assert attribute.lower() in cookie.lower()
    mine = (await writer.get("/items")).json()  # the cookie goes back by itself
    assert mine["names"] == ["mine"] and mine["served"] == "primary"
    import httpx

    async with httpx.AsyncClient(base_url=served.url) as api_client:
        by_header = (await api_client.get("/items", headers={"X-DB-Position": token})).json()
        assert by_header["names"] == ["mine"]
        other = (await api_client.get("/items")).json()
        assert other["names"] == [] and other["served"] != "primary"
        assert other["read_from"] == cluster.replica_urls[int(other["served"].split()[1])]
        for forged in ("'; DROP TABLE replicated_items; --", "1.0-0.1", "z" * 4000):
            response = await api_client.get("/items", headers={"X-DB-Position": forged})
            assert response.status_code == 200 and response.json()["served"] != "primary"
    for index in range(len(cluster.replica_urls)):
        await cluster.resume(index)


async def test_five_hundred_requests_while_a_replica_stops(
    cluster: Cluster, replicated: Database, serve: Any
) -> None:
    """A replica stopped in the middle of 500 requests fails none of them."""
    served = await serve(_replica_app(cluster))
    statuses: Counter[int] = Counter()
    stopping: asyncio.Future[None] | None = None
    for batch in range(50):
        if batch == 10:
            stopping = asyncio.ensure_future(cluster.servers.stop_replica(0))
        responses = await asyncio.gather(*(served.client.get("/items") for _ in range(10)))
        statuses.update(response.status_code for response in responses)
    assert stopping is not None
    await stopping
    assert statuses == Counter({200: 500})


async def test_no_replica_with_fallback_error_answers_503(
    cluster: Cluster, replicated: Database, serve: Any
) -> None:
    """With ``DATABASE_REPLICA_FALLBACK=error`` and every replica down, reads answer
    503 with ``Retry-After``."""
    served = await serve(_replica_app(cluster, replica_fallback="error"))
    for index in range(len(cluster.replica_urls)):
        await cluster.servers.stop_replica(index)
    response = await served.client.get("/items")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
