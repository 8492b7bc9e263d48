"""Random task ids and claims, made a block at a time from one read of OS randomness.

Every deferred task needs a random id and every commit that stores tasks a claim.  One
``os.urandom`` serves a block of 256, formatted together (a tight loop, while the code
is in the cache), and each call takes the next string of its block: no system call and
next to no work on the request's path.  A list iterator's ``next`` is atomic, so no two
callers, threads included, get the same string; a forked child makes blocks of its own,
so that two processes never share bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

#: Strings per block read from the OS (16 random bytes each).
_PER_BLOCK = 256

#: The variant digit of a version-4 UUID (``10xx`` in binary), from a random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _hex32s(digits: str) -> list[str]:
    return [digits[start : start + 32] for start in range(0, len(digits), 32)]


def _uuid4s(digits: str) -> list[str]:
    """Version-4 UUIDs' text from 32 hex digits each, made without a ``uuid.UUID``."""
    variant = _VARIANT
    return [
        f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:]}"
        for h in _hex32s(digits)
    ]


class _Pool:
    """Strings that ``make`` formats from blocks of OS randomness, one per call."""

    __slots__ = ("_make", "_next")

    def __init__(self, make: Callable[[str], list[str]]) -> None:
        self._make = make
        self._next: Callable[[], str] = self._fill()

    def _fill(self) -> Callable[[], str]:
        block: Iterator[str] = iter(self._make(os.urandom(16 * _PER_BLOCK).hex()))
        self._next = block.__next__
        return self._next

    def take(self) -> str:
        try:
            return self._next()
        except StopIteration:
            # Used up: a fresh block (two threads may both make one; neither repeats).
            self._fill()
            return self.take()


_ids = _Pool(_uuid4s)
_claims = _Pool(_hex32s)

#: A random task id: a version-4 UUID's text.
new_task_id = _ids.take
#: 32 random hex digits (16 bytes from the OS): a claim's token.
random_hex32 = _claims.take


def _after_fork() -> None:
    _ids._fill()
    _claims._fill()


os.register_at_fork(after_in_child=_after_fork)
