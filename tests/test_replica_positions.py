"""Commit positions and client tokens: comparison, signatures, and hostile tokens read as
no token."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from sanic_sqlalchemy import SanicSQLAlchemyError
from sanic_sqlalchemy.errors import TokenTypeError
from sanic_sqlalchemy.replicas.positions import (
    LSN,
    GTIDPosition,
    latest,
    parse_position,
    wal_record_end,
)
from sanic_sqlalchemy.replicas.router import PROBE_INTERVAL
from sanic_sqlalchemy.replicas.tokens import TokenCodec, cluster_tag, given_tokens
from sanic_sqlalchemy.settings import TOKEN_TTL_MARGIN, default_token_names

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


SECRET = b"a secret of the application, 32b"
TAG = cluster_tag(make_url("postgresql+asyncpg://app:pw@primary:5432/shop"))


def _codec(backend: str = "postgresql", *, secret: bytes = SECRET, tag: str = TAG) -> TokenCodec:
    return TokenCodec(backend=backend, tag=tag, secret=secret, ttl=60)


def test_tokens_round_trip_and_expire_to_the_millisecond() -> None:
    """A token carries its position for the TTL, counted from its issue time to the
    millisecond (a token issued at .999 s lives its whole TTL), and is no token
    afterwards or before it."""
    position = LSN.parse("A/FF")
    assert position is not None
    issued_at = NOW + 0.999
    token = _codec().issue(position, now=issued_at)
    assert _codec().read(token, now=issued_at + 59.99) == position
    assert _codec().read(token, now=issued_at + 60.01) is None
    assert _codec().read(token, now=issued_at - 60) is None  # issued in the future
    gtid = GTIDPosition.parse("0-1-5,3-1-9")
    assert gtid is not None
    mysql = _codec("mysql")
    assert mysql.read(mysql.issue(gtid, now=NOW), now=NOW) == gtid
    # A PostgreSQL token means nothing to MariaDB.
    assert mysql.read(token, now=NOW) is None


def test_only_this_applications_tokens_of_this_cluster_count() -> None:
    """A token signed with another secret, for another cluster, with a changed position
    or signature, or in the unsigned form of 0.2's first drafts, is no token."""
    position = LSN.parse("1/10")
    assert position is not None
    token = _codec().issue(position, now=NOW)
    assert _codec().read(token, now=NOW) == position
    other_secret = _codec(secret=b"another application's secret!!!")
    assert other_secret.read(token, now=NOW) is None
    other_cluster = cluster_tag(make_url("postgresql+asyncpg://app:pw@other:5432/shop"))
    assert other_cluster != TAG
    assert cluster_tag(make_url("postgresql+asyncpg://x:y@primary:5432/shop")) == TAG
    assert _codec(tag=other_cluster).read(token, now=NOW) is None
    version, tag, lsn, issued, signature = token.split(".")
    for forged in (
        f"{version}.{tag}.FFFFFFFF-FFFFFFFF.{issued}.{signature}",
        f"{version}.{tag}.{lsn}.{int(issued) + 1000}.{signature}",
        f"{version}.{tag}.{lsn}.{issued}.{'A' * 22}",
        f"{version}.{tag}.{lsn}.{issued}",
        f"1.FFFFFFFF-FFFFFFFF.{int(NOW)}",
        f"1.{lsn}.{int(NOW)}",
    ):
        assert _codec().read(forged, now=NOW) is None, forged


@pytest.mark.parametrize(
    "token",
    [
        "",
        "'; DROP TABLE users; --",
        f"2.{TAG}.0/0'; DROP TABLE users; --.{int(NOW * 1000)}.{'A' * 22}",
        f"2.{TAG}." + "F" * 400 + f".{int(NOW * 1000)}.{'A' * 22}",
        "x" * 100_000,
        f"3.{TAG}.0-10.{int(NOW * 1000)}.{'A' * 22}",
        f"2.{TAG}.0-10.{int(NOW * 1000)}.{'A' * 22}.extra",
        f"2.{TAG}.0-10.{10**16}.{'A' * 22}",
        "2....",
        "\x00\x01",
        None,
        42,
        [f"2.{TAG}.0-10.1.{'A' * 22}"],
    ],
)
def test_hostile_tokens_are_no_token(token: object) -> None:
    """Malformed, forged, oversized or odd tokens are ignored: None, never an error."""
    assert _codec().read(token, now=NOW) is None
    assert _codec("mysql").read(token, now=NOW) is None


def test_db_unit_after_takes_str_and_bytes_and_refuses_the_rest() -> None:
    """``db.unit(after=...)`` takes tokens as str or bytes (what redis-py returns), alone
    or in a list with Nones; anything else is a ``TokenTypeError`` saying what it
    expected, a library error and a ``TypeError``."""
    assert given_tokens(None) == ()
    assert given_tokens("2.a") == ("2.a",)
    assert given_tokens(b"2.a") == ("2.a",)
    assert given_tokens([b"2.a", None, "2.b"]) == ("2.a", "2.b")
    assert given_tokens(b"\xff") == ("\xff",)  # not ASCII: a token that never parses
    for wrong in (123, 1.5, object(), [123], {"token": 1}.values()):
        with pytest.raises(TokenTypeError, match=r"expected a position token .* as str or bytes"):
            given_tokens(wrong)
    assert issubclass(TokenTypeError, SanicSQLAlchemyError)
    assert issubclass(TokenTypeError, TypeError)


def test_token_names_default_per_prefix() -> None:
    """Each config prefix has cookie and header names of its own by default."""
    assert default_token_names("DATABASE_") == ("db_position", "X-DB-Position")
    assert default_token_names("ANALYTICS_DATABASE_") == (
        "analytics_db_position",
        "X-Analytics-DB-Position",
    )
    assert default_token_names("REPORTS_") == ("reports_db_position", "X-Reports-DB-Position")


def test_the_ttl_margin_covers_the_probe() -> None:
    """The margin a token's TTL needs over the lag limit covers two probe intervals (how
    late the probe can first see a commit) and a second of clock difference."""
    assert TOKEN_TTL_MARGIN >= 2 * PROBE_INTERVAL + 1
