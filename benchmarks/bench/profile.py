"""``--profile VARIANT:ENDPOINT``: py-spy samples of a server under wrk's load, summarised.

The summary attributes each sample to the packages on its stack: *inclusive* (the
share of samples in which the package has a frame: time spent in it or in what it
calls) and *self* (the share whose innermost Python frame is in it).  The collapsed
stacks are kept next to the summary for flame graphs (e.g. speedscope or inferno).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import re
import shutil
import sys
from pathlib import Path

from . import db
from .servers import Server
from .wrk import run_wrk

HERE = Path(__file__).resolve().parent.parent
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

#: (group, substring of the file path), first match wins.
GROUPS = (
    ("sanic_sqlalchemy", "/sanic_sqlalchemy/"),
    ("benchmark app", "/bench/apps/"),
    ("sqlalchemy.orm", "/sqlalchemy/orm/"),
    ("sqlalchemy.ext.asyncio", "/sqlalchemy/ext/asyncio/"),
    ("sqlalchemy.engine", "/sqlalchemy/engine/"),
    ("sqlalchemy.pool", "/sqlalchemy/pool/"),
    ("sqlalchemy.dialects", "/sqlalchemy/dialects/"),
    ("sqlalchemy.sql", "/sqlalchemy/sql/"),
    ("sqlalchemy.util", "/sqlalchemy/util/"),
    ("sqlalchemy (other)", "/sqlalchemy/"),
    ("advanced_alchemy", "/advanced_alchemy/"),
    ("sanic_ext", "/sanic_ext/"),
    ("sanic_routing", "/sanic_routing/"),
    ("sanic", "/sanic/"),
    ("asyncpg", "/asyncpg/"),
    ("asyncmy", "/asyncmy/"),
    ("asyncio", "/asyncio/"),
    ("ujson", "ujson"),
)


def group_of(frame: str) -> str:
    match = _FRAME.match(frame)
    path = "/" + (match.group("file") if match else frame)
    for group, needle in GROUPS:
        if needle in path:
            return group
    if "<built-in>" in path or path == "/":
        return "(native)"
    return "other python"


def summarise(raw: str, top: int = 25) -> str:
    stacks: list[tuple[list[str], int]] = []
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        stacks.append((frames, n))
    total = sum(n for _, n in stacks) or 1
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    ours_inclusive: collections.Counter[str] = collections.Counter()
    self_functions: collections.Counter[str] = collections.Counter()
    for frames, n in stacks:
        groups = [group_of(f) for f in frames]
        for group in set(groups):
            inclusive[group] += n
        if frames:
            self_time[groups[-1]] += n
            self_functions[frames[-1]] += n
        for frame in {f for f, g in zip(frames, groups, strict=True) if g == "sanic_sqlalchemy"}:
            ours_inclusive[frame] += n
    lines = [f"{total} samples\n", "package                     inclusive    self"]
    for group, n in inclusive.most_common():
        lines.append(f"{group:26} {100 * n / total:8.1f} % {100 * self_time[group] / total:6.1f} %")
    lines.append("\nsanic_sqlalchemy functions (inclusive: time in them and below)")
    for frame, n in ours_inclusive.most_common(top):
        lines.append(f"{100 * n / total:6.1f} %  {frame}")
    lines.append("\nfunctions by self time")
    for frame, n in self_functions.most_common(top):
        lines.append(f"{100 * n / total:6.1f} %  {frame}")
    return "\n".join(lines) + "\n"


async def profile(
    args: argparse.Namespace, target: db.Target, variant: str, endpoint: str, port: int
) -> Path:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed in the benchmark environment")
    out_dir = HERE / "work" / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out_dir / f"{stamp}-{target.backend}-{variant}-{endpoint}"
    server = Server(
        variant, target.backend, target.url(), port, args.server_core,
        HERE / "work" / "logs" / f"{target.backend}-{variant}-profile.log",
    )  # fmt: skip
    await server.start()
    try:
        await run_wrk(port, endpoint, seconds=3, connections=args.connections, core=args.load_core)
        command = [
            py_spy, "record", "--pid", str(server.pid), "--duration", str(args.profile_seconds),
            "--rate", str(args.profile_rate), "--format", "raw",
            "--output", str(base) + ".collapsed",
        ]  # fmt: skip
        if args.load_core:
            command = ["taskset", "-c", args.load_core, *command]
        spy = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        result = await run_wrk(
            port, endpoint, seconds=args.profile_seconds + 1, connections=args.connections,
            core=args.load_core,
        )  # fmt: skip
        _, stderr = await spy.communicate()
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {stderr.decode(errors='replace')}")
    finally:
        await server.stop()
    raw = Path(str(base) + ".collapsed").read_text()
    header = (
        f"{variant} on {endpoint} ({target.backend}), {args.profile_seconds} s under "
        f"{args.connections} connections: {result.rps:.0f} req/s while sampled "
        f"(py-spy at {args.profile_rate} Hz, pausing the process for each sample)\n"
    )
    summary_path = Path(str(base) + ".txt")
    summary_path.write_text(header + summarise(raw))
    print(summary_path.read_text())
    return summary_path
