"""Bearer-token extraction and verification, with keys minted when the tests run."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from peer_middleware import (
    ConfigurationError,
    InvalidToken,
    JwtSvidAuthenticator,
    KubernetesTokenAuthenticator,
    Peer,
    Proof,
    StaticJwks,
)
from peer_middleware.errors import AuthenticationFailed, UntrustedIssuer
from peer_middleware.jwt import JWT_SVID_ALGORITHMS
from peer_middleware.keys import SpiffeJwtBundle
from peer_middleware.request import RequestView
from peer_middleware.testing.tokens import SigningKey, TokenMinter, certificate_thumbprint

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "payments"
NOW = 1_900_000_000.0
CHALLENGE = 'Bearer error="invalid_token"'


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module", params=["rsa", "ec", "ed25519"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def signing_key(kind: str) -> SigningKey:
    return SigningKey(kind)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def minter(signing_key: SigningKey, clock: Clock) -> TokenMinter:
    return TokenMinter(issuer=ISSUER, keys=[signing_key], clock=clock)


@pytest.fixture
def kubernetes(minter: TokenMinter, clock: Clock) -> KubernetesTokenAuthenticator:
    return KubernetesTokenAuthenticator(
        keys=StaticJwks(minter.jwks()),
        audience=AUDIENCE,
        issuers=ISSUER,
        trust_domain="cluster.local",
        clock=clock,
    )


def request(headers: dict[str, str] | None = None, query: str = "") -> RequestView:
    return RequestView("GET", "/payments/1", ("10.0.0.9", 40000), headers or {}, query)


def bearer(token: str) -> RequestView:
    return request({"authorization": f"Bearer {token}"})


def refused(auth: Any, req: RequestView) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        auth.authenticate(req)
    assert info.value.status == 401
    assert info.value.www_authenticate == CHALLENGE
    return info.value


# --------------------------------------------------------------------------
# Identity.
# --------------------------------------------------------------------------


def test_kubernetes_token_becomes_a_service_account_peer(
    kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter
) -> None:
    peer = kubernetes.authenticate(bearer(minter.kubernetes("shop", "checkout", AUDIENCE)))

    assert isinstance(peer, Peer)
    assert peer.principal == "spiffe://cluster.local/ns/shop/sa/checkout"
    assert (peer.namespace, peer.service_account) == ("shop", "checkout")
    assert peer.proof is Proof.TOKEN
    assert peer.source == "kubernetes"
    assert peer.issuer == ISSUER
    assert peer.subject == "system:serviceaccount:shop:checkout"
    assert peer.claims["kubernetes.io"]["namespace"] == "shop"


def test_jwt_svid_sub_becomes_the_spiffe_id(
    minter: TokenMinter, signing_key: SigningKey, clock: Clock, tmp_path: Any
) -> None:
    bundle = tmp_path / "example.org.json"
    bundle.write_text(json.dumps(minter.spiffe_bundle()))
    source = SpiffeJwtBundle({"example.org": bundle})
    try:
        auth = JwtSvidAuthenticator(keys=source, audience=AUDIENCE, clock=clock)
        token = minter.jwt_svid("spiffe://example.org/ns/shop/sa/cart", AUDIENCE)
        if signing_key.algorithm not in JWT_SVID_ALGORITHMS:
            # EdDSA: not a JWT-SVID algorithm (JWT-SVID specification, section 2.1).
            error = refused(auth, bearer(token))
            assert (
                error.reason
                == f"jwt-svid token: algorithm {signing_key.algorithm!r} is not allowed"
            )
            return
        peer = auth.authenticate(bearer(token))
        assert peer is not None
        assert peer.principal == "spiffe://example.org/ns/shop/sa/cart"
        # The same key, but the sub is of another trust domain: refused.
        error = refused(
            auth, bearer(minter.jwt_svid("spiffe://other.org/ns/shop/sa/cart", AUDIENCE))
        )
        assert "trust domain 'other.org'" in error.reason
    finally:
        source.close()


def test_scheme_is_case_insensitive_and_other_schemes_are_ignored(
    kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter
) -> None:
    token = minter.kubernetes("shop", "checkout", AUDIENCE)
    for scheme in ("bearer", "BEARER", "BeArEr"):
        assert kubernetes.authenticate(request({"authorization": f"{scheme} {token}"}))
    assert kubernetes.authenticate(request({"authorization": "Basic dXNlcjpwYXNz"})) is None
    assert kubernetes.authenticate(request()) is None


def test_repeat_caller_gets_the_same_peer_object(
    kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter
) -> None:
    token = minter.kubernetes("shop", "checkout", AUDIENCE)
    assert kubernetes.authenticate(bearer(token)) is kubernetes.authenticate(bearer(token))


def test_cached_token_is_refused_once_expired(
    kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter, clock: Clock
) -> None:
    token = minter.kubernetes("shop", "checkout", AUDIENCE, lifetime=60)
    assert kubernetes.authenticate(bearer(token)) is not None
    clock.now += 60 + 30  # lifetime + leeway
    assert "expired" in refused(kubernetes, bearer(token)).reason


def test_claims_are_read_only(
    kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter
) -> None:
    peer = kubernetes.authenticate(bearer(minter.kubernetes("shop", "checkout", AUDIENCE)))
    assert peer is not None
    with pytest.raises(TypeError):
        peer.claims["kubernetes.io"]["namespace"] = "ops"  # type: ignore[index]


# --------------------------------------------------------------------------
# Refusals: one row per check.
# --------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"x") -> str:
    return ".".join(
        (b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature))
    )


Case = Callable[[TokenMinter, Clock], str]


def k8s(**extra: Any) -> Case:
    return lambda m, c: m.kubernetes("shop", "checkout", AUDIENCE, extra=extra)


BAD_TOKENS: dict[str, tuple[Case, str]] = {
    "not-a-jws": (lambda m, c: "abc", "not a compact JWS"),
    "two-dots-empty": (lambda m, c: "..", "not a compact JWS"),
    "truncated-base64": (
        lambda m, c: m.kubernetes("shop", "checkout", AUDIENCE)[:-3],
        "signature does not verify|Invalid crypto padding",
    ),
    "truncated-header": (
        lambda m, c: m.kubernetes("shop", "checkout", AUDIENCE)[5:],
        "header",
    ),
    "header-not-json": (lambda m, c: b64(b"{nope") + ".e30.c2ln", "not base64url-encoded JSON"),
    "header-a-list": (lambda m, c: b64(b"[1]") + ".e30.c2ln", "not a JSON object"),
    "alg-none": (
        lambda m, c: forged({"alg": "none", "kid": m.key.kid}, {"sub": "x"}),
        "algorithm 'none' is not allowed",
    ),
    "alg-hs256": (
        lambda m, c: forged({"alg": "HS256", "kid": m.key.kid}, {"sub": "x"}),
        "algorithm 'HS256' is not allowed",
    ),
    "alg-a-number": (lambda m, c: forged({"alg": 7}, {}), "algorithm 7 is not allowed"),
    "jku": (
        lambda m, c: m.kubernetes(
            "shop", "checkout", AUDIENCE, headers={"jku": "https://evil.example/jwks"}
        ),
        "refused header parameter(s) ['jku']",
    ),
    "x5u": (
        lambda m, c: m.kubernetes("shop", "checkout", AUDIENCE, headers={"x5u": "https://e/x"}),
        "['x5u']",
    ),
    "jwk": (
        lambda m, c: m.kubernetes("shop", "checkout", AUDIENCE, headers={"jwk": m.key.jwk()}),
        "['jwk']",
    ),
    "x5c": (
        lambda m, c: m.kubernetes("shop", "checkout", AUDIENCE, headers={"x5c": ["MIIB"]}),
        "['x5c']",
    ),
    "typ-at-jwt": (
        lambda m, c: m.kubernetes("shop", "checkout", AUDIENCE, headers={"typ": "at+jwt"}),
        "typ 'at+jwt' is not JWT or JOSE",
    ),
    "no-kid": (
        lambda m, c: m.kubernetes("shop", "checkout", AUDIENCE, headers={"kid": None}),
        "no usable kid",
    ),
    "unknown-kid": (
        lambda m, c: m.kubernetes("shop", "checkout", AUDIENCE, key=SigningKey("ec", kid="new")),
        "unknown kid 'new'",
    ),
    "wrong-key-same-kid": (
        lambda m, c: m.kubernetes(
            "shop", "checkout", AUDIENCE, key=SigningKey(m.key.kind, kid=m.key.kid)
        ),
        "signature does not verify",
    ),
    "wrong-audience": (
        lambda m, c: m.kubernetes("shop", "checkout", "other"),
        "audience not accepted",
    ),
    "audience-wrong-type": (k8s(aud=42), "audience not accepted"),
    "expired": (
        lambda m, c: m.kubernetes("shop", "checkout", AUDIENCE, lifetime=-31),
        "expired 31s ago",
    ),
    "exp-a-string": (k8s(exp="tomorrow"), "'exp'"),
    "exp-a-bool": (k8s(exp=True), "claim 'exp' is not a number"),
    "exp-infinite": (k8s(exp=1e400), "'exp'"),
    "nbf-future": (k8s(nbf=NOW + 120), "not valid before"),
    "nbf-a-list": (k8s(nbf=[1]), "claim 'nbf' is not a number"),
    "iat-future": (k8s(iat=NOW + 120), "issued 120s in the future"),
    "no-exp": (
        lambda m, c: m.token({"iss": ISSUER, "sub": "system:serviceaccount:a:b", "aud": AUDIENCE}),
        "missing claim 'exp'",
    ),
    "legacy-secret": (
        lambda m, c: m.legacy_kubernetes_secret("shop", "checkout"),
        "missing claim",
    ),
    "sub-a-number": (k8s(sub=12), "Subject must be a string"),
    "sub-not-a-service-account": (k8s(sub="alice"), "not a service account"),
    "sub-too-many-parts": (k8s(sub="system:serviceaccount:a:b:c"), "malformed"),
    "namespace-invalid": (k8s(sub="system:serviceaccount:Shop:b"), "namespace 'Shop'"),
    "no-kubernetes-claim": (k8s(**{"kubernetes.io": None}), "no 'kubernetes.io' claim"),
    "kubernetes-claim-disagrees": (
        k8s(**{"kubernetes.io": {"namespace": "ops", "serviceaccount": {"name": "checkout"}}}),
        "disagrees with sub",
    ),
    "cnf-not-an-object": (k8s(cnf="x"), "'cnf' is not an object"),
    "cnf-dpop": (k8s(cnf={"jkt": "abc"}), "unsupported confirmation method"),
    "cnf-bad-thumbprint": (k8s(cnf={"x5t#S256": "short"}), "not a base64url SHA-256"),
    "iss-a-number": (k8s(iss=5), "issuer not accepted"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS), ids=list(BAD_TOKENS))
def test_bad_tokens_are_refused_with_a_precise_reason(
    case: str, kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter, clock: Clock
) -> None:
    build, expected = BAD_TOKENS[case]
    error = refused(kubernetes, bearer(build(minter, clock)))
    assert any(part in error.reason for part in expected.split("|")), error.reason


def test_untrusted_issuer_is_its_own_error(
    kubernetes: KubernetesTokenAuthenticator, signing_key: SigningKey, clock: Clock
) -> None:
    other = TokenMinter(issuer="https://other.example", keys=[signing_key], clock=clock)
    with pytest.raises(UntrustedIssuer):
        kubernetes.authenticate(bearer(other.kubernetes("shop", "checkout", AUDIENCE)))


@pytest.mark.parametrize("issuer", [[], {"a": 1}, 5, None])
def test_an_unknown_kid_with_an_odd_issuer_is_not_a_crash(
    kubernetes: KubernetesTokenAuthenticator, clock: Clock, issuer: object
) -> None:
    # The issuer hint is read from the unverified claims when no key matches.
    stranger = TokenMinter(keys=[SigningKey("ec")], clock=clock)
    claims = stranger.claims(
        "spiffe://cluster.local/ns/shop/sa/checkout", AUDIENCE, extra={"iss": issuer}
    )
    with pytest.raises(AuthenticationFailed):
        kubernetes.authenticate(bearer(stranger.token(claims)))


def test_huge_token_is_refused_before_decoding(
    kubernetes: KubernetesTokenAuthenticator,
) -> None:
    error = refused(kubernetes, bearer("a" * 20_000 + ".b.c"))
    assert "longer than 16384" in error.reason


def test_json_nesting_bomb_is_refused(kubernetes: KubernetesTokenAuthenticator) -> None:
    header = b64(b"[" * 5000 + b"]" * 5000)
    refused(kubernetes, bearer(header + ".e30.c2ln"))


# --------------------------------------------------------------------------
# Extraction.
# --------------------------------------------------------------------------


def test_two_authorization_lines_are_refused(
    kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter
) -> None:
    token = minter.kubernetes("shop", "checkout", AUDIENCE)
    error = refused(kubernetes, request({"authorization": f"Bearer {token},Bearer {token}"}))
    assert "several Authorization values" in error.reason


def test_empty_bearer_is_refused(kubernetes: KubernetesTokenAuthenticator) -> None:
    assert "empty bearer token" in refused(kubernetes, request({"authorization": "Bearer "})).reason


def test_configured_header_and_authorization_together_are_refused(
    minter: TokenMinter, clock: Clock
) -> None:
    auth = KubernetesTokenAuthenticator(
        keys=StaticJwks(minter.jwks()),
        audience=AUDIENCE,
        issuers=ISSUER,
        trust_domain="cluster.local",
        header="x-service-token",
        clock=clock,
    )
    token = minter.kubernetes("shop", "checkout", AUDIENCE)
    assert auth.header_names == ("authorization", "x-service-token")
    assert auth.authenticate(request({"x-service-token": token})) is not None
    error = refused(auth, request({"x-service-token": token, "authorization": f"Bearer {token}"}))
    assert "more than one bearer token" in error.reason


def test_query_token_only_when_enabled(minter: TokenMinter, clock: Clock) -> None:
    token = minter.kubernetes("shop", "checkout", AUDIENCE)
    keys = StaticJwks(minter.jwks())
    plain = KubernetesTokenAuthenticator(
        keys=keys, audience=AUDIENCE, issuers=ISSUER, trust_domain="cluster.local", clock=clock
    )
    assert not getattr(plain, "reads_query", False)
    assert plain.authenticate(request(query=f"access_token={token}")) is None
    enabled = KubernetesTokenAuthenticator(
        keys=keys,
        audience=AUDIENCE,
        issuers=ISSUER,
        trust_domain="cluster.local",
        query_parameter="access_token",
        clock=clock,
    )
    assert enabled.reads_query
    assert enabled.authenticate(request(query=f"x=1&access_token={token}")) is not None
    error = refused(enabled, request(query=f"access_token={token}&access_token={token}"))
    assert "more than one bearer token" in error.reason


# --------------------------------------------------------------------------
# Certificate binding claims.
# --------------------------------------------------------------------------


def test_bound_token_carries_the_thumbprint_as_hex(
    kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter
) -> None:
    der = b"certificate bytes"
    token = minter.kubernetes(
        "shop", "checkout", AUDIENCE, extra={"cnf": {"x5t#S256": certificate_thumbprint(der)}}
    )
    peer = kubernetes.authenticate(bearer(token))
    assert peer is not None
    import hashlib

    assert peer.certificate_sha256 == hashlib.sha256(der).hexdigest()


# --------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"audience": ""}, "audience"),
        ({"audience": []}, "audience"),
        ({"algorithms": ["HS256"]}, "HS256"),
        ({"algorithms": ["none"]}, "none"),
        ({"algorithms": []}, "algorithms"),
        ({"leeway": -1}, "leeway"),
        ({"leeway": 3600}, "leeway"),
        ({"header": "X-Token"}, "lower-case"),
        ({"header": "authorization"}, "authorization"),
        ({"query_parameter": ""}, "query_parameter"),
        ({"issuers": []}, "issuers"),
        ({"trust_domain": "Cluster.Local"}, "trust domain"),
        ({"keys": []}, "KeySource"),
        ({"cache_size": -1}, "cache_size"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_configuration_errors(options: dict[str, Any], message: str, minter: TokenMinter) -> None:
    config: dict[str, Any] = {
        "keys": StaticJwks(minter.jwks()),
        "audience": AUDIENCE,
        "issuers": ISSUER,
        "trust_domain": "cluster.local",
    }
    config.update(options)
    with pytest.raises(ConfigurationError, match=message):
        KubernetesTokenAuthenticator(**config)


def test_invalid_token_is_an_authentication_failure() -> None:
    error = InvalidToken("x")
    assert isinstance(error, AuthenticationFailed)
    assert error.www_authenticate == CHALLENGE
    assert error.scheme == "Bearer"


def test_pyjwt_alone_would_accept_what_we_refuse(minter: TokenMinter) -> None:
    # A sanity check of the fixtures: a token with a jku header is otherwise valid.
    token = minter.kubernetes("shop", "checkout", AUDIENCE, headers={"jku": "https://e/k"})
    claims = jwt.decode(
        token,
        minter.key.public_key,
        algorithms=[minter.key.algorithm],
        audience=AUDIENCE,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert claims["sub"] == "system:serviceaccount:shop:checkout"
