"""PeerWSGIMiddleware: raw environ calls and werkzeug's test Client."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pytest
from decision_fields import fields
from werkzeug.test import Client

from peer_middleware import (
    Anyone,
    ConfigurationError,
    Decision,
    Namespace,
    Peer,
    PeerWSGIMiddleware,
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
from peer_middleware.wsgi import DECISION_ENVIRON_KEY, PEER_ENVIRON_KEY

SHOP = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
XFCC_KEY = "HTTP_X_FORWARDED_CLIENT_CERT"
PROXY_BASE = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000"}

BODY_400 = b'{"type":"about:blank","title":"Bad Request","status":400}'
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
BODIES = {400: BODY_400, 401: BODY_401, 403: BODY_403}
STATUS_LINES = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
}

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
UNTRUSTED_NOTE = "ignored x-forwarded-client-cert from an untrusted peer"
NO_IDENTITY = "no allow rule matched and the request has no identity"
NO_RULE = "no allow rule matched this caller"


def xfcc(principal: str) -> str:
    return f"By=spiffe://cluster.local/ns/shop/sa/payments;URI={principal}"


def peer(principal: str) -> Peer:
    return Peer(SpiffeId.parse(principal), Proof.PROXY_ASSERTED, source="xfcc", proxy="127.0.0.1")


def problem_headers(status: int) -> list[tuple[str, str]]:
    return [
        ("content-type", "application/problem+json"),
        ("cache-control", "no-store"),
        ("content-length", str(len(BODIES[status]))),
    ]


class Recorder:
    """A WSGI app that records the environs it gets and answers 200 ``ok``."""

    def __init__(self) -> None:
        self.environs: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.environs.append(environ)
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]


def environ(
    path_info: str = "/payments/1",
    *,
    method: str = "GET",
    request_uri: str | None = None,
    raw_uri: str | None = None,
    query: str = "",
    script_name: str = "",
    principal: str | None = None,
    remote: tuple[str, str] | None = ("127.0.0.1", "50000"),
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name,
        "PATH_INFO": path_info,
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }
    if request_uri is not None:
        env["REQUEST_URI"] = request_uri
    if raw_uri is not None:
        env["RAW_URI"] = raw_uri
    if remote is not None:
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = remote
    if principal is not None:
        env[XFCC_KEY] = xfcc(principal)
    env.update(extra or {})
    return env


def call(app: Any, env: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        started.append((status, headers))

    body = b"".join(app(env, start_response))
    [(status, headers)] = started
    return status, headers, body


def guarded(app: Any = None, policy: Policy = POLICY, **options: Any) -> PeerWSGIMiddleware:
    options.setdefault("authenticators", [XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])])
    return PeerWSGIMiddleware(app if app is not None else Recorder(), policy=policy, **options)


OK = ("200 OK", [("content-type", "text/plain")], b"ok")


def refused(status: int) -> tuple[str, list[tuple[str, str]], bytes]:
    return STATUS_LINES[status], problem_headers(status), BODIES[status]


# --------------------------------------------------------------------------
# Decisions.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "principal", "remote", "status", "rule", "reason", "notes"),
    [
        pytest.param(
            "GET",
            "/healthz",
            None,
            "127.0.0.1",
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
            "127.0.0.1",
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
            "127.0.0.1",
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
            "127.0.0.1",
            401,
            None,
            NO_IDENTITY,
            (),
            id="read-anonymous-401",
        ),
        pytest.param(
            "GET", "/payments/1", ADMIN, "127.0.0.1", 403, None, NO_RULE, (), id="read-admin-403"
        ),
        pytest.param(
            "DELETE", "/payments/1", SHOP, "127.0.0.1", 403, None, NO_RULE, (), id="delete-shop-403"
        ),
        pytest.param(
            "get",
            "/payments/1",
            None,
            "127.0.0.1",
            400,
            None,
            "method 'get' is not in upper case",
            (),
            id="lower-case-method-400",
        ),
        pytest.param(
            "GET",
            "/payments/1",
            SHOP,
            "10.1.2.3",
            401,
            None,
            NO_IDENTITY,
            (UNTRUSTED_NOTE,),
            id="xfcc-from-untrusted-remote-addr-ignored",
        ),
        pytest.param(
            "GET",
            "/payments/1",
            SHOP,
            None,
            401,
            None,
            NO_IDENTITY,
            (UNTRUSTED_NOTE,),
            id="xfcc-without-remote-addr-ignored",
        ),
        pytest.param(
            "GET",
            "/payments/1",
            SHOP,
            "::1",
            200,
            "read-payment",
            "allowed by rule 'read-payment'",
            (),
            id="ipv6-loopback-trusted",
        ),
    ],
)
def test_raw_environ_decisions(
    method: str,
    path: str,
    principal: str | None,
    remote: str | None,
    status: int,
    rule: str | None,
    reason: str,
    notes: tuple[str, ...],
    decisions: Any,
) -> None:
    inner = Recorder()
    env = environ(
        path, method=method, principal=principal, remote=(remote, "50000") if remote else None
    )

    result = call(guarded(inner), env)

    trusted = principal if remote in ("127.0.0.1", "::1") else None
    if status == 200:
        assert result == OK
        [seen] = inner.environs
        assert seen[PEER_ENVIRON_KEY] == (
            Peer(SpiffeId.parse(trusted), Proof.PROXY_ASSERTED, source="xfcc", proxy=remote)
            if trusted
            else None
        )
        assert seen[DECISION_ENVIRON_KEY] == Decision(True, 200, rule, reason)
    else:
        assert result == refused(status)
        assert inner.environs == []
    [record] = decisions()
    assert record.levelno == (logging.DEBUG if status == 200 else logging.INFO)
    expected = fields(
        outcome="allowed" if status == 200 else "refused",
        status=status,
        rule=rule,
        reason=reason,
        principal=trusted,
        method=method,
        path=path,
        notes=notes,
    )
    if trusted:
        expected["proxy"] = remote
    assert record.peer_middleware == expected


@pytest.mark.parametrize(
    ("method", "url", "principal", "status", "body"),
    [
        pytest.param("GET", "/healthz", None, 200, b"ok", id="healthz"),
        pytest.param("GET", "/payments/1?q=1", SHOP, 200, b"ok", id="read-shop"),
        pytest.param("GET", "/payments/1", None, 401, BODY_401, id="read-anonymous"),
        pytest.param("GET", "/payments/1", ADMIN, 403, BODY_403, id="read-admin"),
        pytest.param("DELETE", "/payments/1", ADMIN, 200, b"ok", id="delete-admin"),
        pytest.param("GET", "/payments/a%2Fb", SHOP, 400, BODY_400, id="encoded-slash"),
        pytest.param("GET", "/payments/a%5Cb", SHOP, 400, BODY_400, id="encoded-backslash"),
        pytest.param("GET", "/payments/a%00", SHOP, 400, BODY_400, id="encoded-nul"),
        pytest.param("GET", "/payments/%zz", SHOP, 400, BODY_400, id="malformed-escape"),
    ],
)
def test_werkzeug_client_decisions(
    method: str, url: str, principal: str | None, status: int, body: bytes
) -> None:
    inner = Recorder()
    client = Client(guarded(inner))
    headers = {"X-Forwarded-Client-Cert": xfcc(principal)} if principal else {}

    response = client.open(url, method=method, headers=headers, environ_base=PROXY_BASE)

    assert response.status_code == status
    assert response.data == body
    assert len(inner.environs) == (1 if status == 200 else 0)
    if status != 200:
        assert list(response.headers.items()) == [
            ("content-type", "application/problem+json"),
            ("cache-control", "no-store"),
            ("content-length", str(len(body))),
        ]


# --------------------------------------------------------------------------
# Bad requests.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path_info", "request_uri", "reason"),
    [
        pytest.param(
            "GET",
            "/payments/a/b",
            "/payments/a%2Fb",
            "request path contains an encoded byte 0x2F",
            id="encoded-slash",
        ),
        pytest.param(
            "GET",
            "/payments/a\\b",
            "/payments/a%5cb",
            "request path contains an encoded byte 0x5C",
            id="encoded-backslash",
        ),
        pytest.param(
            "GET",
            "/payments/a\x00",
            "/payments/a%00",
            "request path contains an encoded byte 0x00",
            id="encoded-nul",
        ),
        pytest.param(
            "GET",
            "/payments/1",
            "/payments/1#frag",
            "request target contains a fragment",
            id="fragment",
        ),
        pytest.param(
            "GET",
            "/payments/%zz",
            "/payments/%zz",
            "request path contains a malformed percent escape",
            id="malformed-escape",
        ),
        pytest.param(
            "GET",
            "/payments/\xff",
            "/payments/%ff",
            "request path is not valid UTF-8",
            id="non-utf8-path-info",
        ),
        pytest.param(
            "GET",
            "/payments/\u0100",
            "/payments/x",
            "request path is not valid UTF-8",
            id="path-info-not-latin-1",
        ),
        pytest.param(
            "GET",
            "/payments/a\\b",
            "/payments/a\\b",
            "request path contains a forbidden character '\\\\'",
            id="literal-backslash",
        ),
        pytest.param(
            "GE T", "/healthz", "/healthz", "method 'GE T' is not an HTTP token", id="method-space"
        ),
        pytest.param(
            "", "/healthz", "/healthz", "method '' is not an HTTP token", id="method-empty"
        ),
    ],
)
def test_bad_requests_get_400_and_never_reach_the_app(
    method: str, path_info: str, request_uri: str, reason: str, decisions: Any
) -> None:
    inner = Recorder()
    app = guarded(inner)

    for _ in range(2):
        env = environ(path_info, method=method, request_uri=request_uri, principal=SHOP)
        assert call(app, env) == refused(400)

    assert inner.environs == []
    expected = fields(outcome="refused", status=400, reason=reason, path=path_info, method=method)
    assert [r.peer_middleware for r in decisions()] == [expected, expected]


def test_raw_uri_used_when_request_uri_absent() -> None:
    inner = Recorder()
    env = environ("/payments/a/b", raw_uri="/payments/a%2Fb", principal=SHOP)

    assert call(guarded(inner), env) == refused(400)
    assert inner.environs == []


# --------------------------------------------------------------------------
# Normalised paths written back.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path_info", "uri", "query", "script_name", "expected_path", "expected_uri"),
    [
        pytest.param(
            "/payments/a/../1",
            "/payments/a/../1?x=1",
            "x=1",
            "",
            "/payments/1",
            "/payments/1?x=1",
            id="dot-dot-query-kept",
        ),
        pytest.param(
            "//payments///1",
            "//payments///1",
            "",
            "",
            "/payments/1",
            "/payments/1",
            id="repeated-slashes",
        ),
        pytest.param(
            "/payments/1;x=y",
            "/payments/1;x=y?a=b&c=d",
            "a=b&c=d",
            "",
            "/payments/1",
            "/payments/1?a=b&c=d",
            id="params",
        ),
        pytest.param(
            "/payments/./1",
            "/api/payments/./1",
            "",
            "/api",
            "/payments/1",
            "/api/payments/1",
            id="script-name-kept",
        ),
        pytest.param(
            "//payments/caf\xc3\xa9",
            "//payments/caf%C3%A9",
            "",
            "",
            "/payments/caf\xc3\xa9",
            "/payments/caf%C3%A9",
            id="non-ascii-requoted",
        ),
    ],
)
def test_normalised_path_written_back(
    path_info: str,
    uri: str,
    query: str,
    script_name: str,
    expected_path: str,
    expected_uri: str,
) -> None:
    inner = Recorder()
    env = environ(
        path_info,
        request_uri=uri,
        raw_uri=uri,
        query=query,
        script_name=script_name,
        principal=SHOP,
    )

    assert call(guarded(inner), env) == OK

    [seen] = inner.environs
    assert seen["PATH_INFO"] == expected_path
    assert seen["REQUEST_URI"] == expected_uri
    assert seen["RAW_URI"] == expected_uri
    assert seen["QUERY_STRING"] == query
    assert seen["SCRIPT_NAME"] == script_name


def test_uri_keys_not_added_when_server_sent_none() -> None:
    inner = Recorder()

    assert call(guarded(inner), environ("/payments/a/../1", principal=SHOP)) == OK

    [seen] = inner.environs
    assert seen["PATH_INFO"] == "/payments/1"
    assert "REQUEST_URI" not in seen
    assert "RAW_URI" not in seen


@pytest.mark.parametrize(
    ("path_info", "uri"),
    [
        pytest.param("/payments/1", "/payments/1?x=1", id="plain"),
        pytest.param("/payments/A", "/payments/%41", id="escaped-letter-kept"),
    ],
)
def test_clean_path_is_not_rewritten(path_info: str, uri: str) -> None:
    inner = Recorder()
    env = environ(path_info, request_uri=uri, raw_uri=uri, query="x=1", principal=SHOP)

    assert call(guarded(inner), env) == OK

    [seen] = inner.environs
    assert (seen["PATH_INFO"], seen["REQUEST_URI"], seen["RAW_URI"]) == (path_info, uri, uri)


def test_werkzeug_client_sees_normalised_path() -> None:
    inner = Recorder()
    client = Client(guarded(inner))

    response = client.get(
        "/payments/x/../1?q=2",
        headers={"X-Forwarded-Client-Cert": xfcc(SHOP)},
        environ_base=PROXY_BASE,
    )

    assert response.status_code == 200
    [seen] = inner.environs
    assert (seen["PATH_INFO"], seen["REQUEST_URI"]) == ("/payments/1", "/payments/1?q=2")


# --------------------------------------------------------------------------
# Client address and X-Forwarded-For rewrites.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote_port", "forwarded_for"),
    [
        pytest.param("0", "127.0.0.1", id="port-zero"),
        pytest.param("43210", "10.0.0.9, 127.0.0.1:43210", id="copied-with-port"),
    ],
)
def test_rewritten_remote_addr_ignores_forwarded_credentials(
    remote_port: str, forwarded_for: str, caplog: pytest.LogCaptureFixture, decisions: Any
) -> None:
    inner = Recorder()
    app = guarded(inner)
    extra = {"HTTP_X_FORWARDED_FOR": forwarded_for}

    for _ in range(2):
        env = environ(principal=SHOP, remote=("127.0.0.1", remote_port), extra=extra)
        assert call(app, env) == refused(401)

    assert inner.environs == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert (
        warnings[0]
        .getMessage()
        .startswith("the server reports a client address taken from X-Forwarded-For (127.0.0.1)")
    )
    assert [r.peer_middleware["notes"] for r in decisions()] == [(UNTRUSTED_NOTE,)] * 2


@pytest.mark.parametrize(
    ("remote_port", "status"),
    [
        pytest.param("not-a-port", 200, id="unparseable-port"),
        pytest.param("", 200, id="empty-port"),
    ],
)
def test_remote_port_oddities_keep_remote_addr(remote_port: str, status: int) -> None:
    inner = Recorder()
    env = environ(principal=SHOP, remote=("127.0.0.1", remote_port))

    assert call(guarded(inner), env)[0] == STATUS_LINES[status]
    assert inner.environs[0][PEER_ENVIRON_KEY] == peer(SHOP)


# --------------------------------------------------------------------------
# route_rules and finalise.
# --------------------------------------------------------------------------


def test_route_rules_merged_once_before_first_request() -> None:
    calls: list[int] = []

    def route_rules() -> list[Any]:
        calls.append(1)
        return [allow("extra", Principal(ADMIN), methods="GET", paths="/payments/{id}")]

    inner = Recorder()
    app = guarded(inner, route_rules=route_rules)
    assert calls == []

    assert call(app, environ(principal=ADMIN)) == OK
    assert call(app, environ(principal=ADMIN)) == OK
    app.finalise()

    assert calls == [1]
    assert [e[DECISION_ENVIRON_KEY].rule for e in inner.environs] == ["extra", "extra"]


def test_finalise_merges_route_rules_early_and_once() -> None:
    calls: list[int] = []

    def route_rules() -> list[Any]:
        calls.append(1)
        return [allow("extra", Principal(ADMIN), methods="GET", paths="/payments/{id}")]

    app = guarded(route_rules=route_rules)
    app.finalise()
    app.finalise()

    assert calls == [1]
    assert [rule.name for rule in app.guard.policy.rules] == [
        "healthz",
        "read-payment",
        "delete-payment",
        "extra",
    ]


def test_finalise_raises_on_route_rule_name_clash() -> None:
    app = guarded(route_rules=lambda: [RULES[0]])

    with pytest.raises(ConfigurationError, match="two rules are named 'healthz'"):
        app.finalise()


# --------------------------------------------------------------------------
# Responders, internal errors, www-authenticate.
# --------------------------------------------------------------------------


def test_custom_responder_status_line_and_refusal() -> None:
    seen: list[Refusal] = []

    def responder(refusal: Refusal) -> ProblemResponse:
        seen.append(refusal)
        return ProblemResponse(429, (("content-type", "text/plain"),), b"slow down")

    app = guarded(responder=responder, www_authenticate="Custom")
    result = call(app, environ("//payments/1"))

    assert result == (
        "429 Refused",
        [("content-type", "text/plain"), ("content-length", "9")],
        b"slow down",
    )
    assert seen == [Refusal(401, NO_IDENTITY, None, "Custom", "GET", "/payments/1", None)]


def test_responder_that_raises_falls_back_to_default(caplog: pytest.LogCaptureFixture) -> None:
    def responder(refusal: Refusal) -> ProblemResponse:
        raise RuntimeError("responder bug")

    caplog.set_level(logging.DEBUG, logger="peer_middleware")
    assert call(guarded(responder=responder), environ(principal=ADMIN)) == refused(403)
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage() == "custom responder failed; sending the default refusal"


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


def test_unexpected_authenticator_error_is_403(
    caplog: pytest.LogCaptureFixture, decisions: Any
) -> None:
    inner = Recorder()

    assert call(guarded(inner, authenticators=[Boom()]), environ("/healthz")) == refused(403)

    assert inner.environs == []
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.getMessage() == "peer_middleware failed while authorizing GET '/healthz'"
    assert isinstance(error.exc_info[1], RuntimeError)  # type: ignore[index]
    [record] = decisions()
    assert record.peer_middleware == fields(
        outcome="refused",
        status=403,
        path="/healthz",
        reason="internal error while authorizing; see the traceback",
    )


@pytest.mark.parametrize(
    ("principal", "status", "www"),
    [pytest.param(None, 401, "Bearer", id="401"), pytest.param(ADMIN, 403, None, id="403")],
)
def test_www_authenticate(principal: str | None, status: int, www: str | None) -> None:
    _, headers, _ = call(guarded(www_authenticate="Bearer"), environ(principal=principal))

    assert dict(headers).get("www-authenticate") == www


# --------------------------------------------------------------------------
# Shadow and audit.
# --------------------------------------------------------------------------


def test_shadow_mode_lets_through(decisions: Any) -> None:
    inner = Recorder()

    assert call(guarded(inner, policy=Policy(RULES, mode="shadow")), environ()) == OK

    assert inner.environs[0][DECISION_ENVIRON_KEY] == Decision(
        True, 401, None, NO_IDENTITY, dry_run=True
    )
    [record] = decisions()
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(
        "would-refuse(dry-run) GET '/payments/1' status=401 rule=None"
    )
    assert record.peer_middleware == fields(
        outcome="allowed", status=200, reason=NO_IDENTITY, path="/payments/1", dry_run=True
    )


def test_audit_rule_logged_at_info(decisions: Any) -> None:
    policy = Policy([*RULES, audit("audit-reads", Principal(SHOP))])

    assert call(guarded(policy=policy), environ(principal=SHOP)) == OK

    [record] = decisions()
    assert record.levelno == logging.INFO
    assert record.peer_middleware == fields(
        outcome="allowed",
        status=200,
        rule="read-payment",
        principal=SHOP,
        path="/payments/1",
        reason="allowed by rule 'read-payment'",
        audit=("audit-reads",),
    )


def test_deny_rule_wins(decisions: Any) -> None:
    policy = Policy([*RULES, deny("no-reader", Principal(SHOP))])
    inner = Recorder()

    assert call(guarded(inner, policy=policy), environ(principal=SHOP)) == refused(403)

    assert inner.environs == []
    [record] = decisions()
    assert record.peer_middleware == fields(
        outcome="refused",
        status=403,
        rule="no-reader",
        principal=SHOP,
        path="/payments/1",
        reason="denied by rule 'no-reader'",
    )


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
            {"policy": POLICY, "responder": 42},
            "responder must be callable",
            id="responder-not-callable",
        ),
    ],
)
def test_configuration_errors_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PeerWSGIMiddleware(Recorder(), **options)


def test_non_utf8_script_name_is_a_refusal_not_an_exception() -> None:
    # SCRIPT_NAME can come from a client header (werkzeug's ProxyFix
    # x_prefix); when the path is rewritten it must not raise out of the
    # middleware.
    inner = Recorder()
    env = environ(
        "/payments/a/../1", request_uri="/\xff/payments/a/../1", script_name="/\xff", principal=SHOP
    )

    assert call(guarded(inner), env) == refused(400)
    assert inner.environs == []
