"""Forwarded client certificates (every preset) and Linkerd's l5d-client-id."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from urllib.parse import quote

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from peer_middleware import Authenticated, Guard, PeerMiddleware, Policy, Proof, allow
from peer_middleware.authenticators import (
    ForwardedCertificateAuthenticator,
    LinkerdIdentityAuthenticator,
)
from peer_middleware.authenticators.forwarded import MAX_FORWARDED_HEADER_LENGTH
from peer_middleware.bundles import StaticX509Bundle
from peer_middleware.errors import (
    AuthenticationFailed,
    CertificateDecodingError,
    ConfigurationError,
)
from peer_middleware.presets import Preset
from peer_middleware.request import RequestView
from peer_middleware.testing import (
    Svid,
    TestCA,
    forwarded_cert_headers,
    linkerd_client_id,
)
from peer_middleware.x509 import X509SvidVerifier

# Spelled in two parts so that no tracked file holds a private-key armour line.
KEY_LABEL = "PRIVATE" + " KEY"

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
PROXY = ("127.0.0.1", 41000)
OUTSIDER = ("10.1.2.3", 41000)
#: Presets whose proxy forwards the client's intermediates as well as the leaf.
WITH_CHAIN = {
    Preset.TRAEFIK,
    Preset.HAPROXY,
    Preset.APACHE,
    Preset.AWS_ALB_PASSTHROUGH,
    Preset.GCP,
    Preset.RFC9440,
}
PRESETS = list(Preset)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create("cluster.local")


@pytest.fixture(scope="module")
def chained(ca: TestCA) -> Svid:
    """An SVID issued by an intermediate: verifiable only with the chain."""
    return ca.intermediate().issue_svid(CHECKOUT)


@pytest.fixture(scope="module")
def direct(ca: TestCA) -> Svid:
    """An SVID issued by the root itself: verifiable from the leaf alone."""
    return ca.issue_svid(CHECKOUT)


@pytest.fixture(scope="module")
def verifier(ca: TestCA) -> X509SvidVerifier:
    return X509SvidVerifier(StaticX509Bundle({"cluster.local": [ca.certificate]}))


def svid_for(preset: Preset, chained: Svid, direct: Svid) -> Svid:
    return chained if preset in WITH_CHAIN else direct


def authenticator(
    preset: Preset | str, verifier: X509SvidVerifier, **kwargs: object
) -> ForwardedCertificateAuthenticator:
    return ForwardedCertificateAuthenticator(
        preset,
        trusted_proxies=["127.0.0.1", "::1"],
        verifier=verifier,
        **kwargs,  # type: ignore[arg-type]
    )


def view(headers: dict[str, str], client: tuple[str, int] | None = PROXY) -> RequestView:
    return RequestView("GET", "/", client, {k.lower(): v for k, v in headers.items()})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- every preset: the right identity, nothing, or ignored --------------------------------


@pytest.mark.parametrize("preset", PRESETS, ids=str)
def test_preset_accepts_the_forwarded_certificate(
    preset: Preset, chained: Svid, direct: Svid, verifier: X509SvidVerifier
) -> None:
    svid = svid_for(preset, chained, direct)
    peer = authenticator(preset, verifier).authenticate(view(forwarded_cert_headers(preset, svid)))
    assert peer is not None
    assert peer.principal == CHECKOUT
    assert peer.proof is Proof.FORWARDED_CERTIFICATE
    assert peer.proxy == "127.0.0.1"
    assert peer.certificate_sha256 == svid.fingerprint_sha256
    assert peer.source == f"forwarded-{preset.value}"


@pytest.mark.parametrize("preset", PRESETS, ids=str)
def test_preset_accepts_preset_by_name(
    preset: Preset, chained: Svid, direct: Svid, verifier: X509SvidVerifier
) -> None:
    svid = svid_for(preset, chained, direct)
    peer = authenticator(preset.value, verifier).authenticate(
        view(forwarded_cert_headers(preset, svid))
    )
    assert peer is not None
    assert peer.principal == CHECKOUT


@pytest.mark.parametrize("preset", PRESETS, ids=str)
def test_no_certificate_is_anonymous(preset: Preset, verifier: X509SvidVerifier) -> None:
    request = view(forwarded_cert_headers(preset, None))
    assert authenticator(preset, verifier).authenticate(request) is None
    assert request.notes is None


@pytest.mark.parametrize("preset", PRESETS, ids=str)
def test_untrusted_peer_is_ignored(
    preset: Preset, chained: Svid, direct: Svid, verifier: X509SvidVerifier
) -> None:
    headers = forwarded_cert_headers(preset, svid_for(preset, chained, direct))
    for client in (OUTSIDER, None, ("testclient", 50000)):
        request = view(headers, client)
        assert authenticator(preset, verifier).authenticate(request) is None
        assert request.notes is not None
        assert "from an untrusted peer" in request.notes[0]


@pytest.mark.parametrize("preset", PRESETS, ids=str)
def test_garbage_from_an_untrusted_peer_costs_nothing(
    preset: Preset, verifier: X509SvidVerifier
) -> None:
    auth = authenticator(preset, verifier)
    headers = dict.fromkeys(auth.header_names, "x" * (2 * 1024 * 1024))
    assert auth.authenticate(view(headers, OUTSIDER)) is None


@pytest.mark.parametrize("preset", PRESETS, ids=str)
def test_certificate_from_another_ca_is_refused(preset: Preset, verifier: X509SvidVerifier) -> None:
    rogue = TestCA.create("cluster.local").issue_svid("spiffe://cluster.local/ns/ops/sa/admin")
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        authenticator(preset, verifier).authenticate(view(forwarded_cert_headers(preset, rogue)))


# -- sentinels and status headers ---------------------------------------------------------

ANONYMOUS = [
    pytest.param(Preset.CADDY, {"x-client-cert": "<nil>"}, id="caddy-nil"),
    pytest.param(Preset.CADDY, {"x-client-cert": ""}, id="caddy-empty"),
    pytest.param(Preset.APACHE, {"x-ssl-client-cert": "(null)"}, id="apache-null"),
    pytest.param(
        Preset.APACHE,
        {"x-ssl-client-cert": "(null)", "x-ssl-client-verify": "NONE"},
        id="apache-none",
    ),
    pytest.param(Preset.NGINX, {"x-ssl-client-verify": "NONE"}, id="nginx-none"),
    pytest.param(Preset.NGINX, {"x-ssl-client-cert": ""}, id="nginx-empty"),
    pytest.param(
        Preset.HAPROXY,
        {"x-ssl-client-cert": "", "x-ssl-client-used": "0", "x-ssl-client-verify": "0"},
        id="haproxy-unused",
    ),
    pytest.param(
        Preset.GCP,
        {"x-client-cert-present": "false", "x-client-cert-chain-verified": "false"},
        id="gcp-absent",
    ),
    pytest.param(Preset.AZURE, {"x-arr-clientcert": ""}, id="azure-empty"),
    pytest.param(Preset.RFC9440, {"client-cert": ""}, id="rfc9440-empty"),
]


@pytest.mark.parametrize(("preset", "headers"), ANONYMOUS)
def test_no_certificate_sentinels(
    preset: Preset, headers: dict[str, str], verifier: X509SvidVerifier
) -> None:
    assert authenticator(preset, verifier).authenticate(view(headers)) is None


def _with(preset: Preset, svid: Svid, **changes: str | None) -> dict[str, str]:
    headers = forwarded_cert_headers(preset, svid)
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is None:
            headers.pop(key, None)
        else:
            headers[key] = value
    return headers


STATUS_REFUSED: list[tuple[Preset, dict[str, str | None], str]] = [
    (Preset.NGINX, {"x_ssl_client_verify": "FAILED:certificate has expired"}, "did not verify"),
    (Preset.NGINX, {"x_ssl_client_verify": None}, "x-ssl-client-verify: missing"),
    (Preset.NGINX, {"x_ssl_client_verify": "NONE"}, "says the client sent no certificate"),
    (Preset.NGINX, {"x_ssl_client_verify": "success"}, "did not verify"),
    (Preset.APACHE, {"x_ssl_client_verify": "GENEROUS"}, "did not verify"),
    (Preset.APACHE, {"x_ssl_client_verify": "FAILED:unable to get"}, "did not verify"),
    (Preset.HAPROXY, {"x_ssl_client_verify": "21"}, "did not verify"),
    (Preset.HAPROXY, {"x_ssl_client_used": "0"}, "says the client sent no certificate"),
    (Preset.HAPROXY, {"x_ssl_client_used": None}, "x-ssl-client-used: missing"),
    (Preset.HAPROXY, {"x_ssl_client_used": "yes"}, "did not verify"),
    (Preset.GCP, {"x_client_cert_chain_verified": "false"}, "did not verify"),
    (Preset.GCP, {"x_client_cert_present": "false"}, "says the client sent no certificate"),
    (Preset.GCP, {"x_client_cert_chain_verified": None}, "chain-verified: missing"),
]


@pytest.mark.parametrize(
    ("preset", "changes", "reason"),
    STATUS_REFUSED,
    ids=[f"{p.value}-{i}" for i, (p, _, _) in enumerate(STATUS_REFUSED)],
)
def test_status_header_must_say_success(
    preset: Preset,
    changes: dict[str, str | None],
    reason: str,
    chained: Svid,
    direct: Svid,
    verifier: X509SvidVerifier,
) -> None:
    headers = _with(preset, svid_for(preset, chained, direct), **changes)
    with pytest.raises(AuthenticationFailed, match=reason):
        authenticator(preset, verifier).authenticate(view(headers))


@pytest.mark.parametrize(
    ("preset", "headers", "reason"),
    [
        (Preset.NGINX, {"x-ssl-client-verify": "SUCCESS"}, "x-ssl-client-cert is missing"),
        (
            Preset.HAPROXY,
            {"x-ssl-client-cert": "", "x-ssl-client-used": "1", "x-ssl-client-verify": "0"},
            "x-ssl-client-cert is missing",
        ),
        (
            Preset.GCP,
            {"x-client-cert-present": "true", "x-client-cert-chain-verified": "true"},
            "x-client-cert-leaf is missing",
        ),
        (Preset.RFC9440, {"client-cert-chain": ":AAAA:"}, "chain without client-cert"),
        (
            Preset.APACHE,
            {"x-ssl-client-cert": "(null)", "x-ssl-client-cert-chain-0": "junk"},
            "chain without",
        ),
    ],
    ids=["nginx", "haproxy", "gcp", "rfc9440", "apache"],
)
def test_status_without_certificate_is_refused(
    preset: Preset, headers: dict[str, str], reason: str, verifier: X509SvidVerifier
) -> None:
    with pytest.raises(AuthenticationFailed, match=reason):
        authenticator(preset, verifier).authenticate(view(headers))


# -- a client's copy never wins -----------------------------------------------------------


def _joined(first: dict[str, str], second: dict[str, str]) -> dict[str, str]:
    """Two copies of each header, as a server joins repeated header lines."""
    out = dict(second)
    for name, value in first.items():
        out[name] = f"{value},{second[name]}" if name in second else value
    return out


@pytest.mark.parametrize("preset", PRESETS, ids=str)
def test_appended_client_copy_is_refused(
    preset: Preset, ca: TestCA, chained: Svid, direct: Svid, verifier: X509SvidVerifier
) -> None:
    """A proxy that appends (HAProxy add-header, ...) after a client's copy is refused."""
    admin = (ca.intermediate() if preset in WITH_CHAIN else ca).issue_svid(
        "spiffe://cluster.local/ns/ops/sa/admin"
    )
    client_copy = forwarded_cert_headers(preset, admin)
    proxy_copy = forwarded_cert_headers(preset, svid_for(preset, chained, direct))
    headers = _joined(client_copy, proxy_copy)
    with pytest.raises(AuthenticationFailed):
        authenticator(preset, verifier).authenticate(view(headers))


def test_traefik_value_with_two_leaves_does_not_verify(
    ca: TestCA, chained: Svid, verifier: X509SvidVerifier
) -> None:
    admin = ca.issue_svid("spiffe://cluster.local/ns/ops/sa/admin")
    value = f"{b64(chained.der)},{b64(admin.der)}"
    with pytest.raises(AuthenticationFailed, match="certificate 2 is not a CA"):
        authenticator(Preset.TRAEFIK, verifier).authenticate(
            view({"x-forwarded-tls-client-cert": value})
        )


def test_traefik_v2_url_escaped_value(chained: Svid, verifier: X509SvidVerifier) -> None:
    value = forwarded_cert_headers(Preset.TRAEFIK, chained)["x-forwarded-tls-client-cert"]
    escaped = quote(value, safe="")
    peer = authenticator(Preset.TRAEFIK, verifier).authenticate(
        view({"x-forwarded-tls-client-cert": escaped})
    )
    assert peer is not None
    assert peer.principal == CHECKOUT


def test_haproxy_chain_that_repeats_the_leaf(chained: Svid, verifier: X509SvidVerifier) -> None:
    headers = forwarded_cert_headers(Preset.HAPROXY, chained)
    intermediates = base64.b64decode(headers["x-ssl-client-chain"])
    headers["x-ssl-client-chain"] = b64(chained.der + intermediates)
    peer = authenticator(Preset.HAPROXY, verifier).authenticate(view(headers))
    assert peer is not None
    assert peer.principal == CHECKOUT


def test_renamed_headers(direct: Svid, verifier: X509SvidVerifier) -> None:
    default = forwarded_cert_headers(Preset.NGINX, direct)
    auth = authenticator(
        Preset.NGINX, verifier, headers={"cert": "ssl-client-cert", "verify": "ssl-client-verify"}
    )
    assert auth.header_names == ("ssl-client-cert", "ssl-client-verify")
    headers = {
        "ssl-client-cert": default["x-ssl-client-cert"],
        "ssl-client-verify": "SUCCESS",
    }
    peer = auth.authenticate(view(headers))
    assert peer is not None
    assert peer.principal == CHECKOUT
    assert auth.authenticate(view(default)) is None


def test_repeat_caller_gets_the_same_peer(direct: Svid, verifier: X509SvidVerifier) -> None:
    auth = authenticator(Preset.NGINX, verifier)
    headers = forwarded_cert_headers(Preset.NGINX, direct)
    first = auth.authenticate(view(headers))
    assert first is not None
    assert auth.authenticate(view(dict(headers))) is first
    other_proxy = auth.authenticate(view(headers, ("::1", 5000)))
    assert other_proxy is not None
    assert other_proxy is not first
    assert other_proxy.proxy == "::1"


def test_cache_does_not_outlive_the_certificate(ca: TestCA) -> None:
    """The verifier decides on every request: an expired certificate is refused."""
    now = [time.time()]
    from datetime import datetime, timezone

    verifier = X509SvidVerifier(
        StaticX509Bundle({"cluster.local": [ca.certificate]}),
        clock=lambda: datetime.fromtimestamp(now[0], timezone.utc),
    )
    svid = ca.issue_svid(CHECKOUT)
    auth = authenticator(Preset.AZURE, verifier)
    headers = forwarded_cert_headers(Preset.AZURE, svid)
    assert auth.authenticate(view(headers)) is not None
    now[0] += 3 * 86400
    with pytest.raises(AuthenticationFailed, match="expired"):
        auth.authenticate(view(headers))


# -- bad input: 401, bounded work, a precise reason ----------------------------------------

GARBAGE: list[tuple[Preset, dict[str, str], str]] = [
    (Preset.NGINX, {"x-ssl-client-cert": "hello", "x-ssl-client-verify": "SUCCESS"}, "PEM"),
    (
        Preset.NGINX,
        {"x-ssl-client-cert": "%ff%fe", "x-ssl-client-verify": "SUCCESS"},
        "URL-encoding",
    ),
    (
        Preset.NGINX,
        {
            "x-ssl-client-cert": quote("-----BEGIN CERTIFICATE-----\nMIIB"),
            "x-ssl-client-verify": "SUCCESS",
        },
        "truncated",
    ),
    (
        Preset.NGINX,
        {
            "x-ssl-client-cert": quote(
                "-----BEGIN CERTIFICATE-----\nMII*\n-----END CERTIFICATE-----"
            ),
            "x-ssl-client-verify": "SUCCESS",
        },
        "not base64",
    ),
    (
        Preset.NGINX,
        {
            "x-ssl-client-cert": quote(
                f"-----BEGIN {KEY_LABEL}-----\nAAAA\n-----END {KEY_LABEL}-----"
            ),
            "x-ssl-client-verify": "SUCCESS",
        },
        "expected",
    ),
    (Preset.TRAEFIK, {"x-forwarded-tls-client-cert": "MIIB,,AAAA"}, "base64"),
    (Preset.TRAEFIK, {"x-forwarded-tls-client-cert": "é"}, "non-ASCII"),
    (Preset.CADDY, {"x-client-cert": "MIIBAA"}, "truncated"),
    (Preset.CADDY, {"x-client-cert": "not base64!"}, "base64"),
    (Preset.AZURE, {"x-arr-clientcert": "AAAA"}, "certificate"),
    (Preset.AZURE, {"x-arr-clientcert": "MIIB\nAAAA"}, "base64"),
    (
        Preset.HAPROXY,
        {
            "x-ssl-client-cert": "AAAA",
            "x-ssl-client-chain": "AAAA",
            "x-ssl-client-used": "1",
            "x-ssl-client-verify": "0",
        },
        "DER chain",
    ),
    (
        Preset.HAPROXY,
        {
            "x-ssl-client-cert": "AAAA",
            "x-ssl-client-chain": b64(b"\x30\x82\xff\xff" + b"\x00" * 10),
            "x-ssl-client-used": "1",
            "x-ssl-client-verify": "0",
        },
        "truncated certificate",
    ),
    (
        Preset.APACHE,
        {"x-ssl-client-cert": "-----BEGIN CERTIFICATE----- MIIB", "x-ssl-client-verify": "SUCCESS"},
        "truncated",
    ),
    (Preset.RFC9440, {"client-cert": "MIIB"}, "not a byte sequence"),
    (Preset.RFC9440, {"client-cert": ":AAAA:;x=1"}, "parameters"),
    (Preset.RFC9440, {"client-cert": ":AAAAA:"}, "truncated"),
    (Preset.RFC9440, {"client-cert": ":AA A:"}, "base64"),
    (Preset.RFC9440, {"client-cert": ":AAAA:, :AAAA:"}, "more than one"),
    (
        Preset.GCP,
        {
            "x-client-cert-present": "true",
            "x-client-cert-chain-verified": "true",
            "x-client-cert-leaf": "garbage",
        },
        "byte sequence",
    ),
    (Preset.AWS_ALB, {"x-amzn-mtls-clientcert-leaf": "%2"}, "PEM"),
    (Preset.AWS_ALB_PASSTHROUGH, {"x-amzn-mtls-clientcert": "\x00\x01"}, "PEM"),
]


@pytest.mark.parametrize(
    ("preset", "headers", "reason"),
    GARBAGE,
    ids=[f"{p.value}-{i}" for i, (p, _, _) in enumerate(GARBAGE)],
)
def test_garbage_is_refused_with_a_reason(
    preset: Preset, headers: dict[str, str], reason: str, verifier: X509SvidVerifier
) -> None:
    with pytest.raises(AuthenticationFailed, match=reason) as caught:
        authenticator(preset, verifier).authenticate(view(headers))
    if isinstance(caught.value, CertificateDecodingError):
        # A value that does not decode: the reason names the header it came in.
        assert caught.value.reason.split(": ", 1)[0] in headers


def _huge_chain(preset: Preset, svid: Svid, count: int) -> dict[str, str]:
    der = [svid.der] * count
    pem = svid.cert_pem.decode("ascii") * count
    return {
        Preset.TRAEFIK: {"x-forwarded-tls-client-cert": ",".join(b64(d) for d in der)},
        Preset.AWS_ALB_PASSTHROUGH: {"x-amzn-mtls-clientcert": quote(pem, safe="+=/")},
        Preset.RFC9440: {
            "client-cert": f":{b64(svid.der)}:",
            "client-cert-chain": ", ".join(f":{b64(d)}:" for d in der),
        },
        Preset.HAPROXY: {
            "x-ssl-client-cert": b64(svid.der),
            "x-ssl-client-chain": b64(b"".join(der)),
            "x-ssl-client-used": "1",
            "x-ssl-client-verify": "0",
        },
        Preset.GCP: {
            "x-client-cert-present": "true",
            "x-client-cert-chain-verified": "true",
            "x-client-cert-leaf": f":{b64(svid.der)}:",
            "x-client-cert-chain": ",".join(f":{b64(d)}:" for d in der),
        },
        Preset.NGINX: {"x-ssl-client-cert": quote(pem), "x-ssl-client-verify": "SUCCESS"},
    }[preset]


@pytest.mark.parametrize(
    "preset",
    [
        Preset.TRAEFIK,
        Preset.AWS_ALB_PASSTHROUGH,
        Preset.RFC9440,
        Preset.HAPROXY,
        Preset.GCP,
        Preset.NGINX,
    ],
    ids=str,
)
def test_a_chain_of_a_thousand_is_refused_before_decoding(
    preset: Preset, direct: Svid, verifier: X509SvidVerifier
) -> None:
    auth = authenticator(preset, verifier, max_header_length=8 * 1024 * 1024)
    headers = _huge_chain(preset, direct, 1000)
    started = time.perf_counter()
    with pytest.raises(AuthenticationFailed, match=r"limit of 8|more than the limit"):
        auth.authenticate(view(headers))
    assert time.perf_counter() - started < 0.5


def test_chain_limit_counts_leaf_and_intermediates(
    direct: Svid, verifier: X509SvidVerifier
) -> None:
    auth = authenticator(Preset.RFC9440, verifier, max_chain_length=3)
    with pytest.raises(AuthenticationFailed, match="4 certificates, more than the limit of 3"):
        auth.authenticate(view(_huge_chain(Preset.RFC9440, direct, 4)))


@pytest.mark.parametrize("preset", PRESETS, ids=str)
def test_a_one_megabyte_header_is_refused_quickly(
    preset: Preset, verifier: X509SvidVerifier
) -> None:
    auth = authenticator(preset, verifier)
    value = "A" * (1024 * 1024)
    started = time.perf_counter()
    with pytest.raises(
        AuthenticationFailed, match=f"more than the limit of {MAX_FORWARDED_HEADER_LENGTH}"
    ):
        auth.authenticate(view({auth.header_names[0]: value}))
    assert time.perf_counter() - started < 0.1


def test_guard_turns_bad_input_into_401(verifier: X509SvidVerifier) -> None:
    guard = Guard(
        policy=Policy([allow("all", Authenticated(), paths="/**")]),
        authenticators=[authenticator(Preset.RFC9440, verifier)],
    )
    for value in (":AAAA:", "x" * (1024 * 1024), ":" + "A" * 5000 + ":", "\x00", ":é:"):
        verdict = guard.check("GET", "/x", "/x", PROXY, {"client-cert": value})
        assert verdict.decision.status == 401, value[:20]


def test_middleware_refusal_has_a_fixed_body_and_a_precise_log(
    decisions: Callable[[], list[object]], direct: Svid, verifier: X509SvidVerifier
) -> None:
    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"caller": str(request.scope["peer_middleware.peer"])})

    app = PeerMiddleware(
        Starlette(routes=[Route("/whoami", whoami)]),
        policy=Policy([allow("callers", Authenticated(), paths="/whoami")]),
        authenticators=[authenticator(Preset.CADDY, verifier)],
    )
    with TestClient(app, client=PROXY) as client:
        ok = client.get("/whoami", headers=forwarded_cert_headers(Preset.CADDY, direct))
        bad = client.get("/whoami", headers={"x-client-cert": "MIIB!!"})
        anonymous = client.get("/whoami", headers={"x-client-cert": "<nil>"})
    assert ok.status_code == 200
    assert ok.json() == {"caller": CHECKOUT}
    assert bad.status_code == 401
    assert bad.content == b'{"type":"about:blank","title":"Unauthorized","status":401}'
    assert "MIIB" not in bad.text
    assert anonymous.status_code == 401
    records = decisions()
    assert "x-client-cert: base64 DER: not base64" in records[1].peer_middleware["reason"]  # type: ignore[attr-defined]


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "envoy"}, "unknown preset 'envoy'"),
        ({"preset": "traefik", "headers": {"cert": "x-cert"}}, "fixed header names"),
        ({"preset": "nginx", "headers": {"bogus": "x-cert"}}, "cannot rename"),
        ({"preset": "nginx", "headers": {"cert": "X-Cert"}}, "lower-case header name"),
        ({"preset": "nginx", "headers": {"cert": "x cert"}}, "lower-case header name"),
        ({"preset": "nginx", "headers": {"cert": "x-ssl-client-verify"}}, "distinct"),
        ({"preset": "nginx", "max_header_length": 0}, "max_header_length"),
        ({"preset": "nginx", "max_chain_length": True}, "max_chain_length"),
        ({"preset": "nginx", "cache_size": -1}, "cache_size"),
        ({"preset": "nginx", "verifier": object()}, "verify"),
        ({"preset": "nginx", "trusted_proxies": ["0.0.0.0/0"]}, "covers every address"),
    ],
)
def test_configuration_errors(
    kwargs: dict[str, object], message: str, verifier: X509SvidVerifier
) -> None:
    arguments: dict[str, object] = {"trusted_proxies": ["127.0.0.1"], "verifier": verifier}
    arguments.update(kwargs)
    with pytest.raises(ConfigurationError, match=message):
        ForwardedCertificateAuthenticator(**arguments)  # type: ignore[arg-type]


def test_repr_and_names(verifier: X509SvidVerifier) -> None:
    auth = authenticator("apache", verifier)
    assert repr(auth).startswith("ForwardedCertificateAuthenticator('apache'")
    assert auth.header_names[:2] == ("x-ssl-client-cert", "x-ssl-client-cert-chain-0")
    assert auth.forwarded is True
    assert str(Preset.AWS_ALB) == "aws-alb"


# -- Linkerd -------------------------------------------------------------------------------


def linkerd(**kwargs: object) -> LinkerdIdentityAuthenticator:
    arguments: dict[str, object] = {
        "trusted_proxies": ["127.0.0.1"],
        "trust_domain": "cluster.local",
    }
    arguments.update(kwargs)
    return LinkerdIdentityAuthenticator(**arguments)  # type: ignore[arg-type]


def test_linkerd_identity_maps_to_spiffe_id() -> None:
    value = "checkout.shop.serviceaccount.identity.linkerd.cluster.local"
    assert linkerd_client_id(CHECKOUT) == value
    auth = linkerd()
    peer = auth.authenticate(view({"l5d-client-id": value}))
    assert peer is not None
    assert peer.principal == CHECKOUT
    assert peer.proof is Proof.PROXY_ASSERTED
    assert peer.proxy == "127.0.0.1"
    assert peer.certificate_sha256 is None
    assert auth.authenticate(view({"l5d-client-id": value})) is peer
    assert auth.authenticate(view({})) is None


def test_linkerd_service_account_with_dots_and_custom_domain() -> None:
    auth = linkerd(identity_domain="linkerd-system.mesh.example", trust_domain="mesh.example")
    value = "svc.v2.payments.serviceaccount.identity.linkerd-system.mesh.example"
    peer = auth.authenticate(view({"l5d-client-id": value}))
    assert peer is not None
    assert peer.principal == "spiffe://mesh.example/ns/payments/sa/svc.v2"


def test_linkerd_from_untrusted_peer_is_ignored() -> None:
    request = view(
        {"l5d-client-id": "admin.ops.serviceaccount.identity.linkerd.cluster.local"}, OUTSIDER
    )
    assert linkerd().authenticate(request) is None
    assert request.notes == ["ignored l5d-client-id from an untrusted peer"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "not a Linkerd identity"),
        ("checkout.shop", "not a Linkerd identity"),
        ("checkout.shop.serviceaccount.identity.linkerd.other.local", "not a Linkerd identity"),
        ("shop.serviceaccount.identity.linkerd.cluster.local", "no service account"),
        ("Checkout.shop.serviceaccount.identity.linkerd.cluster.local", "not a lower-case"),
        ("check_out.shop.serviceaccount.identity.linkerd.cluster.local", "not a lower-case"),
        ("checkout..serviceaccount.identity.linkerd.cluster.local", "namespace must be"),
        ("a..b.shop.serviceaccount.identity.linkerd.cluster.local", "not a lower-case"),
        (
            "checkout.shop.serviceaccount.identity.linkerd.cluster.local,"
            "admin.ops.serviceaccount.identity.linkerd.cluster.local",
            "not a lower-case",
        ),
        ("x" * 300, "longer than 253"),
        ("-a.shop.serviceaccount.identity.linkerd.cluster.local", "not a lower-case"),
    ],
)
def test_linkerd_refuses_malformed_identities(value: str, reason: str) -> None:
    with pytest.raises(AuthenticationFailed, match=reason):
        linkerd().authenticate(view({"l5d-client-id": value}))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trust_domain": "Cluster.Local"}, "trust_domain"),
        ({"trust_domain": "cluster.local/ns"}, "trust_domain"),
        ({"identity_domain": "Linkerd.local"}, "identity_domain"),
        ({"identity_domain": ""}, "identity_domain"),
        ({"header": "L5d-Client-Id"}, "lower-case"),
        ({"cache_size": -1}, "cache_size"),
    ],
)
def test_linkerd_configuration_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        linkerd(**kwargs)


def test_linkerd_client_id_needs_namespace_and_account() -> None:
    with pytest.raises(ValueError, match="namespace and a service account"):
        linkerd_client_id("spiffe://cluster.local/workload")
    assert "LinkerdIdentityAuthenticator(trust_domain='cluster.local'" in repr(linkerd())


def test_the_former_module_still_exports_its_names() -> None:
    from peer_middleware import authenticators, certs, forwarded, presets

    assert forwarded.ForwardedCertificateAuthenticator is (
        authenticators.ForwardedCertificateAuthenticator
    )
    assert forwarded.LinkerdIdentityAuthenticator is authenticators.LinkerdIdentityAuthenticator
    assert forwarded.Preset is presets.Preset
    assert forwarded.decode_pem is certs.decode_pem
