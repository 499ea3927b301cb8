"""Where the first sight of a certificate or a token spends its time, step by step.

Run from the repository root::

    python benchmarks/cold_steps.py [--count N] [--rounds R]

Each step of ``X509SvidVerifier`` and of a token authenticator's verification
is timed on N credentials never seen before (best of R rounds), next to the
raw library calls the bench compares with (``cryptography``'s load and
``PolicyBuilder`` ... ``verify``; ``jwt.decode``), then the whole
authenticator and the whole ``Guard.check``. The steps mirror the code; they
call its private helpers, so this script moves with it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench
import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import PolicyBuilder

from peer_middleware import jwt as jwt_module
from peer_middleware import x509 as x509_module
from peer_middleware.request import RequestView

Steps = dict[str, float]


def _best(rounds: int, make: Callable[[], list[Any]], run: Callable[[list[Any]], Steps]) -> Steps:
    best: Steps = {}
    for _ in range(rounds):
        for name, value in run(make()).items():
            best[name] = min(value, best.get(name, value))
    return best


def _timed(items: Iterable[Any], steps: Callable[[Any, Callable[[str], None]], None]) -> Steps:
    totals: Steps = {}
    count = 0
    for item in items:
        count += 1
        last = time.perf_counter_ns()

        def mark(name: str) -> None:
            nonlocal last
            now = time.perf_counter_ns()
            totals[name] = totals.get(name, 0.0) + (now - last)
            last = now

        steps(item, mark)
    return {name: total / count / 1000.0 for name, total in totals.items()}


def certificate_steps(count: int, rounds: int) -> Steps:
    pki = bench.pki()
    verifier = pki.verifier()
    ca_policy, ee_policy = x509_module.svid_extension_policies()
    serial = iter(range(10**9))

    def make() -> list[str]:
        return [
            pki.issue(f"spiffe://cluster.local/ns/shop/sa/cold-{next(serial)}")
            .certificate.public_bytes(Encoding.PEM)
            .decode("ascii")
            for _ in range(count)
        ]

    def raw(pem: str, mark: Callable[[str], None]) -> None:
        leaf = x509.load_pem_x509_certificate(pem.encode("ascii"))
        mark("raw: load_pem_x509_certificate")
        PolicyBuilder().store(pki.store).time(datetime.now(timezone.utc)).extension_policies(
            ca_policy=ca_policy, ee_policy=ee_policy
        ).build_client_verifier().verify(leaf, [])
        mark("raw: PolicyBuilder ... verify")

    def ours(pem: str, mark: Callable[[str], None]) -> None:
        leaf, der = x509_module._load(pem, 0, 1)
        mark("PEM decode, serial check, load_der_x509_certificate")
        spiffe_id = x509_module._leaf_rules(leaf)
        mark("X.509-SVID leaf rules (reads leaf.extensions)")
        store = verifier._store(spiffe_id.trust_domain, verifier.bundles.generation)
        now = datetime.now(timezone.utc)
        not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        assert store is not None
        assert not_before <= now <= not_after
        mark("bundle of the trust domain, leaf validity")
        built = (
            PolicyBuilder()
            .store(store)
            .time(now)
            .max_chain_depth(verifier.max_chain_length)
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
            .build_client_verifier()
        )
        mark("PolicyBuilder ... build_client_verifier")
        verified = built.verify(leaf, [])
        mark("ClientVerifier.verify (path building, signatures)")
        for cert in verified.chain[1:]:
            not_after = min(not_after, cert.not_valid_after_utc)
        hashlib.sha256(der).hexdigest()
        mark("chain validity window, SHA-256 of the leaf")

    fresh_verifier = pki.verifier()
    authenticator = pki.authenticator("mtls")
    guard = bench.wrap_asgi(bench.starlette_app(), "mtls", bench.TARGET_ADDED_AT).guard

    def whole_verifier(pem: str, mark: Callable[[str], None]) -> None:
        fresh_verifier.verify((pem,))
        mark("whole: X509SvidVerifier.verify")

    def whole_authenticator(pem: str, mark: Callable[[str], None]) -> None:
        authenticator.authenticate(RequestView("GET", bench.PATH, None, {}, "", (pem,)))
        mark("whole: MtlsAuthenticator.authenticate")

    def whole_guard(pem: str, mark: Callable[[str], None]) -> None:
        guard.check("GET", bench.PATH, bench.PATH, ("127.0.0.1", 40000), {}, "", "", (pem,))
        mark("whole: Guard.check (1,000 rules)")

    result: Steps = {}
    # Each on credentials of its own: a second sight would be served from a cache.
    for steps in (raw, ours, whole_verifier, whole_authenticator, whole_guard):
        result.update(_best(rounds, make, lambda items, s=steps: _timed(items, s)))
    return result


def token_steps(count: int, rounds: int) -> Steps:
    pki = bench.pki()
    minter = pki.minter
    public = jwt.PyJWK(pki.jwks["keys"][0]).key
    serial = iter(range(10**9))
    authenticator: Any = pki.authenticator("token")
    guard = bench.wrap_asgi(bench.starlette_app(), "token", bench.TARGET_ADDED_AT).guard

    def make() -> list[str]:
        return [
            minter.jwt_svid(
                f"spiffe://cluster.local/ns/shop/sa/cold-{next(serial)}",
                bench.AUDIENCE,
                lifetime=3600,
            )
            for _ in range(count)
        ]

    def raw(token: str, mark: Callable[[str], None]) -> None:
        jwt.decode(
            token,
            public,
            algorithms=["ES256"],
            audience=bench.AUDIENCE,
            options={"require": ["exp", "aud", "sub"]},
        )
        mark("raw: jwt.decode")

    def ours(token: str, mark: Callable[[str], None]) -> None:
        _signed, _, signature = token.rpartition(".")
        hashlib.sha256(signature.encode("utf-8", "surrogatepass")).digest()
        mark("SHA-256 of the signature (cache key)")
        segment = token[: token.index(".")]
        alg, kid = authenticator._check_header(token, segment, "token")
        mark("JOSE header checks (kept per header segment after the first)")
        _index, key = authenticator._choose_key(token, kid, alg, "token")
        mark("key by kid")
        claims = authenticator._pyjwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=authenticator._audience,
            issuer=authenticator.issuers,
            options=authenticator._decode_options,
        )
        mark("pyjwt decode (signature, aud, required claims)")
        for name in ("exp", "nbf", "iat"):
            jwt_module._number(claims, name)
        jwt_module._certificate_thumbprint(claims)
        mark("time claims, cnf")
        authenticator._identity(claims, key, "")
        mark("SPIFFE ID of sub")
        jwt_module._freeze(claims)
        mark("frozen claims")

    result: Steps = {}
    for steps in (raw, ours):
        result.update(_best(rounds, make, lambda items, s=steps: _timed(items, s)))

    def whole_authenticator(token: str, mark: Callable[[str], None]) -> None:
        view = RequestView("GET", bench.PATH, None, {"authorization": f"Bearer {token}"})
        authenticator.authenticate(view)
        mark("whole: JwtSvidAuthenticator.authenticate")

    def whole_guard(token: str, mark: Callable[[str], None]) -> None:
        headers = {"authorization": f"Bearer {token}"}
        guard.check("GET", bench.PATH, bench.PATH, ("127.0.0.1", 40000), headers)
        mark("whole: Guard.check (1,000 rules)")

    for steps in (whole_authenticator, whole_guard):
        result.update(_best(rounds, make, lambda items, s=steps: _timed(items, s)))
    return result


def report(title: str, steps: Steps) -> None:
    print(f"\n{title}")
    print("| step | µs |")
    print("|:--|--:|")
    raw = sum(value for name, value in steps.items() if name.startswith("raw:"))
    parts = sum(value for name, value in steps.items() if not name.startswith(("raw:", "whole:")))
    for name, value in steps.items():
        print(f"| {name} | {value:.1f} |")
    print(f"| sum of the steps | {parts:.1f} |")
    print(f"| raw library cost | {raw:.1f} |")
    for name, value in steps.items():
        if name.startswith("whole:"):
            print(f"| {name[7:]} ÷ raw | {value / raw:.2f}{bench.TIMES} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="credentials per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (best kept)")
    args = parser.parse_args(argv)
    report(
        "Certificate, first sight (X.509-SVID, ES256 CA)",
        certificate_steps(args.count, args.rounds),
    )
    report("JWT-SVID (ES256), first sight", token_steps(args.count, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
