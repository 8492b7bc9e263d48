"""Running wrk pinned to a core and reading the numbers its Lua ``done()`` prints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent.parent / "wrk" / "bench.lua"

#: wrk endpoint names -> (method, path shown in the report)
ENDPOINTS: dict[str, str] = {
    "noop": "GET /noop",
    "get": "GET /users/<id>",
    "page": "GET /users?limit=50",
    "insert": "POST /users",
    "touch": "POST /users/<id>/touch",
}


@dataclass
class WrkResult:
    requests: int
    duration: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    return path


async def run_wrk(
    port: int,
    endpoint: str,
    *,
    seconds: float,
    connections: int = 32,
    core: str = "0",
    max_responses: int = 0,
    timeout_s: int = 10,
    ids: tuple[int, int] = (1, 10_000),
) -> WrkResult:
    duration = max(1, round(seconds))
    command = [
        wrk_path(), "-t1", f"-c{connections}", f"-d{duration}s", f"--timeout={timeout_s}s",
        "-s", str(SCRIPT), f"http://127.0.0.1:{port}",
    ]  # fmt: skip
    if core:
        command = ["taskset", "-c", core, *command]
    env = {
        **os.environ,
        "BENCH_ENDPOINT": endpoint,
        "BENCH_MAX": str(max_responses),
        "BENCH_ID_MIN": str(ids[0]),
        "BENCH_IDS": str(ids[1]),
    }
    done_file = None
    if max_responses:
        handle, done_file = tempfile.mkstemp(prefix="bench-wrk-", suffix=".done")
        os.close(handle)
        os.unlink(done_file)
        env["BENCH_DONE_FILE"] = done_file
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    if done_file is not None:
        # taskset execs wrk, so process.pid is wrk's own.
        waiter = asyncio.ensure_future(_interrupt_when_done(process, done_file))
    stdout, stderr = await process.communicate()
    if done_file is not None:
        waiter.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(done_file)
    text = stdout.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith("BENCH_JSON "):
            data: dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
            latency = data["latency_us"]
            return WrkResult(
                requests=data["requests"],
                duration=data["duration_us"] / 1e6,
                errors=data["errors"],
                p50_ms=latency["p50"] / 1000,
                p90_ms=latency["p90"] / 1000,
                p99_ms=latency["p99"] / 1000,
                max_ms=latency["max"] / 1000,
            )
    raise RuntimeError(f"wrk gave no result (exit {process.returncode}): {text}{stderr.decode()}")


async def _interrupt_when_done(process: asyncio.subprocess.Process, done_file: str) -> None:
    while process.returncode is None:
        if os.path.exists(done_file):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            return
        await asyncio.sleep(0.05)


def wrk_version() -> str:
    import subprocess

    out = subprocess.run([wrk_path(), "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0].split(" Copyright")[0].strip()
