"""Two apps sharing one ``db`` in one process start, serve and stop like one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from .conftest import free_port

pytestmark = pytest.mark.server

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 20.0
SHUTDOWN_TIMEOUT = 10.0


async def test_two_apps_sharing_a_database_stop_after_sigint(url: str, tmp_path: Path) -> None:
    """``Sanic.serve_single`` with two prepared apps that share one ``db`` serves both and
    exits promptly after SIGINT once both have used the database."""
    ports = [free_port(), free_port()]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SANIC_")}
    environment.update({"DATABASE_URL": url, "PYTHONUNBUFFERED": "1"})
    output = tmp_path / "server.log"
    with output.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.apps.two_apps",
            *map(str, ports),
            cwd=ROOT,
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            for number, port in enumerate(ports):
                deadline = time.monotonic() + STARTUP_TIMEOUT
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        response = await client.get(f"http://127.0.0.1:{port}/")
                        break
                    if process.returncode is not None or time.monotonic() > deadline:
                        pytest.fail(f"app {number} did not answer\n{output.read_text()}")
                    await asyncio.sleep(0.05)
                assert (response.status_code, response.text) == (200, f"two_apps_{number}")
        process.send_signal(signal.SIGINT)
        try:
            code = await asyncio.wait_for(process.wait(), SHUTDOWN_TIMEOUT)
        except asyncio.TimeoutError:
            pytest.fail(f"still running {SHUTDOWN_TIMEOUT} s after SIGINT\n{output.read_text()}")
        assert code == 0, output.read_text()
        assert "Traceback" not in output.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
