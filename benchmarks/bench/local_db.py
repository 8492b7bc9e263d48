"""The processes of a local database server: kept off the measured server's core, and
their CPU time read.

The server under load has core 1 to itself only if the database does not run there
too.  A variant that makes the database work harder (durable tasks store and delete
rows) would otherwise be charged for the database's CPU on the server's core, which a
production database, on a machine of its own, never takes.  ``database_on_core`` moves
every process of a local server (PostgreSQL: the postmaster, whose new backends inherit
its mask, and its running backends) to the load core for a block, and back afterwards.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .servers import CLOCK_TICKS, stat_fields


def processes(name: str) -> list[int]:
    """The ids of the processes whose command is ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
        except OSError:
            continue  # ended meanwhile
    return found


def cpu_seconds(name: str = "postgres") -> float:
    """The CPU time of the processes called ``name``, those that ended included (their
    parent, the postmaster, counts its children once it has reaped them): the
    database's work over a window is the difference of two readings."""
    ticks = 0
    pids = set(processes(name))
    for pid in pids:
        try:
            fields = stat_fields(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        if int(fields[1]) not in pids:  # the postmaster: its reaped children's too
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def _pin(pids: list[int], cores: set[int]) -> int:
    """Set ``cores`` as the mask of each of ``pids``; how many it could set."""
    done = 0
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cores)
            done += 1
        except (ProcessLookupError, PermissionError):
            continue  # ended meanwhile, or another user's
    return done


@contextlib.contextmanager
def database_on_core(core: str, name: str = "postgres") -> Iterator[str]:
    """Run the block with the processes called ``name`` on ``core`` (none: left alone);
    yields what was done, for the report."""
    pids = processes(name) if core else []
    if not pids:
        yield "not pinned" if not core else f"not pinned (no {name} process found)"
        return
    before = {pid: os.sched_getaffinity(pid) for pid in pids}
    everywhere = set().union(*before.values())
    pinned = _pin(pids, {int(core)})
    try:
        yield f"pinned to core {core} with wrk ({pinned} of {len(pids)} processes)"
    finally:
        # Backends started meanwhile inherited the pin: every process gets the widest
        # mask seen before (the postmaster's).
        _pin(processes(name), everywhere)
