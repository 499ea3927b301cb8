"""Key sources against a real HTTP server on 127.0.0.1: up, down, slow, garbage, rotating."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peer_middleware import (
    ConfigurationError,
    InvalidToken,
    JwksUrl,
    KeysUnavailable,
    KubernetesTokenAuthenticator,
    OidcDiscovery,
    SpiffeJwtBundle,
    StaticJwks,
)
from peer_middleware.keys import parse_jwks
from peer_middleware.request import RequestView
from peer_middleware.testing.tokens import JwksServer, SigningKey, TokenMinter

AUDIENCE = "payments"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def minter() -> TokenMinter:
    return TokenMinter(keys=[SigningKey("ec")])


@pytest.fixture
def server(minter: TokenMinter) -> Iterator[JwksServer]:
    with JwksServer(minter.jwks(), delay=2.0) as running:
        yield running


def bearer(token: str) -> RequestView:
    return RequestView("GET", "/", None, {"authorization": f"Bearer {token}"})


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_jwks_url_fetches_on_a_background_thread(server: JwksServer, minter: TokenMinter) -> None:
    with JwksUrl(server.jwks_url, allow_http=True) as source:
        assert source.wait_ready(5)
        assert minter.key.kid in source.key_set().by_kid


def test_unknown_kid_triggers_one_rate_limited_refresh(
    server: JwksServer, minter: TokenMinter
) -> None:
    clock = Clock()
    with JwksUrl(server.jwks_url, allow_http=True, clock=clock, min_refresh_interval=30) as source:
        assert source.wait_ready(5)
        issuer = TokenMinter(issuer="https://k8s.example", keys=minter.keys)
        auth = KubernetesTokenAuthenticator(
            keys=source,
            audience=AUDIENCE,
            issuers="https://k8s.example",
            trust_domain="cluster.local",
            clock=clock,
        )
        assert auth.authenticate(bearer(issuer.kubernetes("shop", "a", AUDIENCE)))
        # Rotate: the server now publishes a new key only.
        new = SigningKey("rsa", kid="rotated")
        server.set_jwks({"keys": [new.jwk()]})
        fetched = server.count("/jwks.json")
        token = issuer.kubernetes("shop", "a", AUDIENCE, key=new)
        # A burst of unknown-kid requests: the first is refused and signals a
        # refresh; the rest are refused until the refresh lands (a loaded
        # machine may let it land mid-burst), and one fetch serves them all.
        outcomes = []
        for _ in range(20):
            try:
                auth.authenticate(bearer(token))
                outcomes.append("accepted")
            except InvalidToken as error:
                outcomes.append("refused" if "unknown kid 'rotated'" in str(error) else str(error))
        assert outcomes[0] == "refused"
        assert set(outcomes) <= {"refused", "accepted"}
        assert outcomes == sorted(outcomes, key=lambda o: o == "accepted")
        assert wait_for(lambda: "rotated" in source.key_set().by_kid)
        assert server.count("/jwks.json") == fetched + 1
        assert auth.authenticate(bearer(token)) is not None
        # The old key was withdrawn: its cached token is refused now.
        with pytest.raises(InvalidToken, match="unknown kid"):
            auth.authenticate(bearer(issuer.kubernetes("shop", "a", AUDIENCE)))
        # Still within the rate limit: no further fetch.
        time.sleep(0.2)
        assert server.count("/jwks.json") == fetched + 1


@pytest.mark.parametrize("mode", ["down", "error", "garbage", "slow"])
def test_failures_keep_the_last_good_keys_for_a_bounded_time(
    server: JwksServer, minter: TokenMinter, mode: str
) -> None:
    clock = Clock()
    with JwksUrl(
        server.jwks_url, allow_http=True, clock=clock, ttl=60, max_stale=120, timeout=0.5
    ) as source:
        assert source.wait_ready(5)
        good = source.key_set()
        server.mode = mode  # type: ignore[assignment]
        started = time.monotonic()
        assert not source.refresh(timeout=10)
        assert time.monotonic() - started < 3  # the fetch timeout is bounded
        assert source.last_error is not None
        assert source.key_set() is good
        clock.now += 60 + 120 + 1
        with pytest.raises(KeysUnavailable):
            source.key_set()
        # Fail closed for tokens too, never a fallback key.
        auth = KubernetesTokenAuthenticator(
            keys=source, audience=AUDIENCE, issuers="x", trust_domain="cluster.local", clock=clock
        )
        with pytest.raises(InvalidToken, match="no trusted keys"):
            auth.authenticate(
                bearer(TokenMinter(issuer="x", keys=minter.keys).kubernetes("a", "b", AUDIENCE))
            )
        server.mode = "ok"
        assert source.refresh(timeout=10)
        assert minter.key.kid in source.key_set().by_kid


def test_server_never_reachable_refuses(minter: TokenMinter) -> None:
    server = JwksServer(minter.jwks()).start()
    url = server.jwks_url
    server.stop()
    with JwksUrl(url, allow_http=True, timeout=0.5, retry_interval=0.1) as source:
        assert not source.wait_ready(0.5)
        with pytest.raises(KeysUnavailable, match="no keys fetched yet"):
            source.key_set()


def test_oidc_discovery(server: JwksServer, minter: TokenMinter) -> None:
    with OidcDiscovery(server.issuer, allow_http=True) as source:
        assert source.wait_ready(5)
        assert source.jwks_uri == server.jwks_url
        key = source.key_set().find(minter.key.kid)[0]
        assert key.issuer == server.issuer


def test_oidc_discovery_refuses_another_issuer(server: JwksServer) -> None:
    server.discovery = {"issuer": "https://evil.example", "jwks_uri": server.jwks_url}
    with OidcDiscovery(server.issuer, allow_http=True) as source:
        assert not source.refresh(timeout=5)
        assert "names issuer 'https://evil.example'" in (source.last_error or "")


def test_oidc_discovery_refuses_an_http_jwks_uri_without_allow_http() -> None:
    with pytest.raises(ConfigurationError, match="must use https"):
        OidcDiscovery("http://127.0.0.1:1")


@pytest.mark.parametrize(
    "url",
    [
        "http://issuer.example/jwks",
        "ftp://issuer.example/jwks",
        "https:///jwks",
        "https://user:pass@issuer.example/jwks",
        "https://issuer.example/jwks#frag",
        "https://issuer.example/jwks\n",
        "https://issuer.example:99999/jwks",
        "",
    ],
)
def test_jwks_urls_are_validated_at_configuration(url: str) -> None:
    with pytest.raises(ConfigurationError):
        JwksUrl(url, start=False)


def test_spiffe_bundle_is_reloaded_when_the_file_changes(tmp_path: Path) -> None:
    first = TokenMinter(keys=[SigningKey("ec", kid="one")])
    second = TokenMinter(keys=[SigningKey("ed25519", kid="two")])
    path = tmp_path / "bundle.json"
    x509_root = {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "a", "y": "b"}
    document = first.spiffe_bundle()
    document["keys"].append(x509_root)
    path.write_text(json.dumps(document))
    with SpiffeJwtBundle({"example.org": path}, poll_interval=0.05) as source:
        keys = source.key_set()
        assert set(keys.by_kid) == {"one"}
        assert keys.find("one")[0].trust_domain == "example.org"
        path.write_text("{not json")  # a half-written file: the last keys stay
        time.sleep(0.2)
        assert set(source.key_set().by_kid) == {"one"}
        path.write_text(json.dumps(second.spiffe_bundle()))
        assert wait_for(lambda: set(source.key_set().by_kid) == {"two"})


def test_spiffe_bundle_unreadable_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        SpiffeJwtBundle({"example.org": tmp_path / "missing.json"})


def test_key_material_rules() -> None:
    rsa = SigningKey("rsa", kid="rsa")
    private = dict(rsa.jwk(), kid="private", d="AQAB")
    symmetric = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
    encryption = dict(rsa.jwk(), kid="enc", use="enc")
    hmac_alg = dict(rsa.jwk(), kid="hs", alg="HS256")
    no_kid = {k: v for k, v in rsa.jwk().items() if k != "kid"}
    wrong_ops = dict(rsa.jwk(), kid="ops", key_ops=["encrypt"])
    keys = parse_jwks(
        {"keys": [rsa.jwk(), private, symmetric, encryption, hmac_alg, no_kid, wrong_ops, 5]}
    )
    assert [k.kid for k in keys] == ["rsa"]
    assert keys[0].algorithms == {"RS256"}
    unnamed = parse_jwks({"keys": [rsa.jwk(include_alg=False)]})
    assert "PS256" in unnamed[0].algorithms
    duplicated = parse_jwks({"keys": [rsa.jwk(), rsa.jwk()]})
    assert duplicated == []
    with pytest.raises(ValueError, match="not a JWKS"):
        parse_jwks({"keys": "nope"})


def test_static_jwks_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        StaticJwks()
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(ConfigurationError):
        StaticJwks(path=bad)
