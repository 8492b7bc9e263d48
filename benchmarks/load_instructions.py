"""Instructions per request of a server under concurrent load, counted by valgrind
(callgrind) over the measured window only: the server's own cost, which neither the
machine's other load nor the database's work on the other core can change.

``instructions.py`` sends one request at a time; a server that defers durable tasks
then finishes each run on its own (no later commit comes within ``RIDE_WAIT`` under
valgrind), which no loaded server does.  Here ``wrk`` keeps 32 requests in flight, as
in ``tasks.py``: each server starts under callgrind with instrumentation off, answers
``--warm`` requests, then counts only while it answers ``--count`` more.

    benchmarks/.venv/bin/python benchmarks/load_instructions.py \\
        [--variants ours-on-commit,ours-defer] [--previous-src ../prev/src]

``--previous-src`` (a checkout's ``src``) also measures each variant on that code, in
the same run.  Needs valgrind, wrk and the ``bench`` PostgreSQL database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.wrk import run_wrk
from instructions import free_port, total_instructions, wait_for

HERE = Path(__file__).resolve().parent


def _load(port: int, requests: int) -> int:
    result = asyncio.run(
        run_wrk(port, "insert", seconds=3600, max_responses=requests, timeout_s=60)
    )
    if result.error_count:
        raise RuntimeError(f"wrk errors: {result.errors}")
    return result.requests


def _instrument(pid: int, state: str) -> None:
    """Turn callgrind's counting ``on`` or ``off`` in the server ``pid``."""
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True, capture_output=True)


def measure(variant: str, src: str | None, url: str, warm: int, count: int, work: Path) -> float:
    """Instructions per ``POST /users`` of ``variant`` (on ``src`` when given)."""
    out_file = work / f"{variant}-{time.time_ns()}.callgrind"
    port = free_port()
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src  # ahead of the editable install of this checkout
    command = [
        "taskset", "-c", "1", "valgrind", "--tool=callgrind", "--instr-atstart=no",
        f"--callgrind-out-file={out_file}", "--dump-instr=no", "--collect-jumps=no",
        sys.executable, str(HERE / "serve.py"), variant, "postgresql", url, str(port),
    ]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(port, 600)
        _load(port, warm)
        time.sleep(1)  # the warm-up's runs end outside the window
        _instrument(server.pid, "on")
        answered = _load(port, count)
        time.sleep(0.5)  # and the window's own runs inside it
        _instrument(server.pid, "off")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=300)
    return total_instructions(out_file) / answered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="ours-on-commit,ours-defer")
    parser.add_argument("--warm", type=int, default=500)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--previous-src", default=None, help="a checkout's src to compare with")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/bench")
    args = parser.parse_args()
    sources: list[tuple[str, str | None]] = [("this checkout", None)]
    if args.previous_src is not None:
        sources.insert(0, ("previous", str(Path(args.previous_src).resolve())))
    variants = args.variants.split(",")
    results: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-load-instr-") as folder:
        for label, src in sources:
            for variant in variants:
                value = measure(variant, src, args.pg, args.warm, args.count, Path(folder))
                results[(label, variant)] = value
                print(f"{label:14} {variant:16} {value:12,.0f} instructions/request", flush=True)
    base = variants[0]
    for label, _src in sources:
        for variant in variants[1:]:
            ratio = results[(label, variant)] / results[(label, base)]
            print(f"{label:14} {variant} ÷ {base}: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
