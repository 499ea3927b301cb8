"""Both example payments services and the demo's, against the policy table of their README."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from starlette.testclient import TestClient

from peer_middleware._demo_app import app as demo_app
from peer_middleware.testing import xfcc_header
from peer_middleware.testing.pki import TestCA
from tests.django_setup import example_request

MODULES = {
    "fastapi": "examples.fastapi_app.app",
    "flask": "examples.flask_app.app",
    # The Django example is its settings module (the views are in its URLconf).
    "django": "examples.django_app.settings",
}
FRAMEWORKS = list(MODULES)
ENV_VARS = (
    "PEER_MIDDLEWARE_TRUSTED_PROXIES",
    "PEER_MIDDLEWARE_EXPECTED_BY",
    "PEER_MIDDLEWARE_FORWARD_CLIENT_CERT",
    "PEER_MIDDLEWARE_BUNDLE_FILE",
)

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
READER = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
LEGACY = "spiffe://cluster.local/ns/shop/sa/legacy-export"
OUTSIDER = "spiffe://other.example/ns/shop/sa/checkout"
OUTSIDER_ADMIN = "spiffe://other.example/ns/ops/sa/admin"
SELF = "spiffe://cluster.local/ns/shop/sa/payments"

BODY_400 = b'{"type":"about:blank","title":"Bad Request","status":400}'
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
BODIES = {400: BODY_400, 401: BODY_401, 403: BODY_403}

Response = tuple[int, Any, str]
Send = Callable[..., Response]


def xfcc(principal: str, by: str | None = SELF) -> str:
    # A client-written element may come first (Envoy's append_forward).
    elements = [f"By={by};URI={p}" if by else f"URI={p}" for p in principal.split(" ")]
    return ",".join(elements)


def sender(framework: str, app: Any, client: tuple[str, int]) -> Send:
    def send(method: str, url: str, principal: str | None, by: str | None = SELF) -> Response:
        headers = {"x-forwarded-client-cert": xfcc(principal, by)} if principal else {}
        if framework == "django":
            return example_request(app, method, url, headers, client)
        if framework == "fastapi":
            with TestClient(app, client=client) as test_client:
                response = test_client.request(method, url, headers=headers)
            return response.status_code, response.content, response.headers["content-type"]
        environ = {"REMOTE_ADDR": client[0], "REMOTE_PORT": str(client[1])}
        werkzeug_response = app.test_client().open(
            url, method=method, headers=headers, environ_base=environ
        )
        return (
            werkzeug_response.status_code,
            werkzeug_response.data,
            werkzeug_response.headers["content-type"],
        )

    return send


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def load_example(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ModuleType]]:
    """Reload an example module under environment variables; restore it afterwards."""
    reloaded: list[ModuleType] = []

    def load(framework: str, **env: str) -> ModuleType:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        module = importlib.reload(importlib.import_module(MODULES[framework]))
        reloaded.append(module)
        return module

    yield load
    monkeypatch.undo()
    for module in reloaded:
        importlib.reload(module)


def app_of(module: ModuleType) -> Any:
    """The app of an example module (the Django example: its settings module)."""
    return getattr(module, "app", module)


def example_app(framework: str) -> Any:
    return app_of(importlib.import_module(MODULES[framework]))


def created(principal: str) -> Callable[[Any], bool]:
    def check(body: Any) -> bool:
        return set(body) == {"id", "created_by"} and body["created_by"] == principal

    return check


TABLE = [
    # GET /healthz: anyone.
    pytest.param(
        "GET", "/healthz", None, 200, {"status": "ok", "caller": None}, id="healthz-anonymous"
    ),
    pytest.param(
        "GET", "/healthz", ADMIN, 200, {"status": "ok", "caller": ADMIN}, id="healthz-admin"
    ),
    pytest.param(
        "GET",
        "/healthz",
        LEGACY,
        200,
        {"status": "ok", "caller": LEGACY},
        id="healthz-legacy-export",
    ),
    pytest.param(
        "GET",
        "/healthz",
        OUTSIDER,
        200,
        {"status": "ok", "caller": OUTSIDER},
        id="healthz-outsider",
    ),
    # POST /payments: only checkout.
    pytest.param("POST", "/payments", CHECKOUT, 201, created(CHECKOUT), id="create-checkout"),
    pytest.param("POST", "/payments", READER, 403, BODY_403, id="create-shop-reader"),
    pytest.param("POST", "/payments", ADMIN, 403, BODY_403, id="create-admin"),
    pytest.param("POST", "/payments", LEGACY, 403, BODY_403, id="create-legacy-export"),
    pytest.param("POST", "/payments", OUTSIDER, 403, BODY_403, id="create-outsider"),
    pytest.param("POST", "/payments", None, 401, BODY_401, id="create-anonymous"),
    # GET /payments/{id}: any workload of namespace shop in cluster.local.
    pytest.param(
        "GET",
        "/payments/42",
        CHECKOUT,
        200,
        {"id": "42", "status": "settled", "caller": CHECKOUT},
        id="read-checkout",
    ),
    pytest.param(
        "GET",
        "/payments/42",
        READER,
        200,
        {"id": "42", "status": "settled", "caller": READER},
        id="read-shop-reader",
    ),
    pytest.param(
        "GET",
        "/payments/x/%2e%2e/42",
        READER,
        200,
        {"id": "42", "status": "settled", "caller": READER},
        id="read-normalised",
    ),
    pytest.param("GET", "/payments/42", LEGACY, 403, BODY_403, id="read-legacy-export-denied"),
    pytest.param("GET", "/payments/42", ADMIN, 403, BODY_403, id="read-admin"),
    pytest.param("GET", "/payments/42", OUTSIDER, 403, BODY_403, id="read-outsider-shop"),
    pytest.param("GET", "/payments/42", None, 401, BODY_401, id="read-anonymous"),
    pytest.param("GET", "/payments/4%2F2", READER, 400, BODY_400, id="read-encoded-slash"),
    # DELETE /payments/{id}: only admin.
    pytest.param(
        "DELETE", "/payments/42", ADMIN, 200, {"id": "42", "deleted_by": ADMIN}, id="delete-admin"
    ),
    pytest.param("DELETE", "/payments/42", CHECKOUT, 403, BODY_403, id="delete-checkout"),
    pytest.param("DELETE", "/payments/42", LEGACY, 403, BODY_403, id="delete-legacy-export"),
    pytest.param(
        "DELETE", "/payments/42", OUTSIDER_ADMIN, 403, BODY_403, id="delete-outsider-admin"
    ),
    pytest.param("DELETE", "/payments/42", None, 401, BODY_401, id="delete-anonymous"),
    # Anything else.
    pytest.param("GET", "/payments", CHECKOUT, 403, BODY_403, id="list-payments"),
    pytest.param("PUT", "/payments/42", ADMIN, 403, BODY_403, id="put-payment"),
    pytest.param("POST", "/payments/42", CHECKOUT, 403, BODY_403, id="post-payment-id"),
    pytest.param("POST", "/healthz", ADMIN, 403, BODY_403, id="post-healthz"),
    pytest.param("GET", "/admin", ADMIN, 403, BODY_403, id="unknown-route"),
    pytest.param("GET", "/admin", None, 401, BODY_401, id="unknown-route-anonymous"),
    pytest.param("GET", "/payments/42/extra", READER, 403, BODY_403, id="deeper-path"),
]


# FastAPI lets a caller that the rules of the route answering 405 allow see
# the 405 (the route exists for it); an unauthorised caller gets 401/403.
FASTAPI_METHOD_NOT_ALLOWED = {
    ("GET", "/payments", CHECKOUT),
    ("POST", "/payments/42", CHECKOUT),
}


# "demo": the service peer-middleware demo serves, with the FastAPI example's
# routes and policy and its default configuration: the same answers.
@pytest.mark.parametrize("framework", [*FRAMEWORKS, "demo"])
@pytest.mark.parametrize(("method", "url", "principal", "status", "expected"), TABLE)
def test_policy_table(
    framework: str, method: str, url: str, principal: str | None, status: int, expected: Any
) -> None:
    if framework == "demo":
        send = sender("fastapi", demo_app, ("127.0.0.1", 50000))
    else:
        send = sender(framework, example_app(framework), ("127.0.0.1", 50000))

    got_status, body, content_type = send(method, url, principal)

    if framework in ("fastapi", "demo") and (method, url, principal) in FASTAPI_METHOD_NOT_ALLOWED:
        status, expected = 405, {"detail": "Method Not Allowed"}
    assert got_status == status
    if isinstance(expected, bytes):
        assert content_type == "application/problem+json"
        assert body == expected
    else:
        assert content_type == "application/json"
        value = json.loads(body)
        assert expected(value) if callable(expected) else value == expected


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_xfcc_from_untrusted_address_ignored_by_default(framework: str) -> None:
    send = sender(framework, example_app(framework), ("192.0.2.10", 50000))

    assert send("GET", "/payments/42", READER)[:2] == (401, BODY_401)
    assert send("GET", "/healthz", READER)[0] == 200


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("client", "status"),
    [
        pytest.param(("10.0.0.7", 40000), 200, id="configured-proxy"),
        pytest.param(("10.1.0.9", 40000), 200, id="configured-cidr"),
        pytest.param(("127.0.0.1", 40000), 401, id="loopback-no-longer-trusted"),
    ],
)
def test_trusted_proxies_from_environment(
    framework: str,
    client: tuple[str, int],
    status: int,
    load_example: Callable[..., ModuleType],
) -> None:
    module = load_example(framework, PEER_MIDDLEWARE_TRUSTED_PROXIES="10.0.0.7,10.1.0.0/16")
    send = sender(framework, app_of(module), client)

    assert send("GET", "/payments/42", READER)[0] == status


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("by", "status"),
    [
        pytest.param(SELF, 200, id="by-names-this-app"),
        pytest.param("spiffe://cluster.local/ns/shop/sa/other", 401, id="by-names-another-app"),
        pytest.param(None, 401, id="no-by"),
    ],
)
def test_expected_by_from_environment(
    framework: str, by: str | None, status: int, load_example: Callable[..., ModuleType]
) -> None:
    module = load_example(framework, PEER_MIDDLEWARE_EXPECTED_BY=SELF)
    send = sender(framework, app_of(module), ("127.0.0.1", 50000))

    assert send("GET", "/payments/42", READER, by=by)[0] == status


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("mode", "principal", "status"),
    [
        pytest.param(None, f"{ADMIN} {READER}", 401, id="default-sanitize-set-two-elements"),
        pytest.param(None, READER, 200, id="default-sanitize-set-one-element"),
        pytest.param("sanitize_set", f"{ADMIN} {READER}", 401, id="sanitize-set-two-elements"),
        pytest.param("append_forward", f"{ADMIN} {READER}", 200, id="append-forward-rightmost"),
        pytest.param("append_forward", f"{READER} {ADMIN}", 403, id="append-forward-admin-last"),
        pytest.param("bogus", f"{ADMIN} {READER}", 401, id="unknown-mode-is-sanitize-set"),
    ],
)
def test_forward_client_cert_mode_from_environment(
    framework: str,
    mode: str | None,
    principal: str,
    status: int,
    load_example: Callable[..., ModuleType],
) -> None:
    env = {} if mode is None else {"PEER_MIDDLEWARE_FORWARD_CLIENT_CERT": mode}
    module = load_example(framework, **env)
    send = sender(framework, app_of(module), ("127.0.0.1", 50000))

    assert send("GET", "/payments/42", principal)[0] == status


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_bundle_file_from_environment(
    framework: str, tmp_path: Path, load_example: Callable[..., ModuleType]
) -> None:
    ca = TestCA.create("cluster.local")
    other_ca = TestCA.create("cluster.local")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.pem)
    module = load_example(framework, PEER_MIDDLEWARE_BUNDLE_FILE=str(bundle))

    def status(xfcc_value: str) -> int:
        headers = {"x-forwarded-client-cert": xfcc_value}
        if framework == "django":
            return example_request(module, "GET", "/payments/42", headers, ("127.0.0.1", 50000))[0]
        if framework == "fastapi":
            with TestClient(module.app, client=("127.0.0.1", 50000)) as client:
                return client.get("/payments/42", headers=headers).status_code
        environ = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000"}
        response = module.app.test_client().get(
            "/payments/42", headers=headers, environ_base=environ
        )
        return int(response.status_code)

    reader = ca.issue_svid(READER)
    assert status(xfcc_header(reader, by=SELF, include_cert=True)) == 200
    # the sidecar's word alone, or a certificate of a CA not in the file
    assert status(xfcc_header(READER, by=SELF)) == 401
    assert status(xfcc_header(other_ca.issue_svid(READER), by=SELF, include_cert=True)) == 401


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_environment_restored_after_reload(framework: str) -> None:
    # Runs after the reloading tests in file order: the module is back to
    # its defaults (loopback trusted, no By required).
    send = sender(framework, example_app(framework), ("127.0.0.1", 50000))

    assert send("GET", "/payments/42", READER, by=None)[0] == 200
