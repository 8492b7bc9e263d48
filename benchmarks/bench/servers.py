"""Starting a variant's server pinned to a core, and reading its CPU time and memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .http import Client

HERE = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after the command: the state (field 3 in
    proc(5)) is index 0, utime and stime 11 and 12, cutime and cstime 13 and 14."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


@dataclass
class Server:
    variant: str
    backend: str
    url: str
    port: int
    core: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self, timeout: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        command = [
            sys.executable,
            str(HERE / "serve.py"),
            self.variant,
            self.backend,
            self.url,
            str(self.port),
        ]
        if self.core:
            command = ["taskset", "-c", self.core, *command]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.process = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env, cwd=str(HERE)
        )
        log.close()
        client = Client(self.port)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(
                        f"{self.variant} ({self.backend}) exited with {self.process.returncode}; "
                        f"see {self.log_path}"
                    )
                with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError, IndexError):
                    response = await client.request("GET", "/noop", timeout=2)
                    if response.status == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.variant} did not answer within {timeout} s")
                await asyncio.sleep(0.1)
        finally:
            await client.close()

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT (Sanic's graceful stop, which disposes the engines), then SIGKILL."""
        process = self.process
        if process is None or process.returncode is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGINT)
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            process.kill()
            return await process.wait()

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""
