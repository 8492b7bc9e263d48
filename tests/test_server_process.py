"""Real ``sanic`` server processes serving ``tests.apps.server_app`` on loopback.

These tests start the app the way users deploy it (``sanic module:app --workers N``),
configured only through ``SANIC_``-prefixed environment variables, and talk to it
over HTTP.  Every process is started in its own session and killed (with all its
workers) when a test ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select

from sanic_sqlalchemy import Database

from .apps.schema import metadata, server_users
from .conftest import free_port

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
APP = "tests.apps.server_app:app"
#: How long a server may take to answer its first request.
STARTUP_TIMEOUT = 20.0
#: How long a server may take to exit after SIGINT.
SHUTDOWN_TIMEOUT = 15.0
#: Text that must never appear in a server's output.
FORBIDDEN_OUTPUT = (
    "Traceback",
    "Event loop is closed",
    "Exception closing connection",
    "non-checked-in",
    "Warning:",
    "was never awaited",
)


@dataclass
class Server:
    """A running ``sanic`` process and where it answers."""

    process: asyncio.subprocess.Process
    host: str
    port: int
    stdout: Path
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def output(self) -> str:
        return (
            f"--- stdout ---\n{self.stdout.read_text(errors='replace')}\n"
            f"--- stderr ---\n{self.stderr.read_text(errors='replace')}"
        )


@contextlib.asynccontextmanager
async def sanic_server(
    url: str, tmp_path: Path, *, workers: int, env: Mapping[str, str] | None = None
) -> AsyncIterator[Server]:
    """Start ``sanic APP`` on a free port, wait until it answers, kill it on exit."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SANIC_")}
    environment.update({"SANIC_DATABASE_URL": url, "PYTHONUNBUFFERED": "1", **(env or {})})
    mode = ["--workers", str(workers)] if workers > 1 else ["--single-process"]
    stdout, stderr = tmp_path / "server.stdout", tmp_path / "server.stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sanic",
            APP,
            *mode,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-logs",
            "--no-motd",
            cwd=ROOT,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    server = Server(process, "127.0.0.1", port, stdout, stderr)
    try:
        await _wait_until_answering(server, workers)
        yield server
    finally:
        # The process leads a session of its own, so this reaches every worker too,
        # even one left behind by a main process that has already exited.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await asyncio.wait_for(process.wait(), SHUTDOWN_TIMEOUT)


async def _wait_until_answering(server: Server, workers: int) -> None:
    """Poll ``/pid`` until the server answers and Sanic's main process has every worker."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with httpx.AsyncClient(base_url=server.url, timeout=2) as client:
        while time.monotonic() < deadline:
            if server.process.returncode is not None:
                pytest.fail(
                    f"the server exited with {server.process.returncode}\n{server.output()}"
                )
            with contextlib.suppress(httpx.TransportError):
                response = await client.get("/pid")
                states = list(response.json()["workers"].values())
                if response.status_code == 200 and (workers == 1 or states == ["ACKED"] * workers):
                    if workers > 1:
                        # Sanic's main process checks the workers' acknowledgements every
                        # 0.1 s, and a signal that arrives before it has seen them all
                        # leaves it waiting for them for 15 s before it exits.
                        await asyncio.sleep(0.2)
                    return
            await asyncio.sleep(0.05)
    pytest.fail(f"the server was not ready within {STARTUP_TIMEOUT} s\n{server.output()}")


async def stop_cleanly(server: Server, *, whole_group: bool = False) -> None:
    """Stop the server, which must exit with 0 and print no traceback or warning.

    By default SIGINT goes to the main process (``kill -INT PID``).  With ``whole_group``
    SIGTERM goes to every process of the server at once, as systemd's default
    ``KillMode=control-group`` does; then Sanic's main process itself sometimes exits
    with 1 ("Startup failed due to OS error: Broken pipe": a worker it was still talking
    to had already exited), so only the output is checked.  Sanic's main process also
    exits with 1 now and then after every worker completed, failing in its own
    bookkeeping of the workers' states (``WorkerProcess.set_state``: "'NoneType' object
    is not a mapping", a race inside Sanic's shared state): that exit is not ours.
    """
    if whole_group:
        os.killpg(server.process.pid, signal.SIGTERM)
    else:
        server.process.send_signal(signal.SIGINT)
    try:
        code = await asyncio.wait_for(server.process.wait(), SHUTDOWN_TIMEOUT)
    except asyncio.TimeoutError:
        stacks = await _dump_stacks(server)
        pytest.fail(
            f"the server did not stop within {SHUTDOWN_TIMEOUT} s\n{stacks}\n{server.output()}"
        )
    output = server.output()
    for text in FORBIDDEN_OUTPUT:
        assert text not in output, f"{text!r} in the server's output\n{output}"
    if not whole_group and not _sanic_state_race(code, output):
        assert code == 0, f"the server exited with {code}\n{output}"


def _sanic_state_race(code: int | None, output: str) -> bool:
    """Whether Sanic's main process failed in its workers' state bookkeeping, after
    every worker had completed."""
    started = output.count("Starting worker")
    return (
        code == 1
        and "WorkerProcess.set_state" in output
        and "object is not a mapping" in output
        and started > 0
        and output.count("Worker complete") == started
    )


async def _dump_stacks(server: Server) -> str:
    """The processes of a stuck server; each dumps its threads' stacks to its stderr."""
    ps = await asyncio.create_subprocess_exec(
        "ps",
        "-o",
        "pid,ppid,stat,wchan:24,args",
        "-g",
        str(server.process.pid),
        stdout=asyncio.subprocess.PIPE,
    )
    listing, _ = await asyncio.wait_for(ps.communicate(), 5)
    for line in listing.decode().splitlines()[1:]:
        pid = int(line.split()[0])
        if "resource_tracker" not in line:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(0.5)
    return f"--- processes ---\n{listing.decode()}"


@contextlib.asynccontextmanager
async def admin_database(url: str, *, create: bool) -> AsyncIterator[Database]:
    """A Database of the test's own, to prepare and check the app's tables.

    The tables are dropped first (and created again if ``create``), except that a new
    SQLite file is left for the server to create: nothing connects before that.
    """
    admin = Database(url)
    try:
        if create or not url.startswith("sqlite"):
            async with admin.engines.write.begin() as connection:
                await connection.run_sync(metadata.drop_all)
                if create:
                    await connection.run_sync(metadata.create_all)
        try:
            yield admin
        finally:
            async with admin.engines.write.begin() as connection:
                await connection.run_sync(metadata.drop_all)
    finally:
        await admin.dispose()


async def stored_users(admin: Database) -> dict[int, dict[str, Any]]:
    async with admin:
        rows = (await admin.read.execute(select(server_users))).all()
    return {row.id: dict(row._mapping) for row in rows}


# -- several workers ---------------------------------------------------------------


async def _both_workers(client: httpx.AsyncClient, workers: int = 2) -> set[int]:
    """Send ``GET /pid`` in batches until every worker has answered (at most 200)."""
    pids: set[int] = set()
    for _ in range(20):
        responses = await asyncio.gather(*(client.get("/pid") for _ in range(10)))
        for response in responses:
            assert response.status_code == 200
            body = response.json()
            assert body["checked_out"] == {"write": 0, "read": 0}
            pids.add(body["pid"])
        if len(pids) == workers:
            return pids
    pytest.fail(f"only {pids} answered 200 requests")


def _new_connection_per_request(server: Server) -> httpx.AsyncClient:
    """A client that opens a connection per request, so that every worker gets some."""
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=0)
    return httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits)


def _same_user(response: dict[str, Any], user: dict[str, Any]) -> bool:
    return all(response[key] == user[key] for key in ("id", "name", "email", "pid"))


async def test_two_workers_share_the_database_and_stop_cleanly(url: str, tmp_path: Path) -> None:
    """Under ``sanic --workers 2`` both workers serve requests, each reads what the other
    committed, and SIGINT stops the server with exit code 0 and no leaked connection."""
    async with (
        admin_database(url, create=False) as admin,
        sanic_server(url, tmp_path, workers=2) as server,
    ):
        async with _new_connection_per_request(server) as client:
            pids = await _both_workers(client)
            written: dict[int, dict[str, Any]] = {}
            serial = 0
            # Requests go in concurrent batches: sequential connections may all be
            # accepted by the same worker, concurrent ones reach both.
            for writer in sorted(pids):
                # Insert until this worker has written a row...
                created = None
                for _ in range(20):
                    payloads = [
                        {"name": f"user {n}", "email": f"user{n}@example.com"}
                        for n in range(serial + 1, serial + 11)
                    ]
                    serial += len(payloads)
                    responses = await asyncio.gather(
                        *(client.post("/users", json=payload) for payload in payloads)
                    )
                    for payload, response in zip(payloads, responses, strict=True):
                        assert response.status_code == 201, response.text
                        row = response.json()
                        assert (row["name"], row["email"]) == (payload["name"], payload["email"])
                        assert row["pid"] == row["served_by"]
                        written[row["id"]] = row
                        if row["pid"] == writer:
                            created = row
                    if created is not None:
                        break
                else:
                    pytest.fail(f"worker {writer} served none of 200 inserts")
                # ...then read it back until the other worker has served it.
                for _ in range(20):
                    responses = await asyncio.gather(
                        *(client.get(f"/users/{created['id']}") for _ in range(10))
                    )
                    reads = [response.json() for response in responses]
                    for response, read in zip(responses, reads, strict=True):
                        assert response.status_code == 200, response.text
                        assert _same_user(read, created), (read, created)
                    if any(read["served_by"] != writer for read in reads):
                        break
                else:
                    pytest.fail(f"the worker other than {writer} served none of 200 reads")

            stored = await stored_users(admin)
            assert {user_id: row["email"] for user_id, row in stored.items()} == {
                user_id: user["email"] for user_id, user in written.items()
            }
            assert {row["pid"] for row in stored.values()} == pids
            # Both workers have given every connection back.
            assert await _both_workers(client) == pids

        await stop_cleanly(server)


async def test_sigterm_to_every_process_stops_cleanly(url: str, tmp_path: Path) -> None:
    """SIGTERM sent to the main process and both workers at once (as systemd does) stops
    a server whose pools hold connections without a traceback or an unclosed connection."""
    async with (
        admin_database(url, create=False),
        sanic_server(url, tmp_path, workers=2) as server,
    ):
        async with _new_connection_per_request(server) as client:
            await _both_workers(client)
            for n in range(4):
                # Writes, reads and held connections, so that both pools of both workers
                # have connections to close at shutdown.
                created = await client.post(
                    "/users", json={"name": f"u{n}", "email": f"u{n}@example.com"}
                )
                assert created.status_code == 201, created.text
                responses = await asyncio.gather(
                    *(client.get(f"/users/{created.json()['id']}") for _ in range(3)),
                    *(
                        client.get("/slow", params={"seconds": 0.1, "via": via})
                        for via in ("read", "write")
                    ),
                )
                assert [response.status_code for response in responses] == [200] * 5
        await stop_cleanly(server, whole_group=True)


# -- an exhausted pool -------------------------------------------------------------

POOL_SIZE = 5
POOL_TIMEOUT = 1.0
#: How much later than the pool timeout a 503 may reach the client.
MARGIN = 0.5
#: How long each slow request holds its connection: well past the pool timeout, so that
#: requests sent while the pools are held get their 503 even when the machine is slow to
#: send them (with 1.5 s, a read sent 0.5 s late waited out the hold instead).
HOLD = 2.5
SEEDED = 20
REQUESTS = 200
MAX_ATTEMPTS = 6


@dataclass
class Attempt:
    """One HTTP exchange: when it was sent, how long it took and what came back."""

    sent: float
    status: int
    elapsed: float
    retry_after: str | None
    #: How long the server says it spent on the request (its X-Server-Time header).
    server_time: str | None
    body: Any


async def _attempt(server: Server, method: str, path: str, body: Any = None) -> Attempt:
    """Send one request on a connection of its own; time it from sending to the answer.

    A bare HTTP/1.1 exchange rather than httpx: with hundreds of requests in flight,
    httpx's own bookkeeping costs the client more time than the server takes, which
    would hide how fast the server answers.  The connection is opened before the clock
    starts, so a SYN dropped by a full listen backlog does not count either.
    """
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {server.host}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        sent = time.monotonic()
        writer.write(head.encode() + payload)
        raw = await reader.read()
        elapsed = time.monotonic() - sent
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head_bytes, _, content = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    try:
        decoded: Any = json.loads(content)
    except ValueError:
        decoded = content.decode(errors="replace")
    return Attempt(
        sent,
        int(status_line.split()[1]),
        elapsed,
        headers.get("retry-after"),
        headers.get("x-server-time"),
        decoded,
    )


async def _with_retries(server: Server, method: str, path: str, body: Any = None) -> list[Attempt]:
    """Send a request again after each 503, waiting as its Retry-After header says."""
    attempts: list[Attempt] = []
    for _ in range(MAX_ATTEMPTS):
        attempt = await _attempt(server, method, path, body)
        attempts.append(attempt)
        if attempt.status != 503 or attempt.retry_after is None:
            break
        await asyncio.sleep(min(float(attempt.retry_after), 2.0))
    return attempts


async def _wait_for_checked_out(server: Server, expected: dict[str, int]) -> None:
    """Poll ``/pid`` (at most 3 s) until the pools have lent out ``expected``."""
    body: Any = None
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        body = (await _attempt(server, "GET", "/pid")).body
        if body["checked_out"] == expected:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"the pools never reached {expected}: last seen {body}")


def _check_503(attempt: Attempt, what: str) -> None:
    assert attempt.retry_after is not None, f"{what}: a 503 without Retry-After"
    assert int(attempt.retry_after) > 0, f"{what}: Retry-After {attempt.retry_after!r}"
    for detail in ("Traceback", "QueuePool", "TimeoutError"):
        assert detail not in str(attempt.body), f"{what}: the 503 shows {detail}: {attempt}"
    assert attempt.elapsed <= POOL_TIMEOUT + MARGIN, (
        f"{what}: the 503 took {attempt.elapsed:.2f} s (pool timeout {POOL_TIMEOUT} s): {attempt}"
    )


async def _exhaust_and_load(
    server: Server, held: tuple[str, ...], seeded: list[dict[str, Any]]
) -> tuple[list[tuple[str, Any]], list[list[Attempt]], list[Attempt]]:
    """Hold every connection of the ``held`` pools, then send the 200 requests."""
    # Two more slow requests than connections per pool: those two wait and get 503.
    slow = [
        asyncio.create_task(_attempt(server, "GET", f"/slow?seconds={HOLD}&via={via}"))
        for via in held
        for _ in range(POOL_SIZE + 2)
    ]
    await _wait_for_checked_out(
        server, {"write": POOL_SIZE if "write" in held else 0, "read": POOL_SIZE}
    )
    requests: list[tuple[str, Any]] = []
    for n in range(REQUESTS):
        if n % 2:
            requests.append(("insert", {"name": f"new {n}", "email": f"new{n}@example.com"}))
        else:
            requests.append(("read", seeded[n % SEEDED]))
    results = await asyncio.gather(
        *(
            _with_retries(server, "POST", "/users", item)
            if kind == "insert"
            else _with_retries(server, "GET", f"/users/{item['id']}")
            for kind, item in requests
        )
    )
    slow_results = await asyncio.gather(*slow)
    await _wait_for_checked_out(server, {"write": 0, "read": 0})
    return requests, list(results), list(slow_results)


async def test_exhausted_pool_answers_503_quickly_and_recovers(
    backend: str, url: str, tmp_path: Path
) -> None:
    """With the pools held by slow requests, 200 concurrent reads and inserts each get a
    correct 2xx or a prompt 503 with Retry-After, retries succeed, every acknowledged insert
    is stored and no connection stays checked out."""
    env = {
        "SANIC_DATABASE_POOL_SIZE": str(POOL_SIZE),
        "SANIC_DATABASE_MAX_OVERFLOW": "0",
        "SANIC_DATABASE_POOL_TIMEOUT": str(POOL_TIMEOUT),
    }
    # SQLite has a single writer: a write connection held open holds the database's
    # write lock too, so there only the read pool is exhausted.
    held = ("read",) if backend == "sqlite" else ("read", "write")
    async with admin_database(url, create=True) as admin:
        # Without explicit ids: PostgreSQL's sequence would not know about them.
        async with admin.engines.write.begin() as connection:
            await connection.execute(
                insert(server_users),
                [
                    {"name": f"seed {n}", "email": f"seed{n}@example.com", "pid": 0}
                    for n in range(SEEDED)
                ],
            )
        seeded = list((await stored_users(admin)).values())
        assert len(seeded) == SEEDED

        async with sanic_server(url, tmp_path, workers=1, env=env) as server:
            requests, results, slow_results = await asyncio.wait_for(
                _exhaust_and_load(server, held, seeded), 30
            )
            await stop_cleanly(server)

        busy = {"read": 0, "insert": 0}
        for slow_result in slow_results:
            if slow_result.status == 503:
                _check_503(slow_result, "slow request")
            else:
                assert slow_result.status == 200, slow_result.body
                assert slow_result.body["slept"] == HOLD
        assert sum(result.status == 503 for result in slow_results) == 2 * len(held)

        acknowledged: dict[int, dict[str, Any]] = {}
        for (kind, item), attempts in zip(requests, results, strict=True):
            for attempt in attempts[:-1]:
                assert attempt.status == 503, f"{kind} {item}: {attempt}"
                _check_503(attempt, f"{kind} {item}")
                busy[kind] += 1
            final = attempts[-1]
            assert final.status != 503, f"{kind} {item}: still 503 after {MAX_ATTEMPTS} tries"
            if kind == "read":
                assert final.status == 200, f"read {item}: {attempts}"
                body = final.body
                assert {key: body[key] for key in ("id", "name", "email", "pid")} == item
            else:
                # 201, not 409: no attempt that got a 503 had stored the row.
                assert final.status == 201, f"insert {item}: {attempts}"
                body = final.body
                assert (body["name"], body["email"]) == (item["name"], item["email"])
                acknowledged[body["id"]] = {key: body[key] for key in ("id", "name", "email")}

        # Requests sent while every connection was held had to get a 503.
        assert busy["read"] > 0
        if "write" in held:
            assert busy["insert"] > 0
        stored = await stored_users(admin)
        assert len(stored) == SEEDED + REQUESTS // 2
        assert {
            user_id: {key: row[key] for key in ("id", "name", "email")}
            for user_id, row in stored.items()
            if row["pid"] != 0
        } == acknowledged
