"""Through a failover: a real primary stopped or fenced, a real standby promoted.

``DATABASE_URL`` names both servers of ``tests/pgfailover.py``'s pair.  Under a steady
stream of writes (several asyncio tasks, or HTTP clients of a Sanic app) the primary is
stopped and the standby promoted: every write either succeeds and is on the new
primary, or fails as ``PrimaryUnavailableError`` (a 503 with ``Retry-After``), and writes
resume on their own.  The time from ``pg_ctl promote`` to the first committed write is
printed (``pytest -s``).  A primary fenced read-only while connections to it sit in the
pool refuses the next write with SQLSTATE 25006, which discards them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sanic import Sanic
from sqlalchemy import select, text

from sanic_sqlalchemy import Database
from sanic_sqlalchemy.cli.check import check_database
from sanic_sqlalchemy.errors import PrimaryUnavailableError
from sanic_sqlalchemy.testing import schema

from .models import Base, User
from .pgfailover import FailoverPair
from .test_pg_restart import _app as restart_app

pytestmark = pytest.mark.server

#: Concurrent writers.
WRITERS = 6
#: Acknowledged writes before the primary is stopped, and after writes resume.
BEFORE = 40
AFTER = 40
#: Seconds the whole stream may take, whatever happens.
DEADLINE = 30.0
#: Pause of a writer after a write, and after a refused one (a client's back-off).
PACE = 0.002
BACK_OFF = 0.01
#: Seconds from promotion to the first committed write that the tests accept.
RESUME_LIMIT = 5.0


@dataclass
class Stream:
    """Writers running side by side, and what became of each write."""

    #: Sends one write; returns when it was acknowledged (``time.monotonic()``), or
    #: None when it was refused.
    write: Callable[[str], Any]
    #: Each acknowledged write: its key, when it was sent and when it was acknowledged.
    acknowledged: list[tuple[str, float, float]] = field(default_factory=list)
    refused: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def writer(self, number: int) -> None:
        for sequence in itertools.count():
            if self.stop.is_set():
                return
            email = f"writer{number}-{sequence}@example.com"
            sent = time.monotonic()
            acknowledged = await self.write(email)
            if acknowledged is not None:
                self.acknowledged.append((email, sent, acknowledged))
                await asyncio.sleep(PACE)
            else:
                self.refused += 1
                await asyncio.sleep(BACK_OFF)

    def since(self, moment: float) -> list[float]:
        """When the writes acknowledged after ``moment`` were."""
        return [at for _email, _sent, at in self.acknowledged if at > moment]

    def sent_between(self, start: float, end: float) -> list[str]:
        """The acknowledged writes sent after ``start`` and acknowledged before ``end``."""
        return [email for email, sent, at in self.acknowledged if sent > start and at < end]

    async def until(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition():
            assert time.monotonic() < deadline, f"stream stuck: {len(self.acknowledged)} acked"
            await asyncio.sleep(0.01)

    async def through_a_failover(self, pair: FailoverPair) -> float:
        """Run the writers, stop the primary, promote the standby, and run on until
        writes resumed; return the seconds from promotion to the first commit."""
        writers = [asyncio.create_task(self.writer(number)) for number in range(WRITERS)]
        try:
            await self.until(lambda: len(self.acknowledged) >= BEFORE)
            await pair.stop_primary()
            stopped = time.monotonic()
            await asyncio.sleep(0.3)  # writes meet a cluster without a primary
            promoting = time.monotonic()
            await pair.promote()
            assert self.sent_between(stopped, promoting) == [], "acknowledged with no primary"
            await self.until(lambda: len(self.since(promoting)) >= AFTER)
        finally:
            self.stop.set()
            await asyncio.gather(*writers)
        resumed = min(self.since(promoting)) - promoting
        print(f"\nfailover: first committed write {resumed:.3f} s after pg_ctl promote")
        return resumed


async def _server_port(db: Database) -> int:
    async with db:
        return int((await db.write.execute(text("SELECT inet_server_port()"))).scalar_one())


async def _stored(db: Database) -> set[str]:
    async with db:
        return set((await db.read.execute(select(User.email))).scalars())


async def test_writes_from_tasks_resume_on_the_promoted_standby(
    failover_pair: FailoverPair,
) -> None:
    """Tasks writing through a failover lose no acknowledged write, see only
    PrimaryUnavailableError meanwhile, and write to the promoted standby soon after."""
    pair = failover_pair
    standby_url = pair.standby.url
    db = Database(pair.url, read_urls=[standby_url], pool_size=4, max_overflow=0, pool_timeout=5)
    try:
        async with schema(db, Base.metadata):
            # The standby serves the first read below: it must have the new table.
            await pair.wait_caught_up()
            assert await _server_port(db) == pair.primary.port
            report = await check_database(db, timeout=5)
            assert report["servers"][0]["primary_host"] == f"127.0.0.1:{pair.primary.port}"
            async with db as unit:
                await db.read.execute(select(User.id))
            assert unit.read_from == standby_url

            failures: list[BaseException] = []

            async def write(email: str) -> float | None:
                try:
                    async with db:
                        db.write.add(User(name="Ada", email=email))
                except PrimaryUnavailableError as error:
                    assert error.__cause__ is not None and error.orig is error.__cause__
                    return None
                except Exception as error:  # the test fails on any other error
                    failures.append(error)
                    return None
                return time.monotonic()

            stream = Stream(write)
            resumed = await stream.through_a_failover(pair)

            assert failures == []
            assert stream.refused > 0, "the failover went unnoticed"
            assert resumed < RESUME_LIMIT
            assert await _server_port(db) == pair.primary.port
            acknowledged = {email for email, _sent, _at in stream.acknowledged}
            assert acknowledged <= await _stored(db)

            # The replica is the primary now: out of the read rotation.
            replicas = db.engines.replicas
            assert replicas is not None
            await replicas.refresh()
            assert "promoted" in replicas.replicas[0].last_error
            async with db as unit:
                await db.read.execute(select(User.id))
            assert unit.read_from == "primary"
            report = await check_database(db, timeout=5)
            assert report["servers"][0]["primary_host"] == f"127.0.0.1:{pair.primary.port}"
    finally:
        await db.dispose()


async def test_requests_through_a_failover_answer_201_or_503(
    failover_pair: FailoverPair, serve: Callable[[Sanic[Any, Any]], Any]
) -> None:
    """Through a failover a Sanic app answers 201 for a committed write or 503 with
    Retry-After, never a 500; a committed write is found by the next request."""
    pair = failover_pair
    db = Database()
    # Its POST also reads its own write inside the unit, on the writing connection.
    served = await serve(restart_app(db, pair.url))
    client: httpx.AsyncClient = served.client
    statuses: list[int] = []
    unfound: list[str] = []

    async def write(email: str) -> float | None:
        response = await client.post("/users", json={"email": email})
        acknowledged = time.monotonic()
        statuses.append(response.status_code)
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1"
        if response.status_code != 201:
            return None
        # The next request reads it, even on the new primary.
        found = await client.get("/users", params={"email": email})
        statuses.append(found.status_code)
        if found.status_code == 200 and not found.json()["found"]:
            unfound.append(email)
        return acknowledged

    async with schema(db, Base.metadata):
        stream = Stream(write)
        resumed = await stream.through_a_failover(pair)
        assert set(statuses) <= {200, 201, 503}, sorted(set(statuses))
        assert 503 in statuses, "the failover went unnoticed"
        assert unfound == []
        assert resumed < RESUME_LIMIT
        acknowledged = {email for email, _sent, _at in stream.acknowledged}
        assert acknowledged <= await _stored(db)


async def test_a_fenced_primary_is_left_for_the_promoted_standby(
    failover_pair: FailoverPair,
) -> None:
    """Pooled connections to a primary fenced read-only are discarded at the first
    write it refuses (25006), and the next unit writes and reads on the new primary."""
    pair = failover_pair
    db = Database(pair.url, pool_size=2, max_overflow=0, pool_timeout=5)
    try:
        async with schema(db, Base.metadata):
            async with db:
                db.write.add(User(name="Ada", email="before@example.com"))
            assert await _stored(db) == {"before@example.com"}  # a pooled read connection
            old = pair.primary.port
            assert await _server_port(db) == old

            await pair.fence_primary()
            await pair.promote()
            with pytest.raises(PrimaryUnavailableError, match="no longer accepts writes") as raised:
                async with db:
                    db.write.add(User(name="Ada", email="refused@example.com"))
            assert getattr(raised.value.orig, "sqlstate", None) == "25006"

            async with db:
                db.write.add(User(name="Ada", email="after@example.com"))
            assert await _server_port(db) == pair.primary.port != old
            # The read pool left the fenced server too: it sees the new primary's write.
            assert await _stored(db) == {"before@example.com", "after@example.com"}
    finally:
        await db.dispose()
