"""One deferred call, as a unit keeps it from ``defer`` to its commit.

It holds the values its row is made of, not the row: most commits on PostgreSQL write
it straight into the SQL their ``COMMIT`` carries (``carried``), and only the others
build the row as a dict for a statement of SQLAlchemy's (``row``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .randomness import random_hex32
from .sql import Claimed
from .table import PENDING, RUNNING

#: The variant digit of a version-4 UUID (``10xx`` in binary), from a random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_task_id() -> str:
    """A random task id: a version-4 UUID's text, made without a ``uuid.UUID``."""
    h = random_hex32()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


@dataclass(slots=True)
class Deferred:
    """One deferred call: what its row holds, and the savepoint it waits for."""

    id: str
    name: str
    queue: str
    max_attempts: int
    #: The arguments as JSON (``payload.encode``).
    payload: str
    #: Milliseconds after the commit that it falls due (``configure(delay=)``); the
    #: commit's time is the row's ``created_at`` (one clock reading per commit).
    delay_ms: int
    savepoint: object | None
    #: Due at the commit (no ``delay``): the committing process runs it at once.
    immediate: bool
    #: Deferred with a ``key`` (its id is the key's, which another unit may have stored).
    keyed: bool
    #: The arguments as the run gets them, when they need no decoding (``payload.encode_call``).
    arguments: tuple[list[Any], dict[str, Any]] | None

    def row(self, claim: str | None, lease_until: int, now: int) -> dict[str, Any]:
        """The row to insert at ``now`` (the commit's time, ``sql.now_ms``): claimed by
        ``claim`` until ``lease_until`` (this process runs it right after the commit), or
        waiting (``claim`` is ``None``)."""
        claimed = claim is not None
        return {
            "id": self.id,
            "name": self.name,
            "queue": self.queue,
            "payload": self.payload,
            "state": RUNNING if claimed else PENDING,
            "attempts": 1 if claimed else 0,
            "max_attempts": self.max_attempts,
            "run_at": now + self.delay_ms,
            "lease_until": lease_until if claimed else None,
            "claim": claim,
            "created_at": now,
            "error": None,
        }

    def claimed_by(self, claim: str) -> Claimed:
        """The run this process starts after the commit that stores it claimed."""
        return Claimed(
            self.id, self.name, self.payload, 1, self.max_attempts, claim, None, self.arguments
        )
