"""Direct mTLS through the ASGI and WSGI adapters, chains injected as servers hand them over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from peer_middleware import (
    Anyone,
    CertificateVerified,
    Guard,
    MtlsAuthenticator,
    Namespace,
    PeerMiddleware,
    PeerWSGIMiddleware,
    Policy,
    Proof,
    SidecarAsserted,
    StaticX509Bundle,
    X509SvidVerifier,
    XfccAuthenticator,
    allow,
)
from peer_middleware.testing import asgi_tls_extensions, wsgi_tls_environ, xfcc_header
from peer_middleware.testing.pki import Svid, TestCA

TD = "cluster.local"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create(TD)


@pytest.fixture(scope="module")
def cart(ca: TestCA) -> Svid:
    return ca.intermediate().issue_svid(CART)


def policy() -> Policy:
    return Policy(
        [
            allow(
                "strict",
                Namespace("shop", trust_domain=TD) & CertificateVerified(),
                paths="/strict",
            ),
            allow(
                "sidecar-ok",
                Namespace("shop", trust_domain=TD) & (CertificateVerified() | SidecarAsserted()),
                paths="/sidecar",
            ),
            allow("permissive", Anyone(), paths="/open"),
        ]
    )


def authenticators(ca: TestCA) -> list[Any]:
    verifier = X509SvidVerifier(StaticX509Bundle({TD: [ca.certificate]}))
    return [MtlsAuthenticator(verifier), XfccAuthenticator(trusted_proxies=["127.0.0.1"])]


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    peer = scope["peer_middleware.peer"]
    body = b"none" if peer is None else f"{peer.principal} {peer.proof.value}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def asgi_call(
    app: PeerMiddleware,
    path: str,
    extensions: dict[str, Any] | None,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> tuple[int, bytes]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": list(headers),
        "client": ("127.0.0.1", 40000),
    }
    if extensions is not None:
        scope["extensions"] = extensions
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def pem_chain(svid: Svid) -> list[str]:
    return [c.public_bytes(Encoding.PEM).decode() for c in (svid.certificate, *svid.chain)]


ASGI_CASES: list[tuple[str, str, Callable[[Svid, TestCA], dict[str, Any] | None], int, bytes]] = [
    (
        "strict-with-cert",
        "/strict",
        lambda s, c: asgi_tls_extensions(s),
        200,
        f"{CART} mtls".encode(),
    ),
    (
        "sidecar-route-with-cert",
        "/sidecar",
        lambda s, c: asgi_tls_extensions(s),
        200,
        f"{CART} mtls".encode(),
    ),
    ("strict-without-tls", "/strict", lambda s, c: None, 401, BODY_401),
    (
        "strict-tls-without-cert",
        "/strict",
        lambda s, c: {"tls": {"client_cert_chain": []}},
        401,
        BODY_401,
    ),
    (
        "permissive-without-cert",
        "/open",
        lambda s, c: {"tls": {"client_cert_chain": []}},
        200,
        b"none",
    ),
    (
        "untrusted-cert-even-on-permissive",
        "/open",
        lambda s, c: asgi_tls_extensions(TestCA.create(TD).issue_svid(CART)),
        401,
        BODY_401,
    ),
    (
        "garbage-chain",
        "/open",
        lambda s, c: {"tls": {"client_cert_chain": ["garbage"]}},
        401,
        BODY_401,
    ),
    (
        "thousand-entries",
        "/open",
        lambda s, c: {"tls": {"client_cert_chain": pem_chain(s) * 500}},
        401,
        BODY_401,
    ),
    (
        "one-megabyte",
        "/open",
        lambda s, c: {"tls": {"client_cert_chain": ["A" * 1024 * 1024]}},
        401,
        BODY_401,
    ),
    ("tls-not-a-dict", "/open", lambda s, c: {"tls": "weird"}, 200, b"none"),
    ("extensions-not-a-dict", "/open", lambda s, c: "weird", 200, b"none"),  # type: ignore[return-value]
]


@pytest.mark.parametrize(
    ("path", "make", "status", "body"),
    [pytest.param(p, m, st, b, id=name) for name, p, m, st, b in ASGI_CASES],
)
def test_asgi_mtls(ca: TestCA, cart: Svid, path: str, make: Any, status: int, body: bytes) -> None:
    app = PeerMiddleware(_asgi_app, policy=policy(), authenticators=authenticators(ca))
    assert app.guard.reads_tls
    assert asgi_call(app, path, make(cart, ca)) == (status, body)


def test_asgi_sidecar_word_is_not_mtls_grade(ca: TestCA) -> None:
    app = PeerMiddleware(_asgi_app, policy=policy(), authenticators=authenticators(ca))
    headers = [(b"x-forwarded-client-cert", xfcc_header(CART).encode())]
    assert asgi_call(app, "/sidecar", None, headers) == (200, f"{CART} proxy-asserted".encode())
    assert asgi_call(app, "/strict", None, headers)[0] == 403


def test_refusal_is_logged_precisely(ca: TestCA, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="peer_middleware")
    app = PeerMiddleware(_asgi_app, policy=policy(), authenticators=authenticators(ca))
    other = TestCA.create(TD).issue_svid(CART)
    asgi_call(app, "/open", asgi_tls_extensions(other))
    record = caplog.records[-1]
    reason = record.peer_middleware["reason"]  # type: ignore[attr-defined]
    assert reason.startswith(
        "certificate chain does not verify against the trust bundle of 'cluster.local': "
    )
    assert "BEGIN CERTIFICATE" not in record.getMessage()


def test_tls_chain_is_not_read_without_a_tls_authenticator(ca: TestCA, cart: Svid) -> None:
    app = PeerMiddleware(
        _asgi_app,
        policy=policy(),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    assert not app.guard.reads_tls
    assert asgi_call(app, "/strict", asgi_tls_extensions(cart))[0] == 401


def test_repeat_caller_gets_the_same_peer(ca: TestCA, cart: Svid) -> None:
    guard = Guard(policy=policy(), authenticators=authenticators(ca))
    chain = tuple(pem_chain(cart))
    first = guard.check("GET", "/strict", "/strict", ("10.0.0.1", 1), {}, tls_chain=chain)
    second = guard.check("GET", "/strict", "/strict", ("10.0.0.1", 1), {}, tls_chain=tuple(chain))
    assert first.allowed
    assert second.peer is first.peer
    assert first.peer is not None
    assert first.peer.proof is Proof.MTLS
    assert first.peer.certificate_sha256 == cart.fingerprint_sha256
    assert first.peer.source == "mtls"


# --- WSGI -------------------------------------------------------------------------


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    peer = environ["peer_middleware.peer"]
    start_response("200 OK", [])
    return [b"none" if peer is None else f"{peer.principal} {peer.proof.value}".encode()]


class FakeSocket:
    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        assert binary_form
        return self.der


class BrokenSocket:
    def getpeercert(self, binary_form: bool = False) -> bytes:
        raise ValueError("not connected")


WSGI_CASES: list[tuple[str, str, Callable[[Svid, TestCA], dict[str, Any]], str, bytes]] = [
    (
        "mod-wsgi-chain",
        "/strict",
        lambda s, c: wsgi_tls_environ(s),
        "200 OK",
        f"{CART} mtls".encode(),
    ),
    (
        "werkzeug-leaf-only-root-signed",
        "/strict",
        lambda s, c: {"SSL_CLIENT_CERT": c.issue_svid(CART).cert_pem.decode()},
        "200 OK",
        f"{CART} mtls".encode(),
    ),
    (
        "leaf-without-its-intermediate",
        "/strict",
        lambda s, c: {"SSL_CLIENT_CERT": s.cert_pem.decode()},
        "401 Unauthorized",
        BODY_401,
    ),
    (
        "gunicorn-socket",
        "/strict",
        lambda s, c: {"gunicorn.socket": FakeSocket(c.issue_svid(CART).der)},
        "200 OK",
        f"{CART} mtls".encode(),
    ),
    (
        "gunicorn-no-cert",
        "/strict",
        lambda s, c: {"gunicorn.socket": FakeSocket(None)},
        "401 Unauthorized",
        BODY_401,
    ),
    (
        "gunicorn-broken-socket",
        "/open",
        lambda s, c: {"gunicorn.socket": BrokenSocket()},
        "200 OK",
        b"none",
    ),
    (
        "gunicorn-plain-socket",
        "/open",
        lambda s, c: {"gunicorn.socket": object()},
        "200 OK",
        b"none",
    ),
    ("no-cert-permissive", "/open", lambda s, c: {}, "200 OK", b"none"),
    (
        "garbage",
        "/open",
        lambda s, c: {"SSL_CLIENT_CERT": "-----BEGIN CERTIFICATE-----\nxx"},
        "401 Unauthorized",
        BODY_401,
    ),
    (
        "one-megabyte",
        "/open",
        lambda s, c: {"SSL_CLIENT_CERT": "x" * 1024 * 1024},
        "401 Unauthorized",
        BODY_401,
    ),
    (
        "thousand-chain-entries",
        "/open",
        lambda s, c: {
            "SSL_CLIENT_CERT": s.cert_pem.decode(),
            **{f"SSL_CLIENT_CERT_CHAIN_{n}": "x" for n in range(1000)},
        },
        "401 Unauthorized",
        BODY_401,
    ),
    ("not-a-string", "/open", lambda s, c: {"SSL_CLIENT_CERT": 42}, "200 OK", b"none"),
]


@pytest.mark.parametrize(
    ("path", "make", "status", "body"),
    [pytest.param(p, m, st, b, id=name) for name, p, m, st, b in WSGI_CASES],
)
def test_wsgi_mtls(ca: TestCA, cart: Svid, path: str, make: Any, status: str, body: bytes) -> None:
    app = PeerWSGIMiddleware(_wsgi_app, policy=policy(), authenticators=authenticators(ca))
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "REMOTE_ADDR": "10.0.0.9",
        "REMOTE_PORT": "5000",
        **make(cart, ca),
    }
    seen: list[str] = []
    result = app(environ, lambda s, h: seen.append(s))
    assert (seen[0], b"".join(result)) == (status, body)


def test_mtls_authenticator_shape(ca: TestCA) -> None:
    authenticator = authenticators(ca)[0]
    assert authenticator.name == "mtls"
    assert authenticator.header_names == ()
    assert authenticator.forwarded is False
    assert authenticator.reads_tls is True
    with pytest.raises(ValueError, match="is not an X509SvidVerifier"):
        MtlsAuthenticator(object())  # type: ignore[arg-type]
