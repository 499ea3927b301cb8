"""The guard's memory of callers: reused only while every proof still holds.

A guard whose authenticators are all ``memoizable`` remembers, per distinct
credential, the identity it proved, and per distinct request the verdict it
made. These tests pin down when that memory must *not* answer: a certificate
or token that expired, trust material that rotated, a custom authenticator
or verifier that cannot say when its answer lapses, and any change in the
request the answer depended on.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from peer_middleware import (
    Anyone,
    ForwardedCertificateAuthenticator,
    Guard,
    JwtSvidAuthenticator,
    MtlsAuthenticator,
    Namespace,
    Peer,
    Policy,
    Proof,
    SpiffeId,
    StaticJwks,
    X509SvidVerifier,
    XfccAuthenticator,
    allow,
    deny,
)
from peer_middleware.errors import AuthenticationFailed
from peer_middleware.keys import KeySet
from peer_middleware.request import RequestView
from peer_middleware.testing import forwarded_cert_headers, xfcc_header
from peer_middleware.testing.pki import TestCA
from peer_middleware.testing.tokens import TokenMinter

TD = "cluster.local"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
PROXY = ("127.0.0.1", 41000)
AUDIENCE = "payments"


def policy() -> Policy:
    return Policy(
        [
            deny("no-delete", Anyone(), methods=["DELETE"], paths="/orders/**"),
            allow("shop", Namespace("shop", trust_domain=TD), paths="/orders/**"),
            allow("health", Anyone(), paths="/healthz"),
        ]
    )


class Counting:
    """Wraps an authenticator and counts calls; not memoizable (it declares nothing)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.name = inner.name
        self.header_names = inner.header_names
        self.forwarded = inner.forwarded
        self.bearer = inner.bearer
        self.reads_tls = inner.reads_tls
        self.reads_query = inner.reads_query
        self.www_authenticate = inner.www_authenticate

    def authenticate(self, request: RequestView) -> Peer | None:
        self.calls += 1
        result: Peer | None = self.inner.authenticate(request)
        return result


class CountingMemoizable(Counting):
    """The same, declaring what the wrapped authenticator promises."""

    memoizable = True


def counting(inner: Any, *, memoizable: bool = True) -> Counting:
    return CountingMemoizable(inner) if memoizable else Counting(inner)


def xfcc_guard(*, memoizable: bool = True) -> tuple[Guard, Counting]:
    wrapped = counting(XfccAuthenticator(trusted_proxies=["127.0.0.1"]), memoizable=memoizable)
    return Guard(policy=policy(), authenticators=[wrapped]), wrapped


def xfcc(principal: str = CART) -> dict[str, str]:
    return {"x-forwarded-client-cert": xfcc_header(principal)}


# --- what is remembered ---------------------------------------------------------------


def test_a_repeated_request_reuses_the_verdict() -> None:
    guard, counting = xfcc_guard()
    first = guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc())
    # The second sight of the credential keeps the verdict; the third reuses it.
    second = guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc())
    third = guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc())
    assert first.allowed
    assert second is not first
    assert third is second
    assert counting.calls == 1


def test_a_known_caller_on_a_new_path_is_not_authenticated_again() -> None:
    guard, counting = xfcc_guard()
    first = guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc())
    second = guard.check("GET", "/orders/2", "/orders/2", PROXY, xfcc())
    assert first.allowed
    assert second.allowed
    assert second.peer is first.peer
    assert second.path == "/orders/2"
    assert counting.calls == 1


def test_a_path_never_seen_is_not_kept() -> None:
    # New resource ids would only churn the verdicts kept: a verdict is kept
    # from the second request on a path, by a caller seen before.
    guard, _ = xfcc_guard()
    guard.check("GET", "/orders/0", "/orders/0", PROXY, xfcc())
    for number in range(1, 50):
        path = f"/orders/{number}"
        assert guard.check("GET", path, path, PROXY, xfcc()).allowed
    assert len(guard.memory.verdicts) == 0
    again = guard.check("GET", "/orders/7", "/orders/7", PROXY, xfcc())
    assert len(guard.memory.verdicts) == 1
    assert guard.check("GET", "/orders/7", "/orders/7", PROXY, xfcc()) is again


def test_another_connection_from_the_same_proxy_reuses_the_identity() -> None:
    guard, counting = xfcc_guard()
    guard.check("GET", "/orders/1", "/orders/1", ("127.0.0.1", 41000), xfcc())
    verdict = guard.check("GET", "/orders/1", "/orders/1", ("127.0.0.1", 41001), xfcc())
    assert verdict.allowed
    assert counting.calls == 1


def test_a_custom_authenticator_is_asked_every_time() -> None:
    guard, counting = xfcc_guard(memoizable=False)
    for _ in range(3):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc()).allowed
    assert counting.calls == 3


def test_requests_without_identity_are_not_remembered() -> None:
    guard, counting = xfcc_guard()
    for _ in range(3):
        assert guard.check("GET", "/healthz", "/healthz", PROXY, {}).allowed
    assert counting.calls == 3


def test_credentials_from_an_untrusted_peer_are_not_remembered() -> None:
    guard, counting = xfcc_guard()
    for _ in range(2):
        verdict = guard.check("GET", "/healthz", "/healthz", ("10.9.9.9", 5), xfcc())
        assert verdict.allowed
        assert verdict.peer is None
        assert verdict.notes == ("ignored x-forwarded-client-cert from an untrusted peer",)
    assert counting.calls == 2


def test_oversized_credentials_are_not_remembered() -> None:
    guard, counting = xfcc_guard()
    headers = {**xfcc(), "x-forwarded-for": "10.1.1.1, " * 2000 + "10.1.1.1"}
    for _ in range(2):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, dict(headers)).allowed
    assert counting.calls == 2


# --- what a remembered answer must not cover ------------------------------------------


def test_a_refused_method_on_a_remembered_path_is_still_refused() -> None:
    guard, _ = xfcc_guard()
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc()).allowed
    verdict = guard.check("DELETE", "/orders/1", "/orders/1", PROXY, xfcc())
    assert not verdict.allowed
    assert verdict.decision.rule == "no-delete"


def test_a_remembered_path_does_not_vouch_for_another_raw_target() -> None:
    guard, _ = xfcc_guard()
    assert guard.check("GET", "/orders/a/b", "/orders/a/b", PROXY, xfcc()).allowed
    verdict = guard.check("GET", "/orders/a/b", "/orders/a%2Fb", PROXY, xfcc())
    assert verdict.decision.status == 400


def test_another_caller_is_not_given_a_remembered_verdict() -> None:
    guard, _ = xfcc_guard()
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc()).allowed
    other = xfcc("spiffe://cluster.local/ns/web/sa/frontend")
    verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, other)
    assert not verdict.allowed
    assert verdict.decision.status == 403


def test_a_remembered_proxy_address_does_not_cover_a_rewritten_one() -> None:
    # Port 0, or the address copied from X-Forwarded-For, is what uvicorn
    # reports after rewriting: the proxy can no longer be identified.
    guard, _ = xfcc_guard()
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc()).allowed
    port_zero = {**xfcc(), "x-forwarded-for": "127.0.0.1"}
    verdict = guard.check("GET", "/orders/1", "/orders/1", ("127.0.0.1", 0), port_zero)
    assert verdict.decision.status == 401
    rewritten = {**xfcc(), "x-forwarded-for": "127.0.0.1:41000"}
    verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, rewritten)
    assert verdict.decision.status == 401


def test_a_remembered_mount_point_is_part_of_the_request() -> None:
    guard, _ = xfcc_guard()
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc()).allowed
    mounted = guard.check("GET", "/api/orders/1", "/api/orders/1", PROXY, xfcc(), "/api")
    assert mounted.allowed
    assert mounted.route == "/orders/1"
    elsewhere = guard.check("GET", "/api/orders/1", "/api/orders/1", PROXY, xfcc())
    assert not elsewhere.allowed
    assert elsewhere.route == "/api/orders/1"


# --- certificates ---------------------------------------------------------------------


class RotatingBundle:
    def __init__(self, authorities: list[x509.Certificate]) -> None:
        self.authorities = authorities
        self.generation = 0

    def x509_authorities(self, trust_domain: str) -> Sequence[x509.Certificate] | None:
        return self.authorities if trust_domain == TD else None

    def rotate(self, authorities: list[x509.Certificate]) -> None:
        self.authorities = authorities
        self.generation += 1


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(Encoding.PEM).decode("ascii")


def test_a_remembered_certificate_lapses_when_the_bundle_rotates() -> None:
    ca, other = TestCA.create(TD), TestCA.create(TD)
    bundle = RotatingBundle([ca.certificate])
    wrapped = counting(MtlsAuthenticator(X509SvidVerifier(bundle)))
    guard = Guard(policy=policy(), authenticators=[wrapped])
    chain = (pem(ca.issue_svid(CART).certificate),)
    for _ in range(2):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, {}, tls_chain=chain).allowed
    assert wrapped.calls == 1
    bundle.rotate([other.certificate])
    verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, {}, tls_chain=chain)
    assert verdict.decision.status == 401
    assert "does not verify" in verdict.decision.reason
    # The identity memory lapses too, on a path never seen.
    verdict = guard.check("GET", "/orders/2", "/orders/2", PROXY, {}, tls_chain=chain)
    assert verdict.decision.status == 401


def test_a_remembered_certificate_lapses_when_it_expires() -> None:
    ca = TestCA.create(TD)
    clock = Clock()
    svid = ca.issue_svid(CART, not_after=clock.now + timedelta(minutes=5))
    verifier = X509SvidVerifier(RotatingBundle([ca.certificate]), clock=clock)
    guard = Guard(policy=policy(), authenticators=[MtlsAuthenticator(verifier)])
    chain = (pem(svid.certificate),)
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, {}, tls_chain=chain).allowed
    clock.now += timedelta(minutes=6)
    verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, {}, tls_chain=chain)
    assert verdict.decision.status == 401
    assert "expired" in verdict.decision.reason


def test_a_forwarded_certificate_lapses_when_the_bundle_rotates() -> None:
    ca, other = TestCA.create(TD), TestCA.create(TD)
    bundle = RotatingBundle([ca.certificate])
    authenticator = ForwardedCertificateAuthenticator(
        "nginx", trusted_proxies=["127.0.0.1"], verifier=X509SvidVerifier(bundle)
    )
    guard = Guard(policy=policy(), authenticators=[authenticator])
    headers = forwarded_cert_headers("nginx", ca.issue_svid(CART))
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, dict(headers)).allowed
    bundle.rotate([other.certificate])
    verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, dict(headers))
    assert verdict.decision.status == 401


@pytest.mark.parametrize("kind", ["xfcc", "nginx"])
def test_a_certificate_served_from_the_authenticators_cache_still_lapses(kind: str) -> None:
    # The guard forgets (evicted, or a new worker's memory), the authenticator
    # remembers the header: the identity it hands back must carry its check,
    # or the guard would remember it past the bundle's rotation.
    ca, other = TestCA.create(TD), TestCA.create(TD)
    bundle = RotatingBundle([ca.certificate])
    verifier = X509SvidVerifier(bundle)
    svid = ca.issue_svid(CART)
    authenticator: Any
    if kind == "xfcc":
        authenticator = XfccAuthenticator(trusted_proxies=["127.0.0.1"], verifier=verifier)
        headers = {"x-forwarded-client-cert": xfcc_header(svid, include_cert=True)}
    else:
        authenticator = ForwardedCertificateAuthenticator(
            "nginx", trusted_proxies=["127.0.0.1"], verifier=verifier
        )
        headers = dict(forwarded_cert_headers("nginx", svid))
    guard = Guard(policy=policy(), authenticators=[authenticator])
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, dict(headers)).allowed
    guard.memory.clear()
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, dict(headers)).allowed
    bundle.rotate([other.certificate])
    for path in ("/orders/1", "/orders/2"):
        verdict = guard.check("GET", path, path, PROXY, dict(headers))
        assert verdict.decision.status == 401


class PlainVerifier:
    """A custom verifier whose results cannot say when they lapse."""

    def __init__(self, inner: X509SvidVerifier) -> None:
        self.inner = inner
        self.calls = 0

    def verify(self, chain: Sequence[bytes]) -> Any:
        self.calls += 1
        result = self.inner.verify(chain)

        class Plain:
            spiffe_id = result.spiffe_id
            sha256 = result.sha256
            not_after = result.not_after

        return Plain()


def test_a_custom_verifier_is_asked_every_time() -> None:
    ca = TestCA.create(TD)
    verifier = PlainVerifier(X509SvidVerifier(RotatingBundle([ca.certificate])))
    authenticator = ForwardedCertificateAuthenticator(
        "nginx", trusted_proxies=["127.0.0.1"], verifier=verifier
    )
    guard = Guard(policy=policy(), authenticators=[authenticator])
    headers = forwarded_cert_headers("nginx", ca.issue_svid(CART))
    for _ in range(3):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, dict(headers)).allowed
    assert verifier.calls == 3


# --- tokens ---------------------------------------------------------------------------


class SwappableKeys:
    def __init__(self, document: dict[str, Any]) -> None:
        self.keys: KeySet = StaticJwks(document).key_set()

    def key_set(self, *, refresh: bool = False) -> KeySet:
        return self.keys

    def swap(self, document: dict[str, Any]) -> None:
        self.keys = StaticJwks(document).key_set()


def token_guard(keys: Any, clock: Any = None) -> tuple[Guard, Counting]:
    options = {"clock": clock} if clock is not None else {}
    wrapped = counting(JwtSvidAuthenticator(keys=keys, audience=AUDIENCE, **options))
    return Guard(policy=policy(), authenticators=[wrapped]), wrapped


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_remembered_token_lapses_when_it_expires() -> None:
    now = [1_900_000_000.0]
    minter = TokenMinter(clock=lambda: now[0])
    guard, counting = token_guard(StaticJwks(minter.jwks()), clock=lambda: now[0])
    token = minter.jwt_svid(CART, AUDIENCE, lifetime=60)
    for _ in range(2):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, bearer(token)).allowed
    assert counting.calls == 1
    now[0] += 61 + 30  # past exp and the default leeway
    verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, bearer(token))
    assert verdict.decision.status == 401
    assert "expired" in verdict.decision.reason


def test_a_remembered_token_lapses_when_its_key_is_withdrawn() -> None:
    minter, successor = TokenMinter(), TokenMinter()
    keys = SwappableKeys(minter.jwks())
    guard, _ = token_guard(keys)
    token = minter.jwt_svid(CART, AUDIENCE)
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, bearer(token)).allowed
    keys.swap(successor.jwks())
    verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, bearer(token))
    assert verdict.decision.status == 401


def test_a_token_tells_the_request_how_long_it_holds() -> None:
    now = [1_900_000_000.0]
    minter = TokenMinter(clock=lambda: now[0])
    authenticator = JwtSvidAuthenticator(
        keys=StaticJwks(minter.jwks()), audience=AUDIENCE, clock=lambda: now[0]
    )
    request = RequestView("GET", "/orders/1", PROXY, bearer(minter.jwt_svid(CART, AUDIENCE)))
    peer = authenticator.authenticate(request)
    assert peer is not None
    assert peer.proof is Proof.TOKEN
    # The peer is a plain value; the check is the request's, and the guard's memory's.
    assert peer == Peer(SpiffeId.parse(CART), Proof.TOKEN, source=peer.source, claims=peer.claims)
    assert request.checks is not None
    [check] = request.checks
    assert check()
    now[0] += 300 + 31  # past exp and the leeway
    assert not check()


def test_the_memory_keeps_the_checks_with_the_identity() -> None:
    minter = TokenMinter()
    guard, _ = token_guard(StaticJwks(minter.jwks()))
    token = minter.jwt_svid(CART, AUDIENCE)
    guard.check("GET", "/orders/1", "/orders/1", PROXY, bearer(token))
    [(peer, checks, _notes)] = [
        entry for part in vars_of(guard.memory.identities) for entry in part.values()
    ]
    assert peer.principal == CART
    assert len(checks) == 1
    assert checks[0]()


def test_a_token_is_remembered_only_as_a_digest() -> None:
    minter = TokenMinter()
    guard, _ = token_guard(StaticJwks(minter.jwks()))
    token = minter.jwt_svid(CART, AUDIENCE)
    for _ in range(3):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, bearer(token)).allowed
    signature = token.rpartition(".")[2]
    remembered = repr(
        [vars_of(guard.memory.identities), vars_of(guard.memory.verdicts)]  # keys and values
    )
    assert signature not in remembered
    assert len(guard.memory.verdicts) == 1


def vars_of(cache: Any) -> list[Any]:
    return [cache.young, cache._old]


# --- what an extension of the package must declare again ----------------------------


class RevokingVerifier:
    """Wraps the package's verifier and refuses revoked certificates."""

    def __init__(self, inner: X509SvidVerifier) -> None:
        self.inner = inner
        self.revoked: set[str] = set()

    def verify(self, chain: Sequence[bytes]) -> Any:
        result = self.inner.verify(chain)
        if result.sha256 in self.revoked:
            raise AuthenticationFailed("revoked")
        return result


class RevokingSubclass(X509SvidVerifier):
    __slots__ = ("revoked",)

    def __init__(self, bundles: Any) -> None:
        super().__init__(bundles)
        self.revoked: set[str] = set()

    def verify(self, chain: Sequence[bytes | str]) -> Any:
        result = super().verify(chain)
        if result.sha256 in self.revoked:
            raise AuthenticationFailed("revoked")
        return result


def test_a_wrapping_verifier_is_asked_every_time() -> None:
    ca = TestCA.create(TD)
    svid = ca.issue_svid(CART)
    verifier = RevokingVerifier(X509SvidVerifier(RotatingBundle([ca.certificate])))
    authenticator = ForwardedCertificateAuthenticator(
        "nginx", trusted_proxies=["127.0.0.1"], verifier=verifier
    )
    guard = Guard(policy=policy(), authenticators=[authenticator])
    headers = forwarded_cert_headers("nginx", svid)
    for _ in range(3):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, dict(headers)).allowed
    verifier.revoked.add(svid.fingerprint_sha256)
    verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, dict(headers))
    assert verdict.decision.status == 401


def test_a_verifier_subclass_that_overrides_verify_is_asked_every_time() -> None:
    ca = TestCA.create(TD)
    svid = ca.issue_svid(CART)
    verifier = RevokingSubclass(RotatingBundle([ca.certificate]))
    guard = Guard(policy=policy(), authenticators=[MtlsAuthenticator(verifier)])
    chain = (pem(svid.certificate),)
    for _ in range(3):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, {}, tls_chain=chain).allowed
    verifier.revoked.add(svid.fingerprint_sha256)
    verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, {}, tls_chain=chain)
    assert verdict.decision.status == 401


class DenyListTokens(JwtSvidAuthenticator):
    """A subclass adding a check: it does not declare memoizable again."""

    denied: ClassVar[set[str]] = set()

    def authenticate(self, request: RequestView) -> Peer | None:
        peer = super().authenticate(request)
        if peer is not None and peer.principal in self.denied:
            raise AuthenticationFailed("denied")
        return peer


def test_an_authenticator_subclass_must_declare_memoizable_again() -> None:
    minter = TokenMinter()
    authenticator = DenyListTokens(keys=StaticJwks(minter.jwks()), audience=AUDIENCE)
    guard = Guard(policy=policy(), authenticators=[authenticator])
    token = minter.jwt_svid(CART, AUDIENCE)
    for _ in range(3):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, bearer(token)).allowed
    DenyListTokens.denied.add(CART)
    try:
        verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, bearer(token))
    finally:
        DenyListTokens.denied.clear()
    assert verdict.decision.status == 401


@pytest.mark.parametrize("client", [(), ("127.0.0.1",), ("127.0.0.1", 1, 2)])
def test_an_odd_client_address_is_not_an_internal_error(client: Any) -> None:
    minter = TokenMinter()
    guard, _ = token_guard(StaticJwks(minter.jwks()))
    token = minter.jwt_svid(CART, AUDIENCE)
    for _ in range(2):
        verdict = guard.check("GET", "/orders/1", "/orders/1", client, bearer(token))
        assert verdict.allowed
