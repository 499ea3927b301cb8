"""X.509-SVID chain decoding: split_pem_chain and X509SvidVerifier.verify.

The input is split at ``\\x00\\x00`` into chain entries; an entry that starts
with ``-`` is PEM text, any other DER bytes. Expected: a verified SVID or
AuthenticationFailed. Anything else is a crash.
"""

from __future__ import annotations

from _common import fuzz, instrumented, latin1

with instrumented():
    from peer_middleware.bundles import StaticX509Bundle
    from peer_middleware.errors import AuthenticationFailed
    from peer_middleware.x509 import X509SvidVerifier, split_pem_chain

from cryptography.hazmat.primitives.serialization import Encoding

from peer_middleware.testing import TestCA

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
CA = TestCA.create("cluster.local")
INTERMEDIATE = CA.intermediate()
DIRECT = CA.issue_svid(CHECKOUT)
CHAINED = INTERMEDIATE.issue_svid(CHECKOUT)
VERIFIER = X509SvidVerifier(StaticX509Bundle({"cluster.local": [CA.certificate]}), cache_size=0)
INTERMEDIATE_DER = INTERMEDIATE.certificate.public_bytes(Encoding.DER)

SEEDS = [
    DIRECT.der,
    DIRECT.cert_pem,
    CHAINED.der + b"\x00\x00" + INTERMEDIATE_DER,
    CHAINED.cert_pem + b"\x00\x00" + INTERMEDIATE.certificate.public_bytes(Encoding.PEM),
    CHAINED.chain_pem,
    b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
    b"\x30\x03\x02\x01\x00",
]


def test_one_input(data: bytes) -> None:
    try:
        blocks = split_pem_chain(latin1(data))
    except AuthenticationFailed:
        pass
    else:
        assert all(b.startswith("-----BEGIN") and b.endswith("CERTIFICATE-----") for b in blocks)
    chain: list[bytes | str] = [
        latin1(item) if item.startswith(b"-") else item for item in data.split(b"\x00\x00")
    ]
    try:
        svid = VERIFIER.verify(chain)
    except AuthenticationFailed:
        return
    assert svid.spiffe_id.uri == CHECKOUT, svid


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)
