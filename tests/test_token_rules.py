"""Rules on tokens, certificate + token on one request, and certificate-bound tokens."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import pytest

from peer_middleware import (
    Anyone,
    Authenticated,
    CertificateBound,
    Claim,
    ConfigurationError,
    HasToken,
    Issuer,
    JwtSvidAuthenticator,
    KubernetesTokenAuthenticator,
    Namespace,
    PeerMiddleware,
    PeerWSGIMiddleware,
    Policy,
    Principal,
    Proof,
    ProvenBy,
    RequestPrincipal,
    StaticJwks,
    XfccAuthenticator,
    allow,
)
from peer_middleware.peer import Peer
from peer_middleware.spiffe import SpiffeId
from peer_middleware.testing import xfcc_header
from peer_middleware.testing.tokens import SigningKey, TokenMinter, certificate_thumbprint

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "payments"
CHALLENGE = 'Bearer error="invalid_token"'
CALLER = "spiffe://cluster.local/ns/shop/sa/checkout"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("ec")


@pytest.fixture
def minter(key: SigningKey) -> TokenMinter:
    return TokenMinter(issuer=ISSUER, keys=[key])


@pytest.fixture
def kubernetes(minter: TokenMinter) -> KubernetesTokenAuthenticator:
    return KubernetesTokenAuthenticator(
        keys=StaticJwks(minter.jwks()),
        audience=AUDIENCE,
        issuers=ISSUER,
        trust_domain="cluster.local",
    )


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


Call = Callable[..., tuple[int, dict[str, str], bytes, Any]]


def asgi(app: PeerMiddleware) -> Call:
    def call(
        path: str = "/payments/1",
        headers: dict[str, str] | None = None,
        client: tuple[str, int] = ("10.0.0.9", 40000),
        query: str = "",
    ) -> tuple[int, dict[str, str], bytes, Any]:
        scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "client": client,
            "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asyncio.run(app(scope, receive, send))
        start = sent[0]
        response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"], response_headers, sent[1]["body"], scope.get("peer_middleware.peer")

    return call


def middleware(policy: Policy, *authenticators: Any) -> Call:
    return asgi(PeerMiddleware(_ok, policy=policy, authenticators=authenticators))


# --------------------------------------------------------------------------
# Matchers.
# --------------------------------------------------------------------------


def token_peer(claims: dict[str, Any], bound: str | None = None) -> Peer:
    return Peer(
        SpiffeId.parse(CALLER), Proof.TOKEN, source="t", certificate_sha256=bound, claims=claims
    )


CLAIMS = {
    "iss": ISSUER,
    "sub": "system:serviceaccount:shop:checkout",
    "scope": "payments.read payments.write",
    "groups": ["finance", "audit"],
    "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "checkout"}},
    "level": 3,
    "admin": True,
}


@pytest.mark.parametrize(
    ("matcher", "expected"),
    [
        (RequestPrincipal(f"{ISSUER}/system:serviceaccount:shop:checkout"), True),
        (RequestPrincipal(f"{ISSUER}/*"), True),
        (RequestPrincipal("*/system:serviceaccount:shop:checkout"), True),
        (RequestPrincipal("*"), True),
        (RequestPrincipal("https://other/*"), False),
        (Issuer(ISSUER), True),
        (Issuer("https://other"), False),
        (Claim("scope", contains="payments.read"), True),
        (Claim("scope", contains="payments"), False),
        (Claim("groups", contains="audit"), True),
        (Claim("groups", contains="ops"), False),
        (Claim("kubernetes.io.namespace", equals="shop"), True),
        (Claim("kubernetes.io.serviceaccount.name", equals="checkout"), True),
        (Claim(("kubernetes.io", "namespace"), equals="shop"), True),
        (Claim("kubernetes.io.namespace", equals="ops"), False),
        (Claim("level", equals=3), True),
        (Claim("level", equals="3"), False),
        (Claim("admin", equals=True), True),
        (Claim("level", equals=True), False),
        (Claim("missing", equals="x"), False),
        (HasToken(), True),
        (CertificateBound(), False),
    ],
    ids=lambda v: v.describe() if hasattr(v, "describe") else str(v),
)
def test_token_matchers(matcher: Any, expected: bool) -> None:
    assert matcher(token_peer(CLAIMS)) is expected
    assert matcher(None) is False
    certificate_only = Peer(SpiffeId.parse(CALLER), Proof.PROXY_ASSERTED, source="xfcc")
    assert matcher(certificate_only) is False
    combined = Peer(
        SpiffeId.parse(CALLER), Proof.PROXY_ASSERTED, source="xfcc", token=token_peer(CLAIMS)
    )
    assert matcher(combined) is expected


@pytest.mark.parametrize(
    "build",
    [
        lambda: RequestPrincipal(),
        lambda: RequestPrincipal("no-slash"),
        lambda: RequestPrincipal("a*b/c"),
        lambda: Issuer(),
        lambda: Claim("x"),
        lambda: Claim("x", equals="a", contains="b"),
        lambda: Claim("", equals="a"),
        lambda: Claim("a..b", equals="a"),
        lambda: Claim("x", contains="two words"),
        lambda: Claim("x", equals=[1]),  # type: ignore[arg-type]
    ],
)
def test_matcher_configuration_errors(build: Callable[[], Any]) -> None:
    with pytest.raises(ConfigurationError):
        build()


# --------------------------------------------------------------------------
# Through the middleware.
# --------------------------------------------------------------------------


def test_same_rules_serve_a_certificate_and_a_kubernetes_token(
    kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter
) -> None:
    policy = Policy([allow("read", Namespace("shop", trust_domain="cluster.local"))])
    call = middleware(policy, XfccAuthenticator(trusted_proxies=["127.0.0.1"]), kubernetes)
    status, _, _, peer = call(
        headers={"x-forwarded-client-cert": xfcc_header(CALLER)}, client=("127.0.0.1", 1)
    )
    assert status == 200
    assert peer.proof is Proof.PROXY_ASSERTED
    assert peer.token is None
    token = minter.kubernetes("shop", "checkout", AUDIENCE)
    status, _, _, peer = call(headers={"authorization": f"Bearer {token}"})
    assert status == 200
    assert peer.proof is Proof.TOKEN
    status, _, _, _ = call(
        headers={"authorization": f"Bearer {minter.kubernetes('ops', 'admin', AUDIENCE)}"}
    )
    assert status == 403


def test_invalid_token_gets_401_with_the_bearer_challenge_and_a_fixed_body(
    kubernetes: KubernetesTokenAuthenticator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="peer_middleware")
    call = middleware(Policy([allow("any", Anyone())]), kubernetes)
    for bad in ("garbage", "a.b.c", "x" * 100_000):
        status, headers, body, _ = call(headers={"authorization": f"Bearer {bad}"})
        assert status == 401
        assert headers["www-authenticate"] == CHALLENGE
        assert body == b'{"type":"about:blank","title":"Unauthorized","status":401}'
    reasons = [r.peer_middleware["reason"] for r in caplog.records if hasattr(r, "peer_middleware")]
    assert "kubernetes token: not a compact JWS (three base64url segments)" in reasons
    assert not any("x" * 100 in r.getMessage() for r in caplog.records)


def test_missing_identity_gets_the_plain_bearer_challenge(
    kubernetes: KubernetesTokenAuthenticator,
) -> None:
    call = middleware(Policy([allow("needs", Authenticated())]), kubernetes)
    status, headers, _, _ = call()
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"


def test_certificate_and_token_on_one_route(
    kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter
) -> None:
    both = ProvenBy(Proof.PROXY_ASSERTED) & Principal(CALLER) & HasToken()
    both &= Claim("kubernetes.io.namespace", equals="shop")
    call = middleware(
        Policy([allow("both", both)]), XfccAuthenticator(trusted_proxies=["127.0.0.1"]), kubernetes
    )
    xfcc = {"x-forwarded-client-cert": xfcc_header(CALLER)}
    token = minter.kubernetes("shop", "cart", AUDIENCE)
    status, _, _, _ = call(headers=xfcc, client=("127.0.0.1", 1))
    assert status == 403  # a certificate alone is not enough
    status, _, _, _ = call(headers={"authorization": f"Bearer {token}"})
    assert status == 403  # a token alone is not enough
    headers = {**xfcc, "authorization": f"Bearer {token}"}
    status, _, _, peer = call(headers=headers, client=("127.0.0.1", 1))
    assert status == 200
    assert peer.principal == CALLER
    assert peer.token.principal.endswith("/sa/cart")
    # A repeat caller gets the very same combined peer (the decision cache needs it).
    assert call(headers=headers, client=("127.0.0.1", 1))[3] is peer


def test_certificate_bound_token(
    kubernetes: KubernetesTokenAuthenticator, minter: TokenMinter
) -> None:
    certificate = b"the client certificate, DER"
    other = b"another certificate"
    xfcc_for = {
        name: xfcc_header(CALLER).replace(
            hashlib.sha256(CALLER.encode()).hexdigest(), hashlib.sha256(der).hexdigest()
        )
        for name, der in (("right", certificate), ("wrong", other))
    }
    bound = minter.kubernetes(
        "shop",
        "checkout",
        AUDIENCE,
        extra={"cnf": {"x5t#S256": certificate_thumbprint(certificate)}},
    )
    unbound = minter.kubernetes("shop", "checkout", AUDIENCE)
    call = middleware(
        Policy(
            [
                allow("bound", CertificateBound(), paths="/bound/**"),
                allow("any", Anyone(), paths="/other"),
            ]
        ),
        XfccAuthenticator(trusted_proxies=["127.0.0.1"]),
        kubernetes,
    )
    proxy = ("127.0.0.1", 1)

    def status(path: str, xfcc: str | None, token: str) -> tuple[int, str | None]:
        headers = {"authorization": f"Bearer {token}"}
        if xfcc is not None:
            headers["x-forwarded-client-cert"] = xfcc
        code, response_headers, _, _ = call(path, headers=headers, client=proxy)
        return code, response_headers.get("www-authenticate")

    assert status("/bound/x", xfcc_for["right"], bound) == (200, None)
    assert status("/bound/x", xfcc_for["wrong"], bound) == (401, CHALLENGE)
    assert status("/bound/x", None, bound) == (401, CHALLENGE)
    assert status("/other", None, bound) == (401, CHALLENGE)
    assert status("/other", xfcc_for["right"], unbound) == (200, None)
    assert status("/bound/x", xfcc_for["right"], unbound)[0] == 403


def test_two_token_authenticators_share_the_authorization_header(
    minter: TokenMinter, key: SigningKey, kubernetes: KubernetesTokenAuthenticator
) -> None:
    svid_minter = TokenMinter(keys=[SigningKey("rsa")])
    svids = JwtSvidAuthenticator(
        keys=StaticJwks(svid_minter.jwks(), trust_domain="example.org"), audience=AUDIENCE
    )
    call = middleware(Policy([allow("any", Authenticated())]), svids, kubernetes)
    k8s_token = minter.kubernetes("shop", "checkout", AUDIENCE)
    svid = svid_minter.jwt_svid("spiffe://example.org/ns/a/sa/b", AUDIENCE)
    assert call(headers={"authorization": f"Bearer {k8s_token}"})[0] == 200
    assert call(headers={"authorization": f"Bearer {svid}"})[0] == 200
    stranger = TokenMinter(issuer="https://elsewhere", keys=[SigningKey("ec")])
    status, headers, _, _ = call(
        headers={"authorization": f"Bearer {stranger.kubernetes('a', 'b', AUDIENCE)}"}
    )
    assert (status, headers["www-authenticate"]) == (401, CHALLENGE)


def test_query_string_reaches_the_authenticator_only_when_asked(minter: TokenMinter) -> None:
    keys = StaticJwks(minter.jwks())
    token = minter.kubernetes("shop", "checkout", AUDIENCE)
    with_query = KubernetesTokenAuthenticator(
        keys=keys,
        audience=AUDIENCE,
        issuers=ISSUER,
        trust_domain="cluster.local",
        query_parameter="access_token",
    )
    policy = Policy([allow("any", Authenticated())])
    assert middleware(policy, with_query)(query=f"access_token={token}")[0] == 200
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/payments/1",
        "QUERY_STRING": f"access_token={token}",
        "REMOTE_ADDR": "10.0.0.9",
    }
    statuses: list[str] = []
    app = PeerWSGIMiddleware(
        lambda e, s: (s("200 OK", []), [b"ok"])[1], policy=policy, authenticators=[with_query]
    )
    app(environ, lambda status, headers: statuses.append(status))
    assert statuses == ["200 OK"]
    without = KubernetesTokenAuthenticator(
        keys=keys, audience=AUDIENCE, issuers=ISSUER, trust_domain="cluster.local"
    )
    assert middleware(policy, without)(query=f"access_token={token}")[0] == 401
