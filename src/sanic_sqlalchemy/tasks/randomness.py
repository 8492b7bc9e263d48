"""Random hex for task ids and claims, read from the OS a block at a time.

Every deferred task needs 16 random bytes for its id and every commit that stores tasks
16 for its claim; one ``os.urandom`` per block of 256 saves a system call each.  Each
block hands out its slices by an atomic counter (no two callers, threads included, get
the same one), and a forked child starts a block of its own, so that two processes
never share bytes.
"""

from __future__ import annotations

import itertools
import os

#: Slices of 16 bytes (32 hex digits) per block read from the OS.
_SLICES = 256


class _Block:
    __slots__ = ("hex", "taken")

    def __init__(self) -> None:
        self.hex = os.urandom(16 * _SLICES).hex()
        #: ``next`` of an ``itertools.count`` is atomic: each slice goes to one caller.
        self.taken = itertools.count()


_block = _Block()


def random_hex32() -> str:
    """32 random hex digits (16 bytes from the OS)."""
    global _block
    block = _block
    index = next(block.taken)
    if index < _SLICES:
        start = index * 32
        return block.hex[start : start + 32]
    # Used up: a fresh block (two threads may both make one; neither repeats a slice).
    _block = _Block()
    return random_hex32()


def _after_fork() -> None:
    global _block
    _block = _Block()


os.register_at_fork(after_in_child=_after_fork)
