"""End to end: the FastAPI example under real uvicorn, keys from a real OIDC server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from peer_middleware import KubernetesTokenAuthenticator
from peer_middleware.keys import OidcDiscovery
from peer_middleware.testing import xfcc_header
from peer_middleware.testing.processes import UvicornThread
from peer_middleware.testing.tokens import JwksServer, SigningKey, TokenMinter

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app" / "app.py"
AUDIENCE = "payments"
CHALLENGE = 'Bearer error="invalid_token"'


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def issuer() -> Iterator[tuple[JwksServer, TokenMinter]]:
    key = SigningKey("rsa")
    with JwksServer(TokenMinter(keys=[key]).jwks(), delay=2.0) as server:
        yield server, TokenMinter(issuer=server.issuer, keys=[key])


@pytest.fixture
def service(
    issuer: tuple[JwksServer, TokenMinter], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, OidcDiscovery]]:
    server, _ = issuer
    monkeypatch.setenv("PEER_MIDDLEWARE_TOKEN_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("PEER_MIDDLEWARE_TOKEN_ISSUER", server.issuer)
    monkeypatch.setenv("PEER_MIDDLEWARE_TOKEN_ALLOW_HTTP", "1")
    app = load_example("fastapi_example_with_tokens").app
    with UvicornThread(app) as running:
        # The middleware stack is built on the first request; find the key source then.
        httpx.get(running.url + "/healthz", timeout=10, trust_env=False)
        source = _key_source(app)
        assert source.wait_ready(10)
        yield running.url, source
        source.close()


def _key_source(app: Any) -> OidcDiscovery:
    layer = app.middleware_stack
    while layer is not None:
        guard = getattr(layer, "guard", None)
        if guard is not None:
            for authenticator in guard.authenticators:
                if isinstance(authenticator, KubernetesTokenAuthenticator):
                    source = authenticator.sources[0]
                    assert isinstance(source, OidcDiscovery)
                    return source
        layer = getattr(layer, "app", None)
    raise AssertionError("no token authenticator in the middleware stack")


def get(url: str, token: str | None = None, **headers: str) -> httpx.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return httpx.get(url, headers=headers, timeout=10, trust_env=False)


def test_a_kubernetes_token_is_an_alternative_to_a_certificate(
    service: tuple[str, OidcDiscovery], issuer: tuple[JwksServer, TokenMinter]
) -> None:
    url, _ = service
    _, minter = issuer
    cart = minter.kubernetes("shop", "cart", AUDIENCE)
    response = get(url + "/payments/7", cart)
    assert response.status_code == 200
    assert response.json()["caller"] == "spiffe://cluster.local/ns/shop/sa/cart"
    # The same rules: a namespace outside "shop" is refused; the deny rule applies.
    assert get(url + "/payments/7", minter.kubernetes("ops", "admin", AUDIENCE)).status_code == 403
    legacy = minter.kubernetes("shop", "legacy-export", AUDIENCE)
    assert get(url + "/payments/7", legacy).status_code == 403
    # Without a token or certificate: 401 with a plain Bearer challenge.
    anonymous = get(url + "/payments/7")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    # The sidecar's certificate identity still works the same.
    sidecar = get(
        url + "/payments/7",
        **{"x-forwarded-client-cert": xfcc_header("spiffe://cluster.local/ns/shop/sa/cart")},
    )
    assert sidecar.status_code == 200


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "e30.e30.", "x" * 20_000, "eyJhbGciOiJub25lIn0.e30."],
    ids=["garbage", "three-junk-segments", "empty-signature", "huge", "alg-none"],
)
def test_bad_tokens_get_401_invalid_token_never_500(
    service: tuple[str, OidcDiscovery], token: str
) -> None:
    url, _ = service
    response = get(url + "/payments/7", token)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE
    assert response.json() == {"type": "about:blank", "title": "Unauthorized", "status": 401}


def test_key_rotation_mid_run_and_an_issuer_outage(
    service: tuple[str, OidcDiscovery], issuer: tuple[JwksServer, TokenMinter]
) -> None:
    url, source = service
    server, minter = issuer
    old_token = minter.kubernetes("shop", "cart", AUDIENCE)
    assert get(url + "/payments/1", old_token).status_code == 200
    new_key = SigningKey("ec", kid="rotated")
    server.set_jwks({"keys": [new_key.jwk(), minter.key.jwk()]})
    new_token = minter.kubernetes("shop", "cart", AUDIENCE, key=new_key)
    # The first request with the unknown kid is refused and signals a refresh.
    first = get(url + "/payments/1", new_token)
    assert first.status_code == 401
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "rotated" not in source.key_set().by_kid:
        time.sleep(0.02)
    assert get(url + "/payments/1", new_token).status_code == 200
    # The issuer goes down: the last good keys keep serving.
    server.mode = "down"
    assert not source.refresh(timeout=10)
    assert get(url + "/payments/1", new_token).status_code == 200
    assert get(url + "/payments/1", old_token).status_code == 200
    server.mode = "slow"
    started = time.monotonic()
    assert get(url + "/payments/1", minter.kubernetes("shop", "x", AUDIENCE)).status_code == 200
    assert time.monotonic() - started < 1.5  # requests never wait for the slow issuer


def test_example_without_token_settings_has_no_token_authenticator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PEER_MIDDLEWARE_TOKEN_AUDIENCE", raising=False)
    module = load_example("fastapi_example_without_tokens")
    assert module.token_authenticators() == []
