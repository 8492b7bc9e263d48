"""Commit positions and the tokens that carry them between requests.

A position says how far a server's data goes: PostgreSQL's WAL position (an LSN,
``16/B374D848``), MariaDB's GTID position (``domain-server-seq`` per replication
domain).  A replica can serve a client once its replayed position has reached the
position of the client's last commit.

A position's ``encode()`` is the form a client's token carries (``tokens.py`` signs
it): nothing but digits, hex and separators, none of which a cookie value would need
quoting for.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# The server writes 16/B374D848; tokens write 16-B374D848 (no character a cookie
# value would need quoting for).
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})[/-]([0-9A-Fa-f]{1,8})")
_GTID = re.compile(r"(\d{1,10})-(\d{1,10})-(\d{1,20})")


class Position(ABC):
    """How far a server's data goes; compared with ``covers``."""

    __slots__ = ()

    @abstractmethod
    def covers(self, other: Position) -> bool:
        """Whether a server at ``self`` has everything a server at ``other`` has."""

    @abstractmethod
    def encode(self) -> str:
        """The position as token text (cookie-safe)."""


@dataclass(frozen=True, slots=True)
class LSN(Position):
    """A PostgreSQL WAL position."""

    value: int

    @classmethod
    def parse(cls, text: str) -> LSN | None:
        match = _LSN.fullmatch(text.strip())
        if match is None:
            return None
        return cls((int(match.group(1), 16) << 32) | int(match.group(2), 16))

    def covers(self, other: Position) -> bool:
        return isinstance(other, LSN) and self.value >= other.value

    def encode(self) -> str:
        return f"{self.value >> 32:X}-{self.value & 0xFFFFFFFF:X}"

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class GTIDPosition(Position):
    """A MariaDB GTID position: the highest sequence number seen per domain."""

    domains: Mapping[int, tuple[int, int]]  # domain -> (server id, sequence number)

    @classmethod
    def parse(cls, text: str) -> GTIDPosition | None:
        """Parse ``0-1-100,1-2-7`` (the server's form) or ``0-1-100_1-2-7`` (a token's)."""
        domains: dict[int, tuple[int, int]] = {}
        parts = [part for part in re.split(r"[,_\s]+", text.strip()) if part]
        for part in parts:
            match = _GTID.fullmatch(part)
            if match is None:
                return None
            domain, server, sequence = (int(group) for group in match.groups())
            if sequence >= domains.get(domain, (0, -1))[1]:
                domains[domain] = (server, sequence)
        return cls(domains)

    def covers(self, other: Position) -> bool:
        if not isinstance(other, GTIDPosition):
            return False
        return all(
            self.domains.get(domain, (0, -1))[1] >= sequence
            for domain, (_server, sequence) in other.domains.items()
        )

    def encode(self) -> str:
        return "_".join(
            f"{domain}-{server}-{sequence}"
            for domain, (server, sequence) in sorted(self.domains.items())
        )

    def __str__(self) -> str:
        return self.encode().replace("_", ",")


#: Bytes of a WAL page's header (64-bit builds): every page opens with the short one,
#: except the first page of a segment, which opens with the long one.
WAL_SHORT_PAGE_HEADER = 24
WAL_LONG_PAGE_HEADER = 40


def wal_record_end(position: LSN, block_size: int, segment_size: int) -> LSN:
    """An insert position (where the next record will start) as the end of the last one.

    Right after a page's header the two differ: after a segment switch on an idle
    primary, or a record that ends on a page boundary, the insert position is past the
    next page's header while a caught-up replica replays to the page's start (no record
    ends inside a header), so a replica compared with it would never catch up.
    ``block_size`` and ``segment_size`` are the server's ``wal_block_size`` and
    ``wal_segment_size`` in bytes.
    """
    value = position.value
    in_segment = value % segment_size
    if in_segment == WAL_LONG_PAGE_HEADER:
        return LSN(value - WAL_LONG_PAGE_HEADER)
    if in_segment >= block_size and value % block_size == WAL_SHORT_PAGE_HEADER:
        return LSN(value - WAL_SHORT_PAGE_HEADER)
    return position


def latest(positions: Iterable[Position | None]) -> Position | None:
    """The furthest of ``positions`` (several tokens: the latest wins), or None."""
    found: Position | None = None
    for position in positions:
        if position is None:
            continue
        if found is None or position.covers(found):
            found = position
        elif isinstance(found, GTIDPosition) and isinstance(position, GTIDPosition):
            # Neither covers the other (different domains ahead): their union.
            merged = dict(found.domains)
            for domain, (server, sequence) in position.domains.items():
                if sequence > merged.get(domain, (0, -1))[1]:
                    merged[domain] = (server, sequence)
            found = GTIDPosition(merged)
    return found


def parse_position(text: str | None, backend: str) -> Position | None:
    """A position as a server reports it (``pg_current_wal_lsn()``, ``@@gtid_binlog_pos``;
    a MariaDB server that never committed anything reports an empty position)."""
    if backend == "mysql":
        return GTIDPosition.parse(text or "")
    if backend == "postgresql" and text:
        return LSN.parse(text)
    return None
