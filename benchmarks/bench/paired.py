"""The endpoint that defers a task against the ``db.on_commit`` one, in paired windows.

On a shared machine the load of other tenants moves by more than the cost measured, in
seconds, and part 1 restarts a server for each window, so that the two windows compared
lie tens of seconds apart.  Here both servers run the whole time (on the same core; the
idle one sleeps), and ``wrk`` alternates between them in short windows back to back:
each pair of adjacent windows gives a ratio, and the median of many such ratios is what
drifting load disturbs least.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from typing import Any

from .servers import Server
from .wrk import run_wrk


async def measure(
    start_on_commit: Callable[[int], Server],
    start_defer: Callable[[int], Server],
    port: int,
    pairs: int,
    duration: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """req/s and server CPU µs per request of each window, and the ratio of each pair."""
    servers = {"on_commit": start_on_commit(port), "defer": start_defer(port + 1)}
    ports = {"on_commit": port, "defer": port + 1}
    rates: dict[str, list[float]] = {name: [] for name in servers}
    cpu_us: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for one in servers.values():
            await one.start()
        for name in servers:
            await run_wrk(ports[name], "insert", seconds=3, core="0")  # warm-up
        for number in range(pairs):
            order = ("on_commit", "defer") if number % 2 == 0 else ("defer", "on_commit")
            for name in order:
                one = servers[name]
                cpu = one.cpu()
                result = await run_wrk(ports[name], "insert", seconds=duration, core="0")
                cpu = one.cpu() - cpu
                if result.error_count:
                    raise RuntimeError(f"{name}: wrk errors {result.errors}")
                rates[name].append(result.rps)
                cpu_us[name].append(cpu / max(result.requests, 1) * 1e6)
                await asyncio.sleep(0.2)  # the last runs of the defer server end
            log(
                f"pair {number + 1}: on_commit {rates['on_commit'][-1]:.0f}, "
                f"defer {rates['defer'][-1]:.0f} req/s"
            )
    finally:
        for one in servers.values():
            await one.stop()
    ratios = [d / c for d, c in zip(rates["defer"], rates["on_commit"], strict=True)]
    cpu_ratios = [c / d for d, c in zip(cpu_us["defer"], cpu_us["on_commit"], strict=True)]
    return {
        "pairs": pairs,
        "duration": duration,
        "rates": rates,
        "cpu_us": cpu_us,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
    }


def report(data: dict[str, Any], median_range: Callable[..., str]) -> list[str]:
    ratios = data["ratios"]
    quartiles = statistics.quantiles(ratios, n=4)
    return [
        "## 1b. The same two endpoints in paired windows",
        "",
        "Both servers (one task per request, run by the same process, and one `db.on_commit` "
        f"callback) running side by side on core 1; `wrk` alternating between them, "
        f"{data['duration']} s per window, {data['pairs']} pairs of adjacent windows "
        "(order alternating); median (min–max).",
        "",
        "| | req/s | server CPU µs per request |",
        "|---|---|---|",
        f"| `db.on_commit` | {median_range(data['rates']['on_commit'])} "
        f"| {median_range(data['cpu_us']['on_commit'])} |",
        f"| `defer` | {median_range(data['rates']['defer'])} "
        f"| {median_range(data['cpu_us']['defer'])} |",
        "",
        f"req/s ratio within each pair: median {statistics.median(ratios):.3f}, quartiles "
        f"{quartiles[0]:.3f}–{quartiles[2]:.3f}, min–max {min(ratios):.3f}–{max(ratios):.3f}. "
        "Server CPU per request, `db.on_commit` ÷ `defer`, within each pair: median "
        f"{statistics.median(data['cpu_ratios']):.3f}.",
        "",
    ]
