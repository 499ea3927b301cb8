"""Request conditions (hosts, ports, headers, source and remote IP blocks), through both adapters.

Each case is one policy and one request, sent as a raw ASGI scope and as a
raw WSGI environ; the status must be the same through both.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer_middleware import (
    Anyone,
    ConfigurationError,
    Guard,
    PeerMiddleware,
    PeerWSGIMiddleware,
    Policy,
    allow,
    deny,
)
from peer_middleware.conditions import Header, Host, Port, RemoteIp, RequestFacts, SourceIp

OPEN = [allow("open", Anyone())]


def only(*when: Any) -> list[Any]:
    return [allow("cond", Anyone(), when=list(when))]


def deny_then_open(*when: Any) -> list[Any]:
    return [deny("cond", Anyone(), when=list(when)), *OPEN]


# (id, rules, request, status). A request: host, port, headers (name, value)
# lines in order, client address.
R = dict[str, Any]


def req(
    host: str | None = None,
    port: int = 8000,
    headers: tuple[tuple[str, str], ...] = (),
    client: str | None = "10.1.2.3",
) -> R:
    return {"host": host, "port": port, "headers": headers, "client": client}


CASES: list[tuple[str, list[Any], R, int]] = [
    # Hosts: case, port and trailing dot ignored unless the pattern names a port.
    ("host-exact", only(Host("api.example.com")), req("api.example.com"), 200),
    ("host-case-dot-port", only(Host("api.example.com")), req("API.Example.com.:8080"), 200),
    ("host-other", only(Host("api.example.com")), req("www.example.com"), 401),
    ("host-missing", only(Host("api.example.com")), req(None), 401),
    ("host-port-named", only(Host("api.example.com:8443")), req("api.example.com:8443"), 200),
    ("host-port-other", only(Host("api.example.com:8443")), req("api.example.com:8080"), 401),
    ("host-port-absent", only(Host("api.example.com:8443")), req("api.example.com"), 401),
    ("host-wildcard", only(Host("*.example.com")), req("a.b.example.com"), 200),
    ("host-wildcard-apex", only(Host("*.example.com")), req("example.com"), 401),
    ("host-ipv6", only(Host("[::1]")), req("[::1]:8000"), 200),
    ("host-not", only(~Host("admin.example.com")), req("api.example.com"), 200),
    ("host-not-self", only(~Host("admin.example.com")), req("admin.example.com"), 401),
    ("host-not-missing-allow", only(~Host("admin.example.com")), req(None), 401),
    ("host-not-missing-deny", deny_then_open(~Host("api.example.com")), req(None), 403),
    ("host-not-deny-ok", deny_then_open(~Host("api.example.com")), req("api.example.com"), 200),
    ("host-control", only(Host("api.example.com")), req("api.example.com\x01"), 400),
    ("host-obs-text", only(Host("api.example.com")), req("caf\xe9.example.com"), 400),
    # Ports: the port the server was reached on.
    ("port", only(Port(8443)), req(port=8443), 200),
    ("port-other", only(Port(8443)), req(port=8000), 401),
    ("port-not", only(~Port(8000)), req(port=8443), 200),
    ("port-not-self", only(~Port(8000)), req(port=8000), 401),
    # Headers: each value on its own, trimmed; present is not non-empty.
    ("header", only(Header("x-env", "prod")), req(headers=(("x-env", "prod"),)), 200),
    ("header-other", only(Header("x-env", "prod")), req(headers=(("x-env", "stage"),)), 401),
    ("header-missing", only(Header("x-env", "prod")), req(), 401),
    (
        "header-repeated",
        only(Header("x-env", "prod")),
        req(headers=(("x-env", "stage"), ("x-env", "prod"))),
        200,
    ),
    ("header-list", only(Header("x-env", "prod")), req(headers=(("x-env", "stage , prod"),)), 200),
    ("header-joined-never", only(Header("x-env", "a,b")), req(headers=(("x-env", "a,b"),)), 401),
    ("header-prefix", only(Header("x-env", "pr*")), req(headers=(("x-env", "prod"),)), 200),
    ("header-suffix", only(Header("x-env", "*od")), req(headers=(("x-env", "prod"),)), 200),
    ("header-present-empty", only(Header("x-debug")), req(headers=(("x-debug", ""),)), 200),
    ("header-present-missing", only(Header("x-debug")), req(), 401),
    ("header-nonempty-empty", only(Header("x-debug", "*")), req(headers=(("x-debug", ""),)), 401),
    ("header-nonempty", only(Header("x-debug", "*")), req(headers=(("x-debug", "1"),)), 200),
    ("header-not", only(~Header("x-env", "prod")), req(headers=(("x-env", "stage"),)), 200),
    ("header-not-self", only(~Header("x-env", "prod")), req(headers=(("x-env", "prod"),)), 401),
    ("header-not-missing-allow", only(~Header("x-env", "prod")), req(), 401),
    ("header-not-missing-deny", deny_then_open(~Header("x-env", "prod")), req(), 403),
    (
        "header-not-deny-ok",
        deny_then_open(~Header("x-env", "prod")),
        req(headers=(("x-env", "prod"),)),
        200,
    ),
    (
        "header-deny-present",
        deny_then_open(Header("x-debug")),
        req(headers=(("x-debug", ""),)),
        403,
    ),
    ("header-control", only(Header("x-env", "prod")), req(headers=(("x-env", "pr\x7fod"),)), 400),
    ("header-obs-text", only(Header("x-env", "prod")), req(headers=(("x-env", "pr\xe9d"),)), 400),
    # Source IP blocks: the connection's peer.
    ("source", only(SourceIp("10.0.0.0/8")), req(client="10.9.8.7"), 200),
    ("source-other", only(SourceIp("10.0.0.0/8")), req(client="192.0.2.1"), 401),
    ("source-ipv6", only(SourceIp("2001:db8::/32")), req(client="2001:db8::1"), 200),
    ("source-single", only(SourceIp("192.0.2.1")), req(client="192.0.2.1"), 200),
    ("source-not", only(~SourceIp("10.0.0.0/8")), req(client="192.0.2.1"), 200),
    ("source-not-missing-allow", only(~SourceIp("10.0.0.0/8")), req(client=None), 401),
    ("source-not-missing-deny", deny_then_open(~SourceIp("10.0.0.0/8")), req(client=None), 403),
    # Remote IP blocks: the original client, counting trusted hops from the right.
    (
        "remote-1",
        only(RemoteIp("203.0.113.0/24", trusted_hops=1)),
        req(headers=(("x-forwarded-for", "203.0.113.9"),)),
        200,
    ),
    (
        "remote-1-rightmost",
        only(RemoteIp("203.0.113.0/24", trusted_hops=1)),
        req(headers=(("x-forwarded-for", "198.51.100.1, 203.0.113.9"),)),
        200,
    ),
    (
        "remote-1-forged-left",
        only(RemoteIp("203.0.113.0/24", trusted_hops=1)),
        req(headers=(("x-forwarded-for", "203.0.113.9, 198.51.100.1"),)),
        401,
    ),
    (
        "remote-2-repeated-lines",
        only(RemoteIp("203.0.113.0/24", trusted_hops=2)),
        req(headers=(("x-forwarded-for", "203.0.113.9"), ("x-forwarded-for", "10.0.0.2"))),
        200,
    ),
    (
        "remote-too-few-hops",
        only(RemoteIp("203.0.113.0/24", trusted_hops=2)),
        req(headers=(("x-forwarded-for", "203.0.113.9"),)),
        401,
    ),
    ("remote-missing", only(RemoteIp("203.0.113.0/24", trusted_hops=1)), req(), 401),
    ("remote-0-is-source", only(RemoteIp("10.0.0.0/8")), req(client="10.0.0.1"), 200),
    (
        "remote-not-missing-deny",
        deny_then_open(~RemoteIp("203.0.113.0/24", trusted_hops=1)),
        req(),
        403,
    ),
    (
        "remote-not",
        only(~RemoteIp("203.0.113.0/24", trusted_hops=1)),
        req(headers=(("x-forwarded-for", "198.51.100.1"),)),
        200,
    ),
    # Several conditions: all must hold.
    (
        "all-of",
        only(Host("api.example.com"), Port(8443), Header("x-env", "prod")),
        req("api.example.com", 8443, (("x-env", "prod"),)),
        200,
    ),
    (
        "all-of-one-fails",
        only(Host("api.example.com"), Port(8443), Header("x-env", "prod")),
        req("api.example.com", 8000, (("x-env", "prod"),)),
        401,
    ),
]


def _ok_asgi() -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def asgi_status(rules: list[Any], request: R) -> int:
    middleware = PeerMiddleware(_ok_asgi(), policy=Policy(rules))
    headers = [(n.encode(), v.encode("latin-1")) for n, v in request["headers"]]
    if request["host"] is not None:
        headers.insert(0, (b"host", request["host"].encode("latin-1")))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/x",
        "raw_path": b"/x",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("127.0.0.1", request["port"]),
        "client": (request["client"], 40000) if request["client"] else None,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return int(sent[0]["status"])


def wsgi_status(rules: list[Any], request: R) -> int:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    middleware = PeerWSGIMiddleware(app, policy=Policy(rules))
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/x",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(request["port"]),
        "wsgi.url_scheme": "http",
    }
    if request["client"]:
        environ["REMOTE_ADDR"] = request["client"]
        environ["REMOTE_PORT"] = "40000"
    if request["host"] is not None:
        environ["HTTP_HOST"] = request["host"]
    for name, value in request["headers"]:
        key = "HTTP_" + name.upper().replace("-", "_")
        # A WSGI server joins repeated lines with ", ".
        environ[key] = value if key not in environ else environ[key] + ", " + value
    statuses: list[str] = []
    middleware(environ, lambda status, headers: statuses.append(status))
    return int(statuses[0].split()[0])


@pytest.mark.parametrize("adapter", [asgi_status, wsgi_status], ids=["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("rules", "request_", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_condition(adapter: Any, rules: list[Any], request_: R, status: int) -> None:
    assert adapter(rules, request_) == status


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Host("api.example.com\x01"), "control character"),
        (lambda: Host("caf\xe9.example.com"), "control character or obs-text"),
        (lambda: Host("a b"), "is not a host[:port]"),
        (lambda: Host(), "needs at least one value"),
        (lambda: Header("x-env", "pr\x80d"), "obs-text"),
        (lambda: Header("x env", "prod"), "not an HTTP token"),
        (lambda: Header("host", "a"), "use Host"),
        (lambda: Header("x-env", "a*b"), "'*' is allowed only"),
        (lambda: Port(0), "from 1 to 65535"),
        (lambda: Port(True), "from 1 to 65535"),
        (lambda: SourceIp("10.0.0.1/8"), "not an address or CIDR block"),
        (lambda: SourceIp(), "needs at least one"),
        (lambda: RemoteIp("10.0.0.0/8", trusted_hops=-1), "trusted_hops"),
        (lambda: allow("r", Anyone(), when=["x"]), "is not a condition"),
        (lambda: allow("r", Anyone(), methods="DELTE"), "unknown method 'DELTE'"),
        (lambda: allow("r", Anyone(), methods=["GET", "PUGRE"]), "unknown method 'PUGRE'"),
    ],
)
def test_bad_conditions_are_configuration_errors(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build()


def test_policy_reads_the_union_and_the_guard_reads_exactly_that() -> None:
    policy = Policy(
        [
            allow("a", Anyone(), when=[Host("a.example"), Header("X-Env", "prod")]),
            deny("b", Anyone(), when=~RemoteIp("10.0.0.0/8", trusted_hops=1)),
            allow("c", Anyone(), when=Port(8443)),
        ]
    )
    assert policy.reads == {"host", "header:x-env", "source", "header:x-forwarded-for", "port"}
    guard = Guard(policy=policy)
    assert guard.reads_port
    assert guard.header_names == {"host", "x-env", "x-forwarded-for", "forwarded"}
    assert Guard(policy=Policy(OPEN)).header_names == frozenset()
    assert not Guard(policy=Policy(OPEN)).reads_port


def test_describe_names_the_conditions() -> None:
    rule = allow("a", Anyone(), when=[~Host("a.example"), Header("x-env", "prod")])
    assert rule.describe() == (
        "allow 'a': * /** Anyone() when ~Host('a.example') when Header('x-env', 'prod')"
    )


# --------------------------------------------------------------------------
# Properties: conditions never raise on what a request carries, and negations
# keep their promise in both kinds of rule.
# --------------------------------------------------------------------------

CONDITIONS = [
    Host("api.example.com"),
    Host("*.example.com", "a.example:8443"),
    Port(8443),
    Header("x-env", "prod", "st*", "*-eu"),
    Header("x-debug"),
    Header("x-debug", "*"),
    SourceIp("10.0.0.0/8", "2001:db8::/32"),
    RemoteIp("203.0.113.0/24", trusted_hops=1),
    RemoteIp("203.0.113.0/24", trusted_hops=3),
]
TEXT = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(["api.example.com", "A.EXAMPLE:8443", "[::1]:80", "10.1.2.3", "2001:db8::5"]),
)
FACTS = st.builds(
    RequestFacts,
    TEXT,
    st.one_of(st.none(), st.integers(-1, 70000)),
    st.dictionaries(
        st.sampled_from(["x-env", "x-debug", "x-forwarded-for"]),
        st.one_of(st.text(max_size=40), st.sampled_from(["prod", " st1 , x", "203.0.113.7"])),
    ),
    TEXT,
)


@settings(max_examples=300, deadline=None)
@given(FACTS)
def test_negations_keep_their_promise(facts: RequestFacts) -> None:
    for condition in CONDITIONS:
        negated = ~condition
        held = condition.test(facts)
        # In a DENY rule a negation is plain negation of a value the request has;
        # a missing or unreadable attribute matches it (and the condition too when
        # the value is unknown rather than absent: an address, a port, a Host).
        if condition.present(facts):
            assert negated.test(facts, deny=True) is (not condition.test(facts, deny=True))
        else:
            assert negated.test(facts, deny=True)
        # In an ALLOW rule it never matches a request lacking the attribute.
        if negated.test(facts):
            assert condition.present(facts)
            assert not held
        if held:
            assert condition.present(facts)


def test_a_source_condition_keys_the_memory_on_the_host_not_the_port() -> None:
    from peer_middleware import Namespace, XfccAuthenticator
    from peer_middleware.memory import MemoryLimits
    from peer_middleware.testing import xfcc_header

    def guard(memory: MemoryLimits | None) -> Guard:
        return Guard(
            policy=Policy(
                [
                    allow(
                        "mesh",
                        Namespace("shop", trust_domain="cluster.local"),
                        when=SourceIp("127.0.0.0/8"),
                    )
                ]
            ),
            authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
            memory=memory,
        )

    remembering, forgetting = guard(None), guard(MemoryLimits.off())
    xfcc = {"x-forwarded-client-cert": xfcc_header("spiffe://cluster.local/ns/shop/sa/cart")}
    requests: list[tuple[tuple[str, int], dict[str, str], int]] = [
        (("127.0.0.1", 1000), xfcc, 200),
        (("127.0.0.1", 1000), xfcc, 200),
        (("127.0.0.1", 1001), xfcc, 200),
        (("127.0.0.1", 1002), xfcc, 200),
        # A port no connection has, or an address taken from X-Forwarded-For:
        # not the connection's own, so the source is unknown (and the proxy too).
        (("127.0.0.1", 0), xfcc, 401),
        (("127.0.0.1", 3000), {**xfcc, "x-forwarded-for": "127.0.0.1:3000"}, 401),
        (("127.0.0.1", 3001), {**xfcc, "x-forwarded-for": "10.9.9.9"}, 200),
        (("127.0.0.1", 3002), {**xfcc, "x-forwarded-for": "10.9.9.9"}, 200),
    ]
    for client, headers, expected in requests:
        for subject in (remembering, forgetting):
            verdict = subject.check("GET", "/x", "/x", client, dict(headers))
            assert verdict.decision.enforced_status == expected, (client, headers)
    # One verdict for the plain requests from any port (those with X-Forwarded-For
    # are keyed by the whole address by the forwarded-credential authenticator).
    assert len(remembering.memory.verdicts.young) == 1
