"""Position tokens: what a client carries between requests (cookie or header), signed.

A token is ``2.<cluster>.<position>.<issued>.<signature>``: the cluster it belongs to
(a short hash of the primary's backend, host, port and database name, so that a token
of another database of the application is no token), the commit position, when it was
issued (Unix time in milliseconds: a token truncated to whole seconds would expire up
to a second early), and an HMAC-SHA256 of all that under the application's secret
(``DATABASE_TOKEN_SECRET``), so that only tokens this application issued count.

Tokens come from the outside, so reading one never raises and costs little: the length,
the shape, the cluster, the issue time are checked before the signature (one HMAC of
about 60 bytes), and the position is parsed only from a token whose signature holds.
A malformed, unsigned, forged, oversized, expired or future-dated token is no token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Iterable

from sqlalchemy.engine import URL

from ..errors import TokenTypeError
from .positions import LSN, GTIDPosition, Position

#: The token format's version, its first field.
VERSION = "2"
#: Longer tokens are ignored unread.
MAX_TOKEN_LENGTH = 512
#: Seconds a token's issue time may lie in the future (clocks of several servers).
CLOCK_SKEW = 5.0
#: Bytes of the HMAC kept in a token (128 bits).
SIGNATURE_BYTES = 16

_TOKEN = re.compile(r"2\.([0-9a-f]{8})\.([0-9A-Fa-f_\-]{1,400})\.(\d{1,15})\.([A-Za-z0-9_\-]{22})")


def cluster_tag(url: URL) -> str:
    """Eight hex digits that name the cluster whose primary is at ``url`` (never its
    user or password): the same in every worker and server that uses the same URL."""
    name = f"{url.get_backend_name()}\0{url.host or ''}\0{url.port or ''}\0{url.database or ''}"
    return hashlib.sha256(name.encode()).hexdigest()[:8]


class TokenCodec:
    """Issues and reads the tokens of one database (one cluster, one secret)."""

    __slots__ = ("_backend", "_secret", "_tag", "_ttl_ms")

    def __init__(self, *, backend: str, tag: str, secret: bytes, ttl: float) -> None:
        self._backend = backend
        self._tag = tag
        self._secret = secret
        self._ttl_ms = ttl * 1000.0

    def _signature(self, body: str) -> str:
        digest = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:SIGNATURE_BYTES]).rstrip(b"=").decode()

    def issue(self, position: Position, now: float | None = None) -> str:
        """The token for a commit at ``position``, issued ``now`` (Unix time)."""
        issued = int((time.time() if now is None else now) * 1000)
        body = f"{VERSION}.{self._tag}.{position.encode()}.{issued}"
        return f"{body}.{self._signature(body)}"

    def read(self, token: object, now: float | None = None) -> Position | None:
        """The position a client's token asks for, or None for anything but a token
        this application issued for this cluster, unexpired."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        token = token.strip()
        match = _TOKEN.fullmatch(token)
        if match is None or match.group(1) != self._tag:
            return None
        issued = int(match.group(3))
        current = (time.time() if now is None else now) * 1000.0
        if issued > current + CLOCK_SKEW * 1000.0 or issued < current - self._ttl_ms:
            return None
        body = token[: match.start(4) - 1]
        if not hmac.compare_digest(self._signature(body), match.group(4)):
            return None
        text = match.group(2)
        if self._backend == "postgresql":
            return LSN.parse(text)
        if self._backend == "mysql":
            return GTIDPosition.parse(text)
        return None


def given_tokens(after: object) -> tuple[str, ...]:
    """The tokens ``db.unit(after=...)`` was given, as text.

    A token is ``str`` or ``bytes`` (what redis-py and most caches return); ``None``
    and an iterable of tokens (and Nones) are accepted too.  Anything else is a mistake
    of the caller, not a client's bad token, so it raises ``TokenTypeError`` rather
    than being ignored.
    """
    if after is None:
        return ()
    if isinstance(after, (str, bytes, bytearray)):
        return (_as_text(after),)
    if not isinstance(after, Iterable):
        raise TokenTypeError(_expected(after))
    tokens: list[str] = []
    for item in after:
        if item is None:
            continue
        if not isinstance(item, (str, bytes, bytearray)):
            raise TokenTypeError(_expected(item))
        tokens.append(_as_text(item))
    return tuple(tokens)


def _as_text(token: str | bytes | bytearray) -> str:
    # Latin-1 never fails: a byte that is not ASCII makes a token that does not parse.
    return token if isinstance(token, str) else bytes(token).decode("latin-1")


def _expected(value: object) -> str:
    return (
        "db.unit(after=...): expected a position token (a unit's commit_token, as str "
        "or bytes), several of them in a list, or None; got "
        f"{type(value).__name__} {value!r:.60}. Pass the token exactly as "
        "unit.commit_token gave it."
    )
