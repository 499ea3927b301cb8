"""PeerMiddleware: raw ASGI calls and Starlette's TestClient."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from decision_fields import fields
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from peer_middleware import (
    Anyone,
    ConfigurationError,
    Decision,
    Guard,
    Namespace,
    Peer,
    PeerMiddleware,
    Policy,
    Principal,
    ProblemResponse,
    Proof,
    Refusal,
    SpiffeId,
    XfccAuthenticator,
    allow,
    audit,
    deny,
)
from peer_middleware.asgi import DECISION_SCOPE_KEY, PEER_SCOPE_KEY

SHOP = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
PROXY = ("127.0.0.1", 50000)
STRANGER = ("10.1.2.3", 40000)
XFCC = "x-forwarded-client-cert"

BODY_400 = b'{"type":"about:blank","title":"Bad Request","status":400}'
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
BODIES = {400: BODY_400, 401: BODY_401, 403: BODY_403}

RULES = [
    allow("healthz", Anyone(), methods="GET", paths="/healthz"),
    allow(
        "read-payment",
        Namespace("shop", trust_domain="cluster.local"),
        methods="GET",
        paths="/payments/{payment_id}",
    ),
    allow("delete-payment", Principal(ADMIN), methods="DELETE", paths="/payments/{payment_id}"),
]
POLICY = Policy(RULES)

REWRITE_WARNING = (
    "the server reports a client address taken from X-Forwarded-For (127.0.0.1), not "
    "the connection's own peer; forwarded credentials are ignored because the proxy "
    "cannot be identified. Let the server record the connection's own address (uvicorn "
    "--http peer_middleware.servers.uvicorn:H11Protocol) or turn its rewriting off "
    "(uvicorn --forwarded-allow-ips='' or proxy_headers=False; hypercorn without "
    "ProxyFixMiddleware)."
)
UNTRUSTED_NOTE = "ignored x-forwarded-client-cert from an untrusted peer"


def xfcc(principal: str) -> str:
    return f"By=spiffe://cluster.local/ns/shop/sa/payments;URI={principal}"


def peer(principal: str) -> Peer:
    return Peer(SpiffeId.parse(principal), Proof.PROXY_ASSERTED, source="xfcc", proxy="127.0.0.1")


def problem_headers(status: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"application/problem+json"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(BODIES[status])).encode()),
    ]


def refused_messages(status: int) -> list[dict[str, Any]]:
    return [
        {"type": "http.response.start", "status": status, "headers": problem_headers(status)},
        {"type": "http.response.body", "body": BODIES[status], "more_body": False},
    ]


OK_MESSAGES = [
    {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]},
    {"type": "http.response.body", "body": b"ok"},
]


class Recorder:
    """An ASGI app that records every call and answers 200 ``ok`` (accepts websockets)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, Any]] = []

    @property
    def scopes(self) -> list[dict[str, Any]]:
        return [scope for scope, _, _ in self.calls]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append((scope, receive, send))
        if scope["type"] == "http":
            await send(OK_MESSAGES[0])
            await send(OK_MESSAGES[1])
        elif scope["type"] == "websocket":
            await send({"type": "websocket.accept"})


def http_scope(
    path: str = "/payments/1",
    *,
    method: str = "GET",
    raw_path: bytes | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    principal: str | None = None,
    client: tuple[str, int] | None = PROXY,
    root_path: str = "",
    scope_type: str = "http",
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    header_list = [(b"host", b"testserver"), *(headers or [])]
    if principal is not None:
        header_list.append((XFCC.encode(), xfcc(principal).encode()))
    scope: dict[str, Any] = {
        "type": scope_type,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if scope_type == "http" else "ws",
        "path": path,
        "raw_path": path.encode() if raw_path is None else raw_path,
        "root_path": root_path,
        "query_string": b"",
        "headers": header_list,
        "client": client,
        "server": ("testserver", 80),
    }
    if scope_type == "http":
        scope["method"] = method
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


async def call(app: Any, scope: dict[str, Any]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    incoming = [
        {"type": "http.request", "body": b"", "more_body": False}
        if scope["type"] == "http"
        else {"type": "websocket.connect"}
    ]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def guarded(app: Any = None, policy: Policy = POLICY, **options: Any) -> PeerMiddleware:
    options.setdefault("authenticators", [XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])])
    return PeerMiddleware(app if app is not None else Recorder(), policy=policy, **options)


# --------------------------------------------------------------------------
# Pass-through of other scope types.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param({"type": "lifespan", "asgi": {"version": "3.0"}}, id="lifespan"),
    ],
)
async def test_lifespan_passes_through_untouched(scope: dict[str, Any], decisions: Any) -> None:
    inner = Recorder()
    original = dict(scope)

    async def receive() -> dict[str, Any]:  # pragma: no cover - never called
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:  # pragma: no cover - never called
        raise AssertionError

    await guarded(inner)(scope, receive, send)

    assert len(inner.calls) == 1
    seen_scope, seen_receive, seen_send = inner.calls[0]
    assert seen_scope is scope
    assert seen_scope == original
    assert seen_receive is receive
    assert seen_send is send
    assert decisions() == []


@pytest.mark.parametrize(
    "scope_type", ["custom", "webtransport", "http.future", "", "HTTP", "Websocket"]
)
async def test_unknown_scope_types_never_reach_the_app(scope_type: str, caplog: Any) -> None:
    inner = Recorder()

    async def receive() -> dict[str, Any]:  # pragma: no cover - never called
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:  # pragma: no cover - never called
        raise AssertionError

    scope = {"type": scope_type, "path": "/payments/1", "headers": []}
    with pytest.raises(ValueError, match="does not support ASGI scope type"):
        await guarded(inner)(scope, receive, send)

    assert inner.calls == []
    assert any("unknown type" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------
# Allowed and refused HTTP requests, raw ASGI.
# --------------------------------------------------------------------------

DECISION_CASES = [
    pytest.param(
        "GET",
        "/healthz",
        None,
        PROXY,
        200,
        "healthz",
        "allowed by rule 'healthz'",
        (),
        id="healthz-anonymous-allowed",
    ),
    pytest.param(
        "GET",
        "/payments/1",
        SHOP,
        PROXY,
        200,
        "read-payment",
        "allowed by rule 'read-payment'",
        (),
        id="read-shop-allowed",
    ),
    pytest.param(
        "DELETE",
        "/payments/1",
        ADMIN,
        PROXY,
        200,
        "delete-payment",
        "allowed by rule 'delete-payment'",
        (),
        id="delete-admin-allowed",
    ),
    pytest.param(
        "GET",
        "/payments/1",
        None,
        PROXY,
        401,
        None,
        "no allow rule matched and the request has no identity",
        (),
        id="read-anonymous-401",
    ),
    pytest.param(
        "GET",
        "/payments/1",
        ADMIN,
        PROXY,
        403,
        None,
        "no allow rule matched this caller",
        (),
        id="read-admin-403",
    ),
    pytest.param(
        "DELETE",
        "/payments/1",
        SHOP,
        PROXY,
        403,
        None,
        "no allow rule matched this caller",
        (),
        id="delete-shop-403",
    ),
    pytest.param(
        "get",
        "/payments/1",
        None,
        PROXY,
        400,
        None,
        "method 'get' is not in upper case",
        (),
        id="lower-case-method-400",
    ),
    pytest.param(
        "Get",
        "/payments/1",
        None,
        PROXY,
        400,
        None,
        "method 'Get' is not in upper case",
        (),
        id="mixed-case-method-400",
    ),
    pytest.param(
        "GET",
        "/payments/1",
        SHOP,
        STRANGER,
        401,
        None,
        "no allow rule matched and the request has no identity",
        (UNTRUSTED_NOTE,),
        id="xfcc-from-untrusted-client-ignored-401",
    ),
    pytest.param(
        "GET",
        "/healthz",
        SHOP,
        STRANGER,
        200,
        "healthz",
        "allowed by rule 'healthz'",
        (UNTRUSTED_NOTE,),
        id="xfcc-from-untrusted-client-ignored-on-open-route",
    ),
    pytest.param(
        "GET",
        "/nowhere",
        SHOP,
        PROXY,
        403,
        None,
        "no allow rule matched this caller",
        (),
        id="unknown-path-403",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "principal", "client", "status", "rule", "reason", "notes"),
    DECISION_CASES,
)
async def test_raw_http_decisions(
    method: str,
    path: str,
    principal: str | None,
    client: tuple[str, int],
    status: int,
    rule: str | None,
    reason: str,
    notes: tuple[str, ...],
    decisions: Any,
) -> None:
    inner = Recorder()
    sent = await call(
        guarded(inner), http_scope(path, method=method, principal=principal, client=client)
    )

    trusted = principal if client == PROXY else None
    if status == 200:
        assert sent == OK_MESSAGES
        assert len(inner.scopes) == 1
        assert inner.scopes[0][PEER_SCOPE_KEY] == (peer(trusted) if trusted else None)
        assert inner.scopes[0][DECISION_SCOPE_KEY] == Decision(True, 200, rule, reason)
    else:
        assert sent == refused_messages(status)
        assert inner.calls == []
        assert reason.encode() not in sent[1]["body"]
    [record] = decisions()
    assert record.levelno == (logging.DEBUG if status == 200 else logging.INFO)
    assert record.peer_middleware == fields(
        outcome="allowed" if status == 200 else "refused",
        status=status,
        rule=rule,
        reason=reason,
        principal=trusted,
        method=method,
        path=path,
        notes=notes,
    )


async def test_refusal_log_message_text(decisions: Any) -> None:
    await call(guarded(), http_scope("/payments/1", principal=ADMIN))

    [record] = decisions()
    assert record.getMessage() == (
        "refused GET '/payments/1' status=403 rule=None principal="
        f"{ADMIN} proxy=127.0.0.1 reason='no allow rule matched this caller'"
    )


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        pytest.param(
            "garbage",
            "malformed x-forwarded-client-cert header: expected key=value at offset 0",
            id="malformed-xfcc",
        ),
        pytest.param(
            "By=spiffe://cluster.local/ns/shop/sa/payments",
            "x-forwarded-client-cert: the proxy's element has no URI",
            id="no-uri",
        ),
        pytest.param(
            "URI=https://example.com/x",
            "x-forwarded-client-cert: URI is not a SPIFFE ID: "
            "SPIFFE ID scheme must be 'spiffe://' in lower case",
            id="not-a-spiffe-id",
        ),
    ],
)
async def test_invalid_xfcc_from_trusted_proxy_is_401(
    header: str, reason: str, decisions: Any
) -> None:
    inner = Recorder()
    sent = await call(
        guarded(inner), http_scope("/healthz", headers=[(XFCC.encode(), header.encode())])
    )

    assert sent == refused_messages(401)
    assert inner.calls == []
    [record] = decisions()
    assert record.peer_middleware == fields(
        outcome="refused", status=401, reason=reason, path="/healthz"
    )


# --------------------------------------------------------------------------
# Bad requests.
# --------------------------------------------------------------------------

BAD_REQUESTS = [
    pytest.param(
        "GET",
        "/payments/a/b",
        b"/payments/a%2Fb",
        "request path contains an encoded byte 0x2F",
        id="encoded-slash",
    ),
    pytest.param(
        "GET",
        "/payments/a/b",
        b"/payments/a%2fb",
        "request path contains an encoded byte 0x2F",
        id="encoded-slash-lower-case",
    ),
    pytest.param(
        "GET",
        "/payments/a\\b",
        b"/payments/a%5Cb",
        "request path contains an encoded byte 0x5C",
        id="encoded-backslash",
    ),
    pytest.param(
        "GET",
        "/payments/a\x00",
        b"/payments/a%00",
        "request path contains an encoded byte 0x00",
        id="encoded-nul",
    ),
    pytest.param(
        "GET",
        "/payments/1#x",
        b"/payments/1#x",
        "request target contains a fragment",
        id="fragment",
    ),
    pytest.param(
        "GET",
        "/payments/%zz",
        b"/payments/%zz",
        "request path contains a malformed percent escape",
        id="malformed-escape",
    ),
    pytest.param(
        "GET",
        "/payments/%4",
        b"/payments/%4",
        "request path contains a malformed percent escape",
        id="truncated-escape",
    ),
    pytest.param(
        "GET",
        "/payments/\udcff",
        b"/payments/%FF",
        "request path percent-escapes are not UTF-8",
        id="escape-not-utf8",
    ),
    pytest.param(
        "GET",
        "/payments/a\\b",
        b"/payments/a\\b",
        "request path contains a forbidden character '\\\\'",
        id="literal-backslash",
    ),
    pytest.param(
        "GET",
        "payments/1",
        b"payments/1",
        "request path does not start with '/'",
        id="relative-path",
    ),
    pytest.param(
        "GE T", "/healthz", b"/healthz", "method 'GE T' is not an HTTP token", id="method-space"
    ),
    pytest.param("", "/healthz", b"/healthz", "method '' is not an HTTP token", id="method-empty"),
    pytest.param(
        "GET\r\n",
        "/healthz",
        b"/healthz",
        "method 'GET\\r\\n' is not an HTTP token",
        id="method-crlf",
    ),
    pytest.param(
        "A" * 33,
        "/healthz",
        b"/healthz",
        f"method {'A' * 32!r} is not an HTTP token",
        id="method-too-long",
    ),
]


@pytest.mark.parametrize(("method", "path", "raw_path", "reason"), BAD_REQUESTS)
async def test_bad_requests_get_400_and_never_reach_the_app(
    method: str, path: str, raw_path: bytes, reason: str, decisions: Any
) -> None:
    inner = Recorder()
    app = guarded(inner)

    # Twice through one middleware: repeat requests must not skip the checks.
    for _ in range(2):
        scope = http_scope(path, method=method, raw_path=raw_path, principal=SHOP)
        assert await call(app, scope) == refused_messages(400)

    assert inner.calls == []
    records = decisions()
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    expected = fields(outcome="refused", status=400, reason=reason, path=path, method=method[:32])
    assert [r.peer_middleware for r in records] == [expected, expected]


async def test_raw_target_checked_even_after_same_path_without_raw_path() -> None:
    # The path-check cache must not let a request whose raw_path is refused
    # (a fragment) through because the same decoded path was seen before
    # from a scope without raw_path.
    inner = Recorder()
    app = guarded(inner, policy=Policy([allow("any", Anyone(), paths="/payments/{id}")]))
    without_raw = http_scope("/payments/1#x")
    del without_raw["raw_path"]

    first = await call(app, without_raw)
    second = await call(app, http_scope("/payments/1#x", raw_path=b"/payments/1#x"))

    assert first == OK_MESSAGES
    assert second == refused_messages(400)
    assert len(inner.calls) == 1


async def test_repeat_callers_through_one_middleware(decisions: Any) -> None:
    inner = Recorder()
    app = guarded(inner)
    sequence = [(SHOP, 200), (ADMIN, 403), (None, 401), (SHOP, 200), (ADMIN, 403), (None, 401)]

    statuses = []
    for principal, _ in sequence:
        sent = await call(app, http_scope("/payments/1", principal=principal))
        statuses.append(sent[0]["status"])

    assert statuses == [status for _, status in sequence]
    assert [r.peer_middleware["principal"] for r in decisions()] == [p for p, _ in sequence]
    assert [s[PEER_SCOPE_KEY] for s in inner.scopes] == [peer(SHOP), peer(SHOP)]


# --------------------------------------------------------------------------
# Normalised paths written back.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw_path", "expected_path", "expected_raw"),
    [
        pytest.param(
            "/payments/a/../1", b"/payments/a/../1", "/payments/1", b"/payments/1", id="dot-dot"
        ),
        pytest.param(
            "/x/../payments/1",
            b"/x/%2e%2e/payments/1",
            "/payments/1",
            b"/payments/1",
            id="encoded-dot-dot",
        ),
        pytest.param(
            "//payments///1",
            b"//payments///1",
            "/payments/1",
            b"/payments/1",
            id="repeated-slashes",
        ),
        pytest.param(
            "/payments/1;x=y", b"/payments/1;x=y", "/payments/1", b"/payments/1", id="params"
        ),
        pytest.param("/payments/./1", b"/payments/./1", "/payments/1", b"/payments/1", id="dot"),
        pytest.param(
            "/../../payments/1",
            b"/../../payments/1",
            "/payments/1",
            b"/payments/1",
            id="never-above-root",
        ),
        pytest.param(
            "/payments//caf\u00e9",
            b"/payments//caf%C3%A9",
            "/payments/caf\u00e9",
            b"/payments/caf%C3%A9",
            id="non-ascii-requoted",
        ),
        pytest.param(
            "/payments//a%2Fb",
            b"/payments//a%252Fb",
            "/payments/a%2Fb",
            b"/payments/a%252Fb",
            id="literal-percent-requoted",
        ),
    ],
)
async def test_normalised_path_written_back(
    path: str, raw_path: bytes, expected_path: str, expected_raw: bytes, decisions: Any
) -> None:
    inner = Recorder()
    scope = http_scope(path, raw_path=raw_path, principal=SHOP)

    sent = await call(guarded(inner), scope)

    assert sent == OK_MESSAGES
    [seen] = inner.scopes
    assert seen["path"] == expected_path
    assert seen["raw_path"] == expected_raw
    [record] = decisions()
    assert record.peer_middleware["path"] == expected_path
    assert record.peer_middleware["rule"] == "read-payment"


@pytest.mark.parametrize(
    ("path", "raw_path"),
    [
        pytest.param("/payments/1", b"/payments/1", id="plain"),
        pytest.param("/payments/A", b"/payments/%41", id="escaped-letter-kept"),
        pytest.param("/payments/caf\u00e9", b"/payments/caf%C3%A9", id="non-ascii-kept"),
    ],
)
async def test_clean_path_is_not_rewritten(path: str, raw_path: bytes) -> None:
    inner = Recorder()
    scope = http_scope(path, raw_path=raw_path, principal=SHOP)

    await call(guarded(inner), scope)

    [seen] = inner.scopes
    assert seen["path"] == path
    assert seen["raw_path"] is raw_path


# --------------------------------------------------------------------------
# root_path mounts.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "principal", "status", "expected_path", "rule_path"),
    [
        pytest.param(
            "/api/payments/1",
            SHOP,
            200,
            "/api/payments/1",
            "/payments/1",
            id="relative-rule-matches",
        ),
        pytest.param(
            "/api//payments/./1",
            SHOP,
            200,
            "/api/payments/1",
            "/payments/1",
            id="normalised-under-mount",
        ),
        pytest.param(
            "/api/healthz", None, 200, "/api/healthz", "/healthz", id="open-route-under-mount"
        ),
        pytest.param("/api/payments/1", None, 401, None, "/payments/1", id="anonymous-401"),
        pytest.param(
            "/apix/payments/1",
            SHOP,
            403,
            None,
            "/apix/payments/1",
            id="prefix-without-segment-boundary",
        ),
    ],
)
async def test_root_path_rules_are_relative_to_the_mount(
    path: str,
    principal: str | None,
    status: int,
    expected_path: str | None,
    rule_path: str,
    decisions: Any,
) -> None:
    inner = Recorder()
    scope = http_scope(path, principal=principal, root_path="/api")

    sent = await call(guarded(inner), scope)

    [record] = decisions()
    assert record.peer_middleware["path"] == rule_path
    if status == 200:
        assert sent == OK_MESSAGES
        [seen] = inner.scopes
        assert seen["path"] == expected_path
        assert seen["root_path"] == "/api"
    else:
        assert sent == refused_messages(status)
        assert inner.calls == []


async def echo(request: Request) -> JSONResponse:
    decision = request.scope[DECISION_SCOPE_KEY]
    found = request.scope[PEER_SCOPE_KEY]
    return JSONResponse(
        {
            "path": request.scope["path"],
            "raw_path": request.scope["raw_path"].decode(),
            "root_path": request.scope["root_path"],
            "params": request.path_params,
            "peer": found.principal if found is not None else None,
            "rule": decision.rule,
        }
    )


def mounted_app() -> Starlette:
    inner = Starlette(routes=[Route("/payments/{payment_id}", echo)])
    return Starlette(routes=[Mount("/api", app=guarded(inner))])


@pytest.mark.parametrize(
    ("url", "principal", "status", "body"),
    [
        pytest.param(
            "/api/payments/1",
            SHOP,
            200,
            {
                "path": "/api/payments/1",
                "raw_path": "/api/payments/1",
                "root_path": "/api",
                "params": {"payment_id": "1"},
                "peer": SHOP,
                "rule": "read-payment",
            },
            id="allowed",
        ),
        pytest.param(
            "http://testserver/api//payments;v=1/1",
            SHOP,
            200,
            {
                "path": "/api/payments/1",
                "raw_path": "/api/payments/1",
                "root_path": "/api",
                "params": {"payment_id": "1"},
                "peer": SHOP,
                "rule": "read-payment",
            },
            id="normalised",
        ),
        pytest.param("/api/payments/1", None, 401, None, id="anonymous"),
        pytest.param("/api/payments/1", ADMIN, 403, None, id="other-namespace"),
    ],
)
def test_starlette_mount(
    url: str, principal: str | None, status: int, body: dict[str, Any] | None
) -> None:
    headers = {XFCC: xfcc(principal)} if principal else {}
    with TestClient(mounted_app(), client=PROXY) as client:
        response = client.get(url, headers=headers)

    assert response.status_code == status
    if body is not None:
        assert response.json() == body
    else:
        assert response.content == BODIES[status]
        assert response.headers["content-type"] == "application/problem+json"


# --------------------------------------------------------------------------
# TestClient: a Starlette app behind the middleware.
# --------------------------------------------------------------------------


def starlette_app(**options: Any) -> Any:
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/payments/{payment_id}", echo, methods=["GET", "DELETE"]),
        ]
    )
    return guarded(app, **options)


@pytest.mark.parametrize(
    ("method", "url", "principal", "status", "body"),
    [
        pytest.param("GET", "/healthz", None, 200, b'{"status":"ok"}', id="healthz"),
        pytest.param(
            "GET",
            "/payments/7?q=1",
            SHOP,
            200,
            b'{"path":"/payments/7","raw_path":"/payments/7","root_path":"",'
            b'"params":{"payment_id":"7"},"peer":"' + SHOP.encode() + b'",'
            b'"rule":"read-payment"}',
            id="read-shop",
        ),
        pytest.param(
            "GET",
            "http://testserver//payments///7",
            SHOP,
            200,
            b'{"path":"/payments/7","raw_path":"/payments/7","root_path":"",'
            b'"params":{"payment_id":"7"},"peer":"' + SHOP.encode() + b'",'
            b'"rule":"read-payment"}',
            id="read-shop-normalised",
        ),
        pytest.param("GET", "/payments/7", None, 401, BODY_401, id="read-anonymous"),
        pytest.param("GET", "/payments/7", ADMIN, 403, BODY_403, id="read-admin"),
        pytest.param("DELETE", "/payments/7", SHOP, 403, BODY_403, id="delete-shop"),
        pytest.param("GET", "/payments/a%2Fb", SHOP, 400, BODY_400, id="encoded-slash"),
        pytest.param("GET", "/payments/%2e%2e%5C1", SHOP, 400, BODY_400, id="encoded-backslash"),
    ],
)
def test_testclient_decisions(
    method: str, url: str, principal: str | None, status: int, body: bytes
) -> None:
    headers = {XFCC: xfcc(principal)} if principal else {}
    with TestClient(starlette_app(), client=PROXY) as client:
        response = client.request(method, url, headers=headers)

    assert response.status_code == status
    assert response.content == body
    if status != 200:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["content-length"] == str(len(body))
        assert "www-authenticate" not in response.headers


def test_testclient_default_client_is_untrusted(decisions: Any) -> None:
    # Starlette's default client host is "testclient", not an IP address.
    with TestClient(starlette_app()) as client:
        response = client.get("/payments/1", headers={XFCC: xfcc(SHOP)})

    assert response.status_code == 401
    assert response.content == BODY_401
    [record] = decisions()
    assert record.peer_middleware["notes"] == (UNTRUSTED_NOTE,)


@pytest.mark.parametrize(
    ("principal", "status", "www"),
    [
        pytest.param(None, 401, 'Bearer realm="payments"', id="401-carries-challenge"),
        pytest.param(ADMIN, 403, None, id="403-has-none"),
    ],
)
def test_www_authenticate(principal: str | None, status: int, www: str | None) -> None:
    headers = {XFCC: xfcc(principal)} if principal else {}
    app = starlette_app(www_authenticate='Bearer realm="payments"')
    with TestClient(app, client=PROXY) as client:
        response = client.get("/payments/1", headers=headers)

    assert response.status_code == status
    assert response.headers.get("www-authenticate") == www


# --------------------------------------------------------------------------
# Headers: several lines, upper-case names.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "status", "principal"),
    [
        pytest.param([ADMIN, SHOP], 200, SHOP, id="rightmost-is-shop"),
        pytest.param([SHOP, ADMIN], 403, ADMIN, id="rightmost-is-admin"),
    ],
)
async def test_several_xfcc_lines_are_joined_in_order(
    lines: list[str], status: int, principal: str, decisions: Any
) -> None:
    # append_forward: the proxy appends its element, the rightmost one counts.
    inner = Recorder()
    headers = [(XFCC.encode(), f"URI={line}".encode()) for line in lines]
    authenticator = XfccAuthenticator(
        trusted_proxies=["127.0.0.1"], forward_client_cert="append_forward"
    )

    sent = await call(
        guarded(inner, authenticators=[authenticator]), http_scope("/payments/1", headers=headers)
    )

    [record] = decisions()
    assert record.peer_middleware["principal"] == principal
    if status == 200:
        assert sent == OK_MESSAGES
        assert inner.scopes[0][PEER_SCOPE_KEY] == peer(principal)
    else:
        assert sent == refused_messages(status)


async def test_several_xfcc_lines_refused_in_sanitize_set_mode(decisions: Any) -> None:
    # The default mode expects the proxy to replace the header: two lines
    # (joined into two elements) mean somebody else added one.
    inner = Recorder()
    headers = [(XFCC.encode(), f"URI={line}".encode()) for line in (ADMIN, SHOP)]

    sent = await call(guarded(inner), http_scope("/payments/1", headers=headers))

    assert sent == refused_messages(401)
    assert inner.calls == []
    [record] = decisions()
    assert record.peer_middleware == fields(
        outcome="refused",
        status=401,
        path="/payments/1",
        reason="x-forwarded-client-cert: 2 elements, but the proxy replaces the header "
        "(sanitize_set) and writes exactly one",
    )


@pytest.mark.parametrize("name", [b"X-Forwarded-Client-Cert", b"X-FORWARDED-CLIENT-CERT"])
async def test_header_names_not_in_lower_case_are_not_read(name: bytes) -> None:
    # The ASGI spec has servers send lower-case names (Starlette's Headers
    # relies on it too); a name in another case is not a credential: the
    # request fails closed as one without identity.
    inner = Recorder()
    scope = http_scope("/payments/1", headers=[(name, f"URI={SHOP}".encode())])

    sent = await call(guarded(inner), scope)

    assert sent == refused_messages(401)
    assert inner.calls == []


async def test_client_as_list_is_accepted() -> None:
    inner = Recorder()
    scope = http_scope("/payments/1", principal=SHOP)
    scope["client"] = ["127.0.0.1", 50000]

    sent = await call(guarded(inner), scope)

    assert sent == OK_MESSAGES
    assert inner.scopes[0][PEER_SCOPE_KEY] == peer(SHOP)


@pytest.mark.parametrize("client", [[], ["127.0.0.1"], ["127.0.0.1", 50000, "x"]])
async def test_a_malformed_client_is_an_unknown_peer(client: list[Any]) -> None:
    # Not [host, port]: forwarded credentials are not read (401), and nothing fails.
    inner = Recorder()
    scope = http_scope("/payments/1", principal=SHOP)
    scope["client"] = client

    sent = await call(guarded(inner), scope)

    assert sent == refused_messages(401)
    assert inner.calls == []


# --------------------------------------------------------------------------
# uvicorn's X-Forwarded-For rewrite.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "forwarded_for"),
    [
        pytest.param(("127.0.0.1", 0), b"127.0.0.1", id="port-zero"),
        pytest.param(("127.0.0.1", 43210), b"10.0.0.9, 127.0.0.1:43210", id="copied-with-port"),
    ],
)
async def test_rewritten_client_address_ignores_forwarded_credentials(
    client: tuple[str, int],
    forwarded_for: bytes,
    caplog: pytest.LogCaptureFixture,
    decisions: Any,
) -> None:
    inner = Recorder()
    app = guarded(inner)
    headers = [(b"x-forwarded-for", forwarded_for)]

    first = await call(
        app, http_scope("/payments/1", headers=headers, principal=SHOP, client=client)
    )
    second = await call(
        app, http_scope("/payments/2", headers=headers, principal=SHOP, client=client)
    )

    assert first == refused_messages(401)
    assert second == refused_messages(401)
    assert inner.calls == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [(r.name, r.getMessage()) for r in warnings] == [("peer_middleware", REWRITE_WARNING)]
    assert [r.peer_middleware for r in decisions()] == [
        fields(
            outcome="refused",
            status=401,
            path=path,
            notes=(UNTRUSTED_NOTE,),
            reason="no allow rule matched and the request has no identity",
        )
        for path in ("/payments/1", "/payments/2")
    ]


def test_rewritten_client_address_through_testclient(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="peer_middleware")
    with TestClient(starlette_app(), client=("127.0.0.1", 0)) as client:
        response = client.get(
            "/payments/1", headers={XFCC: xfcc(SHOP), "x-forwarded-for": "127.0.0.1"}
        )

    assert response.status_code == 401
    assert response.content == BODY_401
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        REWRITE_WARNING
    ]


async def test_forwarded_for_from_real_peer_is_not_a_rewrite(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner = Recorder()
    headers = [(b"x-forwarded-for", b"10.9.9.9")]

    sent = await call(guarded(inner), http_scope("/payments/1", headers=headers, principal=SHOP))

    assert sent == OK_MESSAGES
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# --------------------------------------------------------------------------
# Websockets.
# --------------------------------------------------------------------------


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    found = websocket.scope[PEER_SCOPE_KEY]
    text = await websocket.receive_text()
    await websocket.send_text(f"{text} from {found.principal}")
    await websocket.close()


def ws_app() -> Any:
    app = Starlette(routes=[WebSocketRoute("/ws", ws_echo)])
    policy = Policy([allow("ws", Namespace("shop", trust_domain="cluster.local"), paths="/ws")])
    return guarded(app, policy=policy)


def test_websocket_allowed_echoes(decisions: Any) -> None:
    with (
        TestClient(ws_app(), client=PROXY) as client,
        client.websocket_connect("/ws", headers={XFCC: xfcc(SHOP)}) as websocket,
    ):
        websocket.send_text("hello")
        assert websocket.receive_text() == f"hello from {SHOP}"

    [record] = decisions()
    assert record.peer_middleware == fields(
        outcome="allowed",
        status=200,
        rule="ws",
        reason="allowed by rule 'ws'",
        principal=SHOP,
        path="/ws",
    )


@pytest.mark.parametrize(
    ("principal", "status"),
    [pytest.param(None, 401, id="anonymous"), pytest.param(ADMIN, 403, id="other-namespace")],
)
def test_websocket_refused_with_denial_response(principal: str | None, status: int) -> None:
    headers = {XFCC: xfcc(principal)} if principal else {}
    with (
        TestClient(ws_app(), client=PROXY) as client,
        pytest.raises(WebSocketDenialResponse) as denied,
    ):
        client.websocket_connect("/ws", headers=headers).__enter__()

    assert denied.value.status_code == status
    assert denied.value.content == BODIES[status]
    assert denied.value.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("principal", "status"),
    [pytest.param(None, 401, id="anonymous"), pytest.param(ADMIN, 403, id="other-namespace")],
)
async def test_raw_websocket_refused_with_extension(principal: str | None, status: int) -> None:
    inner = Recorder()
    scope = http_scope(
        "/ws",
        principal=principal,
        scope_type="websocket",
        extensions={"websocket.http.response": {}},
    )

    sent = await call(ws_app_raw(inner), scope)

    assert sent == [
        {
            "type": "websocket.http.response.start",
            "status": status,
            "headers": problem_headers(status),
        },
        {"type": "websocket.http.response.body", "body": BODIES[status]},
    ]
    assert inner.calls == []


@pytest.mark.parametrize(
    "extensions",
    [
        pytest.param(None, id="no-extensions"),
        pytest.param({}, id="empty-extensions"),
        pytest.param({"websocket.other": {}}, id="other-extension"),
    ],
)
async def test_raw_websocket_refused_without_extension_closes_1008(
    extensions: dict[str, Any] | None,
) -> None:
    inner = Recorder()
    scope = http_scope("/ws", principal=ADMIN, scope_type="websocket", extensions=extensions)

    sent = await call(ws_app_raw(inner), scope)

    assert sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]
    assert inner.calls == []


async def test_raw_websocket_allowed_reaches_app_with_peer() -> None:
    inner = Recorder()
    scope = http_scope("//ws/", principal=SHOP, scope_type="websocket")

    sent = await call(ws_app_raw(inner), scope)

    assert sent == [{"type": "websocket.accept"}]
    [seen] = inner.scopes
    assert seen[PEER_SCOPE_KEY] == peer(SHOP)
    assert seen[DECISION_SCOPE_KEY] == Decision(True, 200, "ws", "allowed by rule 'ws'")
    assert (seen["path"], seen["raw_path"]) == ("/ws/", b"/ws/")


def ws_app_raw(inner: Any) -> PeerMiddleware:
    policy = Policy(
        [allow("ws", Namespace("shop", trust_domain="cluster.local"), paths=["/ws", "/ws/"])]
    )
    return guarded(inner, policy=policy)


# --------------------------------------------------------------------------
# Responders and internal errors.
# --------------------------------------------------------------------------


async def test_custom_responder_gets_the_refusal() -> None:
    seen: list[Refusal] = []

    def responder(refusal: Refusal) -> ProblemResponse:
        seen.append(refusal)
        return ProblemResponse(418, (("content-type", "text/plain"),), b"nope")

    sent = await call(
        guarded(responder=responder, www_authenticate="Custom"),
        http_scope("//payments/1", principal=None),
    )

    assert sent == [
        {
            "type": "http.response.start",
            "status": 418,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"4")],
        },
        {"type": "http.response.body", "body": b"nope", "more_body": False},
    ]
    assert seen == [
        Refusal(
            401,
            "no allow rule matched and the request has no identity",
            None,
            "Custom",
            "GET",
            "/payments/1",
            None,
        )
    ]


async def test_custom_responder_sees_peer_and_rule() -> None:
    seen: list[Refusal] = []

    def responder(refusal: Refusal) -> ProblemResponse:
        seen.append(refusal)
        return ProblemResponse(403, (), b"")

    policy = Policy([*RULES, deny("no-admin", Principal(ADMIN))])
    await call(guarded(policy=policy, responder=responder), http_scope(principal=ADMIN))

    assert seen == [
        Refusal(
            403, "denied by rule 'no-admin'", "no-admin", None, "GET", "/payments/1", peer(ADMIN)
        )
    ]


async def test_responder_that_raises_falls_back_to_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def responder(refusal: Refusal) -> ProblemResponse:
        raise RuntimeError("responder bug")

    caplog.set_level(logging.DEBUG, logger="peer_middleware")
    sent = await call(guarded(responder=responder), http_scope(principal=ADMIN))

    assert sent == refused_messages(403)
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage() == "custom responder failed; sending the default refusal"
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], RuntimeError)


class Boom:
    name = "boom"
    header_names = ("x-boom",)
    forwarded = False
    bearer = False
    reads_query = False
    reads_tls = False
    www_authenticate = None

    def authenticate(self, request: Any) -> Peer | None:
        raise RuntimeError("authenticator bug")


async def test_unexpected_authenticator_error_is_403_and_logged(
    caplog: pytest.LogCaptureFixture, decisions: Any
) -> None:
    inner = Recorder()

    sent = await call(guarded(inner, authenticators=[Boom()]), http_scope("/healthz"))

    assert sent == refused_messages(403)
    assert inner.calls == []
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage() == "peer_middleware failed while authorizing GET '/healthz'"
    assert error.exc_info is not None
    assert isinstance(error.exc_info[1], RuntimeError)
    [record] = decisions()
    assert record.levelno == logging.INFO
    assert record.peer_middleware == fields(
        outcome="refused",
        status=403,
        path="/healthz",
        reason="internal error while authorizing; see the traceback",
    )


# --------------------------------------------------------------------------
# Shadow mode, shadow rules and audit rules.
# --------------------------------------------------------------------------


async def test_shadow_mode_lets_through_and_logs_would_refuse(decisions: Any) -> None:
    inner = Recorder()
    policy = Policy(RULES, mode="shadow")

    sent = await call(guarded(inner, policy=policy), http_scope("/payments/1"))

    assert sent == OK_MESSAGES
    reason = "no allow rule matched and the request has no identity"
    assert inner.scopes[0][DECISION_SCOPE_KEY] == Decision(True, 401, None, reason, dry_run=True)
    assert inner.scopes[0][PEER_SCOPE_KEY] is None
    [record] = decisions()
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "would-refuse(dry-run) GET '/payments/1' status=401 rule=None principal=None "
        f"proxy=None reason={reason!r}"
    )
    assert record.peer_middleware == fields(
        outcome="allowed", status=200, reason=reason, path="/payments/1", dry_run=True
    )


async def test_shadow_deny_rule_is_logged_and_changes_nothing(decisions: Any) -> None:
    inner = Recorder()
    policy = Policy([*RULES, deny("future-deny", Principal(SHOP), shadow=True)])

    sent = await call(guarded(inner, policy=policy), http_scope(principal=SHOP))

    assert sent == OK_MESSAGES
    [record] = decisions()
    assert record.levelno == logging.INFO
    assert record.peer_middleware == fields(
        outcome="allowed",
        status=200,
        rule="read-payment",
        principal=SHOP,
        path="/payments/1",
        reason="allowed by rule 'read-payment'",
        shadow=("deny:future-deny",),
    )
    assert record.getMessage().endswith(" shadow=deny:future-deny")


@pytest.mark.parametrize(
    ("principal", "status"),
    [pytest.param(ADMIN, 200, id="allowed-request"), pytest.param(SHOP, 403, id="refused")],
)
async def test_audit_rules_logged_at_info(principal: str, status: int, decisions: Any) -> None:
    policy = Policy([*RULES, audit("audit-deletes", Principal(ADMIN, SHOP), methods="DELETE")])

    await call(guarded(policy=policy), http_scope(method="DELETE", principal=principal))

    [record] = decisions()
    assert record.levelno == logging.INFO
    assert record.peer_middleware["audit"] == ("audit-deletes",)
    assert record.peer_middleware["status"] == status
    assert record.getMessage().endswith(" audit=audit-deletes")


async def test_allowed_request_without_extras_is_debug_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="peer_middleware")

    await call(guarded(), http_scope(principal=SHOP))

    assert caplog.records == []


# --------------------------------------------------------------------------
# Configuration errors.
# --------------------------------------------------------------------------


class UpperCaseHeader:
    name = "custom"
    header_names = ("X-Token",)
    forwarded = False
    bearer = False
    reads_query = False
    reads_tls = False
    www_authenticate = None

    def authenticate(self, request: Any) -> Peer | None:  # pragma: no cover - never called
        return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"policy": RULES}, "policy must be a Policy, not list", id="rules-list"),
        pytest.param({"policy": None}, "give policy= .* or guard=", id="none"),
        pytest.param(
            {"guard": Guard(policy=POLICY), "policy": POLICY},
            "give guard= or the configuration it is built from, not both",
            id="guard-and-policy",
        ),
        pytest.param({"guard": object()}, "guard must be a Guard, not object", id="not-a-guard"),
        pytest.param(
            {"policy": POLICY, "authenticators": [object()]},
            "is not an Authenticator",
            id="not-an-authenticator",
        ),
        pytest.param(
            {"policy": POLICY, "authenticators": [UpperCaseHeader()]},
            "header name 'X-Token' must be lower-case",
            id="upper-case-header",
        ),
        pytest.param(
            {"policy": POLICY, "responder": "nope"},
            "responder must be callable",
            id="responder-not-callable",
        ),
        pytest.param(
            {"policy": POLICY, "route_rules": lambda: [RULES[0]]},
            "two rules are named 'healthz'",
            id="route-rule-name-clash",
        ),
    ],
)
def test_configuration_errors_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        PeerMiddleware(Recorder(), **options)


async def test_route_rules_are_merged_at_construction() -> None:
    inner = Recorder()
    extra = allow("extra", Principal(ADMIN), methods="GET", paths="/payments/{payment_id}")
    app = guarded(inner, route_rules=lambda: [extra])

    sent = await call(app, http_scope(principal=ADMIN))

    assert sent == OK_MESSAGES
    assert inner.scopes[0][DECISION_SCOPE_KEY].rule == "extra"
