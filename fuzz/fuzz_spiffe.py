"""SpiffeId.parse and validate_trust_domain on arbitrary text.

Expected: a SpiffeId that round-trips (``str(parse(s)) == s``), or an
InvalidSpiffeIdError. Anything else is a crash.
"""

from __future__ import annotations

import contextlib

from _common import fuzz, instrumented, text

with instrumented():
    from peer_middleware.errors import InvalidSpiffeIdError
    from peer_middleware.spiffe import SpiffeId, validate_trust_domain

SEEDS = [
    b"spiffe://cluster.local/ns/shop/sa/checkout",
    b"spiffe://example.org",
    b"spiffe://example.org/a/b.c/d-e_f",
    b"spiffe://td/",
    b"spiffe://td//a",
    b"spiffe://td/./a",
    b"spiffe://TD/a",
    b"spiffe://td:443/a",
    b"spiffe://user@td/a",
    b"spiffe://td/a?q#f",
    b"SPIFFE://td/a",
    b"spiffe://td/%41",
    b"spiffe://td/\xed\xa0\x80",
]


def test_one_input(data: bytes) -> None:
    value = text(data)
    try:
        sid = SpiffeId.parse(value)
    except InvalidSpiffeIdError:
        pass
    else:
        assert str(sid) == value, (sid, value)
        assert SpiffeId.parse(str(sid)) == sid
        assert SpiffeId.from_parts(sid.trust_domain, sid.path) == sid
        assert len(value.encode("utf-8", "surrogatepass")) <= 2048
    with contextlib.suppress(InvalidSpiffeIdError):
        assert validate_trust_domain(value) == value


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)
