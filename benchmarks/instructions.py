"""Instructions per request, counted by valgrind (callgrind): a cost that another
process on the machine cannot disturb.

Each variant's server (``serve.py``, the same apps as the load benchmark) runs under
``valgrind --tool=callgrind`` twice: once answering ``--warm`` requests of an endpoint,
once answering ``--warm`` + ``--count``; the difference of the two totals divided by
``--count`` is what one request costs in the server process (start-up, imports and the
first, compiling requests cancel out).  Requests are sent one after the other on one
keep-alive connection.

    benchmarks/.venv/bin/python benchmarks/instructions.py \\
        --variants ours,ours-baseline,ours-previous,orm --endpoints get,insert

``ours-baseline`` and ``ours-previous`` need ``BENCH_BASELINE_SRC`` and
``BENCH_PREVIOUS_SRC`` (a checkout's ``src``), as in ``benchmarks/run``.  Needs
valgrind and a PostgreSQL ``bench`` database prepared by ``benchmarks/run`` (``--pg``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATHS = {
    "noop": ("GET", "/noop", None),
    "get": ("GET", "/users/7", None),
    "page": ("GET", "/users?limit=50", None),
    "insert": ("POST", "/users", "new"),
    "touch": ("POST", "/users/7/touch", None),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server on port {port} did not start within {seconds:.0f} s")


def send(port: int, endpoint: str, count: int, serial: list[int], timeout: float = 120) -> None:
    method, path, body = PATHS[endpoint]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    for _ in range(count):
        payload = None
        headers = {}
        if body == "new":
            serial[0] += 1
            payload = json.dumps(
                {"name": f"callgrind {serial[0]}", "email": f"cg-{os.getpid()}-{serial[0]}@x.test"}
            )
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status >= 300 and not (endpoint == "get" and response.status == 404):
            raise SystemExit(f"{method} {path} answered {response.status}")
    connection.close()


def total_instructions(out_file: Path) -> int:
    """The instructions a callgrind file counted: its ``totals`` line (what was counted
    while instrumentation was on; the header's ``summary`` says 0 for a run started
    with ``--instr-atstart=no``), else its ``summary``."""
    text = out_file.read_text()
    match = re.search(r"^totals:\s+(\d+)", text, re.MULTILINE) or re.search(
        r"^summary:\s+(\d+)", text, re.MULTILINE
    )
    if match is None:
        raise SystemExit(f"no instruction total in {out_file}")
    return int(match.group(1))


def run_once(
    variant: str, endpoint: str, url: str, requests: int, work: Path, start_timeout: float
) -> int:
    port = free_port()
    out_file = work / f"{variant}-{endpoint}-{requests}.callgrind"
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
        "--dump-instr=no", "--collect-jumps=no",
        sys.executable, str(HERE / "serve.py"), variant, "postgresql", url, str(port),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(port, start_timeout)
        send(port, endpoint, requests, [int(time.time() * 1000)], max(120, start_timeout))
    finally:
        server.send_signal(2)  # SIGINT: Sanic stops cleanly, callgrind writes its file
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return total_instructions(out_file)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="ours,ours-baseline,ours-previous,orm")
    parser.add_argument("--endpoints", default="get,insert")
    parser.add_argument("--warm", type=int, default=40)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--jobs", type=int, default=2, help="servers under valgrind at once")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=300,
        help="seconds a server may take to start, or to answer a request, under valgrind "
        "(more on a busy machine)",
    )
    args = parser.parse_args()
    variants = args.variants.split(",")
    endpoints = args.endpoints.split(",")
    runs = [
        (variant, endpoint, requests)
        for endpoint in endpoints
        for variant in variants
        for requests in (args.warm, args.warm + args.count)
    ]
    results: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory() as folder,
        concurrent.futures.ThreadPoolExecutor(args.jobs) as pool,
    ):
        work = Path(folder)
        totals = dict(
            zip(
                runs,
                pool.map(
                    lambda run: run_once(*run[:2], args.pg, run[2], work, args.start_timeout),
                    runs,
                ),
                strict=True,
            )
        )
    for endpoint in endpoints:
        for variant in variants:
            full = totals[(variant, endpoint, args.warm + args.count)]
            per_request = (full - totals[(variant, endpoint, args.warm)]) / args.count
            results.setdefault(endpoint, {})[variant] = per_request
            print(f"{endpoint:7} {variant:15} {per_request:12,.0f} instructions/request")
    print("\nratios (row variant / column variant):")
    for endpoint, by_variant in results.items():
        first = variants[0]
        cells = ", ".join(
            f"÷ {other}: {by_variant[first] / by_variant[other]:.3f}"
            for other in variants[1:]
            if other in by_variant
        )
        print(f"{endpoint:7} {first}: {cells}")
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
