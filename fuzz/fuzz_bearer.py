"""Bearer-token extraction and verification.

The first line is the query string; each further line a header, ``name: value``
(``authorization``, ``x-token``, ...). Expected: no token (``None``), a peer,
or InvalidToken. The fast path for a lone ``Authorization`` header must
extract exactly what the general extraction does. Anything else is a crash.
"""

from __future__ import annotations

from typing import Any

from _common import fuzz, instrumented, latin1, lines

with instrumented():
    from peer_middleware.authenticators import JwtSvidAuthenticator, KubernetesTokenAuthenticator
    from peer_middleware.errors import InvalidToken
    from peer_middleware.keys import StaticJwks
    from peer_middleware.request import RequestView

from peer_middleware.testing.tokens import TokenMinter

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
ISSUER = "https://kubernetes.default.svc.cluster.local"
MINTER = TokenMinter(issuer=ISSUER)
KEYS = StaticJwks(MINTER.jwks())
YEAR = 365 * 86400


class _Extracted(Exception):
    pass


class Recording(JwtSvidAuthenticator):
    """Stops where verification would start and reports the extracted token."""

    def _verify(self, token: str, signed: str, now: float) -> Any:
        raise _Extracted(token)


SIMPLE = Recording(keys=KEYS, audience="payments", cache_size=0)
EVERYWHERE = JwtSvidAuthenticator(
    keys=KEYS, audience="payments", header="x-token", query_parameter="access_token"
)
KUBERNETES = KubernetesTokenAuthenticator(
    keys=KEYS, audience="payments", issuers=ISSUER, trust_domain="cluster.local"
)

SVID_TOKEN = MINTER.jwt_svid(CHECKOUT, "payments", lifetime=YEAR)
K8S_TOKEN = MINTER.kubernetes("shop", "checkout", "payments", lifetime=YEAR)
SEEDS = [
    f"\nauthorization: Bearer {SVID_TOKEN}".encode(),
    f"\nauthorization: bearer  {K8S_TOKEN} ".encode(),
    f"access_token={SVID_TOKEN}\n".encode(),
    f"\nx-token: {SVID_TOKEN}".encode(),
    f"\nx-token: Bearer {K8S_TOKEN}\nauthorization: Basic abc".encode(),
    b"\nauthorization: Bearer a, Bearer b",
    b"\nauthorization: Bearer \nauthorization: Bearer x",
    b"a=1&access_token=&access_token=x\nauthorization: Bearer e30.e30.",
]


def _outcome(request: RequestView) -> tuple[str, str | None]:
    try:
        peer = SIMPLE.authenticate(request)
    except _Extracted as found:
        return ("token", found.args[0])
    except InvalidToken:
        return ("refused", None)
    assert peer is None
    return ("none", None)


def test_one_input(data: bytes) -> None:
    fields = lines(data)
    query = latin1(fields[0])
    headers: dict[str, str] = {}
    for field in fields[1:]:
        key, _, value = latin1(field).partition(":")
        key = key.strip().lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    request = RequestView("GET", "/", ("10.0.0.1", 1), headers, query)
    outcome = _outcome(request)
    try:
        token = SIMPLE._extract(request)
    except InvalidToken:
        expected: tuple[str, str | None] = ("refused", None)
    else:
        expected = ("none", None) if token is None else ("token", token)
    assert outcome == expected, (outcome, expected)
    for authenticator in (EVERYWHERE, KUBERNETES):
        try:
            peer = authenticator.authenticate(request)
        except InvalidToken:
            continue
        assert peer is None or peer.principal == CHECKOUT, peer


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)
