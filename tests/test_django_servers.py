"""Django under real servers on 127.0.0.1, with real client certificates.

tests/django_project is served by gunicorn (WSGI: the middleware reads the
TLS socket in ``environ["gunicorn.socket"]``) and by uvicorn (ASGI, with the
library's protocol class putting the chain in the TLS extension), each a
process of its own started and stopped by pid. Every call is a real mTLS
handshake with a certificate minted when the module runs.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from peer_middleware.testing.pki import TestCA
from peer_middleware.testing.processes import ManagedProcess, free_port, wait_for_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CART = "spiffe://cluster.local/ns/shop/sa/cart"
OPS = "spiffe://cluster.local/ns/ops/sa/admin"
BODY_400 = b'{"type":"about:blank","title":"Bad Request","status":400}'
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'


@dataclass(frozen=True)
class Pki:
    server_cert: Path
    server_key: Path
    server_ca: Path
    bundle: Path
    tls_cas: Path
    clients: dict[str, tuple[Path, Path] | None]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("django-pki")
    ca = TestCA.create("cluster.local")
    rogue = TestCA.create("cluster.local", common_name="rogue CA claiming cluster.local")
    server_ca = TestCA.create("web.test", common_name="peer-middleware test server CA")
    server_cert, server_key = server_ca.issue_server_cert().write(directory, "server")
    (directory / "server-ca.pem").write_bytes(server_ca.pem)
    (directory / "bundle.pem").write_bytes(ca.pem)
    # The TLS layer accepts both CAs, so the app's verifier is what refuses the rogue.
    (directory / "tls-cas.pem").write_bytes(ca.pem + rogue.pem)
    clients: dict[str, tuple[Path, Path] | None] = {"none": None}
    clients["cart"] = ca.issue_svid(CART).write(directory, "cart")
    clients["ops"] = ca.issue_svid(OPS).write(directory, "ops")
    clients["rogue"] = rogue.issue_svid(CART).write(directory, "rogue")
    return Pki(
        server_cert,
        server_key,
        directory / "server-ca.pem",
        directory / "bundle.pem",
        directory / "tls-cas.pem",
        clients,
    )


def _command(server: str, port: int, pki: Pki) -> list[str]:
    cert_reqs = str(int(ssl.CERT_OPTIONAL))
    if server == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--certfile",
            str(pki.server_cert),
            "--keyfile",
            str(pki.server_key),
            "--ca-certs",
            str(pki.tls_cas),
            "--cert-reqs",
            cert_reqs,
            "tests.django_project.wsgi:application",
        ]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "tests.django_project.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http",
        "peer_middleware.servers.uvicorn:H11Protocol",
        "--ssl-certfile",
        str(pki.server_cert),
        "--ssl-keyfile",
        str(pki.server_key),
        "--ssl-ca-certs",
        str(pki.tls_cas),
        "--ssl-cert-reqs",
        cert_reqs,
        "--lifespan",
        "off",
        "--log-level",
        "warning",
    ]


@pytest.fixture(scope="module", params=["gunicorn", "uvicorn"])
def server(
    request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int, ManagedProcess]]:
    name: str = request.param
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.django_project.settings",
        "PEER_MIDDLEWARE_TEST_BUNDLE": str(pki.bundle),
    }
    args = _command(name, port, pki)
    log_dir = tmp_path_factory.mktemp(f"django-{name}")
    with ManagedProcess(args, log_dir=log_dir, name=name, env=env, cwd=ROOT) as process:
        try:
            wait_for_port("127.0.0.1", port, timeout=20, alive=process.is_running)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\n{process.log_text()}") from error
        yield name, port, process


def call(pki: Pki, port: int, client: str, target: str) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(pki.server_ca))
    files = pki.clients[client]
    if files is not None:
        context.load_cert_chain(*files)
    with httpx.Client(verify=context, timeout=10, follow_redirects=False) as http:
        return http.get(f"https://127.0.0.1:{port}{target}")


def caller(response: httpx.Response) -> tuple[int, str | None, str | None]:
    data = json.loads(response.content)
    return response.status_code, data.get("caller"), data.get("proof")


@pytest.mark.parametrize(
    "target",
    ["/payments/7/", "/async/payments/7/", "/api/payments/7/"],
    ids=["sync", "async", "drf"],
)
def test_declared_view_allows_its_caller(
    server: tuple[str, int, ManagedProcess], pki: Pki, target: str
) -> None:
    _, port, _ = server
    assert caller(call(pki, port, "cart", target)) == (200, CART, "mtls")


@pytest.mark.parametrize(
    ("client", "target", "status", "body"),
    [
        pytest.param("none", "/payments/7/", 401, BODY_401, id="no-certificate"),
        pytest.param("ops", "/payments/7/", 403, BODY_403, id="other-namespace"),
        pytest.param("rogue", "/payments/7/", 401, BODY_401, id="rogue-ca"),
        pytest.param("ops", "/api/payments/7/", 403, BODY_403, id="drf-other-namespace"),
        pytest.param("none", "/async/payments/7/", 401, BODY_401, id="async-no-certificate"),
        # The literal neighbour before the template: judged centrally.
        pytest.param("cart", "/payments/export/", 403, BODY_403, id="neighbour"),
        # No APPEND_SLASH redirect, and no 404 page, for a caller not allowed.
        pytest.param("ops", "/payments/7", 403, BODY_403, id="no-redirect"),
        pytest.param("cart", "/nowhere/", 403, BODY_403, id="not-found"),
        pytest.param("cart", "/payments%2F7/", 400, BODY_400, id="encoded-slash"),
    ],
)
def test_refusals_are_fixed(
    server: tuple[str, int, ManagedProcess],
    pki: Pki,
    client: str,
    target: str,
    status: int,
    body: bytes,
) -> None:
    _, port, _ = server
    response = call(pki, port, client, target)
    assert (response.status_code, response.content) == (status, body)
    assert response.headers["content-type"] == "application/problem+json"


def test_append_slash_redirects_a_caller_the_target_allows(
    server: tuple[str, int, ManagedProcess], pki: Pki
) -> None:
    _, port, _ = server
    response = call(pki, port, "cart", "/payments/7")
    assert (response.status_code, response.headers["location"]) == (301, "/payments/7/")


def test_health_check_open_to_anyone_and_path_normalised(
    server: tuple[str, int, ManagedProcess], pki: Pki
) -> None:
    _, port, _ = server
    assert caller(call(pki, port, "none", "/healthz/")) == (200, None, None)
    response = call(pki, port, "cart", "/payments//x/../8/")
    assert response.status_code == 200
    assert response.json() == {"id": "8", "caller": CART, "proof": "mtls", "path": "/payments/8/"}


def test_refusals_are_logged_with_the_reason(
    server: tuple[str, int, ManagedProcess], pki: Pki
) -> None:
    _, port, process = server
    call(pki, port, "ops", "/payments/9/")
    log = process.log_text()
    assert "refused GET '/payments/9/' status=403" in log
