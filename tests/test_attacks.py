"""One regression test per known way around a mesh authorization layer.

Each case is named after the advisory (or the specification section) that
motivates it. Requests go through both adapters, the way real servers hand
them over: ASGI scopes as uvicorn's h11 protocol builds them (``path``
percent-decoded, ``raw_path`` as sent, header names lower-cased) in front of a
Starlette router, and WSGI environs as gunicorn builds them (``PATH_INFO``
decoded, ``RAW_URI`` as sent, ``HTTP_*`` keys, repeated lines joined with
``,``) in front of a Flask router. Every case asserts the status, that no
handler ran for a refused request, that the handler of an allowed request saw
the path the rules saw, and what the decision log says.

Groups: paths; methods; headers; WSGI header-name smuggling; negations and
requests without identity; identities that nearly match; forged XFCC
elements; forwarded credentials from untrusted peers; bearer tokens;
certificates.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, unquote, unquote_to_bytes
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask import Flask, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from peer_middleware import (
    Anyone,
    Authenticated,
    ForwardedCertificateAuthenticator,
    JwtSvidAuthenticator,
    KubernetesTokenAuthenticator,
    LinkerdIdentityAuthenticator,
    MtlsAuthenticator,
    Namespace,
    PeerMiddleware,
    PeerWSGIMiddleware,
    Policy,
    Principal,
    ServiceAccount,
    StaticX509Bundle,
    X509SvidVerifier,
    XfccAuthenticator,
    allow,
    deny,
)
from peer_middleware.keys import StaticJwks
from peer_middleware.testing import (
    TestCA,
    TokenMinter,
    asgi_tls_extensions,
    forwarded_cert_headers,
    linkerd_client_id,
    wsgi_tls_environ,
    xfcc_header,
)
from peer_middleware.testing.pki import Svid

TD = "cluster.local"
SHOP = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
LEGACY = "spiffe://cluster.local/ns/shop/sa/legacy"
APP = "spiffe://cluster.local/ns/shop/sa/payments"
PROXY = ("127.0.0.1", 50000)
STRANGER = ("10.1.2.3", 40000)
XFCC = "x-forwarded-client-cert"
ADAPTERS = ["asgi", "wsgi"]

NO_IDENTITY = "no allow rule matched and the request has no identity"
NO_RULE = "no allow rule matched this caller"
UNTRUSTED_XFCC = "ignored x-forwarded-client-cert from an untrusted peer"
BODY = {
    400: b'{"type":"about:blank","title":"Bad Request","status":400}',
    401: b'{"type":"about:blank","title":"Unauthorized","status":401}',
    403: b'{"type":"about:blank","title":"Forbidden","status":403}',
}


def asserted(principal: str) -> str:
    """What a SANITIZE_SET Envoy sidecar writes for ``principal``."""
    return f"By={APP};URI={principal}"


# --------------------------------------------------------------------------
# Harness: the same request through ASGI (Starlette) and WSGI (Flask).
# --------------------------------------------------------------------------

# (route name, Starlette path, Flask path); the last one catches everything else.
ROUTES = [
    ("healthz", "/healthz", "/healthz"),
    ("admin", "/admin", "/admin"),
    ("admin-below", "/admin/{rest:path}", "/admin/<path:rest>"),
    ("refund", "/payments/{pid}/refund", "/payments/<pid>/refund"),
    ("payment", "/payments/{pid}", "/payments/<pid>"),
    ("public", "/public/{rest:path}", "/public/<path:rest>"),
    ("fallback", "/{rest:path}", "/<path:rest>"),
]
METHODS = ["GET", "POST", "DELETE"]


@dataclass
class Outcome:
    status: int
    headers: dict[str, str]
    body: bytes
    #: (route, method, path) of every handler that ran.
    handled: list[tuple[str, str, str]]
    #: The ``peer_middleware`` fields of the decision records.
    records: list[dict[str, Any]]
    #: The principal the handler saw, when one ran.
    peers: list[str | None] = field(default_factory=list)

    @property
    def record(self) -> dict[str, Any]:
        assert len(self.records) == 1, self.records
        return self.records[0]


def starlette_app(handled: list[tuple[str, str, str]], peers: list[str | None]) -> Starlette:
    def endpoint(name: str) -> Callable[[Request], Any]:
        async def run(request: Request) -> PlainTextResponse:
            handled.append((name, request.method, request.scope["path"]))
            peer = request.scope.get("peer_middleware.peer")
            peers.append(peer.principal if peer is not None else None)
            return PlainTextResponse(name)

        return run

    return Starlette(
        routes=[Route(path, endpoint(name), methods=METHODS) for name, path, _ in ROUTES]
    )


def flask_app(handled: list[tuple[str, str, str]], peers: list[str | None]) -> Flask:
    app = Flask("attacks")

    def endpoint(name: str) -> Callable[..., str]:
        def run(**_: str) -> str:
            handled.append((name, request.method, request.environ["PATH_INFO"]))
            peer = request.environ.get("peer_middleware.peer")
            peers.append(peer.principal if peer is not None else None)
            return name

        return run

    for name, _, path in ROUTES:
        app.add_url_rule(path, name, endpoint(name), methods=METHODS)
    return app


Header = tuple[str, str]


def asgi_scope(
    method: str,
    target: str,
    headers: Sequence[Header],
    client: tuple[str, int] | None,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The scope uvicorn's h11 protocol builds for this request line and headers."""
    raw, _, query = target.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw),
        "raw_path": raw.encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers],
        "client": client,
        "server": ("127.0.0.1", 8000),
        "extensions": extensions or {},
    }


def wsgi_environ(
    method: str,
    target: str,
    headers: Sequence[Header],
    client: tuple[str, int] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The environ gunicorn builds (``RAW_URI`` as sent, ``PATH_INFO`` decoded)."""
    raw = target.partition("?")[0]
    query = target.partition("?")[2]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(raw.partition("#")[0]).decode("latin-1"),
        "QUERY_STRING": query,
        "RAW_URI": target,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if client is not None:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    for name, value in headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = environ[key] + "," + value if key in environ else value
    environ.update(extra or {})
    return environ


def run_asgi(app: Any, scope: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start = messages[0]
    body = b"".join(m.get("body", b"") for m in messages[1:])
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in start["headers"]}
    return start["status"], headers, body


def run_wsgi(app: Any, environ: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    status, headers = started[0]
    return int(status.split()[0]), {k.lower(): v for k, v in headers}, body


class Client:
    """Sends one request through one adapter, in front of a real router."""

    def __init__(
        self,
        adapter: str,
        caplog: pytest.LogCaptureFixture,
        policy: Policy,
        authenticators: Iterable[Any],
    ) -> None:
        self.adapter = adapter
        self.caplog = caplog
        self.handled: list[tuple[str, str, str]] = []
        self.peers: list[str | None] = []
        if adapter == "asgi":
            self.app: Any = PeerMiddleware(
                starlette_app(self.handled, self.peers),
                policy=policy,
                authenticators=list(authenticators),
            )
        else:
            self.app = PeerWSGIMiddleware(
                flask_app(self.handled, self.peers).wsgi_app,
                policy=policy,
                authenticators=list(authenticators),
            )

    def send(
        self,
        target: str,
        *,
        method: str = "GET",
        headers: Sequence[Header] = (),
        client: tuple[str, int] | None = PROXY,
        tls: Svid | None = None,
        environ: dict[str, Any] | None = None,
    ) -> Outcome:
        self.handled.clear()
        self.peers.clear()
        self.caplog.clear()
        self.caplog.set_level(logging.DEBUG, logger="peer_middleware")
        if self.adapter == "asgi":
            extensions = asgi_tls_extensions(tls) if tls is not None else None
            scope = asgi_scope(method, target, headers, client, extensions)
            status, out_headers, body = run_asgi(self.app, scope)
        else:
            extra = dict(environ or {})
            if tls is not None:
                extra.update(wsgi_tls_environ(tls))
            env = wsgi_environ(method, target, headers, client, extra)
            status, out_headers, body = run_wsgi(self.app, env)
        records = [
            dict(r.peer_middleware)  # type: ignore[attr-defined]
            for r in self.caplog.records
            if r.name == "peer_middleware" and hasattr(r, "peer_middleware")
        ]
        return Outcome(status, out_headers, body, list(self.handled), records, list(self.peers))


def check_refused(outcome: Outcome, status: int, *, rule: str | None = None) -> dict[str, Any]:
    """A refusal: the fixed body, no handler, one record that says so."""
    assert outcome.status == status, (outcome.status, outcome.records)
    assert outcome.body == BODY[status]
    assert outcome.handled == []
    record = outcome.record
    assert record["outcome"] == "refused"
    assert record["status"] == status
    assert record["rule"] == rule
    return record


def check_allowed(outcome: Outcome, route: str, path: str, *, rule: str) -> dict[str, Any]:
    """Allowed: the router ran ``route`` on exactly the path the rules saw."""
    assert outcome.status == 200, (outcome.status, outcome.records)
    record = outcome.record
    assert record["outcome"] == "allowed"
    assert record["rule"] == rule
    assert record["path"] == path
    assert [(name, seen) for name, _, seen in outcome.handled] == [(route, path)]
    return record


@pytest.fixture
def client_for(
    caplog: pytest.LogCaptureFixture,
) -> Callable[..., Client]:
    def make(adapter: str, policy: Policy, authenticators: Iterable[Any] = ()) -> Client:
        return Client(adapter, caplog, policy, authenticators)

    return make


def xfcc_auth(**options: Any) -> XfccAuthenticator:
    return XfccAuthenticator(trusted_proxies=["127.0.0.1"], **options)


# --------------------------------------------------------------------------
# Paths: what the rules match must be what the router routes.
# --------------------------------------------------------------------------

SHOP_NS = Namespace("shop", trust_domain=TD)
PATH_POLICY = Policy(
    [
        allow("healthz", Anyone(), methods="GET", paths="/healthz"),
        allow("public", Anyone(), paths="/public/**"),
        deny("no-admin-for-shop", SHOP_NS, paths="/admin/**"),
        deny("no-refunds-for-shop", SHOP_NS, paths="/payments/{pid}/refund"),
        deny("no-deletes-for-shop", SHOP_NS, methods="DELETE", paths="/payments/**"),
        deny("no-audit-reads-for-shop", SHOP_NS, methods="GET", paths="/audit/**"),
        allow("mesh", Authenticated(), paths="/**"),
    ]
)


@dataclass(frozen=True)
class PathCase:
    id: str
    target: str
    status: int
    caller: str | None = None
    #: Refusals: the deciding rule and the reason; allows: the rule.
    rule: str | None = None
    reason: str | None = None
    #: The normalised path the rules and the handler see (allowed or refused).
    path: str | None = None
    #: The handler that runs when allowed.
    route: str | None = None
    method: str = "GET"
    #: Where the WSGI adapter refuses earlier, with another reason.
    wsgi_reason: str | None = None


ENCODED_SLASH = "request path contains an encoded byte 0x2F"
ENCODED_BACKSLASH = "request path contains an encoded byte 0x5C"
FRAGMENT = "request target contains a fragment"
NOT_UTF8 = "request path percent-escapes are not UTF-8"
WSGI_NOT_UTF8 = "request path is not valid UTF-8"

PATH_CASES = [
    # ISTIO-SECURITY-2021-005 / CVE-2021-31920 / Envoy CVE-2021-29492: "//",
    # "%2F" and "%5C" let a path escape a rule the router then matches.
    PathCase(
        "CVE-2021-31920-double-slash-anonymous", "//admin", 401, reason=NO_IDENTITY, path="/admin"
    ),
    PathCase(
        "CVE-2021-31920-double-slash-deny",
        "//admin",
        403,
        SHOP,
        "no-admin-for-shop",
        path="/admin",
    ),
    PathCase(
        "CVE-2021-31920-many-slashes-deny",
        "///admin//users",
        403,
        SHOP,
        "no-admin-for-shop",
        path="/admin/users",
    ),
    PathCase("CVE-2021-31920-encoded-slash", "/public%2F..%2Fadmin", 400, reason=ENCODED_SLASH),
    PathCase("CVE-2021-31920-encoded-slash-lower", "/public/..%2fadmin", 400, reason=ENCODED_SLASH),
    PathCase(
        "CVE-2021-31920-encoded-slash-deny", "/admin%2Fusers", 400, SHOP, reason=ENCODED_SLASH
    ),
    PathCase(
        "CVE-2021-31920-encoded-backslash", "/public/..%5Cadmin", 400, reason=ENCODED_BACKSLASH
    ),
    PathCase(
        "CVE-2021-31920-encoded-backslash-lower",
        "/public/..%5cadmin",
        400,
        reason=ENCODED_BACKSLASH,
    ),
    PathCase(
        "CVE-2021-31920-literal-backslash",
        "/public/..\\admin",
        400,
        reason="request path contains a forbidden character '\\\\'",
    ),
    # Envoy CVE-2019-9901: ".." not resolved before matching.
    PathCase("CVE-2019-9901-dot-dot", "/public/../admin", 401, reason=NO_IDENTITY, path="/admin"),
    PathCase(
        "CVE-2019-9901-dot-dot-above-root",
        "/public/../../../admin",
        401,
        reason=NO_IDENTITY,
        path="/admin",
    ),
    PathCase(
        "CVE-2019-9901-dot-dot-deny", "/x/../admin", 403, SHOP, "no-admin-for-shop", path="/admin"
    ),
    PathCase(
        "CVE-2019-9901-dot-segment-deny",
        "/./admin/.",
        403,
        SHOP,
        "no-admin-for-shop",
        path="/admin/",
    ),
    PathCase(
        "CVE-2019-9901-dot-dot-into-template",
        "/payments/1/x/../refund",
        403,
        SHOP,
        "no-refunds-for-shop",
        path="/payments/1/refund",
    ),
    # CVE-2021-41773: "%2e%2e", which the server decodes to "..".
    PathCase(
        "CVE-2021-41773-encoded-dots",
        "/public/%2e%2e/admin",
        401,
        reason=NO_IDENTITY,
        path="/admin",
    ),
    PathCase(
        "CVE-2021-41773-half-encoded-dots",
        "/public/.%2E/admin",
        401,
        reason=NO_IDENTITY,
        path="/admin",
    ),
    PathCase(
        "CVE-2021-41773-encoded-letter-deny",
        "/%61dmin",
        403,
        SHOP,
        "no-admin-for-shop",
        path="/admin",
    ),
    # CVE-2021-42013: double encoding. Nothing is decoded twice: the router
    # gets the literal "%2e%2e" the rules saw, never "..".
    PathCase(
        "CVE-2021-42013-double-encoded-dots",
        "/public/%252e%252e/admin",
        200,
        rule="public",
        path="/public/%2e%2e/admin",
        route="public",
    ),
    PathCase(
        "CVE-2021-42013-double-encoded-slash",
        "/public%252F..%252Fadmin",
        401,
        reason=NO_IDENTITY,
        path="/public%2F..%2Fadmin",
    ),
    # Apache Shiro CVE-2020-1957 ("..;/") and Istio issue 27409 (";params").
    PathCase(
        "CVE-2020-1957-dot-dot-semicolon",
        "/public/..;/admin",
        401,
        reason=NO_IDENTITY,
        path="/admin",
    ),
    PathCase(
        "CVE-2020-1957-dot-dot-semicolon-x",
        "/public/..;x/admin",
        401,
        reason=NO_IDENTITY,
        path="/admin",
    ),
    PathCase(
        "istio-27409-path-params-deny", "/admin;x=1", 403, SHOP, "no-admin-for-shop", path="/admin"
    ),
    PathCase(
        "istio-27409-path-params-template",
        "/payments/1/refund;jsessionid=2",
        403,
        SHOP,
        "no-refunds-for-shop",
        path="/payments/1/refund",
    ),
    PathCase(
        "istio-27409-path-params-exact",
        "/healthz;x",
        200,
        rule="healthz",
        path="/healthz",
        route="healthz",
    ),
    # CVE-2021-39156 (Envoy CVE-2021-32779): a fragment in the request target.
    PathCase("CVE-2021-39156-fragment-deny", "/admin#section", 400, SHOP, reason=FRAGMENT),
    PathCase("CVE-2021-39156-fragment-traversal", "/public#/../admin", 400, reason=FRAGMENT),
    # CVE-2020-8595: "?" and "#" on an exact path.
    PathCase(
        "CVE-2020-8595-exact-path-query",
        "/healthz?a=/admin",
        200,
        rule="healthz",
        path="/healthz",
        route="healthz",
    ),
    PathCase("CVE-2020-8595-exact-path-fragment", "/healthz#x", 400, reason=FRAGMENT),
    PathCase(
        "CVE-2020-8595-exact-path-trailing-slash",
        "/healthz/",
        401,
        reason=NO_IDENTITY,
        path="/healthz/",
    ),
    PathCase(
        "CVE-2020-8595-deny-with-query", "/admin?x=1", 403, SHOP, "no-admin-for-shop", path="/admin"
    ),
    # CVE-2016-5007 (Spring Security): matcher and router differ in strictness
    # (whitespace). Case: rules and routers are both case-sensitive, so
    # "/ADMIN" never reaches the /admin handler.
    PathCase(
        "CVE-2016-5007-trailing-space",
        "/admin%20",
        200,
        SHOP,
        rule="mesh",
        path="/admin ",
        route="fallback",
    ),
    PathCase(
        "CVE-2016-5007-encoded-tab",
        "/admin%09",
        400,
        SHOP,
        reason="request path contains an encoded byte 0x09",
    ),
    PathCase(
        "case-sensitive-upper-case",
        "/ADMIN",
        200,
        SHOP,
        rule="mesh",
        path="/ADMIN",
        route="fallback",
    ),
    PathCase(
        "case-sensitive-mixed-case",
        "/Admin/users",
        200,
        SHOP,
        rule="mesh",
        path="/Admin/users",
        route="fallback",
    ),
    # A trailing slash escapes an exact or template rule; no router runs the
    # template's handler for it (write deny rules as "/prefix/**").
    PathCase(
        "trailing-slash-template",
        "/payments/1/refund/",
        200,
        SHOP,
        rule="mesh",
        path="/payments/1/refund/",
        route="fallback",
    ),
    PathCase(
        "trailing-slash-prefix-deny", "/admin/", 403, SHOP, "no-admin-for-shop", path="/admin/"
    ),
    # Envoy CVE-2019-9900 / CVE-2023-27493: NUL and control characters.
    PathCase(
        "CVE-2019-9900-encoded-nul",
        "/public/%00/../../admin",
        400,
        reason="request path contains an encoded byte 0x00",
    ),
    PathCase(
        "CVE-2023-27493-encoded-crlf",
        "/public/%0d%0aX:%20y",
        400,
        reason="request path contains an encoded byte 0x0D",
    ),
    # Escapes the server would decode differently from the rules.
    PathCase(
        "malformed-escape",
        "/public/%zz/../../admin",
        400,
        reason="request path contains a malformed percent escape",
    ),
    PathCase(
        "truncated-escape",
        "/public/%2",
        400,
        reason="request path contains a malformed percent escape",
    ),
    PathCase("non-utf8-escape", "/public/%ff", 400, reason=NOT_UTF8, wsgi_reason=WSGI_NOT_UTF8),
    PathCase(
        "overlong-utf8-dot",
        "/public/%c0%ae%c0%ae/admin",
        400,
        reason=NOT_UTF8,
        wsgi_reason=WSGI_NOT_UTF8,
    ),
    PathCase(
        "absolute-form-target",
        "http://backend/admin",
        400,
        reason="request target contains",  # checked below per adapter
    ),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("case", PATH_CASES, ids=[c.id for c in PATH_CASES])
def test_path_tricks(adapter: str, case: PathCase, client_for: Callable[..., Client]) -> None:
    client = client_for(adapter, PATH_POLICY, [xfcc_auth()])
    headers = [(XFCC, asserted(case.caller))] if case.caller else []
    outcome = client.send(case.target, method=case.method, headers=headers)
    if case.status == 200:
        assert case.route is not None
        assert case.path is not None
        assert case.rule is not None
        check_allowed(outcome, case.route, case.path, rule=case.rule)
        assert outcome.peers == [case.caller]
        return
    record = check_refused(outcome, case.status, rule=case.rule)
    if case.id == "absolute-form-target":
        # uvicorn hands the absolute form on as the path; gunicorn splits it off.
        assert record["reason"] in (
            "request path does not start with '/'",
            NO_IDENTITY,
        )
        return
    if adapter == "wsgi" and case.wsgi_reason is not None:
        assert record["reason"] == case.wsgi_reason
    elif case.reason is not None:
        assert record["reason"] == case.reason
    if case.path is not None:
        assert record["path"] == case.path


# --------------------------------------------------------------------------
# Methods: routers dispatch HEAD to GET handlers, and Werkzeug and Django
# upper-case the method. A DENY rule must hold for HEAD; a method not in
# upper case is refused with 400 before any rule is read (as Istio does).
# --------------------------------------------------------------------------

METHOD_CASES = [
    pytest.param("HEAD", "/audit/log", "no-audit-reads-for-shop", id="HEAD-reaches-GET-handler"),
    pytest.param("DELETE", "/payments/1", "no-deletes-for-shop", id="delete-as-named"),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("method", "target"),
    [
        pytest.param("head", "/audit/log", id="lower-case-head"),
        pytest.param("delete", "/payments/1", id="lower-case-delete"),
        pytest.param("Delete", "/payments/1", id="mixed-case-delete"),
        pytest.param("get", "/healthz", id="lower-case-get-on-an-open-route"),
    ],
)
def test_methods_not_in_upper_case_are_refused_with_400(
    adapter: str, method: str, target: str, client_for: Callable[..., Client]
) -> None:
    client = client_for(adapter, PATH_POLICY, [xfcc_auth()])
    outcome = client.send(target, method=method, headers=[(XFCC, asserted(SHOP))])
    record = check_refused(outcome, 400)
    assert record["reason"] == f"method {method!r} is not in upper case"


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("method", "target", "rule"), METHOD_CASES)
def test_deny_rules_hold_for_methods_routers_rewrite(
    adapter: str, method: str, target: str, rule: str, client_for: Callable[..., Client]
) -> None:
    client = client_for(adapter, PATH_POLICY, [xfcc_auth()])
    outcome = client.send(target, method=method, headers=[(XFCC, asserted(SHOP))])
    record = check_refused(outcome, 403, rule=rule)
    assert record["reason"] == f"denied by rule {rule!r}"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_allow_rules_still_match_the_method_as_sent(
    adapter: str, client_for: Callable[..., Client]
) -> None:
    policy = Policy([allow("read", Authenticated(), methods="GET", paths="/payments/**")])
    client = client_for(adapter, policy, [xfcc_auth()])
    outcome = client.send("/payments/1", method="HEAD", headers=[(XFCC, asserted(SHOP))])
    assert check_refused(outcome, 403)["reason"] == NO_RULE


# --------------------------------------------------------------------------
# Headers: duplicates, odd casing, NUL, CR, LF and whitespace in values.
# --------------------------------------------------------------------------

HEADER_POLICY = Policy(
    [
        allow("healthz", Anyone(), paths="/healthz"),
        allow("admin", Principal(ADMIN), paths="/admin/**"),
        allow("shop", SHOP_NS, paths="/payments/**"),
    ]
)

HEADER_CASES = [
    # Envoy CVE-2021-32777: only one of several values was checked. Two XFCC
    # lines (the client's and the proxy's) are joined and refused.
    pytest.param(
        [(XFCC, asserted(ADMIN)), (XFCC, asserted(SHOP))],
        "/admin/users",
        401,
        "x-forwarded-client-cert: 2 elements, but the proxy replaces the header (sanitize_set) "
        "and writes exactly one",
        id="CVE-2021-32777-two-xfcc-lines",
    ),
    pytest.param(
        [(XFCC, asserted(SHOP)), (XFCC.upper(), asserted(ADMIN))],
        "/admin/users",
        401,
        "x-forwarded-client-cert: 2 elements, but the proxy replaces the header (sanitize_set) "
        "and writes exactly one",
        id="CVE-2021-32777-two-xfcc-lines-odd-case",
    ),
    pytest.param(
        [("X-Forwarded-Client-Cert", asserted(ADMIN))],
        "/admin/users",
        200,
        "admin",
        id="CVE-2021-39155-header-name-case-is-insignificant",
    ),
    # Envoy CVE-2019-9900 (NUL) and CVE-2023-27493 (CR, LF) in header values.
    pytest.param(
        [(XFCC, asserted(ADMIN + "\x00.evil"))],
        "/admin/users",
        401,
        "malformed x-forwarded-client-cert header: control character 0x00 at offset",
        id="CVE-2019-9900-nul-in-xfcc",
    ),
    pytest.param(
        [(XFCC, asserted(ADMIN + "\r\nx-forwarded-client-cert: URI=" + SHOP))],
        "/admin/users",
        401,
        "malformed x-forwarded-client-cert header: control character 0x0d at offset",
        id="CVE-2023-27493-crlf-in-xfcc",
    ),
    pytest.param(
        [(XFCC, asserted(ADMIN + "\n"))],
        "/admin/users",
        401,
        "malformed x-forwarded-client-cert header: control character 0x0a at offset",
        id="CVE-2023-27493-lf-in-xfcc",
    ),
    pytest.param(
        [(XFCC, f'By={APP};URI="{ADMIN} "')],
        "/admin/users",
        401,
        "x-forwarded-client-cert: URI is not a SPIFFE ID",
        id="trailing-space-inside-quotes",
    ),
    pytest.param(
        [(XFCC, asserted(ADMIN) + " \t")],
        "/admin/users",
        200,
        "admin",
        id="trailing-whitespace-is-optional-whitespace",
    ),
    pytest.param(
        [(XFCC, asserted("spiffe://cluster.local/ns/ops/sa/admin%00"))],
        "/admin/users",
        401,
        "x-forwarded-client-cert: URI is not a SPIFFE ID",
        id="encoded-nul-in-xfcc-uri",
    ),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("headers", "target", "status", "expected"), HEADER_CASES)
def test_header_tricks(
    adapter: str,
    headers: list[Header],
    target: str,
    status: int,
    expected: str,
    client_for: Callable[..., Client],
) -> None:
    client = client_for(adapter, HEADER_POLICY, [xfcc_auth()])
    outcome = client.send(target, headers=headers)
    if status == 200:
        check_allowed(outcome, "admin-below", "/admin/users", rule=expected)
        assert outcome.peers == [ADMIN]
        return
    record = check_refused(outcome, status)
    assert record["reason"].startswith(expected), record["reason"]


def test_asgi_header_name_not_lower_cased_by_the_server_is_ignored(
    client_for: Callable[..., Client],
) -> None:
    # A non-conforming server that keeps the case: neither the middleware nor
    # Starlette's Headers sees the value, so both agree there is no identity.
    client = client_for("asgi", HEADER_POLICY, [xfcc_auth()])
    scope = asgi_scope("GET", "/admin/users", [], PROXY)
    scope["headers"] = [(b"X-Forwarded-Client-Cert", asserted(ADMIN).encode())]
    client.caplog.set_level(logging.DEBUG, logger="peer_middleware")
    status, _, body = run_asgi(client.app, scope)
    assert (status, body, client.handled) == (401, BODY[401], [])


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_two_authorization_headers_are_refused(
    adapter: str,
    client_for: Callable[..., Client],
    minter: TokenMinter,
    svid_auth: JwtSvidAuthenticator,
) -> None:
    # CVE-2021-32777: a second Authorization line must not be ignored.
    client = client_for(adapter, HEADER_POLICY, [svid_auth])
    good = minter.jwt_svid(SHOP, AUDIENCE)
    forged = minter.jwt_svid(ADMIN, AUDIENCE)
    outcome = client.send(
        "/admin/users",
        headers=[("authorization", f"Bearer {good}"), ("authorization", f"Bearer {forged}")],
    )
    record = check_refused(outcome, 401)
    assert record["reason"] == "several Authorization values with a bearer token"
    assert outcome.headers["www-authenticate"] == 'Bearer error="invalid_token"'


# --------------------------------------------------------------------------
# WSGI header-name smuggling: "X_Forwarded_Client_Cert" and
# "X-Forwarded-Client-Cert" are both HTTP_X_FORWARDED_CLIENT_CERT.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "joined",
    [
        pytest.param(f"{asserted(ADMIN)},{asserted(SHOP)}", id="client-copy-first"),
        pytest.param(f"{asserted(SHOP)},{asserted(ADMIN)}", id="client-copy-last"),
    ],
)
def test_wsgi_underscore_smuggling_joined_by_the_server_is_refused(
    joined: str, client_for: Callable[..., Client]
) -> None:
    client = client_for("wsgi", HEADER_POLICY, [xfcc_auth()])
    outcome = client.send("/admin/users", environ={"HTTP_X_FORWARDED_CLIENT_CERT": joined})
    record = check_refused(outcome, 401)
    assert record["reason"].startswith("x-forwarded-client-cert: 2 elements")


def test_wsgi_underscore_smuggling_of_a_forwarded_certificate_is_refused(
    client_for: Callable[..., Client], pki: Pki
) -> None:
    # nginx forwards only its own X-SSL-Client-Cert; HAProxy passes a client's
    # X_SSL_Client_Cert through, and a WSGI server joins the two.
    auth = ForwardedCertificateAuthenticator(
        "nginx", trusted_proxies=["127.0.0.1"], verifier=pki.verifier
    )
    client = client_for("wsgi", HEADER_POLICY, [auth])
    real = forwarded_cert_headers("nginx", pki.shop)
    stolen = forwarded_cert_headers("nginx", pki.admin)
    outcome = client.send(
        "/admin/users",
        environ={
            "HTTP_X_SSL_CLIENT_CERT": real["x-ssl-client-cert"] + "," + stolen["x-ssl-client-cert"],
            "HTTP_X_SSL_CLIENT_VERIFY": "SUCCESS",
        },
    )
    record = check_refused(outcome, 401)
    assert record["reason"].startswith(
        "x-ssl-client-cert: PEM: expected '-----BEGIN CERTIFICATE-----'"
    )


def _raw_request(forged: str, real: str) -> bytes:
    return (
        "GET /admin/users HTTP/1.1\r\n"
        "Host: app\r\n"
        f"X_Forwarded_Client_Cert: {forged}\r\n"
        f"X-Forwarded-Client-Cert: {real}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def test_wsgi_underscore_smuggling_through_a_real_server(caplog: pytest.LogCaptureFixture) -> None:
    # wsgiref (like Werkzeug's development server) joins both spellings into
    # one HTTP_X_FORWARDED_CLIENT_CERT: two elements, refused.
    caplog.set_level(logging.DEBUG, logger="peer_middleware")
    handled: list[tuple[str, str, str]] = []
    app = PeerWSGIMiddleware(
        flask_app(handled, []).wsgi_app, policy=HEADER_POLICY, authenticators=[xfcc_auth()]
    )
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            sock.sendall(_raw_request(asserted(ADMIN), asserted(SHOP)))
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert response.startswith(b"HTTP/1.0 401 ")
    assert response.endswith(BODY[401])
    assert handled == []
    [record] = [r for r in caplog.records if hasattr(r, "peer_middleware")]
    assert record.peer_middleware["reason"].startswith("x-forwarded-client-cert: 2 elements")  # type: ignore[attr-defined]


def test_asgi_keeps_the_underscore_spelling_apart(client_for: Callable[..., Client]) -> None:
    # h11 (uvicorn) keeps "x_forwarded_client_cert" as its own header: the
    # proxy's value alone is read, and the smuggled one reaches nobody.
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(_raw_request(asserted(ADMIN), asserted(SHOP)))
    event = connection.next_event()
    assert isinstance(event, h11.Request)
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers]
    assert ("x_forwarded_client_cert", asserted(ADMIN)) in headers
    client = client_for("asgi", HEADER_POLICY, [xfcc_auth()])
    outcome = client.send(event.target.decode("latin-1"), headers=headers)
    record = check_refused(outcome, 403)
    assert (record["reason"], record["principal"]) == (NO_RULE, SHOP)


# --------------------------------------------------------------------------
# Negations and requests without identity (Istio notPrincipals semantics).
# --------------------------------------------------------------------------

NEGATION_POLICY = Policy(
    [
        deny("members-only", ~Authenticated(), paths="/internal/**"),
        deny("shop-only", ~SHOP_NS, paths="/shop/**"),
        deny("not-legacy", Principal(LEGACY), paths="/reports/**"),
        allow("reports-for-all-but-legacy", ~Principal(LEGACY), paths="/reports/**"),
        allow("open", Anyone(), paths=["/internal/**", "/shop/**"]),
    ]
)

NEGATION_CASES = [
    pytest.param(
        "/internal/x", None, PROXY, 403, "members-only", id="deny-not-authenticated-anonymous"
    ),
    pytest.param("/internal/x", SHOP, PROXY, 200, "open", id="deny-not-authenticated-member"),
    pytest.param(
        "/internal/x", ADMIN, STRANGER, 403, "members-only", id="deny-not-authenticated-forged-xfcc"
    ),
    pytest.param("/shop/x", None, PROXY, 403, "shop-only", id="deny-not-namespace-anonymous"),
    pytest.param("/shop/x", ADMIN, PROXY, 403, "shop-only", id="deny-not-namespace-other"),
    pytest.param("/shop/x", SHOP, PROXY, 200, "open", id="deny-not-namespace-member"),
    pytest.param("/reports/1", None, PROXY, 401, None, id="allow-not-principal-anonymous"),
    pytest.param("/reports/1", LEGACY, PROXY, 403, "not-legacy", id="allow-not-principal-excluded"),
    pytest.param(
        "/reports/1", SHOP, PROXY, 200, "reports-for-all-but-legacy", id="allow-not-principal-other"
    ),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("target", "caller", "peer", "status", "rule"), NEGATION_CASES)
def test_negations_fail_closed_without_identity(
    adapter: str,
    target: str,
    caller: str | None,
    peer: tuple[str, int],
    status: int,
    rule: str | None,
    client_for: Callable[..., Client],
) -> None:
    client = client_for(adapter, NEGATION_POLICY, [xfcc_auth()])
    headers = [(XFCC, asserted(caller))] if caller else []
    outcome = client.send(target, headers=headers, client=peer)
    if status == 200:
        check_allowed(outcome, "fallback", target, rule=rule or "")
        return
    record = check_refused(outcome, status, rule=rule)
    if peer == STRANGER:
        assert record["notes"] == (UNTRUSTED_XFCC,)
        assert record["principal"] is None


# --------------------------------------------------------------------------
# Identities that differ by one character, a suffix, or the trust domain.
# --------------------------------------------------------------------------

IDENTITY_POLICY = Policy(
    [
        allow("shop-ns", SHOP_NS, paths="/ns/**"),
        allow(
            "reader-sa", ServiceAccount("reader", namespace="shop", trust_domain=TD), paths="/sa/**"
        ),
        allow(
            "api-v1",
            ServiceAccount("api.v1", namespace="shop", trust_domain=TD),
            paths="/dotted/**",
        ),
        allow("exact", Principal(SHOP), paths="/exact/**"),
        allow("shop-prefix", Principal("spiffe://cluster.local/ns/shop/*"), paths="/prefix/**"),
        allow("dotted-suffix", Principal("*/sa/api.v1"), paths="/suffix/**"),
    ]
)
NEAR = [
    ("ns-one-more-char", "spiffe://cluster.local/ns/shops/sa/reader", ["/ns/", "/prefix/"]),
    ("ns-one-less-char", "spiffe://cluster.local/ns/sho/sa/reader", ["/ns/", "/prefix/"]),
    (
        "ns-suffix",
        "spiffe://cluster.local/ns/shop-dev/sa/reader",
        ["/ns/", "/sa/", "/exact/", "/prefix/"],
    ),
    (
        "ns-case",
        "spiffe://cluster.local/ns/Shop/sa/reader",
        ["/ns/", "/sa/", "/exact/", "/prefix/"],
    ),
    ("sa-suffix", "spiffe://cluster.local/ns/shop/sa/reader2", ["/sa/", "/exact/"]),
    ("sa-prefix", "spiffe://cluster.local/ns/shop/sa/xreader", ["/sa/", "/exact/"]),
    ("sa-one-less-char", "spiffe://cluster.local/ns/shop/sa/reade", ["/sa/", "/exact/"]),
    ("extra-segment", "spiffe://cluster.local/ns/shop/sa/reader/x", ["/ns/", "/sa/", "/exact/"]),
    (
        "td-suffix",
        "spiffe://cluster.local.evil/ns/shop/sa/reader",
        ["/ns/", "/sa/", "/exact/", "/prefix/"],
    ),
    (
        "td-prefix",
        "spiffe://evil-cluster.local/ns/shop/sa/reader",
        ["/ns/", "/sa/", "/exact/", "/prefix/"],
    ),
    (
        "td-one-less-char",
        "spiffe://cluster.loca/ns/shop/sa/reader",
        ["/ns/", "/sa/", "/exact/", "/prefix/"],
    ),
    (
        "other-td-same-namespace",
        "spiffe://other.example/ns/shop/sa/reader",
        ["/ns/", "/sa/", "/exact/", "/prefix/"],
    ),
    ("regex-dot-sa", "spiffe://cluster.local/ns/shop/sa/apixv1", ["/dotted/", "/suffix/"]),
]
NEAR_CASES = [
    pytest.param(uri, target + "x", id=f"{name}-{target.strip('/')}")
    for name, uri, targets in NEAR
    for target in targets
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("caller", "target"), NEAR_CASES)
def test_identities_that_nearly_match_are_refused(
    adapter: str, caller: str, target: str, client_for: Callable[..., Client]
) -> None:
    # Istio 1.29.3: regex metacharacters in suffix principals and namespaces.
    client = client_for(adapter, IDENTITY_POLICY, [xfcc_auth()])
    outcome = client.send(target, headers=[(XFCC, asserted(caller))])
    record = check_refused(outcome, 403)
    assert (record["reason"], record["principal"]) == (NO_RULE, caller)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    "caller",
    [
        pytest.param("spiffe://cluster.local/ns/shop/sa/reader/", id="trailing-slash"),
        pytest.param("spiffe://cluster.local/ns//shop/sa/reader", id="empty-segment"),
        pytest.param("spiffe://cluster.local/ns/./shop/sa/reader", id="dot-segment"),
        pytest.param("spiffe://cluster.local/ns/sh%6Fp/sa/reader", id="percent-encoded"),
        pytest.param("spiffe://CLUSTER.local/ns/shop/sa/reader", id="upper-case-trust-domain"),
        pytest.param("SPIFFE://cluster.local/ns/shop/sa/reader", id="upper-case-scheme"),
        pytest.param("spiffe://cluster.local:443/ns/shop/sa/reader", id="port"),
        pytest.param("spiffe://user@cluster.local/ns/shop/sa/reader", id="userinfo"),
        pytest.param("spiffe://cluster.local/ns/shop/sa/reader?x", id="query"),
        pytest.param("spiffe://cluster.local", id="trust-domain-only"),
    ],
)
def test_invalid_spiffe_ids_are_refused(
    adapter: str, caller: str, client_for: Callable[..., Client]
) -> None:
    # SPIFFE-ID specification, section 2: one canonical form, so no second spelling.
    client = client_for(adapter, IDENTITY_POLICY, [xfcc_auth()])
    outcome = client.send("/ns/x", headers=[(XFCC, asserted(caller))])
    record = check_refused(outcome, 401)
    assert record["reason"].startswith("x-forwarded-client-cert: URI")


# --------------------------------------------------------------------------
# Forged XFCC elements before and after the trusted one.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("mode", "value", "status", "principal", "reason"),
    [
        pytest.param(
            "sanitize_set",
            f"{asserted(ADMIN)},{asserted(SHOP)}",
            401,
            None,
            "x-forwarded-client-cert: 2 elements",
            id="envoy-xfcc-forged-before-sanitize-set",
        ),
        pytest.param(
            "sanitize_set",
            f"{asserted(SHOP)},{asserted(ADMIN)}",
            401,
            None,
            "x-forwarded-client-cert: 2 elements",
            id="envoy-xfcc-forged-after-sanitize-set",
        ),
        pytest.param(
            "append_forward",
            f"{asserted(ADMIN)},{asserted(SHOP)}",
            403,
            SHOP,
            NO_RULE,
            id="envoy-xfcc-forged-before-append-forward",
        ),
        pytest.param(
            "append_forward",
            f'URI={ADMIN};By={APP},By={APP};URI="{SHOP}"',
            403,
            SHOP,
            NO_RULE,
            id="envoy-xfcc-forged-before-quoted",
        ),
        pytest.param(
            "sanitize_set",
            f"By={APP};URI={SHOP},URI={ADMIN}",
            401,
            None,
            "x-forwarded-client-cert: 2 elements",
            id="envoy-xfcc-unquoted-uri-split",
        ),
        pytest.param(
            "sanitize_set",
            f"By={APP};URI={SHOP};URI={ADMIN}",
            401,
            None,
            "x-forwarded-client-cert: the proxy's element has 2 URIs",
            id="CVE-2022-40716-two-uris-in-xfcc",
        ),
        pytest.param(
            "sanitize_set",
            f'By={APP};URI="{ADMIN}";URI=',
            401,
            None,
            "x-forwarded-client-cert: the proxy's element has 2 URIs",
            id="empty-second-uri",
        ),
        pytest.param(
            "sanitize_set",
            f'By={APP};URI="{ADMIN}\\"',
            401,
            None,
            "malformed x-forwarded-client-cert header: unterminated quoted value",
            id="escaped-closing-quote",
        ),
        pytest.param(
            "sanitize_set",
            f"By={APP};Uri={ADMIN};X-Role=admin",
            401,
            None,
            "malformed x-forwarded-client-cert header: unknown key",
            id="unknown-key",
        ),
    ],
)
def test_forged_xfcc_elements(
    adapter: str,
    mode: str,
    value: str,
    status: int,
    principal: str | None,
    reason: str,
    client_for: Callable[..., Client],
) -> None:
    client = client_for(adapter, HEADER_POLICY, [xfcc_auth(forward_client_cert=mode)])
    outcome = client.send("/admin/users", headers=[(XFCC, value)])
    record = check_refused(outcome, status)
    assert record["reason"].startswith(reason), record["reason"]
    assert record["principal"] == principal


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_xfcc_by_must_name_this_app(adapter: str, client_for: Callable[..., Client]) -> None:
    # A Cert forwarded by a sidecar of another app is not a call to this one.
    client = client_for(adapter, HEADER_POLICY, [xfcc_auth(expected_by=APP)])
    value = f"By=spiffe://cluster.local/ns/ops/sa/other;URI={ADMIN}"
    record = check_refused(client.send("/admin/users", headers=[(XFCC, value)]), 401)
    assert record["reason"] == f"x-forwarded-client-cert: By does not name this app ({APP})"


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("build", "reason"),
    [
        pytest.param(
            lambda p: xfcc_header(p.shop, by=APP, include_cert=True).replace(
                f"URI={SHOP}", f"URI={ADMIN}"
            ),
            "x-forwarded-client-cert: URI does not match the forwarded certificate's SPIFFE ID",
            id="uri-not-the-certificates",
        ),
        pytest.param(
            lambda p: xfcc_header(p.shop, by=APP, include_cert=True).replace(
                p.shop.fingerprint_sha256, p.admin.fingerprint_sha256
            ),
            "x-forwarded-client-cert: Hash is not the SHA-256 of the forwarded certificate",
            id="hash-not-the-certificates",
        ),
        pytest.param(
            lambda p: xfcc_header(p.shop, by=APP, include_cert=True) + f",URI={ADMIN}",
            "x-forwarded-client-cert: the proxy's element has no Cert to verify",
            id="envoy-xfcc-unquoted-uri-split-append-forward-needs-cert",
        ),
        pytest.param(
            lambda p: xfcc_header(p.rogue, by=APP, include_cert=True),
            "certificate chain does not verify against the trust bundle of 'cluster.local'",
            id="self-made-ca",
        ),
    ],
)
def test_forwarded_xfcc_certificates_are_checked(
    adapter: str,
    build: Callable[[Pki], str],
    reason: str,
    client_for: Callable[..., Client],
    pki: Pki,
) -> None:
    auth = xfcc_auth(forward_client_cert="append_forward", verifier=pki.verifier)
    client = client_for(adapter, HEADER_POLICY, [auth])
    record = check_refused(client.send("/admin/users", headers=[(XFCC, build(pki))]), 401)
    assert record["reason"].startswith(reason), record["reason"]


# --------------------------------------------------------------------------
# Forwarded credentials from peers that are not trusted proxies
# (Envoy CVE-2024-45806, CVE-2023-27487: headers only a proxy may set).
# --------------------------------------------------------------------------

FORWARDED_CASES = [
    pytest.param(STRANGER, [], {}, UNTRUSTED_XFCC, id="CVE-2024-45806-xfcc-from-stranger"),
    pytest.param(("::ffff:10.1.2.3", 40000), [], {}, UNTRUSTED_XFCC, id="ipv4-mapped-stranger"),
    pytest.param(("fe80::1%eth0", 40000), [], {}, UNTRUSTED_XFCC, id="link-local-stranger"),
    pytest.param(("testclient", 50000), [], {}, UNTRUSTED_XFCC, id="not-an-address"),
    # uvicorn's ProxyHeadersMiddleware: client taken from X-Forwarded-For, port 0.
    pytest.param(
        ("127.0.0.1", 0),
        [("x-forwarded-for", "127.0.0.1")],
        {},
        None,
        id="uvicorn-proxy-headers-rewrite",
    ),
    pytest.param(
        ("127.0.0.1", 50000),
        [("x-forwarded-for", "127.0.0.1:50000")],
        {},
        None,
        id="address-copied-from-x-forwarded-for",
    ),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("peer", "extra", "environ", "note"), FORWARDED_CASES)
def test_forwarded_xfcc_from_untrusted_peers_is_ignored(
    adapter: str,
    peer: tuple[str, int],
    extra: list[Header],
    environ: dict[str, Any],
    note: str | None,
    client_for: Callable[..., Client],
) -> None:
    client = client_for(adapter, HEADER_POLICY, [xfcc_auth()])
    outcome = client.send(
        "/admin/users", headers=[(XFCC, asserted(ADMIN)), *extra], client=peer, environ=environ
    )
    record = check_refused(outcome, 401)
    assert (record["reason"], record["principal"]) == (NO_IDENTITY, None)
    if note is not None:
        assert record["notes"] == (note,)


def test_werkzeug_proxy_fix_rewrite_is_seen_through(client_for: Callable[..., Client]) -> None:
    client = client_for("wsgi", HEADER_POLICY, [xfcc_auth()])
    outcome = client.send(
        "/admin/users",
        headers=[(XFCC, asserted(ADMIN)), ("x-forwarded-for", "127.0.0.1")],
        client=("127.0.0.1", 50000),
        environ={"werkzeug.proxy_fix.orig": {"REMOTE_ADDR": STRANGER[0]}},
    )
    record = check_refused(outcome, 401)
    assert record["notes"] == (UNTRUSTED_XFCC,)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_forwarded_certificate_and_linkerd_id_from_stranger_are_ignored(
    adapter: str, client_for: Callable[..., Client], pki: Pki
) -> None:
    nginx = ForwardedCertificateAuthenticator(
        "nginx", trusted_proxies=["127.0.0.1"], verifier=pki.verifier
    )
    linkerd = LinkerdIdentityAuthenticator(trusted_proxies=["127.0.0.1"], trust_domain=TD)
    client = client_for(adapter, HEADER_POLICY, [nginx, linkerd])
    headers = [
        *forwarded_cert_headers("nginx", pki.admin).items(),
        ("l5d-client-id", linkerd_client_id(ADMIN)),
    ]
    record = check_refused(client.send("/admin/users", headers=headers, client=STRANGER), 401)
    assert record["notes"] == (
        "ignored x-ssl-client-cert, x-ssl-client-verify from an untrusted peer",
        "ignored l5d-client-id from an untrusted peer",
    )


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_CVE_2023_27487_envoy_original_path_is_never_read(
    adapter: str, client_for: Callable[..., Client]
) -> None:
    client = client_for(adapter, PATH_POLICY, [xfcc_auth()])
    outcome = client.send("/admin", headers=[("x-envoy-original-path", "/public/x")])
    record = check_refused(outcome, 401)
    assert record["path"] == "/admin"


# --------------------------------------------------------------------------
# Bearer tokens: JWT-SVIDs and Kubernetes service-account tokens.
# --------------------------------------------------------------------------

AUDIENCE = "spiffe://cluster.local/ns/shop/sa/payments"
K8S_ISSUER = "https://kubernetes.default.svc.cluster.local"
K8S_AUDIENCE = "payments"


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter(kind="rsa")


@pytest.fixture(scope="module")
def k8s_minter() -> TokenMinter:
    return TokenMinter(issuer=K8S_ISSUER)


@pytest.fixture
def svid_auth(minter: TokenMinter) -> JwtSvidAuthenticator:
    return JwtSvidAuthenticator(keys=StaticJwks(minter.jwks()), audience=AUDIENCE)


@pytest.fixture
def k8s_auth(k8s_minter: TokenMinter) -> KubernetesTokenAuthenticator:
    return KubernetesTokenAuthenticator(
        keys=StaticJwks(k8s_minter.jwks(), issuer=K8S_ISSUER),
        issuers=K8S_ISSUER,
        audience=K8S_AUDIENCE,
        trust_domain=TD,
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None = None) -> str:
    """A token signed with HMAC-SHA256 under ``key``, or unsigned when ``key`` is None."""
    signed = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = b"" if key is None else hmac.new(key, signed.encode(), hashlib.sha256).digest()
    return signed + "." + b64url(signature)


def admin_claims(minter: TokenMinter, **changes: Any) -> dict[str, Any]:
    claims = minter.claims(ADMIN, AUDIENCE)
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def public_pem(minter: TokenMinter) -> bytes:
    return minter.key.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


TOKEN_CASES: list[Any] = [
    # CVE-2015-9235: "alg": "none".
    pytest.param(
        lambda m: forge({"alg": "none", "typ": "JWT", "kid": m.key.kid}, admin_claims(m)),
        "jwt-svid token: algorithm 'none' is not allowed",
        id="CVE-2015-9235-alg-none",
    ),
    pytest.param(
        lambda m: forge({"alg": "None", "kid": m.key.kid}, admin_claims(m)),
        "jwt-svid token: algorithm 'None' is not allowed",
        id="CVE-2015-9235-alg-None",
    ),
    # CVE-2022-29217 (pyjwt) / CVE-2016-10555: HMAC keyed with the public key.
    pytest.param(
        lambda m: forge(
            {"alg": "HS256", "typ": "JWT", "kid": m.key.kid}, admin_claims(m), public_pem(m)
        ),
        "jwt-svid token: algorithm 'HS256' is not allowed",
        id="CVE-2022-29217-hmac-with-public-key",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m), headers={"kid": "../../../../dev/null"}),
        "jwt-svid token: unknown kid '../../../../dev/null'",
        id="kid-path-traversal",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m), headers={"kid": "x' OR '1'='1"}),
        "jwt-svid token: unknown kid",
        id="kid-injection",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m), headers={"kid": None}),
        "jwt-svid token: no usable kid in the header",
        id="no-kid",
    ),
    # RFC 8725 section 3.10 / CVE-2018-0114: keys named or carried by the token.
    pytest.param(
        lambda m: m.token(admin_claims(m), headers={"jku": "https://evil.example/jwks.json"}),
        "jwt-svid token: refused header parameter(s) ['jku']",
        id="RFC8725-jku",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m), headers={"x5u": "https://evil.example/cert.pem"}),
        "jwt-svid token: refused header parameter(s) ['x5u']",
        id="RFC8725-x5u",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m), headers={"jwk": m.key.jwk()}),
        "jwt-svid token: refused header parameter(s) ['jwk']",
        id="CVE-2018-0114-embedded-jwk",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m), headers={"x5c": ["MIIB"]}),
        "jwt-svid token: refused header parameter(s) ['x5c']",
        id="RFC8725-x5c",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m), headers={"crit": ["exp"]}),
        "jwt-svid token: refused header parameter(s) ['crit']",
        id="RFC7515-crit",
    ),
    # RFC 8725 section 3.9 and JWT-SVID section 3: audience and expiry.
    pytest.param(
        lambda m: m.token(admin_claims(m, exp=int(time.time()) - 3600)),
        "jwt-svid token: expired",
        id="JWT-SVID-expired",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m, exp=None)),
        "jwt-svid token: missing claim 'exp'",
        id="JWT-SVID-no-exp",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m, aud="spiffe://cluster.local/ns/shop/sa/other")),
        "jwt-svid token: audience not accepted",
        id="RFC8725-wrong-audience",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m, aud=None)),
        "jwt-svid token: missing claim 'aud'",
        id="RFC8725-no-audience",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m, nbf=int(time.time()) + 3600)),
        "jwt-svid token: not valid before",
        id="not-yet-valid",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m, exp="9999999999")),
        "claim 'exp' is not a number",
        id="exp-as-string",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m, sub="spiffe://cluster.local")),
        "jwt-svid token: sub names a trust domain, not a workload",
        id="JWT-SVID-sub-trust-domain",
    ),
    pytest.param(
        lambda m: m.token(admin_claims(m, cnf={"jkt": "x"})),
        "unsupported confirmation method(s) in 'cnf': ['jkt']",
        id="RFC9449-dpop-binding-not-dropped",
    ),
    pytest.param(
        lambda m: (lambda t: t[: t.rindex(".") + 1] + b64url(b"\x00" * 256))(
            m.jwt_svid(ADMIN, AUDIENCE)
        ),
        "jwt-svid token: signature does not verify",
        id="bad-signature",
    ),
    pytest.param(
        lambda m: TokenMinter(keys=[type(m.key)("rsa", kid=m.key.kid)]).jwt_svid(ADMIN, AUDIENCE),
        "jwt-svid token: signature does not verify",
        id="same-kid-other-key",
    ),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("build", "reason"), TOKEN_CASES)
def test_forged_jwt_svids_are_refused(
    adapter: str,
    build: Callable[[TokenMinter], str],
    reason: str,
    minter: TokenMinter,
    svid_auth: JwtSvidAuthenticator,
    client_for: Callable[..., Client],
) -> None:
    client = client_for(adapter, HEADER_POLICY, [svid_auth])
    outcome = client.send("/admin/users", headers=[("authorization", f"Bearer {build(minter)}")])
    record = check_refused(outcome, 401)
    assert reason in record["reason"], record["reason"]
    assert outcome.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert record["principal"] is None


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_genuine_jwt_svid_is_accepted(
    adapter: str,
    minter: TokenMinter,
    svid_auth: JwtSvidAuthenticator,
    client_for: Callable[..., Client],
) -> None:
    # The control for the cases above: the same minter, the same policy.
    client = client_for(adapter, HEADER_POLICY, [svid_auth])
    outcome = client.send(
        "/admin/users", headers=[("authorization", f"Bearer {minter.jwt_svid(ADMIN, AUDIENCE)}")]
    )
    check_allowed(outcome, "admin-below", "/admin/users", rule="admin")
    assert outcome.peers == [ADMIN]


K8S_CASES = [
    pytest.param(
        lambda m: m.legacy_kubernetes_secret("ops", "admin"),
        "kubernetes token: missing claim 'exp'",
        id="KEP-2799-legacy-secret-token",
    ),
    pytest.param(
        lambda m: m.kubernetes("ops", "admin", "https://kubernetes.default.svc"),
        "kubernetes token: audience not accepted",
        id="KEP-1205-api-server-audience",
    ),
    pytest.param(
        lambda m: m.kubernetes("ops", "admin", K8S_AUDIENCE, lifetime=-3600),
        "kubernetes token: expired",
        id="KEP-1205-expired",
    ),
    pytest.param(
        lambda m: m.kubernetes(
            "shop", "reader", K8S_AUDIENCE, extra={"sub": "system:serviceaccount:ops:admin"}
        ),
        "kubernetes token: 'kubernetes.io' claim disagrees with sub",
        id="sub-and-claim-disagree",
    ),
    pytest.param(
        lambda m: m.kubernetes("ops", "admin", K8S_AUDIENCE, extra={"kubernetes.io": None}),
        "kubernetes token: no 'kubernetes.io' claim (a legacy token?)",
        id="no-kubernetes-claim",
    ),
    pytest.param(
        lambda m: m.kubernetes("ops", "admin:x", K8S_AUDIENCE),
        "kubernetes token: sub 'system:serviceaccount:ops:admin:x' is malformed",
        id="colon-in-service-account",
    ),
    pytest.param(
        lambda m: TokenMinter(issuer="https://evil.example", keys=m.keys).kubernetes(
            "ops", "admin", K8S_AUDIENCE
        ),
        "kubernetes token: issuer",
        id="other-issuer-same-key",
    ),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("build", "reason"), K8S_CASES)
def test_forged_kubernetes_tokens_are_refused(
    adapter: str,
    build: Callable[[TokenMinter], str],
    reason: str,
    k8s_minter: TokenMinter,
    k8s_auth: KubernetesTokenAuthenticator,
    client_for: Callable[..., Client],
) -> None:
    client = client_for(adapter, HEADER_POLICY, [k8s_auth])
    outcome = client.send(
        "/admin/users", headers=[("authorization", f"Bearer {build(k8s_minter)}")]
    )
    record = check_refused(outcome, 401)
    assert reason in record["reason"], record["reason"]
    assert outcome.headers["www-authenticate"] == 'Bearer error="invalid_token"'


# --------------------------------------------------------------------------
# Certificates: forwarded by nginx, and presented on the connection (mTLS).
# --------------------------------------------------------------------------


@dataclass
class Pki:
    ca: TestCA
    other: TestCA
    verifier: X509SvidVerifier
    shop: Svid
    admin: Svid
    rogue: Svid
    #: SHOP issued by the root itself (leaf-only presets verify it).
    reader: Svid
    bad: dict[str, Svid]


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca = TestCA.create(TD)
    intermediate = ca.intermediate()
    other = TestCA.create("other.example")
    rogue_ca = TestCA.create(TD, common_name="peer-middleware test root CA")
    now = datetime.now(timezone.utc)
    verifier = X509SvidVerifier(
        StaticX509Bundle({TD: [ca.certificate], "other.example": [other.certificate]})
    )
    bad = {
        # Consul CVE-2022-40716: a second URI SAN.
        "CVE-2022-40716-two-uri-sans": ca.issue_svid(SHOP, extra_uris=[ADMIN]),
        "X509-SVID-4.1-ca-leaf": ca.issue_svid(ADMIN, is_ca=True),
        "X509-SVID-4.3-key-cert-sign": ca.issue_svid(
            ADMIN,
            key_usage=x509.KeyUsage(True, False, False, False, False, True, False, False, False),
        ),
        # Python CVE-2013-4238: a NUL byte in a subjectAltName.
        "CVE-2013-4238-nul-in-uri-san": ca.issue_svid(ADMIN + "\x00.other.example"),
        "CVE-2013-4238-nul-in-dns-san": ca.issue_svid(ADMIN, dns_names=["admin\x00.evil"]),
        # Envoy CVE-2022-21656: a SPIFFE ID in the wrong SAN type.
        "CVE-2022-21656-id-in-dns-san": ca.issue_svid(None, dns_names=[ADMIN]),
        # Envoy CVE-2022-21657: a server-only certificate used as a client's.
        "CVE-2022-21657-server-auth-only": ca.issue_server_cert(spiffe_id=ADMIN),
        # X.509-SVID section 5: the bundle of the leaf's own trust domain.
        "X509-SVID-5-other-trust-domain-ca": other.issue_svid(ADMIN),
        "X509-SVID-5-other-trust-domain-intermediate": other.intermediate(
            trust_domain=TD
        ).issue_svid(ADMIN),
        "self-made-ca-same-name": rogue_ca.issue_svid(ADMIN),
        "expired": ca.issue_svid(
            ADMIN, not_before=now - timedelta(days=2), not_after=now - timedelta(days=1)
        ),
        "not-yet-valid": ca.issue_svid(
            ADMIN, not_before=now + timedelta(days=1), not_after=now + timedelta(days=2)
        ),
        "trust-domain-id": ca.issue_svid("spiffe://cluster.local"),
    }
    return Pki(
        ca=ca,
        other=other,
        verifier=verifier,
        shop=intermediate.issue_svid(SHOP),
        admin=ca.issue_svid(ADMIN),
        rogue=rogue_ca.issue_svid(ADMIN),
        reader=ca.issue_svid(SHOP),
        bad=bad,
    )


NOT_OURS = "certificate chain does not verify against the trust bundle of 'cluster.local'"
CERT_REASONS = {
    "CVE-2022-40716-two-uri-sans": "leaf certificate has 2 URI SANs; an X.509-SVID has exactly one",
    "X509-SVID-4.1-ca-leaf": "leaf certificate is a CA (basicConstraints CA=TRUE)",
    "X509-SVID-4.3-key-cert-sign": "leaf certificate has keyUsage keyCertSign",
    "CVE-2013-4238-nul-in-uri-san": "leaf certificate has a NUL byte in a subjectAltName",
    "CVE-2013-4238-nul-in-dns-san": "leaf certificate has a NUL byte in a subjectAltName",
    "CVE-2022-21656-id-in-dns-san": "leaf certificate has no URI SAN (no SPIFFE ID)",
    "CVE-2022-21657-server-auth-only": NOT_OURS,
    "X509-SVID-5-other-trust-domain-ca": NOT_OURS,
    "X509-SVID-5-other-trust-domain-intermediate": NOT_OURS,
    "self-made-ca-same-name": NOT_OURS,
    "expired": "leaf certificate expired at",
    "not-yet-valid": "leaf certificate is not valid before",
    "trust-domain-id": (
        "leaf certificate URI SAN spiffe://cluster.local names a trust domain, not a workload"
    ),
}
TRANSPORTS = ["nginx", "haproxy", "mtls"]


def cert_client(
    adapter: str, transport: str, pki: Pki, client_for: Callable[..., Client]
) -> Client:
    if transport == "mtls":
        auth: Any = MtlsAuthenticator(pki.verifier)
    else:
        auth = ForwardedCertificateAuthenticator(
            transport, trusted_proxies=["127.0.0.1"], verifier=pki.verifier
        )
    return client_for(adapter, HEADER_POLICY, [auth])


def send_cert(client: Client, transport: str, svid: Svid, target: str = "/admin/users") -> Outcome:
    if transport == "mtls":
        return client.send(target, tls=svid)
    return client.send(target, headers=list(forwarded_cert_headers(transport, svid).items()))


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("name", list(CERT_REASONS))
def test_bad_certificates_are_refused(
    adapter: str, transport: str, name: str, pki: Pki, client_for: Callable[..., Client]
) -> None:
    client = cert_client(adapter, transport, pki, client_for)
    record = check_refused(send_cert(client, transport, pki.bad[name]), 401)
    assert record["reason"].startswith(CERT_REASONS[name]), record["reason"]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_genuine_certificates_are_accepted(
    adapter: str, transport: str, pki: Pki, client_for: Callable[..., Client]
) -> None:
    client = cert_client(adapter, transport, pki, client_for)
    check_allowed(
        send_cert(client, transport, pki.admin), "admin-below", "/admin/users", rule="admin"
    )
    record = check_refused(send_cert(client, transport, pki.reader), 403)
    assert record["principal"] == SHOP


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_certificate_of_another_trust_domain_with_the_same_namespace(
    adapter: str, pki: Pki, client_for: Callable[..., Client]
) -> None:
    # Federated bundles: other.example's ns/shop is verified, and is not ours.
    auth = ForwardedCertificateAuthenticator(
        "nginx", trusted_proxies=["127.0.0.1"], verifier=pki.verifier
    )
    client = client_for(adapter, HEADER_POLICY, [auth])
    theirs = pki.other.issue_svid("spiffe://other.example/ns/shop/sa/reader")
    outcome = client.send(
        "/payments/1", headers=list(forwarded_cert_headers("nginx", theirs).items())
    )
    record = check_refused(outcome, 403)
    assert (record["principal"], record["proof"]) == (
        "spiffe://other.example/ns/shop/sa/reader",
        "forwarded-certificate",
    )
    ours = client.send(
        "/payments/1", headers=list(forwarded_cert_headers("nginx", pki.reader).items())
    )
    check_allowed(ours, "payment", "/payments/1", rule="shop")


def _nginx(pki: Pki, verify: str) -> list[Header]:
    return [
        ("x-ssl-client-cert", quote(pki.admin.cert_pem.decode(), safe="")),
        ("x-ssl-client-verify", verify),
    ]


def _haproxy(pki: Pki, **values: str) -> list[Header]:
    headers = forwarded_cert_headers("haproxy", pki.admin)
    headers.update({f"x-ssl-client-{k}": v for k, v in values.items()})
    return [(k, v) for k, v in headers.items() if v != "-"]


def _haproxy_add_header(pki: Pki) -> list[Header]:
    """``http-request add-header``: the client's copy first, the proxy's appended."""
    proxy = forwarded_cert_headers("haproxy", pki.admin)
    client_copy = forwarded_cert_headers("haproxy", pki.reader)["x-ssl-client-cert"]
    return [("x-ssl-client-cert", client_copy), *proxy.items()]


PROXY_STATUS_CASES = [
    # nginx "ssl_verify_client optional_no_ca" forwards what it did not verify.
    pytest.param(
        "nginx",
        lambda p: _nginx(p, "FAILED:unable to verify the first certificate"),
        "x-ssl-client-verify: 'FAILED:unable to verify the first certificate', not SUCCESS",
        id="nginx-optional-no-ca",
    ),
    pytest.param(
        "nginx",
        lambda p: _nginx(p, "NONE"),
        "x-ssl-client-cert: present, but x-ssl-client-verify says the client sent no certificate",
        id="nginx-location-dropped-proxy-set-header",
    ),
    pytest.param(
        "nginx",
        lambda p: _nginx(p, "-")[:1],
        "x-ssl-client-verify: missing; the proxy must send it with x-ssl-client-cert",
        id="nginx-client-copy-without-status",
    ),
    # HAProxy's ssl_c_verify is 0 also when no certificate was sent.
    pytest.param(
        "haproxy",
        lambda p: _haproxy(p, used="0"),
        "x-ssl-client-cert: present, but x-ssl-client-used says the client sent no certificate",
        id="haproxy-verify-0-without-certificate",
    ),
    pytest.param(
        "haproxy",
        lambda p: _haproxy(p, used="-"),
        "x-ssl-client-used: missing; the proxy must send it with x-ssl-client-cert",
        id="haproxy-no-used-header",
    ),
    pytest.param(
        "haproxy",
        lambda p: _haproxy(p, verify="21"),
        "x-ssl-client-verify: '21', not 0: the proxy did not verify the certificate",
        id="haproxy-verify-failed",
    ),
    pytest.param(
        "haproxy",
        _haproxy_add_header,
        "x-ssl-client-cert: base64 DER: not base64",
        id="haproxy-add-header-appends",
    ),
    # Caddy sends the header without a certificate: empty or "<nil>".
    pytest.param(
        "caddy", lambda p: [("x-client-cert", "<nil>")], None, id="caddy-nil-is-anonymous"
    ),
    pytest.param("caddy", lambda p: [("x-client-cert", "")], None, id="caddy-empty-is-anonymous"),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(("preset", "build", "reason"), PROXY_STATUS_CASES)
def test_proxy_status_headers_are_required(
    adapter: str,
    preset: str,
    build: Callable[[Pki], list[Header]],
    reason: str | None,
    pki: Pki,
    client_for: Callable[..., Client],
) -> None:
    auth = ForwardedCertificateAuthenticator(
        preset, trusted_proxies=["127.0.0.1"], verifier=pki.verifier
    )
    client = client_for(adapter, HEADER_POLICY, [auth])
    outcome = client.send("/admin/users", headers=build(pki))
    if reason is None:
        record = check_refused(outcome, 401)
        assert (record["reason"], record["principal"]) == (NO_IDENTITY, None)
        healthz = client.send("/healthz", headers=build(pki))
        check_allowed(healthz, "healthz", "/healthz", rule="healthz")
        return
    record = check_refused(outcome, 401)
    assert record["reason"].startswith(reason), record["reason"]


def test_leaf_only_presets_need_the_issuing_ca_in_the_bundle(
    pki: Pki, client_for: Callable[..., Client]
) -> None:
    # nginx forwards the leaf only: an SVID from an intermediate that is not in
    # the bundle does not verify; with the intermediate in the bundle it does.
    auth = ForwardedCertificateAuthenticator(
        "nginx", trusted_proxies=["127.0.0.1"], verifier=pki.verifier
    )
    client = client_for("asgi", HEADER_POLICY, [auth])
    headers = list(forwarded_cert_headers("nginx", pki.shop).items())
    record = check_refused(client.send("/payments/1", headers=headers), 401)
    assert record["reason"].startswith("certificate chain does not verify against the trust bundle")
    with_intermediate = X509SvidVerifier(
        StaticX509Bundle({TD: [pki.ca.certificate, *pki.shop.chain]})
    )
    auth = ForwardedCertificateAuthenticator(
        "nginx", trusted_proxies=["127.0.0.1"], verifier=with_intermediate
    )
    client = client_for("asgi", HEADER_POLICY, [auth])
    check_allowed(
        client.send("/payments/1", headers=headers), "payment", "/payments/1", rule="shop"
    )
