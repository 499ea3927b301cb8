"""Every forwarded-certificate preset's decoding, on arbitrary header values.

The first line names the preset (``nginx``, ``haproxy``, ...; anything else
picks one by its length); each further line is a header, ``name: value``.
Every decoder also gets the first header's value directly. Expected: a peer,
``None`` or AuthenticationFailed from the authenticator (with a verifier that
accepts any decoded chain, and with a real X509SvidVerifier), and a list of
DER certificates or the decoders' own error. Anything else is a crash.
"""

from __future__ import annotations

from _common import fuzz, instrumented, latin1, lines

with instrumented():
    from peer_middleware.authenticators import (
        ForwardedCertificateAuthenticator,
        LinkerdIdentityAuthenticator,
    )
    from peer_middleware.bundles import StaticX509Bundle
    from peer_middleware.certs import (
        decode_der_base64,
        decode_der_base64_list,
        decode_der_concatenation,
        decode_pem,
        decode_sf_binary,
        decode_sf_binary_list,
    )
    from peer_middleware.errors import AuthenticationFailed, CertificateDecodingError
    from peer_middleware.presets import Preset
    from peer_middleware.request import RequestView
    from peer_middleware.spiffe import SpiffeId
    from peer_middleware.x509 import X509SvidVerifier

import contextlib

from peer_middleware.testing import TestCA, forwarded_cert_headers, linkerd_client_id

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
CA = TestCA.create("cluster.local")
DIRECT = CA.issue_svid(CHECKOUT)
CHAINED = CA.intermediate().issue_svid(CHECKOUT)
VERIFIER = X509SvidVerifier(StaticX509Bundle({"cluster.local": [CA.certificate]}))
PRESETS = list(Preset)


class _Verified:
    spiffe_id = SpiffeId.parse(CHECKOUT)
    sha256 = "0" * 64
    not_after = None


class AcceptingVerifier:
    """Accepts any chain the decoders produce, so decoding is explored past verification."""

    def verify(self, chain: list[bytes]) -> _Verified:
        assert chain, "empty chain handed to the verifier"
        assert all(isinstance(c, bytes) and c for c in chain), chain
        return _Verified()


def _authenticators(preset: Preset) -> list[ForwardedCertificateAuthenticator]:
    return [
        ForwardedCertificateAuthenticator(
            preset, trusted_proxies=["127.0.0.1"], verifier=verifier, cache_size=0
        )
        for verifier in (AcceptingVerifier(), VERIFIER)
    ]


AUTHENTICATORS = {preset: _authenticators(preset) for preset in PRESETS}
LINKERD = LinkerdIdentityAuthenticator(
    trusted_proxies=["127.0.0.1"], trust_domain="cluster.local", cache_size=0
)
DECODERS = [
    decode_pem,
    decode_der_base64,
    decode_der_base64_list,
    decode_sf_binary,
    decode_sf_binary_list,
    decode_der_concatenation,
]


def _seed(preset: Preset, headers: dict[str, str]) -> bytes:
    return "\n".join([preset.value, *(f"{k}: {v}" for k, v in headers.items())]).encode("latin-1")


SEEDS = [
    _seed(preset, forwarded_cert_headers(preset, svid))
    for preset in PRESETS
    for svid in (CHAINED if preset.value in ("traefik", "haproxy", "gcp") else DIRECT, None)
]
SEEDS += [
    b"linkerd\nl5d-client-id: " + linkerd_client_id(CHECKOUT).encode(),
    b"rfc9440\nclient-cert: :MA==:\nclient-cert-chain: :MA:, :MIA=:",
    b"haproxy\nx-ssl-client-cert: MA==\nx-ssl-client-chain: MIIBAA==\nx-ssl-client-used: 1"
    b"\nx-ssl-client-verify: 0",
]


def test_one_input(data: bytes) -> None:
    fields = lines(data)
    name = latin1(fields[0]).strip()
    headers: dict[str, str] = {}
    for field in fields[1:]:
        key, _, value = latin1(field).partition(":")
        key = key.strip().lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    if headers:
        first = next(iter(headers.values()))
        for decode in DECODERS:
            try:
                certs = decode(first)
            except CertificateDecodingError:
                continue
            assert isinstance(certs, (bytes, list))
    request = RequestView("GET", "/", ("127.0.0.1", 1), headers)
    if name == "linkerd":
        with contextlib.suppress(AuthenticationFailed):
            LINKERD.authenticate(request)
        return
    try:
        preset = Preset(name)
    except ValueError:
        preset = PRESETS[len(name) % len(PRESETS)]
    for authenticator in AUTHENTICATORS[preset]:
        try:
            peer = authenticator.authenticate(request)
        except AuthenticationFailed:
            continue
        assert peer is None or peer.principal == CHECKOUT, peer


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)
