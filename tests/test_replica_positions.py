"""Commit positions and client tokens: comparison, and hostile tokens read as no token."""

from __future__ import annotations

import pytest

from sanic_sqlalchemy.replicas.positions import (
    LSN,
    GTIDPosition,
    issue_token,
    latest,
    parse_position,
    read_token,
    wal_record_end,
)

NOW = 1_800_000_000.0


def test_lsn_order_and_round_trip() -> None:
    """PostgreSQL positions compare by their 64-bit value and encode back to the server's form."""
    low, high = LSN.parse("0/16B3748"), LSN.parse("16/B374D848")
    assert low is not None and high is not None
    assert high.covers(low) and not low.covers(high) and high.covers(high)
    assert high.encode() == "16-B374D848" and str(high) == "16/B374D848"
    assert LSN.parse(high.encode()) == high


def test_gtid_positions_compare_per_domain() -> None:
    """A MariaDB position covers another when it is as far along in every domain."""
    primary = GTIDPosition.parse("0-1-100,1-2-7")
    replica = GTIDPosition.parse("0-1-99,1-2-7")
    assert primary is not None and replica is not None
    assert primary.covers(replica) and not replica.covers(primary)
    other_domain = GTIDPosition.parse("2-3-1")
    assert other_domain is not None and not primary.covers(other_domain)
    assert GTIDPosition.parse(primary.encode()) == primary
    assert parse_position("", "mysql") == GTIDPosition({})
    assert latest([replica, other_domain, None]) == GTIDPosition.parse("0-1-99,1-2-7,2-3-1")


def test_an_insert_position_after_a_page_header_is_the_page_start() -> None:
    """Right after a segment's long header or a page's short header, an insert position
    counts as the boundary a replica replays to; anywhere else it is kept."""
    block, segment = 8192, 16 << 20

    def end(text: str) -> str:
        position = LSN.parse(text)
        assert position is not None
        return str(wal_record_end(position, block, segment))

    assert end("0/4000028") == "0/4000000"  # after pg_switch_wal(): the long header
    assert end("1/2002018") == "1/2002000" and end("1/3000028") == "1/3000000"
    assert end("0/4000018") == "0/4000018"  # inside a long header: no such position
    for kept in ("0/4000030", "0/4002020", "0/4002028", "0/4000000", "0/16B3748"):
        assert end(kept) == kept


def test_tokens_round_trip_and_expire() -> None:
    """A token carries its position for the TTL and is no token afterwards or before it."""
    position = LSN.parse("A/FF")
    assert position is not None
    token = issue_token(position, now=NOW)
    assert read_token(token, "postgresql", ttl=60, now=NOW + 59) == position
    assert read_token(token, "postgresql", ttl=60, now=NOW + 61) is None
    assert read_token(token, "postgresql", ttl=60, now=NOW - 60) is None  # issued in the future
    gtid = GTIDPosition.parse("0-1-5,3-1-9")
    assert gtid is not None
    assert read_token(issue_token(gtid, now=NOW), "mysql", ttl=60, now=NOW) == gtid
    # A PostgreSQL token means nothing to MariaDB.
    assert read_token(token, "mysql", ttl=60, now=NOW) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        "'; DROP TABLE users; --",
        f"1.0/0'; DROP TABLE users; --.{int(NOW)}",
        "1." + "F" * 400 + f".{int(NOW)}",
        "x" * 100_000,
        f"2.0/10.{int(NOW)}",
        f"1.0/10.{int(NOW)}.extra",
        f"1.FFFFFFFFF/0.{int(NOW)}",
        f"1.0/10.{10**13}",
        "1..1",
        "\x00\x01",
        None,
        42,
        ["1.0/10.1"],
    ],
)
def test_hostile_tokens_are_no_token(token: object) -> None:
    """Malformed, forged, oversized or odd tokens are ignored: None, never an error."""
    assert read_token(token, "postgresql", ttl=60, now=NOW) is None
    assert read_token(token, "mysql", ttl=60, now=NOW) is None
