"""The markdown report, from the data that ``main`` collected (also saved as JSON)."""

from __future__ import annotations

import statistics
from typing import Any

from .apps import VARIANTS
from .wrk import ENDPOINTS

SHORT = {
    "noop": "/noop",
    "get": "GET one",
    "page": "page of 50",
    "insert": "POST",
    "touch": "touch",
}

#: Issue 4's targets: ratio of ours to raw asyncpg in the same run.
RATIO_TARGETS = {"noop": 0.95, "get": 0.35, "insert": 0.30, "touch": 0.35}
PAGE_VS_ORM = 1.3
RT_TARGETS = {"get": ("==", 1), "insert": ("==", 3), "touch": ("<=", 4)}


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def _label(variant: str) -> str:
    return VARIANTS[variant][2] if variant in VARIANTS else variant


def _reference(backend: str) -> str:
    return "raw-asyncpg" if backend == "postgresql" else "raw-asyncmy"


def ratios(
    windows: dict[str, dict[str, list[dict[str, Any]]]], variant: str, other: str, endpoint: str
) -> list[float]:
    """rps(variant) / rps(other) in each round where both ran."""
    mine = {w["round"]: w["rps"] for w in windows.get(variant, {}).get(endpoint, [])}
    theirs = {w["round"]: w["rps"] for w in windows.get(other, {}).get(endpoint, [])}
    return [mine[r] / theirs[r] for r in sorted(mine) if theirs.get(r)]


def _summary_row(windows: list[dict[str, Any]]) -> dict[str, Any]:
    rps = [w["rps"] for w in windows]
    seconds = sum(w["seconds"] for w in windows)
    errors: dict[str, int] = {}
    for w in windows:
        for key, value in w["errors"].items():
            errors[key] = errors.get(key, 0) + value
    return {
        "rps": _median(rps),
        "min": min(rps) if rps else None,
        "max": max(rps) if rps else None,
        "p50": _median([w["p50_ms"] for w in windows]),
        "p99": _median([w["p99_ms"] for w in windows]),
        "cpu": _median([w["cpu_percent"] for w in windows]),
        "cpu_us": _median([w["cpu_us_per_request"] for w in windows]),
        "non2xx": errors.get("status", 0),
        "socket": sum(v for k, v in errors.items() if k != "status"),
        "conns_per_s": (
            sum(w["new_connections"] for w in windows)
            / sum(w.get("steady_seconds", w["seconds"]) for w in windows)
            if seconds
            else None
        ),
        "conns": sum(w["new_connections"] for w in windows),
        "replaced": sum(w.get("replaced_connections", 0) for w in windows),
        "requests": sum(w["requests"] for w in windows),
    }


def _rt(trips: dict[str, Any] | None, under_load: bool = False) -> str:
    if not trips:
        return "–"
    value = trips["under_load"] if under_load else trips["sequential"]
    if value is None:
        return "–"
    return (
        f"{value:.2f}".rstrip("0").rstrip(".")
        if abs(value - round(value)) < 0.005
        else f"{value:.2f}"
    )


def render(data: dict[str, Any]) -> str:
    meta = data["meta"]
    out: list[str] = []
    w = out.append
    mode = meta["mode"]
    w(f"# sanic-sqlalchemy benchmarks: {meta['date'][:10]} ({mode} run)\n")
    failures = data["failures"]
    w(
        "**Result:** "
        + (
            "all checks passed"
            if not failures
            else f"{len(failures)} failure(s), listed at the end"
        )
        + f"; {meta['elapsed_seconds']} s.  Reproduce with `./benchmarks/run"
        + (" --smoke" if mode == "smoke" else "")
        + "` (see benchmarks/README.md).\n"
    )
    for warning in meta.get("warnings", []):
        w(f"**Warning:** {warning}.\n")
    _machine(w, meta, data)
    _method(w, meta)
    for backend in data["backends"]:
        if backend["backend"] == "postgresql" and backend["windows"]:
            _targets(w, backend, data["memory"])
    for backend in data["backends"]:
        if backend["windows"]:
            _against_checkouts(w, backend)
    for backend in data["backends"]:
        _backend(w, backend, mode)
    if data["memory"]:
        _memory(w, data["memory"])
    _notes(w, meta)
    if failures:
        w("## Failures\n")
        for failure in failures:
            w(f"- {failure}")
        w("")
    return "\n".join(out) + "\n"


def _machine(w: Any, meta: dict[str, Any], data: dict[str, Any]) -> None:
    m = meta["machine"]
    w("## Machine and versions\n")
    w("| | |\n|---|---|")
    w(f"| cores (nproc) | {m['nproc']} |")
    w(f"| CPU | {m['cpu']} |")
    w(f"| memory | {m['memory']} |")
    w(f"| OS, kernel | {m['os']}, {m['kernel']} |")
    w(f"| load average when the run started | {', '.join(f'{x:.2f}' for x in m['loadavg'])} |")
    w(f"| Python | {m['python']} |")
    for backend in data["backends"]:
        info = backend["info"]
        if backend["backend"] == "postgresql" and info:
            w(
                f"| PostgreSQL | {info['version']} (ssl {info['ssl']}, shared_buffers "
                f"{info['shared_buffers']}, synchronous_commit {info['synchronous_commit']}, "
                f"fsync {info['fsync']}) |"
            )
        elif info:
            w(f"| MariaDB | {info['version']} |")
    w(f"| wrk | {meta['wrk']} |")
    src = meta["source"]
    w(
        f"| sanic-sqlalchemy | {meta['versions'].get('sanic-sqlalchemy')} at commit "
        f"{src['commit']}{' with local changes in src/' if src['src_dirty'] == 'yes' else ''} "
        f"(sources sha256 {src.get('src_sha256', '?')}) |"
    )
    for name, version in meta["versions"].items():
        if name != "sanic-sqlalchemy":
            w(f"| {name} | {version} |")
    w("")


def _method(w: Any, meta: dict[str, Any]) -> None:
    s = meta["settings"]
    w("## Method\n")
    if meta["mode"] == "smoke":
        w(
            "Smoke run: every variant started behind the counting proxy, answered the "
            "identical-JSON and commit check, had its round trips counted over "
            f"{s['rt_requests']} sequential requests per endpoint, then served 1 s of mixed "
            f"load from wrk ({s['connections']} connections).  Numbers of a smoke run are not "
            "benchmarks.\n"
        )
        return
    rounds_note = "" if s["rounds"] >= 3 else " (fewer than the 3 rounds issue 4 asks for)"
    w(
        f"Each variant runs as one single-process Sanic server pinned to core "
        f"{s['server_core'] or '(none)'}; wrk (1 thread, {s['connections']} connections) runs "
        f"pinned to core {s['load_core'] or '(none)'}; PostgreSQL and MariaDB are not pinned.  "
        f"{s['rounds']} rounds{rounds_note}; in each round every variant is started afresh, "
        f"in an order rotated by one each round, warmed up for {s['warmup']} s per endpoint, "
        f"then measured for {s['duration']} s per endpoint.  req/s is the median over rounds "
        "(min–max beside it); the ratio is taken round by round against the raw driver "
        "measured in the same round, then the median of those ratios is shown; p50/p99 are "
        "medians over rounds of wrk's percentiles.  Server CPU is the server process's user + "
        "system time over the window (100 % = the whole core).  New connections are the "
        "bench database's backends seen in `pg_stat_activity` (polled every 0.1 s during "
        "the window), placed by their start time (MariaDB: the server-wide `Connections` "
        "counter, so other clients of the server count too); connections shorter-lived "
        "than a poll are counted by the proxy during its load phase (round-trip table, "
        "*under load*); *new conns/s* counts the steady state, from "
        "the second second of each window on, and *replaced* the connections opened in "
        "the first second, summed over rounds: replacements for connections discarded "
        "when the previous window's clients hung up on requests in flight.  Round trips "
        "are counted by a TCP proxy in front of the database (see the README).  Pools: ours "
        "at its defaults; the hand-written variants and advanced-alchemy "
        + (
            "with SQLAlchemy's defaults (5 + 10 overflow)"
            if s["peer_pool"] == "sqlalchemy"
            else "with the same 10 connections and no overflow"
        )
        + "; the raw drivers with pools of 10.\n"
    )


def _targets(w: Any, backend: dict[str, Any], memory: dict[str, Any]) -> None:
    windows = backend["windows"]
    ref = _reference(backend["backend"])
    if "ours" not in windows or ref not in windows:
        return
    w("## Targets of issue 4 (ours, PostgreSQL)\n")
    w("| target | measured | met |\n|---|---|---|")
    for endpoint, goal in RATIO_TARGETS.items():
        values = ratios(windows, "ours", ref, endpoint)
        value = _median(values)
        met = "–" if value is None else ("yes" if value >= goal else "**no**")
        spread = f" (rounds {min(values):.2f}–{max(values):.2f})" if values else ""
        w(
            f"| {ENDPOINTS[endpoint]}: ≥ {goal:.2f}× raw asyncpg "
            f"| {_fmt(value, 2)}×{spread} | {met} |"
        )
    if "orm" in windows:
        values = ratios(windows, "ours", "orm", "page")
        value = _median(values)
        met = "–" if value is None else ("yes" if value >= PAGE_VS_ORM else "**no**")
        w(f"| page of 50: ≥ {PAGE_VS_ORM}× the hand-written ORM | {_fmt(value, 2)}× | {met} |")
    trips = backend["round_trips"].get("ours", {})
    for endpoint, (op, goal) in RT_TARGETS.items():
        value = trips.get(endpoint, {}).get("sequential")
        if value is None:
            met = "–"
        elif op == "==":
            met = "yes" if abs(value - goal) < 0.01 else "**no**"
        else:
            met = "yes" if value <= goal + 0.01 else "**no**"
        sign = "=" if op == "==" else "≤"
        w(f"| round trips, {ENDPOINTS[endpoint]}: {sign} {goal} | {_fmt(value, 2)} | {met} |")
    rows = [_summary_row(windows["ours"][e]) for e in ENDPOINTS if windows["ours"].get(e)]
    conns = sum(r["conns"] for r in rows)
    requests = sum(r["requests"] for r in rows)
    proxied = [t for t in trips.values() if t.get("under_load_requests")]
    proxy_conns = sum(t["under_load_connections"] or 0 for t in proxied)
    proxy_requests = sum(t["under_load_requests"] or 0 for t in proxied)
    met = "yes" if requests and conns <= requests / 10_000 else "**no**"
    if proxied and proxy_conns > proxy_requests / 10_000:
        met = "**no**"
    proxy_text = (
        f"; counted by the proxy under load: {proxy_conns} in {proxy_requests:,} requests"
        if proxied
        else ""
    )
    w(
        "| no new PostgreSQL connection per request in steady state (defaults, 32 clients) "
        f"| load phase: {conns} new connections in {requests:,} requests{proxy_text} | {met} |"
    )
    if "ours" in memory:
        growth = memory["ours"]["growth_percent"]
        met = "yes" if abs(growth) <= 5 else "**no**"
        w(f"| RSS after 100,000 requests within 5 % of after 10,000 | {growth:+.1f} % | {met} |")
    w("")


#: Issue 16's targets: ours against other variants of the same run, per endpoint
#: (req/s ratio); the CPU per request must not exceed the baseline checkout's.
CHECKOUT_TARGETS: dict[str, dict[str, float]] = {
    "ours-baseline": {"noop": 1.0, "get": 1.0, "page": 1.0, "insert": 1.0, "touch": 1.0},
    "orm": {"get": 1.3, "page": 1.3, "insert": 1.05, "touch": 1.05},
    "raw-asyncpg": {"noop": 0.95},
}


def _against_checkouts(w: Any, backend: dict[str, Any]) -> None:
    """Ours against the baseline checkout, the previous main and the hand-written ORM,
    in the same run: req/s ratios (median of the rounds) and CPU per request."""
    windows = backend["windows"]
    others = [v for v in ("ours-baseline", "ours-previous", "orm", _reference(backend["backend"]))
              if v in windows]  # fmt: skip
    if "ours" not in windows or not any(v.startswith("ours-") for v in others):
        return
    w(f"## Ours against other checkouts ({backend['backend']}, same run)\n")
    w(
        "req/s of ours divided by the other variant's, median of the rounds (target in "
        "brackets where issue 16 sets one), and server CPU per request (µs, median).\n"
    )
    header = " | ".join(f"÷ {_label(v)}" for v in others)
    cpus = " | ".join(f"CPU {_label(v)}" for v in others if v.startswith("ours-"))
    w(f"| endpoint | {header} | CPU ours | {cpus} |")
    w("|---" * (2 + len(others) + sum(v.startswith("ours-") for v in others)) + "|")
    for endpoint in ENDPOINTS:
        if not windows["ours"].get(endpoint):
            continue
        cells = []
        for other in others:
            value = _median(ratios(windows, "ours", other, endpoint))
            goal = CHECKOUT_TARGETS.get(other, {}).get(endpoint)
            if goal is None or value is None:
                cells.append(f"{_fmt(value, 2)}×")
            else:
                met = "" if value >= goal else " **below**"
                cells.append(f"{_fmt(value, 2)}× (≥ {goal}){met}")
        cpu = [_summary_row(windows["ours"][endpoint])["cpu_us"]]
        cpu += [
            _summary_row(windows[v][endpoint])["cpu_us"] if windows[v].get(endpoint) else None
            for v in others
            if v.startswith("ours-")
        ]
        cpu_cells = " | ".join(_fmt(c, 0) for c in cpu)
        w(f"| {ENDPOINTS[endpoint]} | {' | '.join(cells)} | {cpu_cells} |")
    w("")


def _backend(w: Any, backend: dict[str, Any], mode: str) -> None:
    name = "PostgreSQL" if backend["backend"] == "postgresql" else "MariaDB"
    ref = _reference(backend["backend"])
    variants = backend["variants"]
    windows = backend["windows"]
    w(f"## {name}\n")

    w("### Check: identical JSON, real commits\n")
    w("| variant | result |\n|---|---|")
    for variant in variants:
        check = backend["checks"].get(variant)
        if check is None:
            w(f"| {_label(variant)} | not run |")
        elif check["ok"]:
            w(
                f"| {_label(variant)} | identical JSON on every endpoint; insert and touch "
                "committed before the response |"
            )
        else:
            w(f"| {_label(variant)} | **failed**: {'; '.join(check['failures'])[:400]} |")
    if backend["cross_failures"]:
        for failure in backend["cross_failures"]:
            w(f"\n- **differs:** {failure}")
    w("")

    if windows:
        w(f"### Ratio to {_label(ref)} (median over rounds; req/s in parentheses)\n")
        w("| variant | " + " | ".join(ENDPOINTS.values()) + " |")
        w("|---|" + "---|" * len(ENDPOINTS))
        for variant in variants:
            if variant not in windows:
                continue
            cells = []
            for endpoint in ENDPOINTS:
                row = _summary_row(windows[variant][endpoint])
                ratio = _median(ratios(windows, variant, ref, endpoint))
                cells.append(f"{_fmt(ratio, 2)} ({_fmt(row['rps'])})")
            w(f"| {_label(variant)} | " + " | ".join(cells) + " |")
        w("")
        for endpoint, title in ENDPOINTS.items():
            w(f"### {title}\n")
            w(
                "| variant | req/s median | min–max | ratio | p50 ms | p99 ms | server CPU | "
                "CPU µs/req | non-2xx | socket errors | new conns/s | replaced |"
            )
            w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for variant in variants:
                if variant not in windows or not windows[variant][endpoint]:
                    continue
                r = _summary_row(windows[variant][endpoint])
                ratio = _median(ratios(windows, variant, ref, endpoint))
                w(
                    f"| {_label(variant)} | {_fmt(r['rps'])} | {_fmt(r['min'])}–{_fmt(r['max'])} | "
                    f"{_fmt(ratio, 2)} | {_fmt(r['p50'], 2)} | {_fmt(r['p99'], 2)} | "
                    f"{_fmt(r['cpu'], 0, ' %')} | {_fmt(r['cpu_us'])} | {r['non2xx']} | "
                    f"{r['socket']} | {_fmt(r['conns_per_s'], 1)} | {r['replaced']} |"
                )
            w("")

    trips = backend["round_trips"]
    if trips:
        w(f"### {name} round trips per request\n")
        w(
            "Steady state: counted over sequential requests on one keep-alive connection "
            "after a warm-up (no connection opened, none idle long enough to be pinged)."
            + (
                "  In parentheses: under wrk's load through the proxy (≈, counted against "
                "wrk's completed requests; includes pool effects such as new connections).  "
                "Connections opened: in the sequential count, then under load after the "
                "first half second of each run, then in that first half second (replacing "
                "connections discarded when the previous run's clients hung up); cancel "
                "requests (a driver cancelling a statement whose request was cancelled, on a "
                "connection of its own) are counted apart."
                if mode != "smoke"
                else ""
            )
            + "\n"
        )
        w("| variant | " + " | ".join(SHORT[e] for e in ENDPOINTS) + " | connections opened |")
        w("|---|" + "---:|" * len(ENDPOINTS) + "---:|")
        for variant in variants:
            if variant not in trips:
                continue
            cells = []
            for endpoint in ENDPOINTS:
                t = trips[variant].get(endpoint)
                cell = _rt(t)
                if t and t.get("under_load") is not None:
                    cell += f" ({_rt(t, under_load=True)})"
                cells.append(cell)
            opened = sum(trips[variant][e]["connections"] for e in ENDPOINTS if e in trips[variant])
            loaded = sum(
                trips[variant][e].get("under_load_connections") or 0
                for e in ENDPOINTS
                if e in trips[variant]
            )
            replaced = sum(
                trips[variant][e].get("under_load_replaced") or 0
                for e in ENDPOINTS
                if e in trips[variant]
            )
            cancels = sum(
                trips[variant][e].get("under_load_cancels") or 0
                for e in ENDPOINTS
                if e in trips[variant]
            )
            extra = (
                f" ({loaded} under load, + {replaced} replaced after hang-ups"
                + (f"; {cancels} cancel requests" if cancels else "")
                + ")"
                if mode != "smoke"
                else ""
            )
            w(f"| {_label(variant)} | " + " | ".join(cells) + f" | {opened}{extra} |")
        w("")
        if backend["backend"] == "postgresql":
            w("Protocol messages per request (sequential; Q = simple query, S = Sync):\n")
            w("| variant | " + " | ".join(SHORT[e] for e in ENDPOINTS) + " |")
            w("|---|" + "---|" * len(ENDPOINTS))
            for variant in variants:
                if variant not in trips:
                    continue
                cells = []
                for endpoint in ENDPOINTS:
                    t = trips[variant].get(endpoint)
                    if not t:
                        cells.append("–")
                        continue
                    cells.append(
                        f"Q {t['queries_per_request']:.2f}, S {t['syncs_per_request']:.2f}"
                    )
                w(f"| {_label(variant)} | " + " | ".join(cells) + " |")
            w("")

    if trips:
        _statements(w, backend, trips)

    if backend["smoke_load"]:
        w(f"### {name}: 1 s of mixed load per variant (smoke; through the proxy)\n")
        w(
            "| variant | requests | req/s | p99 ms | server CPU | errors |\n"
            "|---|---:|---:|---:|---:|---|"
        )
        for variant, load in backend["smoke_load"].items():
            errors = ", ".join(f"{k} {v}" for k, v in load["errors"].items() if v) or "none"
            w(
                f"| {_label(variant)} | {load['requests']} | {load['rps']:.0f} | "
                f"{load['p99_ms']:.1f} | {load['cpu_percent']:.0f} % | {errors} |"
            )
        w("")


def _statements(w: Any, backend: dict[str, Any], trips: dict[str, Any]) -> None:
    """What each variant sends per request, from the proxy (steady state)."""
    pg = backend["backend"] == "postgresql"
    w("<details><summary>What each variant sends per request (from the proxy)</summary>\n")
    if pg:
        w(
            "Prepared statements are parsed once per connection, so in the steady state a "
            "query shows up as one Bind/Execute/Sync; simple-protocol queries (Q) show "
            "their text.\n"
        )
    w("| variant | endpoint | statements per request |\n|---|---|---|")
    for variant, endpoints in trips.items():
        for endpoint, t in endpoints.items():
            if endpoint == "noop":
                continue
            parts = [f"{n:g}× `{text}`" for text, n in t.get("statements", {}).items()]
            if pg and t.get("syncs_per_request"):
                parts.append(f"{t['syncs_per_request']:g}× Bind/Execute/Sync")
            w(f"| {_label(variant)} | {ENDPOINTS[endpoint]} | {'<br>'.join(parts) or '–'} |")
    w("\n</details>\n")


def _memory(w: Any, memory: dict[str, Any]) -> None:
    w("## Memory: RSS of the worker under mixed load (PostgreSQL)\n")
    w(
        "| variant | RSS at start | "
        + " | ".join(f"after {s['requests']:,}" for s in next(iter(memory.values()))["samples"][1:])
        + " | growth 10k → last |"
    )
    columns = len(next(iter(memory.values()))["samples"]) + 1
    w("|---|" + "---:|" * columns)
    for variant, result in memory.items():
        cells = [f"{s['rss'] / 2**20:.1f} MiB" for s in result["samples"]]
        w(f"| {_label(variant)} | " + " | ".join(cells) + f" | {result['growth_percent']:+.1f} % |")
    w("")


def _notes(w: Any, meta: dict[str, Any]) -> None:
    w("## Notes\n")
    w(
        "- advanced-alchemy 1.12.0: its Sanic extension needs `sanic-ext` (and pydantic) "
        "installed by hand, and its request middleware stores `get_session()`, an "
        "`@asynccontextmanager`, so handlers would get a context manager instead of a "
        "session (and the commit in its response middleware would fail silently, logged at "
        "DEBUG only).  Workaround: a subclass of its `SQLAlchemyAsyncConfig` whose "
        "`get_session()` returns a session from the extension's own session maker; "
        "engine, middleware, commit and close stay the extension's.  The extension also "
        "brings sanic-ext's own request handling (OpenAPI, CORS, injection) with it."
    )
    w(
        "- raw asyncpg uses its pool as documented, so every release sends asyncpg's reset "
        "query (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`): one "
        "round trip more per request than the statements themselves."
    )
    w(
        "- Each variant sends the same statements per endpoint; the per-variant SQL is in "
        "benchmarks/README.md.  Inserted rows accumulate during a run; the table is rebuilt "
        "with 10,000 rows at the start of each run."
    )
    w("")
