"""The place in the application's code that issued a statement.

A statement runs in SQLAlchemy's greenlet, whose stack holds only SQLAlchemy and the
driver (and a function given to ``run_sync``); the coroutine that awaited
``db.read.execute(...)`` is on the stack of the greenlet that is waiting for it.
Both are walked, innermost first, up to the event loop, and the first frame outside
the libraries wins.  A statement a library sends on its own (the flush of a unit's
commit, in a task of its own) has no such frame.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import FrameType

import greenlet  # type: ignore[import-untyped]  # sqlalchemy[asyncio] depends on it

#: Modules whose frames are never the application's (matched as package prefixes).
_LIBRARIES = frozenset(
    {
        "sanic_sqlalchemy",
        "sqlalchemy",
        "greenlet",
        "asyncio",
        "contextlib",
        "functools",
        "concurrent",
        "threading",
        "asyncpg",
        "asyncmy",
        "aiosqlite",
        "uvloop",
        "sanic",
        "sanic_ext",
        "sanic_routing",
        "uvicorn",
    }
)


@dataclass(frozen=True)
class CallSite:
    """A file, a line and the function there."""

    filename: str
    lineno: int
    function: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}"


def application_call_site() -> CallSite | None:
    """The innermost frame of application code on the way to the running statement."""
    found = _first_outside_libraries(sys._getframe(1))
    if found is None:
        parent = greenlet.getcurrent().parent
        if parent is not None:
            found = _first_outside_libraries(parent.gr_frame)
    if found is None:
        return None
    return CallSite(found.f_code.co_filename, found.f_lineno, found.f_code.co_name)


def _first_outside_libraries(frame: FrameType | None) -> FrameType | None:
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module == "asyncio.events":
            # The event loop running a task's step: whatever called the loop (a test
            # runner, a server) did not issue the statement.
            return None
        if not _is_library(module):
            return frame
        frame = frame.f_back
    return None


def _is_library(module: str) -> bool:
    top = module.partition(".")[0]
    return top in _LIBRARIES
