"""Everything the guard remembers is bounded in bytes, whatever it is sent."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_middleware import (
    Anyone,
    ConfigurationError,
    Guard,
    Namespace,
    Policy,
    XfccAuthenticator,
    allow,
    deny,
)
from peer_middleware._cache import ByteBoundedCache
from peer_middleware.memory import Memory, MemoryLimits, estimate

MiB = 1024 * 1024
PROXY = ("127.0.0.1", 50000)
POLICY = Policy(
    [
        allow("healthz", Anyone(), methods="GET", paths="/healthz"),
        allow("shop", Namespace("shop", trust_domain="cluster.local"), paths="/payments/**"),
        deny("no-admin", Namespace("ops", trust_domain="cluster.local"), paths="/admin/**"),
    ]
)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"] + [
    f"X-M{i}" for i in range(57)
]


def flood(guard: Guard, count: int, path_bytes: int) -> None:
    filler = "p" * path_bytes
    for index in range(count):
        method = METHODS[index % len(METHODS)]
        path = f"/{filler}/{index}"
        verdict = guard.check(method, path, path, PROXY, {})
        assert verdict.decision.status == 401


def test_refused_anonymous_requests_hold_at_most_the_anonymous_share() -> None:
    # 64 methods and many new 2 KiB paths, every request refused without
    # identity: the guard may keep only its small anonymous share.
    guard = Guard(policy=POLICY, authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])])
    gc.collect()
    tracemalloc.start()
    try:
        flood(guard, 64 * 150, 2048)
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The default anonymous share is 2 MiB; allow as much again for what
    # the estimate does not see (dictionary tables growing in steps).
    assert held < 4 * MiB, f"{held / MiB:.1f} MiB held after refused anonymous requests"
    memory = guard.memory
    assert memory.nbytes <= memory.limits.anonymous_bytes
    assert memory.identities.nbytes == memory.verdicts.nbytes == 0


def test_limits_are_configured_in_one_place() -> None:
    limits = MemoryLimits(total_bytes=4 * MiB, anonymous_bytes=64 * 1024)
    guard = Guard(policy=POLICY, memory=limits)
    flood(guard, 64 * 20, 4096)
    parts = guard.memory.parts()
    assert sum(p.budget for p in parts.values()) == 4 * MiB
    assert sum(parts[name].budget for name in ("paths", "plans", "routes")) == 64 * 1024
    assert guard.memory.nbytes <= 64 * 1024


def test_memory_off_keeps_nothing() -> None:
    guard = Guard(policy=POLICY, memory=MemoryLimits.off())
    flood(guard, 100, 64)
    assert guard.memory.nbytes == 0
    assert all(len(part) == 0 for part in guard.memory.parts().values())
    assert not MemoryLimits.off().enabled


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"total_bytes": -1}, "total_bytes must be a non-negative integer"),
        ({"anonymous_bytes": 1.5}, "anonymous_bytes must be a non-negative integer"),
        ({"total_bytes": True}, "total_bytes must be a non-negative integer"),
        ({"total_bytes": 10, "anonymous_bytes": 11}, "anonymous_bytes exceeds total_bytes"),
    ],
)
def test_limits_configuration_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        MemoryLimits(**options)


def test_memory_needs_limits() -> None:
    with pytest.raises(ConfigurationError, match="memory must be a MemoryLimits"):
        Memory(16 * MiB)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="memory must be a MemoryLimits"):
        Guard(policy=POLICY, memory=16)  # type: ignore[arg-type]


def test_estimate_counts_strings_bytes_and_tuples() -> None:
    assert estimate("x" * 1000) >= 1000
    assert estimate("\u20ac" * 1000) >= 2000
    assert estimate(b"x" * 1000) >= 1000
    assert estimate(("x" * 1000, ("y" * 1000,))) >= 2000
    assert estimate(None) > 0


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=20_000),
    st.lists(st.tuples(st.text(max_size=300), st.integers(0, 5)), max_size=300),
)
def test_byte_bounded_cache_never_exceeds_its_budget(
    budget: int, entries: list[tuple[str, int]]
) -> None:
    cache = ByteBoundedCache[str, int](budget, lambda key, value: 100 + estimate(key))
    for key, value in entries:
        cache.put(key, value)
        assert cache.nbytes <= budget
        got = cache.get(key)
        assert got is None or got == value
    assert cache.nbytes <= budget


def test_byte_bounded_cache_keeps_hot_entries_through_a_flood() -> None:
    cache = ByteBoundedCache[str, int](20_000, lambda key, value: 100 + len(key))
    cache.put("hot", 1)
    for index in range(1_000):
        cache.put(f"cold-{index}", index)
        assert cache.get("hot") == 1
    cache.clear()
    assert len(cache) == 0
    assert cache.nbytes == 0


def test_long_forwarded_headers_are_not_remembered_by_the_authenticator() -> None:
    # A mesh workload writes the leading part of an appended XFCC header: many
    # distinct 60 KiB values must not pile up in the authenticator's cache.
    xfcc = XfccAuthenticator(trusted_proxies=["127.0.0.1"], forward_client_cert="append_forward")
    guard = Guard(policy=POLICY, authenticators=[xfcc])
    gc.collect()
    tracemalloc.start()
    try:
        for index in range(300):
            value = (
                f'By=spiffe://cluster.local/ns/x/sa/{index};Subject="{"a" * 60_000}",'
                "By=spiffe://cluster.local/ns/a/sa/b;URI=spiffe://cluster.local/ns/shop/sa/cart"
            )
            guard.check(
                "GET", "/payments/1", "/payments/1", PROXY, {"x-forwarded-client-cert": value}
            )
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 4 * MiB, f"{held / MiB:.1f} MiB held"


def test_long_token_headers_are_not_remembered() -> None:
    import base64
    import json

    from peer_middleware import JwtSvidAuthenticator, StaticJwks
    from peer_middleware.testing.tokens import TokenMinter

    minter = TokenMinter()
    authenticator = JwtSvidAuthenticator(keys=StaticJwks(minter.jwks()), audience="payments")
    guard = Guard(policy=POLICY, authenticators=[authenticator])
    for index in range(50):
        header = {"alg": "ES256", "typ": "JWT", "kid": minter.key.kid, "x": "p" * 3000 + str(index)}
        segment = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
        token = f"{segment}.e30.c2ln"
        verdict = guard.check(
            "GET", "/payments/1", "/payments/1", PROXY, {"authorization": f"Bearer {token}"}
        )
        assert verdict.decision.status == 401
    assert len(authenticator._headers) == 0
