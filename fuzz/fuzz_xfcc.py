"""parse_xfcc / format_xfcc and XfccAuthenticator on arbitrary header values.

Expected: parse_xfcc returns elements that format_xfcc writes back to the
same elements, or raises XfccSyntaxError; the authenticator (with and
without a certificate verifier) returns a peer or raises
AuthenticationFailed. Anything else is a crash.
"""

from __future__ import annotations

from _common import fuzz, instrumented, latin1

with instrumented():
    from peer_middleware.authenticators import XfccAuthenticator
    from peer_middleware.bundles import StaticX509Bundle
    from peer_middleware.errors import AuthenticationFailed
    from peer_middleware.request import RequestView
    from peer_middleware.x509 import X509SvidVerifier
    from peer_middleware.xfcc import XfccSyntaxError, format_xfcc, parse_xfcc

import contextlib

from peer_middleware.testing import TestCA, xfcc_header

CA = TestCA.create("cluster.local")
LEAF = CA.issue_svid("spiffe://cluster.local/ns/shop/sa/checkout")
SVID = CA.intermediate().issue_svid("spiffe://cluster.local/ns/shop/sa/checkout")
VERIFIER = X509SvidVerifier(StaticX509Bundle({"cluster.local": [CA.certificate]}))
AUTHENTICATORS = [
    XfccAuthenticator(trusted_proxies=["127.0.0.1"], cache_size=0),
    XfccAuthenticator(
        trusted_proxies=["127.0.0.1"],
        expected_by="spiffe://cluster.local/ns/shop/sa/payments",
        verifier=VERIFIER,
        allow_sidecar_asserted=True,
        forward_client_cert="append_forward",
        cache_size=0,
    ),
]

SEEDS = [
    xfcc_header("spiffe://cluster.local/ns/shop/sa/checkout").encode(),
    xfcc_header(LEAF, include_cert=True, include_chain=False).encode(),
    xfcc_header(SVID, include_cert=True).encode(),
    b'By=spiffe://cluster.local/ns/shop/sa/payments;URI="spiffe://cluster.local/ns/a/sa/b"',
    b'By=x;Subject="/C=US/CN=a,b";URI=spiffe://td/a,By=y;URI=spiffe://td/b;DNS=a.b',
    b'URI="a\\"b";Hash=' + b"0" * 64,
    b"URI=a;",
    b"URI=a,",
    b"uri = spiffe://td/a ; dns=x",
]


def test_one_input(data: bytes) -> None:
    value = latin1(data)
    try:
        elements = parse_xfcc(value)
    except XfccSyntaxError:
        pass
    else:
        assert elements
        assert parse_xfcc(format_xfcc(elements)) == elements, value
    headers = {"x-forwarded-client-cert": value}
    for authenticator in AUTHENTICATORS:
        with contextlib.suppress(AuthenticationFailed):
            authenticator.authenticate(RequestView("GET", "/", ("127.0.0.1", 1), headers))


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)
