"""What the report says about the machine and the versions of everything measured."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent

PACKAGES = (
    "sanic-sqlalchemy",
    "sanic",
    "sanic-routing",
    "sanic-ext",
    "sqlalchemy",
    "asyncpg",
    "asyncmy",
    "advanced-alchemy",
    "pgqueuer",
    "procrastinate",
    "psycopg",
    "pydantic",
    "greenlet",
    "uvloop",
    "ujson",
    "httptools",
    "py-spy",
    "pyinstrument",
)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            kib = int(line.split()[1])
            return f"{kib / 1024 / 1024:.1f} GiB"
    return "unknown"


def _os() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.platform()
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return match.group(1) if match else platform.platform()


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory": _memory(),
        "os": _os(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def source() -> dict[str, str]:
    """The commit of the library measured, and whether src/ had local changes."""
    commit = _git("rev-parse", "--short=12", "HEAD")
    dirty = _git("status", "--porcelain", "--", "src")
    digest = hashlib.sha256()
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return {
        "commit": commit or "unknown",
        "src_dirty": "yes" if dirty else "no",
        "src_sha256": digest.hexdigest()[:12],
    }


def slug() -> str:
    """A short machine name for the report file: CPU model and core count."""
    model = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*", "", _cpu_model(), flags=re.I)
    words = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    return f"{words or 'cpu'}-{os.cpu_count()}c"
