"""Switching the guard's memory off changes no decision, no peer and no logged reason.

Random request streams (repeat and new callers, forwarded identities and
bearer tokens, paths old and new, methods of every kind) interleaved with
time passing (tokens expiring) and a key being withdrawn, sent to two guards
built alike but for their memory, under a policy with deny, allow, shadow and
audit rules and rules declared on routes, and request conditions (hosts,
ports, header values, remote addresses) in rules of every kind.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from peer_middleware import (
    Anyone,
    Guard,
    JwtSvidAuthenticator,
    Namespace,
    Policy,
    Principal,
    StaticJwks,
    XfccAuthenticator,
    allow,
    audit,
    deny,
)
from peer_middleware.conditions import Header, Host, Port, RemoteIp
from peer_middleware.keys import KeySet
from peer_middleware.memory import MemoryLimits
from peer_middleware.policy import Route
from peer_middleware.testing import xfcc_header
from peer_middleware.testing.tokens import TokenMinter

TD = "cluster.local"
AUDIENCE = "payments"
PROXY = ("127.0.0.1", 41000)
STRANGER = ("192.0.2.7", 41000)
CALLERS = [
    f"spiffe://{TD}/ns/shop/sa/cart",
    f"spiffe://{TD}/ns/shop/sa/checkout",
    f"spiffe://{TD}/ns/ops/sa/admin",
    f"spiffe://{TD}/ns/legacy/sa/export",
]
PATHS = ["/orders/1", "/orders/2", "/orders/1/items", "/admin", "/healthz", "/reports/q1", "/x"]
PATHS += ["/reports/q1"] * 3  # the route with declared rules, more often
METHODS = ["GET", "POST", "DELETE", "HEAD", "get", "PURGE"]
REPORTS = Route("GET /reports/{quarter}")
# What the rules' conditions read, varied between repeats of one request:
# (extra headers, port).
FACTS: list[tuple[dict[str, str], int | None]] = [
    ({}, None),
    ({"host": "admin.example"}, 8443),
    ({"host": "public.example", "x-env": "prod"}, 8443),
    ({"x-debug": "", "x-forwarded-for": "10.1.1.1"}, 8000),
    ({"x-env": "stage", "x-forwarded-for": "192.0.2.1, 10.2.2.2", "host": "admin.example:1"}, 8000),
    ({"host": "ADMIN.example.", "x-env": "prod", "x-forwarded-for": "10.0.0.9"}, 8443),
]


def verdict_fields(verdict: Any) -> tuple[Any, ...]:
    """Everything a verdict's log record is built from."""
    decision = verdict.decision
    return (
        decision.allowed,
        decision.status,
        decision.rule,
        decision.reason,
        decision.dry_run,
        decision.shadow,
        decision.audit,
        verdict.path,
        verdict.route,
        verdict.notes,
    )


class SwappableKeys:
    def __init__(self, document: dict[str, Any]) -> None:
        self.keys: KeySet = StaticJwks(document).key_set()

    def key_set(self, *, refresh: bool = False) -> KeySet:
        return self.keys

    def swap(self, document: dict[str, Any]) -> None:
        self.keys = StaticJwks(document).key_set()


class Routes:
    """Routes as a router would dispatch them: /reports/<anything> is one route."""

    rules: ClassVar[dict[Route, list[Any]]] = {
        REPORTS: [allow("reports", Principal(CALLERS[2]), when=~Host("public.example"))]
    }

    def variant(self, request: object) -> object:
        assert isinstance(request, dict)
        return request["type"]

    def unchanged(self) -> bool:
        return True

    def resolve(self, request: object, method: str, path: str) -> Route | None:
        assert isinstance(request, dict)
        if request["type"] != "http":
            return None  # a websocket route would be another route
        if method == "GET" and path.startswith("/reports/") and path.count("/") == 2:
            return REPORTS
        return None


def policy() -> Policy:
    return Policy(
        [
            deny("no-delete", Anyone(), methods=["DELETE"], paths="/orders/**"),
            deny("no-legacy", Namespace("legacy", trust_domain=TD), paths="/**"),
            deny("no-debug", Anyone(), paths="/orders/**", when=Header("x-debug")),
            deny(
                "prod-only", Principal(CALLERS[0]), paths="/orders/2", when=~Header("x-env", "prod")
            ),
            allow(
                "admin-host",
                Principal(CALLERS[1]),
                paths="/admin",
                when=[Host("admin.example"), Port(8443)],
            ),
            allow(
                "internal",
                Namespace("ops", trust_domain=TD),
                paths="/orders/**",
                when=RemoteIp("10.0.0.0/8", trusted_hops=1),
            ),
            allow("shop", Namespace("shop", trust_domain=TD), paths="/orders/**"),
            allow("admin", Principal(CALLERS[2]), paths="/admin"),
            allow("health", Anyone(), methods=["GET", "HEAD"], paths="/healthz"),
            allow("shadow-open", Anyone(), paths="/x", shadow=True),
            audit("audit-orders", Namespace("shop", trust_domain=TD), paths="/orders/*"),
            allow("shadow-env", Anyone(), paths="/x", shadow=True, when=Header("x-env", "prod")),
        ]
    )


XFCC_ADMIN_REPORTS = ("xfcc", 2, "GET", "/reports/q1", True)
XFCC_STRANGER = ("xfcc", 2, "GET", "/reports/q1", False)
TOKEN_ORDERS = ("token", 0, "GET", "/orders/1", True)
REQUEST = st.one_of(
    st.tuples(
        st.just("xfcc"),
        st.sampled_from(range(len(CALLERS))),
        st.sampled_from(METHODS),
        st.sampled_from(PATHS),
        st.booleans(),
    ),
    st.tuples(
        st.just("token"),
        st.sampled_from(range(4)),
        st.sampled_from(METHODS),
        st.sampled_from(PATHS),
        st.booleans(),
    ),
    st.tuples(st.just("both"), st.sampled_from(range(len(CALLERS))), st.sampled_from(range(4))),
)
# A few distinct requests, sent again and again between the clock moving on
# and a key being withdrawn: repeats are what the memory serves.
STREAMS = st.tuples(
    st.lists(REQUEST, min_size=1, max_size=4),
    st.lists(
        st.one_of(
            st.tuples(st.integers(0, 3), st.sampled_from(["http", "websocket"])),
            st.tuples(st.integers(0, 3), st.just("http")),
            st.tuples(st.integers(0, 3), st.just("http"), st.integers(0, len(FACTS) - 1)),
            st.tuples(st.just("advance"), st.sampled_from([1, 30, 45, 120])),
            st.just(("withdraw",)),
        ),
        min_size=1,
        max_size=50,
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STREAMS)
# A verdict and a route are the same for a websocket only if the route is.
@example(([XFCC_ADMIN_REPORTS], [*[(0, "http")] * 3, (0, "websocket"), (0, "http")]))
# A remembered token lapses when it expires, and when its key is withdrawn.
@example(([TOKEN_ORDERS], [*[(0, "http")] * 3, ("advance", 120), (0, "http")]))
@example(([TOKEN_ORDERS], [*[(0, "http")] * 3, ("withdraw",), (0, "http")]))
# A rewritten address and an untrusted peer are never the trusted proxy.
@example(([XFCC_ADMIN_REPORTS, XFCC_STRANGER], [*[(0, "http")] * 3, *[(1, "http")] * 3]))
# A verdict allowed for one host, port or header value is not one for another.
@example(([XFCC_ADMIN_REPORTS], [*[(0, "http", 1)] * 3, (0, "http", 2), (0, "http", 1)]))
@example(
    (
        [("xfcc", 1, "GET", "/admin", True)],
        [*[(0, "http", 1)] * 3, (0, "http", 4), (0, "http", 5), (0, "http", 0)],
    )
)
def test_memory_off_changes_no_decision(stream: tuple[list[Any], list[Any]]) -> None:
    pool, steps = stream
    ops = [
        (pool[step[0] % len(pool)], step[1], step[2] if len(step) > 2 else 0)
        if isinstance(step[0], int)
        else step
        for step in steps
    ]
    now = [1_900_000_000.0]
    minter, successor = TokenMinter(clock=lambda: now[0]), TokenMinter(clock=lambda: now[0])
    keys = SwappableKeys(minter.jwks())
    tokens = [
        minter.jwt_svid(CALLERS[i % len(CALLERS)], AUDIENCE, lifetime=60 + 90 * i) for i in range(4)
    ]

    def guard(memory: MemoryLimits | None) -> Guard:
        built = Guard(
            policy=policy(),
            authenticators=[
                XfccAuthenticator(trusted_proxies=["127.0.0.1"]),
                JwtSvidAuthenticator(keys=keys, audience=AUDIENCE, clock=lambda: now[0]),
            ],
            memory=memory,
        )
        built.use_routes(Routes())
        return built

    remembering, forgetting = guard(None), guard(MemoryLimits.off())
    for op in ops:
        if op[0] == "advance":
            now[0] += op[1]
            continue
        if op[0] == "withdraw":
            keys.swap(successor.jwks())
            continue
        op, kind, facts = op
        extra, port = FACTS[facts]
        if op[0] == "both":
            method, path, client = "GET", "/orders/1", PROXY
            headers = {
                "x-forwarded-client-cert": xfcc_header(CALLERS[op[1]]),
                "authorization": f"Bearer {tokens[op[2]]}",
            }
        else:
            how, index, method, path, trusted = op
            client = PROXY if trusted else STRANGER
            if how == "xfcc":
                headers = {"x-forwarded-client-cert": xfcc_header(CALLERS[index])}
            else:
                headers = {"authorization": f"Bearer {tokens[index]}"}
        outcomes = []
        for subject in (remembering, forgetting):
            verdict = subject.check(
                method,
                path,
                path,
                client,
                {**headers, **extra},
                request={"type": kind},
                port=port,
            )
            outcomes.append(
                (
                    verdict_fields(verdict),
                    verdict.peer,
                    None if verdict.peer is None else verdict.peer.token,
                    verdict.www_authenticate,
                )
            )
        assert outcomes[0] == outcomes[1], (op, outcomes)
    assert forgetting.memory.nbytes == 0


class BrokenRoutes(Routes):
    def variant(self, request: object) -> object:
        raise RuntimeError("route table bug")


def test_a_route_table_that_fails_refuses() -> None:
    guard = Guard(
        policy=policy(), authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])]
    )
    guard.use_routes(BrokenRoutes())
    headers = {"x-forwarded-client-cert": xfcc_header(CALLERS[0])}
    verdict = guard.check("GET", "/orders/1", "/orders/1", PROXY, headers, request={"type": "http"})
    assert not verdict.allowed
    assert verdict.decision.status == 403
    assert verdict.response is not None
