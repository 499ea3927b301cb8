#!/usr/bin/env python
"""peer_middleware benchmark suite: one table, every figure a ratio measured in the same run.

Run from the repository root::

    python benchmarks/bench.py [--quick] [--output benchmarks/RESULTS.md]

Sections (see ``benchmarks/README.md`` for the method):

1. in-process cost per request over bare Starlette, FastAPI and Flask apps, for
   a repeat caller identified by XFCC, by a forwarded certificate verified in
   the app, by direct mTLS and by a bearer token, with 10, 1,000 and 10,000 rules;
2. the alternatives doing the same work on the same app: Starlette's
   ``AuthenticationMiddleware`` with a minimal XFCC backend, and the
   ``fastapi-client-cert-auth`` dependency;
3. the cold path (first sight of a certificate or a token) against the raw cost
   of ``cryptography``'s chain verification and pyjwt's ``decode``;
4. a real server: uvicorn on 127.0.0.1 driven by ``wrk``, with and without the
   middleware;
5. resident memory after 100,000 distinct callers, against the cache bounds;
6. Flask, Quart and Litestar as their README sections protect a route (bare,
   a central rule, a rule declared on the route, and reading the peer);
7. gRPC (``grpc_bench.py``): the interceptor's cost per unary call in process
   and end to end on loopback, grpc.server and grpc.aio.server, over a bare
   servicer (``--skip grpc``; one row saying so without grpcio).
8. FastAPI as the README's FastAPI section protects it (``fastapi_bench.py``):
   bare, a trivial async dependency, the middleware alone, a central rule,
   ``require()`` on the route, and ``CurrentPeer``, in process.
9. Django (``django_bench.py``): the bare view against the README's usage
   (a central rule, a rule declared on the view, the view reading
   ``request.peer``) through Django's WSGI and ASGI handlers in process
   (``--skip django``; one row saying so without Django).

The script reports; it never fails on a missed target (exit status 0). It
fails (exit status 1) only when a sanity check does: a request not answered
``200 ok``, or decided by another rule than the one expected.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import io
import itertools
import json
import logging
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any
from urllib.parse import unquote

# Let ``python benchmarks/bench.py`` work from a checkout without installing.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import jwt  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from cryptography.x509.verification import PolicyBuilder, Store  # noqa: E402
from fastapi import Depends, FastAPI  # noqa: E402
from flask import Flask  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.authentication import (  # noqa: E402
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.middleware.authentication import AuthenticationMiddleware  # noqa: E402
from starlette.requests import HTTPConnection, Request  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

import peer_middleware  # noqa: E402
from peer_middleware import (  # noqa: E402
    Anyone,
    JwtSvidAuthenticator,
    Namespace,
    PeerMiddleware,
    PeerWSGIMiddleware,
    Policy,
    Principal,
    Rule,
    TrustDomain,
    XfccAuthenticator,
    allow,
    deny,
)
from peer_middleware.asgi import DECISION_SCOPE_KEY  # noqa: E402
from peer_middleware.authenticators import (  # noqa: E402
    ForwardedCertificateAuthenticator,
    MtlsAuthenticator,
)
from peer_middleware.bundles import StaticX509Bundle  # noqa: E402
from peer_middleware.keys import StaticJwks  # noqa: E402
from peer_middleware.testing import (  # noqa: E402
    TestCA,
    TokenMinter,
    asgi_tls_extensions,
    forwarded_cert_headers,
    wsgi_tls_environ,
    xfcc_header,
)
from peer_middleware.wsgi import DECISION_ENVIRON_KEY  # noqa: E402
from peer_middleware.x509 import (  # noqa: E402
    X509SvidVerifier,
    svid_extension_policies,
)

try:  # the second alternative; its rows say so when it is missing
    from fastapi_client_cert_auth import (
        Certificate as ClientCertRecord,
    )
    from fastapi_client_cert_auth import (
        get_certificate_from_header_dependency,
        get_mtls_dependency,
    )
except ImportError:  # pragma: no cover - depends on the environment
    get_mtls_dependency = None

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

# --------------------------------------------------------------------------
# The request: a repeat caller on 127.0.0.1 (a sidecar or proxy), GET /payments/{id}.
# --------------------------------------------------------------------------

RULE_COUNTS = (10, 1_000, 10_000)
DECIDING_RULE = "read-payment"
PATH = "/payments/p-4242"
TRUST_DOMAIN = "cluster.local"
CALLER = "spiffe://cluster.local/ns/shop/sa/checkout"
APP_ID = "spiffe://cluster.local/ns/shop/sa/payments"
AUDIENCE = APP_ID
TRUSTED_PROXIES = ["127.0.0.1", "::1"]

# Targets.
TARGET_ADDED_US = 2.0  # repeat caller, 1,000 rules
TARGET_ADDED_AT = 1_000
TARGET_SCALING = 1.3  # added(10,000) / added(10)
TARGET_COLD = 1.2  # cold added cost / raw library cost
TARGET_SERVER = 0.97  # requests/s wrapped / bare
TIMES = "\N{MULTIPLICATION SIGN}"

# Headers a sidecar typically forwards; each caller kind adds its credential.
BASE_HEADERS: tuple[tuple[str, str], ...] = (
    ("host", "payments.shop.svc.cluster.local:8080"),
    ("user-agent", "checkout/2.3.1"),
    ("accept", "application/json"),
    ("x-forwarded-proto", "https"),
    ("x-request-id", "5b0e9f3c-3f1e-4a8e-9a51-4c3e2f0b9d17"),
    ("x-envoy-attempt-count", "1"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("x-b3-spanid", "e457b5a2e4d86bd1"),
    ("x-b3-sampled", "0"),
)

#: Caller kinds: how the repeat caller proves who it is.
CALLERS = ("xfcc", "forwarded", "mtls", "token")
CALLER_LABELS = {
    "xfcc": "XFCC (sidecar-asserted)",
    "forwarded": "forwarded cert, verified in-app (nginx headers)",
    "mtls": "direct mTLS (ASGI TLS extension / SSL_CLIENT_CERT)",
    "token": "bearer JWT-SVID (ES256)",
}


# --------------------------------------------------------------------------
# Credentials: a throw-away CA and token key, made when the bench starts.
# --------------------------------------------------------------------------


class Pki:
    """The CA, the repeat caller's SVID and token, and the verification material."""

    def __init__(self) -> None:
        self.ca = TestCA.create(TRUST_DOMAIN)
        # A CN as well, so fastapi-client-cert-auth (which requires one) accepts it.
        self.caller = self.issue(CALLER)
        self.bundle = StaticX509Bundle({TRUST_DOMAIN: [self.ca.certificate]})
        self.store = Store([self.ca.certificate])
        self.minter = TokenMinter(kind="ec")
        self.jwks = self.minter.jwks()
        self.token = self.minter.jwt_svid(CALLER, AUDIENCE, lifetime=6 * 3600)
        self.xfcc = xfcc_header(CALLER, by=APP_ID)

    def issue(self, spiffe_id: str) -> Any:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE"),
                x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.rsplit("/", 1)[-1]),
            ]
        )
        return self.ca.issue_svid(spiffe_id, subject=subject)

    def verifier(self) -> X509SvidVerifier:
        return X509SvidVerifier(self.bundle)

    def authenticator(self, caller: str) -> Any:
        """A fresh authenticator (so no case warms another's caches)."""
        if caller == "xfcc":
            return XfccAuthenticator(trusted_proxies=TRUSTED_PROXIES)
        if caller == "forwarded":
            return ForwardedCertificateAuthenticator(
                "nginx", trusted_proxies=TRUSTED_PROXIES, verifier=self.verifier()
            )
        if caller == "mtls":
            return MtlsAuthenticator(self.verifier())
        return JwtSvidAuthenticator(keys=StaticJwks(self.jwks), audience=AUDIENCE)

    def headers(self, caller: str, svid: Any = None, token: str | None = None) -> dict[str, str]:
        """The credential headers of ``caller`` (``svid`` / ``token`` for another identity)."""
        if caller == "xfcc":
            return {"x-forwarded-client-cert": self.xfcc}
        if caller == "forwarded":
            return forwarded_cert_headers("nginx", svid or self.caller)
        if caller == "token":
            return {"authorization": f"Bearer {token or self.token}"}
        return {}


PKI: Pki | None = None


def pki() -> Pki:
    global PKI
    if PKI is None:
        PKI = Pki()
    return PKI


def asgi_scope(
    path: str = PATH, extra: dict[str, str] | None = None, svid: Any = None
) -> dict[str, Any]:
    headers = [*BASE_HEADERS, *(extra or {}).items()]
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("ascii"),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    if svid is not None:
        scope["scheme"] = "https"
        scope["extensions"] = asgi_tls_extensions(svid)
    return scope


def wsgi_environ(
    path: str = PATH, extra: dict[str, str] | None = None, svid: Any = None
) -> Environ:
    environ: Environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "REQUEST_URI": path,
        "RAW_URI": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in [*BASE_HEADERS, *(extra or {}).items()]:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    if svid is not None:
        environ["wsgi.url_scheme"] = "https"
        environ.update(wsgi_tls_environ(svid))
    return environ


def caller_scope(caller: str, path: str = PATH) -> dict[str, Any]:
    p = pki()
    return asgi_scope(path, p.headers(caller), p.caller if caller == "mtls" else None)


def caller_environ(caller: str, path: str = PATH) -> Environ:
    p = pki()
    return wsgi_environ(path, p.headers(caller), p.caller if caller == "mtls" else None)


# --------------------------------------------------------------------------
# Policies.
# --------------------------------------------------------------------------


def core_rules() -> list[Rule]:
    """Rules every policy size has; ``read-payment`` decides every benchmarked request."""
    return [
        allow(
            "healthz",
            Namespace("istio-system", trust_domain="cluster.local")
            | Principal("spiffe://cluster.local/ns/monitoring/sa/prometheus"),
            methods=["GET"],
            paths=["/healthz", "/metrics"],
        ),
        deny(
            "no-legacy-export",
            Principal("spiffe://cluster.local/ns/shop/sa/legacy-export"),
            paths=["/payments/**"],
        ),
        allow(
            "create-payment",
            Principal("spiffe://cluster.local/ns/shop/sa/checkout"),
            methods=["POST"],
            paths=["/payments"],
        ),
        allow(
            DECIDING_RULE,
            Namespace("shop", trust_domain="cluster.local"),
            methods=["GET"],
            paths=["/payments/{payment_id}"],
        ),
    ]


def filler_rule(i: int) -> Rule:
    """A distinct rule over paths no benchmarked request takes (five shapes in turn)."""
    svc = f"svc{i}"
    team = f"team{i % 97}"
    kind = i % 5
    if kind == 0:
        return allow(
            f"{svc}-read-item",
            Principal(f"spiffe://cluster.local/ns/{team}/sa/client{i}"),
            methods=["GET"],
            paths=[f"/{svc}/items/{{item_id}}"],
        )
    if kind == 1:
        return allow(
            f"{svc}-create-item",
            Namespace(team, trust_domain="cluster.local"),
            methods=["POST"],
            paths=[f"/{svc}/items"],
        )
    if kind == 2:
        # A prefix glob cannot be indexed: evaluated one by one where its path matches.
        return deny(
            f"{svc}-no-admin",
            Principal(f"spiffe://cluster.local/ns/{team}/*"),
            paths=[f"/{svc}/admin/**"],
        )
    if kind == 3:
        version = f"v{i % 3 + 1}"
        return allow(
            f"{svc}-orders",
            Principal(f"cluster.local/ns/{team}/sa/worker{i}")
            | Namespace("ops", trust_domain="cluster.local"),
            methods=["GET", "PUT"],
            paths=[
                f"/api/{version}/{svc}/<int:order_id>",
                f"/api/{version}/{svc}/<int:order_id>/lines/*",
            ],
        )
    return allow(
        f"{svc}-reports",
        TrustDomain(f"partner{i % 7}.example"),
        methods=["GET"],
        paths=[f"/{svc}/reports/{{report:path}}"],
    )


def build_policy(count: int) -> Policy:
    core = core_rules()
    fillers = [filler_rule(i) for i in range(count - len(core))]
    # The deciding rules come last: what a linear scan would find latest.
    return Policy([*fillers, *core])


_POLICIES: dict[int, Policy] = {}


def policy(count: int) -> Policy:
    """The policy of ``count`` rules (compiled once, shared by the cases of that size)."""
    if count not in _POLICIES:
        _POLICIES[count] = build_policy(count)
    return _POLICIES[count]


# --------------------------------------------------------------------------
# Apps.
# --------------------------------------------------------------------------


async def payment(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app() -> ASGIApp:
    return Starlette(routes=[Route("/payments/{payment_id}", payment, methods=["GET"])])


def fastapi_app(dependencies: list[Any] | None = None) -> ASGIApp:
    app = FastAPI()

    @app.get("/payments/{payment_id}", dependencies=dependencies)
    async def get_payment(payment_id: str) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return app


def flask_app() -> WSGIApp:
    app = Flask("bench")

    @app.get("/payments/<payment_id>")
    def get_payment(payment_id: str) -> str:
        return "ok"

    return app


def noop_wsgi_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The smallest WSGI app: shows the middleware's own cost, without Flask around it."""
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


def after_flask(flask: WSGIApp, app: WSGIApp) -> WSGIApp:
    """Serve a bare Flask request, then hand the same request to ``app``.

    With ``app`` the no-op app, bare or wrapped, the difference is the
    middleware's own work, measured with Flask's code and data passing
    through the CPU caches between two of its calls, as in a real server.
    """

    def serve(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        body = flask(dict(environ), _start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
        return app(environ, start_response)

    return serve


class XfccHeaderBackend(AuthenticationBackend):
    """Alternative 1: read the XFCC header's URI; no proxy check, no parsing, no policy."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        value = conn.headers.get("x-forwarded-client-cert")
        if value is None:
            return None
        uri = value.rpartition("URI=")[2].partition(";")[0]
        return AuthCredentials(["authenticated"]), SimpleUser(uri)


def client_cert_auth_app() -> ASGIApp | None:
    """Alternative 2: FastAPI with ``fastapi-client-cert-auth`` on the route, reading
    the same nginx headers (``x-ssl-client-cert``, ``x-ssl-client-verify``)."""
    if get_mtls_dependency is None:
        return None
    certificate = get_certificate_from_header_dependency(
        "x-ssl-client-cert", require_verify_header=True, verify_header_name="x-ssl-client-verify"
    )

    async def known_client(cert: Any = Depends(certificate)) -> Any:  # noqa: B008
        common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return ClientCertRecord(cn=common_name)

    # dev_mode: the client address is the connection's (the proxy's), as for peer_middleware.
    return fastapi_app([Depends(get_mtls_dependency(known_client, dev_mode=True))])


def wrap_asgi(app: ASGIApp, caller: str, rules: int) -> ASGIApp:
    return PeerMiddleware(app, policy=policy(rules), authenticators=[pki().authenticator(caller)])


def wrap_wsgi(app: WSGIApp, caller: str, rules: int) -> WSGIApp:
    return PeerWSGIMiddleware(
        app, policy=policy(rules), authenticators=[pki().authenticator(caller)]
    )


# --------------------------------------------------------------------------
# Drivers.
# --------------------------------------------------------------------------


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
    return _write


def _write(data: bytes) -> None:
    return None


async def run_asgi(app: ASGIApp, scopes: list[Scope]) -> int:
    """Nanoseconds for one request per scope, in sequence, all in this one coroutine."""
    receive, send, copy = _receive, _send, dict
    start = time.perf_counter_ns()
    for scope in scopes:
        await app(copy(scope), receive, send)
    return time.perf_counter_ns() - start


def run_wsgi(app: WSGIApp, environs: list[Environ]) -> int:
    """Nanoseconds for one request per environ, consuming and closing each body."""
    start_response, copy = _start_response, dict
    start = time.perf_counter_ns()
    for environ in environs:
        body = app(copy(environ), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return time.perf_counter_ns() - start


_payment_ids = itertools.count(1)


def fresh_paths(n: int) -> list[str]:
    """``n`` payment ids never used before in this run."""
    return [f"/payments/pay_{next(_payment_ids):09d}" for _ in range(n)]


class SanityError(Exception):
    """A benchmarked request was not answered as it must be."""


async def check_asgi(app: ASGIApp, scope: Scope, expect_rule: str | None) -> None:
    """One request; fail loudly unless it reached the route and the right rule decided."""
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    scope = dict(scope)
    await app(scope, _receive, send)
    status = messages[0].get("status") if messages else None
    body = b"".join(m.get("body", b"") for m in messages[1:])
    if status != 200 or body != b"ok":
        raise SanityError(f"status {status}, body {body[:200]!r}")
    if expect_rule is not None:
        decision = scope.get(DECISION_SCOPE_KEY)
        if decision is None or decision.rule != expect_rule:
            raise SanityError(f"decided by {decision!r}")


def check_wsgi(app: WSGIApp, environ: Environ, expect_rule: str | None) -> None:
    """As :func:`check_asgi`, for a WSGI app."""
    seen: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., None]:
        seen.append(status)
        return _write

    environ = dict(environ)
    body = app(environ, start_response)
    data = b"".join(body)
    close = getattr(body, "close", None)
    if close is not None:
        close()
    if seen != ["200 OK"] or data != b"ok":
        raise SanityError(f"status {seen}, body {data[:200]!r}")
    if expect_rule is not None:
        decision = environ.get(DECISION_ENVIRON_KEY)
        if decision is None or decision.rule != expect_rule:
            raise SanityError(f"decided by {decision!r}")


# --------------------------------------------------------------------------
# Sections 1 and 2: repeat callers in process, and the alternatives.
# --------------------------------------------------------------------------


@dataclass
class Case:
    kind: str  # "asgi" or "wsgi"
    framework: str
    caller: str
    middleware: str  # "bare", "peer_middleware" or an alternative's name
    rules: int | None
    fresh: bool  # a payment id never seen before on every request
    app: Any
    expect: str | None  # the rule that must decide (None: not peer_middleware)
    times_ns: list[int] = field(default_factory=list)

    def requests(self, n: int) -> list[Any]:
        build = caller_scope if self.kind == "asgi" else caller_environ
        if not self.fresh:
            return [build(self.caller)] * n
        return [build(self.caller, path) for path in fresh_paths(n)]

    def best_us(self, n: int) -> float:
        return min(self.times_ns) / n / 1000.0


def build_cases() -> list[Case]:
    """Every in-process case; each wrapper gets its own authenticator (cold caches)."""
    cases: list[Case] = []
    asgi_frameworks: list[tuple[str, ASGIApp]] = [
        ("Starlette", starlette_app()),
        ("FastAPI", fastapi_app()),
    ]
    for name, app in asgi_frameworks:
        for caller in CALLERS:
            cases.append(Case("asgi", name, caller, "bare", None, False, app, None))
            for count in RULE_COUNTS:
                wrapped = wrap_asgi(app, caller, count)
                cases.append(
                    Case(
                        "asgi",
                        name,
                        caller,
                        "peer_middleware",
                        count,
                        False,
                        wrapped,
                        DECIDING_RULE,
                    )
                )
    flask = flask_app()
    for caller in CALLERS:
        cases.append(Case("wsgi", "Flask", caller, "bare", None, False, flask, None))
        for count in RULE_COUNTS:
            wrapped = wrap_wsgi(flask, caller, count)
            cases.append(
                Case(
                    "wsgi", "Flask", caller, "peer_middleware", count, False, wrapped, DECIDING_RULE
                )
            )
    # The middleware's own cost, without Flask's request handling around it.
    noop = "no-op WSGI app"
    cases.append(Case("wsgi", noop, "xfcc", "bare", None, False, noop_wsgi_app, None))
    cases.append(
        Case(
            "wsgi",
            noop,
            "xfcc",
            "peer_middleware",
            TARGET_ADDED_AT,
            False,
            wrap_wsgi(noop_wsgi_app, "xfcc", TARGET_ADDED_AT),
            DECIDING_RULE,
        )
    )
    # The same, each call after a bare Flask request (the caches Flask leaves).
    interleaved = "no-op WSGI app after a bare Flask request"
    cases.append(
        Case(
            "wsgi",
            interleaved,
            "xfcc",
            "bare",
            None,
            False,
            after_flask(flask, noop_wsgi_app),
            None,
        )
    )
    cases.append(
        Case(
            "wsgi",
            interleaved,
            "xfcc",
            "peer_middleware",
            TARGET_ADDED_AT,
            False,
            after_flask(flask, wrap_wsgi(noop_wsgi_app, "xfcc", TARGET_ADDED_AT)),
            DECIDING_RULE,
        )
    )
    # A new payment id on every request: per-path caches miss (no target).
    starlette = asgi_frameworks[0][1]
    cases.append(Case("asgi", "Starlette", "xfcc", "bare", None, True, starlette, None))
    cases.append(
        Case(
            "asgi",
            "Starlette",
            "xfcc",
            "peer_middleware",
            TARGET_ADDED_AT,
            True,
            wrap_asgi(starlette, "xfcc", TARGET_ADDED_AT),
            DECIDING_RULE,
        )
    )
    cases.append(Case("wsgi", "Flask", "xfcc", "bare", None, True, flask, None))
    cases.append(
        Case(
            "wsgi",
            "Flask",
            "xfcc",
            "peer_middleware",
            TARGET_ADDED_AT,
            True,
            wrap_wsgi(flask, "xfcc", TARGET_ADDED_AT),
            DECIDING_RULE,
        )
    )
    # The same repeat caller with Prometheus metrics on (an observer of the guard).
    cases.append(
        Case(
            "asgi",
            "Starlette",
            "xfcc",
            "peer_middleware+metrics",
            TARGET_ADDED_AT,
            False,
            with_metrics(starlette, "xfcc", TARGET_ADDED_AT),
            DECIDING_RULE,
        )
    )
    # The same repeat caller under a policy with request conditions.
    cases.append(
        Case(
            "asgi",
            "Starlette",
            "xfcc",
            "peer_middleware+conditions",
            TARGET_ADDED_AT,
            False,
            with_conditions(starlette, "xfcc", TARGET_ADDED_AT),
            DECIDING_RULE,
        )
    )
    # The alternatives, on the same apps, for the same repeat caller.
    reference = AuthenticationMiddleware(starlette, backend=XfccHeaderBackend())
    cases.append(
        Case("asgi", "Starlette", "xfcc", "AuthenticationMiddleware", None, False, reference, None)
    )
    alternative = client_cert_auth_app()
    if alternative is not None:
        cases.append(
            Case(
                "asgi",
                "FastAPI",
                "forwarded",
                "fastapi-client-cert-auth",
                None,
                False,
                alternative,
                None,
            )
        )
    return cases


@contextmanager
def gc_paused(pause: bool) -> Iterator[None]:
    """Collect first; keep the collector off for the timed block when ``pause``."""
    gc.collect()
    if not pause:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def measure_asgi(cases: list[Case], n: int, reps: int, no_gc: bool) -> None:
    warm_up = max(n // 5, 200)
    for case in cases:
        try:
            await check_asgi(case.app, case.requests(1)[0], case.expect)
        except SanityError as error:
            raise SystemExit(f"sanity check failed: {describe(case)}: {error}") from None
        await run_asgi(case.app, case.requests(warm_up))
    for _ in range(reps):
        for case in cases:  # round-robin, so drift hits every case alike
            scopes = case.requests(n)
            with gc_paused(no_gc):
                case.times_ns.append(await run_asgi(case.app, scopes))


def measure_wsgi(cases: list[Case], n: int, reps: int, no_gc: bool) -> None:
    warm_up = max(n // 5, 200)
    for case in cases:
        try:
            check_wsgi(case.app, case.requests(1)[0], case.expect)
        except SanityError as error:
            raise SystemExit(f"sanity check failed: {describe(case)}: {error}") from None
        run_wsgi(case.app, case.requests(warm_up))
    for _ in range(reps):
        for case in cases:
            environs = case.requests(n)
            with gc_paused(no_gc):
                case.times_ns.append(run_wsgi(case.app, environs))


def describe(case: Case) -> str:
    rules = f", {case.rules:,} rules" if case.rules is not None else ""
    return f"{case.framework} / {case.middleware} / {case.caller}{rules}"


# --------------------------------------------------------------------------
# Section 3: the cold path (first sight of a certificate or a token).
# --------------------------------------------------------------------------

# Larger than every cache that could serve a second sight (the verifier's
# 1,024 chains, the token cache's 4,096, the guard's 2 x 1,024 identities):
# cycling through the pool in order, every request is a first sight.
CERT_POOL = 2_200
TOKEN_POOL = 4_200


@dataclass
class ColdCase:
    caller: str
    check: Scope  # the sanity check's request, on a credential of its own
    scopes: list[Scope]
    raw_items: list[Any]
    raw: Callable[[Any], Any]
    raw_label: str
    wrapped: ASGIApp
    bare: ASGIApp
    verifications: Callable[[], int]  # first-sight verifications so far
    times: dict[str, list[int]] = field(default_factory=dict)

    def best_us(self, what: str) -> float:
        return min(self.times[what]) / len(self.scopes) / 1000.0


def _raw_chain_verify(pems: list[str], store: Store) -> Any:
    """cryptography alone: load the PEM chain and verify it (the SVID extension policies)."""
    certs = [x509.load_pem_x509_certificate(pem.encode("ascii")) for pem in pems]
    ca_policy, ee_policy = svid_extension_policies()
    verifier = (
        PolicyBuilder()
        .store(store)
        .time(datetime.now(timezone.utc))
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    return verifier.verify(certs[0], certs[1:])


class CountingVerifier(X509SvidVerifier):
    """Counts full verifications, so the bench can prove every timed request was one."""

    __slots__ = ("verifications",)

    def __init__(self, bundles: StaticX509Bundle) -> None:
        super().__init__(bundles)
        self.verifications = 0

    def _verify(self, chain: tuple[bytes | str, ...], count: int, generation: int) -> Any:
        self.verifications += 1
        return super()._verify(chain, count, generation)


class CountingJwtSvidAuthenticator(JwtSvidAuthenticator):
    """Counts full token verifications (see :class:`CountingVerifier`).

    Counting changes nothing ``authenticate`` depends on, so it declares
    ``memoizable`` again, as a subclass must.
    """

    memoizable = True
    verifications = 0

    def _verify(self, token: str, signed: str, now: float) -> Any:
        self.verifications += 1
        return super()._verify(token, signed, now)


def build_cold_cases(cert_pool: int, token_pool: int) -> list[ColdCase]:
    p = pki()
    # One more than the pool: the last is the sanity check's, never timed (a
    # request seen twice would rightly be served from the guard's memory).
    svids = [p.issue(f"spiffe://cluster.local/ns/shop/sa/caller-{i}") for i in range(cert_pool + 1)]
    check_svid = svids.pop()
    store = p.store
    starlette = starlette_app()
    cases: list[ColdCase] = []

    def wrap(authenticator: Any) -> ASGIApp:
        return PeerMiddleware(
            starlette, policy=policy(TARGET_ADDED_AT), authenticators=[authenticator]
        )

    chains = [asgi_tls_extensions(s)["tls"]["client_cert_chain"] for s in svids]
    mtls_verifier = CountingVerifier(p.bundle)
    cases.append(
        ColdCase(
            "mtls",
            asgi_scope(PATH, None, check_svid),
            [asgi_scope(PATH, None, s) for s in svids],
            chains,
            lambda pems: _raw_chain_verify(pems, store),
            "load_pem_x509_certificate + PolicyBuilder…verify",
            wrap(MtlsAuthenticator(mtls_verifier)),
            starlette,
            lambda: mtls_verifier.verifications,
        )
    )
    forwarded = [forwarded_cert_headers("nginx", s) for s in svids]
    forwarded_verifier = CountingVerifier(p.bundle)
    cases.append(
        ColdCase(
            "forwarded",
            asgi_scope(PATH, forwarded_cert_headers("nginx", check_svid)),
            [asgi_scope(PATH, headers) for headers in forwarded],
            [h["x-ssl-client-cert"] for h in forwarded],
            lambda value: _raw_chain_verify([unquote(value)], store),
            "unquote + load_pem_x509_certificate + PolicyBuilder…verify",
            wrap(
                ForwardedCertificateAuthenticator(
                    "nginx", trusted_proxies=TRUSTED_PROXIES, verifier=forwarded_verifier
                )
            ),
            starlette,
            lambda: forwarded_verifier.verifications,
        )
    )
    public_key = p.minter.key.public_key
    token_authenticator = CountingJwtSvidAuthenticator(keys=StaticJwks(p.jwks), audience=AUDIENCE)
    tokens = [
        p.minter.jwt_svid(f"spiffe://cluster.local/ns/shop/sa/caller-{i}", AUDIENCE, lifetime=21600)
        for i in range(token_pool + 1)
    ]
    check_token = tokens.pop()
    cases.append(
        ColdCase(
            "token",
            asgi_scope(PATH, p.headers("token", token=check_token)),
            [asgi_scope(PATH, p.headers("token", token=t)) for t in tokens],
            tokens,
            lambda token: jwt.decode(
                token,
                public_key,
                algorithms=["ES256"],
                audience=AUDIENCE,
                options={"require": ["exp", "aud", "sub"]},
            ),
            "jwt.decode (ES256, audience, required claims)",
            wrap(token_authenticator),
            starlette,
            lambda: token_authenticator.verifications,
        )
    )
    return cases


async def measure_cold(cases: list[ColdCase], reps: int) -> None:
    for case in cases:
        try:
            await check_asgi(case.wrapped, case.check, DECIDING_RULE)
        except SanityError as error:
            raise SystemExit(f"sanity check failed: cold {case.caller}: {error}") from None
        # Warm-up pass: fills (and overflows) every cache, so no timed request hits.
        await run_asgi(case.wrapped, case.scopes)
        for item in case.raw_items[:50]:
            case.raw(item)
    before = [case.verifications() for case in cases]
    for _ in range(reps):
        for case in cases:
            for what in ("bare", "wrapped", "raw"):
                with gc_paused(False):
                    if what == "raw":
                        raw, items = case.raw, case.raw_items
                        start = time.perf_counter_ns()
                        for item in items:
                            raw(item)
                        elapsed = time.perf_counter_ns() - start
                    else:
                        app = case.bare if what == "bare" else case.wrapped
                        elapsed = await run_asgi(app, case.scopes)
                case.times.setdefault(what, []).append(elapsed)
    for case, start in zip(cases, before, strict=True):
        done, expected = case.verifications() - start, reps * len(case.scopes)
        if done != expected:
            raise SystemExit(
                f"sanity check failed: cold {case.caller}: {done} full verifications for "
                f"{expected} timed requests (a cache served some)"
            )


# --------------------------------------------------------------------------
# Section 4: a real server (uvicorn on 127.0.0.1, driven by wrk).
# --------------------------------------------------------------------------

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def server_bare() -> ASGIApp:
    """uvicorn factory: the bare Starlette app."""
    logging.getLogger("peer_middleware").setLevel(logging.WARNING)
    return starlette_app()


def server_wrapped() -> ASGIApp:
    """uvicorn factory: the Starlette app behind peer_middleware (XFCC, 1,000 rules)."""
    logging.getLogger("peer_middleware").setLevel(logging.WARNING)
    return wrap_asgi(starlette_app(), "xfcc", TARGET_ADDED_AT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_headers() -> dict[str, str]:
    return {**dict(BASE_HEADERS[1:]), "x-forwarded-client-cert": pki().xfcc}


def _wait_ok(url: str, deadline: float) -> None:
    request = urllib.request.Request(url, headers=_server_headers())
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                body = response.read()
                if response.status != 200 or body != b"ok":
                    raise SanityError(f"{url}: status {response.status}, body {body[:200]!r}")
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SanityError(f"{url}: the server did not answer") from None
            time.sleep(0.1)


@dataclass
class ServerResult:
    rps: dict[str, float] = field(default_factory=dict)  # the median of the runs
    note: str = ""
    command: str = ""


def _wrk_run(url: str, duration: float, connections: int) -> tuple[float, int]:
    """Requests/s and requests completed of one ``wrk`` run with the sidecar's headers."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s"]
    for name, value in _server_headers().items():
        command += ["-H", f"{name}: {value}"]
    command.append(url)
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=duration + 30
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SanityError(f"wrk reported errors:\n{out}")
    rate = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    count = re.search(r"([0-9]+) requests in", out)
    if rate is None or count is None:
        raise SanityError(f"no Requests/sec in wrk's output:\n{out}")
    return float(rate.group(1)), int(count.group(1))


def _wrk(url: str, duration: float, connections: int) -> float:
    return _wrk_run(url, duration, connections)[0]


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a gunicorn master's worker), from /proc."""
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as children:
                for child in children.read().split():
                    found += _process_tree(int(child))
    except OSError:
        pass
    return found


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants so far (0 without /proc)."""
    ticks = 0
    for each in _process_tree(pid):
        try:
            with open(f"/proc/{each}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / _TICKS


@dataclass
class Served:
    """What ``wrk`` measured of one server at one concurrency level, run by run."""

    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU per request

    @property
    def median_rps(self) -> float:
        return statistics.median(self.rps)

    @property
    def median_cpu_us(self) -> float:
        return statistics.median(self.cpu_us)


def uvicorn_command(target: str, port: int) -> list[str]:
    """uvicorn serving the factory ``target`` (``module:function``, in this folder)."""
    return [
        sys.executable, "-m", "uvicorn", target, "--factory", "--app-dir", BENCH_DIR,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip


def serve_interleaved(
    commands: dict[str, Callable[[int], list[str]]],
    duration: float,
    reps: int,
    connections: Iterable[int],
    env: Callable[[str], dict[str, str]] | None = None,
) -> dict[tuple[str, int], Served]:
    """Every run's requests/s and server CPU per request, per (server, connections).

    Every server is started at once (``commands[name](port)``), checked to
    answer ``200 ok``, warmed up, then measured interleaved: each ``wrk`` run
    against each server in turn, round after round, so that a disturbance of
    the machine falls on all of them alike. Stopped by process id, always.
    """
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    runs: dict[tuple[str, int], Served] = {}
    levels = tuple(connections)
    try:
        for name, command in commands.items():
            port = _free_port()
            environ = None if env is None else {**os.environ, **env(name)}
            process = subprocess.Popen(command(port), cwd=_ROOT, env=environ)
            servers[name] = (process, f"http://127.0.0.1:{port}{PATH}")
        for name, (_process, url) in servers.items():
            try:
                _wait_ok(url, time.monotonic() + 60)
            except SanityError as error:
                raise SanityError(f"{name}: {error}") from None
            _wrk(url, min(duration, 1.0), levels[0])  # warm-up
        for _ in range(reps):
            for level in levels:
                for name, (process, url) in servers.items():
                    before = _cpu_seconds(process.pid)
                    rps, count = _wrk_run(url, duration, level)
                    served = runs.setdefault((name, level), Served())
                    served.rps.append(rps)
                    served.cpu_us.append((_cpu_seconds(process.pid) - before) / count * 1e6)
    finally:
        for process, _url in servers.values():
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    return runs


def measure_server(duration: float, reps: int, connections: int = 16) -> ServerResult:
    result = ServerResult()
    result.command = f"wrk -t1 -c{connections} -d{duration:g}s -H <sidecar headers> {PATH}"
    if shutil.which("wrk") is None:
        result.note = "wrk is not installed (Debian: apt-get install wrk); section skipped"
        return result
    commands = {
        what: functools.partial(uvicorn_command, f"bench:server_{what}")
        for what in ("bare", "wrapped")
    }
    runs = serve_interleaved(commands, duration, reps, (connections,))
    result.rps = {what: runs[(what, connections)].median_rps for what in commands}
    return result


# --------------------------------------------------------------------------
# Section 5: memory after many distinct callers (in a child process).
# --------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(callers: int) -> dict[str, Any]:
    """Serve ``callers`` distinct identities (XFCC) on distinct paths, twice over; report.

    Each caller sends its request twice, so that the guard keeps its identity
    and then its verdict: every cache fills.
    """
    logging.getLogger("peer_middleware").setLevel(logging.WARNING)
    app = starlette_app()
    authenticator = XfccAuthenticator(trusted_proxies=TRUSTED_PROXIES)
    wrapped = PeerMiddleware(app, policy=policy(TARGET_ADDED_AT), authenticators=[authenticator])
    template = (
        'By=spiffe://cluster.local/ns/shop/sa/payments;Hash={hash};Subject="";'
        "URI=spiffe://cluster.local/ns/shop/sa/caller-{index}"
    )
    base = asgi_scope()
    headers = [h for h in base["headers"] if h[0] != b"x-forwarded-client-cert"]
    counter = itertools.count()

    async def serve(count: int) -> None:
        for _ in range(count):
            index = next(counter)
            value = template.format(hash=f"{index:064x}", index=index)
            path = f"/payments/pay_{index:09d}"
            scope = dict(base)
            scope["path"] = path
            scope["raw_path"] = path.encode("ascii")
            scope["headers"] = [*headers, (b"x-forwarded-client-cert", value.encode("latin-1"))]
            await wrapped(dict(scope), _receive, _send)
            await wrapped(scope, _receive, _send)

    def rss() -> int:
        gc.collect()
        return _rss_bytes()

    asyncio.run(serve(1_000))
    start = rss()
    asyncio.run(serve(callers - 1_000))
    after = rss()
    asyncio.run(serve(callers))
    twice = rss()
    guard = wrapped.guard
    caches = {
        "XFCC credentials (entries)": (len(authenticator._cache), authenticator._cache.size),
        **{
            f"guard {name} (bytes)": (part.nbytes, part.budget)
            for name, part in guard.memory.parts().items()
        },
    }
    return {"callers": callers, "start": start, "after": after, "twice": twice, "caches": caches}


ANONYMOUS_METHODS = 64
ANONYMOUS_PATH_BYTES = 8 * 1024


def anonymous_child(requests: int) -> dict[str, Any]:
    """Serve ``requests`` refused anonymous requests: 64 methods, 8 KiB paths, each new.

    Nothing here is allowed and nobody is authenticated, so only the share of
    the guard's memory that anonymous traffic may fill can grow.
    """
    logging.getLogger("peer_middleware").setLevel(logging.WARNING)
    wrapped = PeerMiddleware(
        starlette_app(),
        policy=policy(TARGET_ADDED_AT),
        authenticators=[XfccAuthenticator(trusted_proxies=TRUSTED_PROXIES)],
    )
    limits = wrapped.guard.memory.limits
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    methods += [f"X-METHOD-{i}" for i in range(ANONYMOUS_METHODS - len(methods))]
    filler = "a" * (ANONYMOUS_PATH_BYTES - 32)
    base = asgi_scope()
    base["headers"] = [h for h in base["headers"] if h[0] != b"x-forwarded-client-cert"]
    refused = 0

    async def _send_refused(message: dict[str, Any]) -> None:
        nonlocal refused
        if message["type"] == "http.response.start" and message["status"] in (401, 403):
            refused += 1

    async def serve(start: int, count: int) -> None:
        for index in range(start, start + count):
            path = f"/{filler}/{index:012d}"
            scope = dict(base)
            scope["method"] = methods[index % len(methods)]
            scope["path"] = path
            scope["raw_path"] = path.encode("ascii")
            await wrapped(scope, _receive, _send_refused)

    def rss() -> int:
        gc.collect()
        return _rss_bytes()

    asyncio.run(serve(0, 1_000))
    start = rss()
    asyncio.run(serve(1_000, requests - 1_000))
    after = rss()
    if refused != requests:
        raise SanityError(f"{requests - refused} anonymous requests were not refused")
    return {
        "requests": requests,
        "start": start,
        "after": after,
        "bound": limits.total_bytes,
        "anonymous_bound": limits.anonymous_bytes,
        "held": wrapped.guard.memory.nbytes,
    }


def measure_memory(callers: int, child: str = "--memory-child") -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), child, str(callers)],
        capture_output=True,
        text=True,
        check=True,
        cwd=_ROOT,
        timeout=1200,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    """The checkout's commit, marked ``+dirty`` when the package has local changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", _ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", _ROOT, "status", "--porcelain", "--", "peer_middleware"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def wrk_version() -> str:
    if shutil.which("wrk") is None:
        return "not installed"
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].split(" [")[0] if text else "unknown"


def environment_lines(argv: list[str], n: int, reps: int, no_gc: bool) -> list[str]:
    versions = ", ".join(
        f"{dist} {_version(dist)}"
        for dist in (
            "starlette",
            "fastapi",
            "flask",
            "werkzeug",
            "uvicorn",
            "cryptography",
            "pyjwt",
            "fastapi-client-cert-auth",
        )
    )
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    return [
        f"- Command: `python benchmarks/bench.py {shlex.join(argv)}`",
        f"- Python {platform.python_implementation()} {platform.python_version()}; "
        f"peer_middleware {peer_middleware.__version__} (git {git_revision()})",
        f"- {versions}; {wrk_version()}",
        f"- {platform.platform()}; CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); "
        f"load average at start {load}",
        f"- In process: N = {n:,} requests per repetition, best of R = {reps} repetitions, "
        f"cases timed round-robin; garbage collector {'off' if no_gc else 'on'} while timing",
    ]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


HEAD = ("Section", "Case", "Rules", "Measured", "Baseline", "Added", "Ratio", "Target", "Result")

Row = tuple[str, ...]


def _find(cases: list[Case], **want: Any) -> Case | None:
    for case in cases:
        if all(getattr(case, key) == value for key, value in want.items()):
            return case
    return None


def inprocess_rows(cases: list[Case], n: int) -> list[Row]:
    rows: list[Row] = []
    frameworks = [
        ("ASGI · Starlette", "Starlette"),
        ("ASGI · FastAPI", "FastAPI"),
        ("WSGI · Flask", "Flask"),
    ]
    for label, framework in frameworks:
        for caller in CALLERS:
            bare = _find(cases, framework=framework, caller=caller, middleware="bare", fresh=False)
            if bare is None:
                continue
            bare_us = bare.best_us(n)
            added: dict[int, float] = {}
            for count in RULE_COUNTS:
                case = _find(cases, framework=framework, caller=caller, rules=count, fresh=False)
                if case is None:
                    continue
                wrapped = case.best_us(n)
                added[count] = wrapped - bare_us
                target = result = ""
                if count == TARGET_ADDED_AT:
                    target = f"added ≤ {TARGET_ADDED_US:g} µs"
                    result = _verdict(added[count] <= TARGET_ADDED_US)
                rows.append(
                    (
                        "1 repeat caller",
                        f"{label} · {CALLER_LABELS[caller]}",
                        f"{count:,}",
                        f"{wrapped:.2f} µs",
                        f"bare {bare_us:.2f} µs",
                        f"{added[count]:.2f} µs",
                        f"{wrapped / bare_us:.3f}{TIMES}",
                        target,
                        result,
                    )
                )
            low, high = added.get(RULE_COUNTS[0]), added.get(RULE_COUNTS[-1])
            if low is not None and high is not None:
                ratio = high / low if low > 0 else float("inf")
                rows.append(
                    (
                        "1 repeat caller",
                        f"{label} · {CALLER_LABELS[caller]}: added({RULE_COUNTS[-1]:,}) "
                        f"/ added({RULE_COUNTS[0]:,})",
                        f"{RULE_COUNTS[-1]:,} vs {RULE_COUNTS[0]:,}",
                        f"{high:.2f} µs",
                        f"{low:.2f} µs",
                        "—",
                        f"{ratio:.2f}{TIMES}",
                        f"≤ {TARGET_SCALING:g}{TIMES}",
                        _verdict(ratio <= TARGET_SCALING),
                    )
                )
    # Without a target: the middleware's own cost in WSGI, and new paths every request.
    extra = [
        ("no-op WSGI app", False, "WSGI · no-op app · XFCC (the middleware's own cost)"),
        (
            "no-op WSGI app after a bare Flask request",
            False,
            "WSGI · no-op app, each call after a bare Flask request · XFCC",
        ),
        ("Starlette", True, "ASGI · Starlette · XFCC, new payment id each request"),
        ("Flask", True, "WSGI · Flask · XFCC, new payment id each request"),
    ]
    for framework, fresh, label in extra:
        bare = _find(cases, framework=framework, middleware="bare", fresh=fresh)
        case = _find(cases, framework=framework, middleware="peer_middleware", fresh=fresh)
        if bare is None or case is None:
            continue
        bare_us, wrapped = bare.best_us(n), case.best_us(n)
        rows.append(
            (
                "1 repeat caller",
                label,
                f"{case.rules:,}",
                f"{wrapped:.2f} µs",
                f"bare {bare_us:.2f} µs",
                f"{wrapped - bare_us:.2f} µs",
                f"{wrapped / bare_us:.3f}{TIMES}",
                "(no target)",
                "",
            )
        )
    return rows


#: Metrics on may add at most this much to a repeat caller's request.
TARGET_METRICS_US = 0.5


def with_metrics(app: ASGIApp, caller: str, rules: int) -> ASGIApp:
    """``app`` behind the middleware with :class:`PrometheusMetrics` observing its guard."""
    from prometheus_client import CollectorRegistry

    from peer_middleware.guard import Guard
    from peer_middleware.metrics import PrometheusMetrics

    metrics = PrometheusMetrics(registry=CollectorRegistry())
    return PeerMiddleware(
        app,
        guard=Guard(
            policy=policy(rules),
            authenticators=[pki().authenticator(caller)],
            observers=[metrics],
        ),
    )


def measure_guard_metrics(rounds: int, n: int = 1_000) -> tuple[float, float]:
    """Best µs per ``Guard.check`` of a repeat caller, metrics off and on.

    The two guards run in alternating batches of ``n`` calls, so the load of
    a shared machine falls on both alike; only the best batch of each counts.
    """
    from prometheus_client import CollectorRegistry

    from peer_middleware.guard import Guard
    from peer_middleware.metrics import PrometheusMetrics

    headers = pki().headers("xfcc")
    client = ("127.0.0.1", 40000)
    off = Guard(policy=policy(TARGET_ADDED_AT), authenticators=[pki().authenticator("xfcc")])
    on = Guard(
        policy=policy(TARGET_ADDED_AT),
        authenticators=[pki().authenticator("xfcc")],
        observers=[PrometheusMetrics(registry=CollectorRegistry())],
    )
    for guard in (off, on):
        verdict = guard.check("GET", PATH, PATH, client, headers)
        if verdict.decision.rule != DECIDING_RULE:
            raise SanityError(f"metrics: decided by {verdict.decision.rule!r}")
    best = {id(off): float("inf"), id(on): float("inf")}
    for round_ in range(rounds):
        for guard in (off, on) if round_ % 2 else (on, off):
            check = guard.check
            start = time.perf_counter_ns()
            for _ in range(n):
                check("GET", PATH, PATH, client, headers)
            elapsed = (time.perf_counter_ns() - start) / n / 1000.0
            best[id(guard)] = min(best[id(guard)], elapsed)
    return best[id(off)], best[id(on)]


def metrics_rows(cases: list[Case], n: int, rounds: int) -> list[Row]:
    """Prometheus metrics on vs off: the guard alone (alternating batches), and a
    whole request through Starlette (from the round-robin cases)."""
    rows: list[Row] = []
    off_us, on_us = measure_guard_metrics(rounds)
    added = on_us - off_us
    rows.append(
        (
            "1 repeat caller",
            "Guard.check · XFCC, Prometheus metrics on vs off (alternating batches)",
            f"{TARGET_ADDED_AT:,}",
            f"{on_us:.2f} µs",
            f"off {off_us:.2f} µs",
            f"{added:+.2f} µs",
            f"{on_us / off_us:.3f}{TIMES}",
            f"≤ +{TARGET_METRICS_US:g} µs",
            _verdict(added <= TARGET_METRICS_US),
        )
    )
    on = _find(cases, middleware="peer_middleware+metrics")
    off = _find(
        cases,
        framework="Starlette",
        caller="xfcc",
        middleware="peer_middleware",
        rules=TARGET_ADDED_AT,
        fresh=False,
    )
    if on is not None and off is not None:
        on_us, off_us = on.best_us(n), off.best_us(n)
        rows.append(
            (
                "1 repeat caller",
                "ASGI · Starlette · XFCC, Prometheus metrics on vs off (whole request)",
                f"{TARGET_ADDED_AT:,}",
                f"{on_us:.2f} µs",
                f"off {off_us:.2f} µs",
                f"{on_us - off_us:+.2f} µs",
                f"{on_us / off_us:.3f}{TIMES}",
                "(no target: noisier)",
                "",
            )
        )
    return rows


TARGET_CONDITIONS_US = 1.0


def with_conditions(app: ASGIApp, caller: str, rules: int) -> ASGIApp:
    """``app`` behind the middleware, its policy with a DENY rule reading the host, the
    port and a header: it never matches, so the same rule decides, and the memory keys
    every verdict on those three as well."""
    from peer_middleware.conditions import Header, Host, Port

    conditions = [Host("admin.example"), Port(8080), Header("x-debug")]
    extended = policy(rules).extended([deny("bench-conditions", Anyone(), when=conditions)])
    return PeerMiddleware(app, policy=extended, authenticators=[pki().authenticator(caller)])


def conditions_rows(cases: list[Case], n: int) -> list[Row]:
    """A policy reading host, port and a header vs the same policy without, same caller."""
    on = _find(cases, middleware="peer_middleware+conditions")
    off = _find(
        cases,
        framework="Starlette",
        caller="xfcc",
        middleware="peer_middleware",
        rules=TARGET_ADDED_AT,
        fresh=False,
    )
    if on is None or off is None:
        return []
    on_us, off_us = on.best_us(n), off.best_us(n)
    added = on_us - off_us
    return [
        (
            "1 repeat caller",
            "ASGI · Starlette · XFCC, a DENY rule on Host, Port and a header vs none",
            f"{on.rules:,}",
            f"{on_us:.2f} µs",
            f"none {off_us:.2f} µs",
            f"{added:+.2f} µs",
            f"{on_us / off_us:.3f}{TIMES}",
            f"≤ +{TARGET_CONDITIONS_US:g} µs",
            _verdict(added <= TARGET_CONDITIONS_US),
        )
    ]


def alternative_rows(cases: list[Case], n: int) -> list[Row]:
    rows: list[Row] = []
    alternatives = [
        (
            "AuthenticationMiddleware",
            "Starlette",
            "xfcc",
            "Starlette `AuthenticationMiddleware`, minimal XFCC backend (URI only: no proxy "
            "check, no parsing, no rules) vs peer_middleware XFCC",
        ),
        (
            "fastapi-client-cert-auth",
            "FastAPI",
            "forwarded",
            "`fastapi-client-cert-auth` dependency (parses the forwarded PEM each request, no "
            "chain verification, no rules) vs peer_middleware forwarded cert verified in-app",
        ),
    ]
    for middleware, framework, caller, label in alternatives:
        alt = _find(cases, middleware=middleware)
        if alt is None:
            rows.append(
                ("2 alternatives", label, "—", "not installed", "—", "—", "—", "ahead", "n/a")
            )
            continue
        bare = _find(cases, framework=framework, caller=caller, middleware="bare", fresh=False)
        assert bare is not None
        bare_us = bare.best_us(n)
        alt_added = alt.best_us(n) - bare_us
        ours = [
            (count, case.best_us(n) - bare_us)
            for count in RULE_COUNTS
            if (case := _find(cases, framework=framework, caller=caller, rules=count, fresh=False))
        ]
        worst_count, worst = max(ours, key=lambda item: item[1])
        rows.append(
            (
                "2 alternatives",
                f"ASGI · {framework} · {label}",
                f"{worst_count:,} (worst)",
                f"alternative +{alt_added:.2f} µs",
                f"peer_middleware +{worst:.2f} µs",
                f"{alt_added - worst:+.2f} µs",
                f"{alt_added / worst:.2f}{TIMES}" if worst > 0 else "—",
                "peer_middleware ahead (ratio > 1)",
                _verdict(worst < alt_added),
            )
        )
    return rows


def cold_rows(cases: list[ColdCase]) -> list[Row]:
    rows: list[Row] = []
    for case in cases:
        bare, wrapped, raw = (case.best_us(w) for w in ("bare", "wrapped", "raw"))
        added = wrapped - bare
        rows.append(
            (
                "3 cold path",
                f"ASGI · Starlette · {CALLER_LABELS[case.caller]}, a new one every request "
                f"(pool of {len(case.scopes):,})",
                f"{TARGET_ADDED_AT:,}",
                f"added {added:.1f} µs",
                f"raw {raw:.1f} µs: {case.raw_label}",
                f"{added - raw:+.1f} µs",
                f"{added / raw:.3f}{TIMES}",
                f"≤ {TARGET_COLD:g}{TIMES} raw",
                _verdict(added / raw <= TARGET_COLD),
            )
        )
    return rows


def server_rows(result: ServerResult) -> list[Row]:
    label = f"uvicorn (1 worker) on 127.0.0.1, Starlette, XFCC repeat caller, `{result.command}`"
    if result.note or not result.rps:
        return [("4 real server", label, "—", result.note, "—", "—", "—", "", "n/a")]
    bare, wrapped = result.rps["bare"], result.rps["wrapped"]
    ratio = wrapped / bare
    per_request = (1 / wrapped - 1 / bare) * 1e6
    return [
        (
            "4 real server",
            label,
            f"{TARGET_ADDED_AT:,}",
            f"{wrapped:,.0f} req/s",
            f"bare {bare:,.0f} req/s",
            f"{per_request:.1f} µs/req",
            f"{ratio:.3f}{TIMES}",
            f"≥ {TARGET_SERVER:g}{TIMES} bare",
            _verdict(ratio >= TARGET_SERVER),
        )
    ]


def memory_rows(result: dict[str, Any]) -> list[Row]:
    mib = 1024 * 1024
    callers = result["callers"]
    start, after, twice = result["start"], result["after"], result["twice"]
    growth = (twice - after) / mib
    rows: list[Row] = [
        (
            "5 memory",
            f"RSS after {callers:,} distinct XFCC callers on distinct paths (each request "
            f"sent twice), then {callers:,} more",
            f"{TARGET_ADDED_AT:,}",
            f"{after / mib:.1f} MiB, then {twice / mib:.1f} MiB",
            f"{start / mib:.1f} MiB after 1,000 callers",
            f"+{(after - start) / mib:.1f} MiB, then {growth:+.1f} MiB",
            f"{twice / after:.3f}{TIMES}",
            "flat once the caches are full (≤ +1 MiB for the second run)",
            _verdict(growth <= 1.0),
        )
    ]
    held = "; ".join(f"{name} {used:,}" for name, (used, _bound) in result["caches"].items())
    bounds = "; ".join(f"{bound:,}" for _used, bound in result["caches"].values())
    fullest = max(used / bound for used, bound in result["caches"].values())
    rows.append(
        (
            "5 memory",
            f"caches after {2 * callers:,} distinct callers",
            f"{TARGET_ADDED_AT:,}",
            held,
            f"bounds {bounds}",
            "—",
            f"{fullest:.2f}{TIMES} (fullest)",
            "every cache ≤ its bound",
            _verdict(fullest <= 1.0),
        )
    )
    return rows


def anonymous_rows(result: dict[str, Any]) -> list[Row]:
    mib = 1024 * 1024
    requests = result["requests"]
    growth = (result["after"] - result["start"]) / mib
    bound = result["bound"] / mib
    return [
        (
            "5 memory",
            f"RSS growth over {requests:,} refused anonymous requests, "
            f"{ANONYMOUS_METHODS} methods, {ANONYMOUS_PATH_BYTES // 1024} KiB paths, each new",
            f"{TARGET_ADDED_AT:,}",
            f"{growth:+.1f} MiB (memory holds {result['held'] / mib:.1f} MiB)",
            f"bound {bound:.0f} MiB (anonymous share {result['anonymous_bound'] / mib:.0f} MiB)",
            "—",
            f"{growth / (bound + 5):.2f}{TIMES} of bound + 5 MiB",
            "≤ the configured bound + 5 MiB",
            _verdict(growth <= bound + 5),
        )
    ]


# --------------------------------------------------------------------------
# Section 6: Flask, Quart and Litestar as their README sections protect them.
# --------------------------------------------------------------------------

FRAMEWORK_CENTRAL = "bench-central"
FRAMEWORK_ROUTE = "bench-route"
# "trivial": no peer_middleware, the framework's own cost of a route decorator
# (Flask, Quart) or a guard (Litestar) that does nothing.
FRAMEWORK_USAGES = ("bare", "trivial", "central rule", "route rule", "route rule + peer")


def _trivial(view: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator that does nothing, as a route-level check that always passes."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    return wrapper


def _trivial_async(view: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await view(*args, **kwargs)

    return wrapper


async def _trivial_guard(connection: Any, handler: Any) -> None:
    return None


def _framework_policy(central: bool) -> Policy:
    rules = [allow("healthz", Namespace("ops", trust_domain=TRUST_DOMAIN), paths="/healthz")]
    if central:
        rules.append(
            allow(FRAMEWORK_CENTRAL, Principal(CALLER), methods="GET", paths="/payments/*")
        )
    return Policy(rules)


def _framework_authenticators() -> list[XfccAuthenticator]:
    return [XfccAuthenticator(trusted_proxies=TRUSTED_PROXIES)]


def flask_usage(usage: str) -> WSGIApp:
    """A Flask app serving ``GET /payments/<payment_id>`` as the README shows."""
    from peer_middleware import flask as pm_flask

    app = Flask(f"bench-{usage}")
    if usage not in ("bare", "trivial"):
        pm_flask.PeerAuth(
            app,
            policy=_framework_policy(usage == "central rule"),
            authenticators=_framework_authenticators(),
        )
    if usage in ("bare", "central rule"):

        @app.get("/payments/<payment_id>")
        def read(payment_id: str) -> str:
            return "ok"

    elif usage == "trivial":

        @app.get("/payments/<payment_id>")
        @_trivial
        def read(payment_id: str) -> str:
            return "ok"

    else:
        peer = usage == "route rule + peer"

        @app.get("/payments/<payment_id>")
        @pm_flask.require(Principal(CALLER), name=FRAMEWORK_ROUTE)
        def read(payment_id: str) -> str:
            if peer and pm_flask.current_peer.principal != CALLER:
                return "wrong peer"
            return "ok"

    return app


def quart_usage(usage: str) -> ASGIApp:
    from quart import Quart

    from peer_middleware import quart as pm_quart

    app = Quart(f"bench-{usage}")
    if usage not in ("bare", "trivial"):
        pm_quart.PeerAuth(
            app,
            policy=_framework_policy(usage == "central rule"),
            authenticators=_framework_authenticators(),
        )
    if usage in ("bare", "central rule"):

        @app.get("/payments/<payment_id>")
        async def read(payment_id: str) -> str:
            return "ok"

    elif usage == "trivial":

        @app.get("/payments/<payment_id>")
        @_trivial_async
        async def read(payment_id: str) -> str:
            return "ok"

    else:
        peer = usage == "route rule + peer"

        @app.get("/payments/<payment_id>")
        @pm_quart.require(Principal(CALLER), name=FRAMEWORK_ROUTE)
        async def read(payment_id: str) -> str:
            if peer and pm_quart.current_peer.principal != CALLER:
                return "wrong peer"
            return "ok"

    return app  # type: ignore[return-value]


def litestar_usage(usage: str) -> ASGIApp:
    from litestar import Litestar, MediaType, get
    from litestar import Request as LitestarRequest
    from litestar.params import FromPath

    from peer_middleware import litestar as pm_litestar

    guards: list[Any] = []
    if usage == "trivial":
        guards = [_trivial_guard]
    elif usage not in ("bare", "central rule"):
        guards = [pm_litestar.require(Principal(CALLER), name=FRAMEWORK_ROUTE)]
    peer = usage == "route rule + peer"

    @get(
        "/payments/{payment_id:str}",
        guards=guards,
        media_type=MediaType.TEXT,
        # This module's annotations are strings (PEP 563); these names are local.
        signature_namespace={"FromPath": FromPath, "LitestarRequest": LitestarRequest},
    )
    async def read(payment_id: FromPath[str], request: LitestarRequest) -> str:  # type: ignore[type-arg]
        if peer and pm_litestar.peer_of(request).principal != CALLER:
            return "wrong peer"
        return "ok"

    app = Litestar([read])
    if usage not in ("bare", "trivial"):
        pm_litestar.install(
            app,
            policy=_framework_policy(usage == "central rule"),
            authenticators=_framework_authenticators(),
        )
    return app  # type: ignore[return-value]


async def run_asgi_framework(app: ASGIApp, scopes: list[Scope]) -> int:
    """CPU nanoseconds of this process for one request per scope, with a ``receive``
    that waits after the body, as servers do (Quart reads ``receive`` until the
    response is sent)."""
    copy = dict
    body = {"type": "http.request", "body": b"", "more_body": False}
    never = asyncio.get_running_loop().create_future()
    start = time.process_time_ns()
    for scope in scopes:
        given = False

        async def receive() -> Message:
            nonlocal given
            if not given:
                given = True
                return body
            return await never  # type: ignore[no-any-return]

        await app(copy(scope), receive, _send)
    elapsed = time.process_time_ns() - start
    never.cancel()
    return elapsed


def run_wsgi_framework(app: WSGIApp, environs: list[Environ]) -> int:
    """As :func:`run_wsgi`, in CPU nanoseconds of this process."""
    start_response, copy = _start_response, dict
    start = time.process_time_ns()
    for environ in environs:
        body = app(copy(environ), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return time.process_time_ns() - start


async def check_asgi_framework(app: ASGIApp, scope: Scope, expect_rule: str | None) -> None:
    messages: list[Message] = []
    given = False

    async def receive() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        messages.append(message)

    scope = dict(scope)
    await app(scope, receive, send)
    starts = [m for m in messages if m["type"] == "http.response.start"]
    status = starts[0].get("status") if starts else None
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    if status != 200 or body != b"ok":
        raise SanityError(f"status {status}, body {body[:200]!r}")
    decision = scope.get(DECISION_SCOPE_KEY)
    if expect_rule is not None and (decision is None or decision.rule != expect_rule):
        raise SanityError(f"decided by {decision!r}")


def framework_cases() -> tuple[list[Case], list[str]]:
    """The documented usages of Flask, Quart and Litestar; frameworks not installed are named."""
    expect = {"bare": None, "trivial": None, "central rule": FRAMEWORK_CENTRAL}
    builders: list[tuple[str, str, Callable[[str], Any]]] = [
        ("wsgi", "Flask", flask_usage),
        ("asgi", "Quart", quart_usage),
        ("asgi", "Litestar", litestar_usage),
    ]
    cases: list[Case] = []
    missing: list[str] = []
    for kind, name, build in builders:
        try:
            apps = {usage: build(usage) for usage in FRAMEWORK_USAGES}
        except ImportError:
            missing.append(name)
            continue
        for usage, app in apps.items():
            rule = expect.get(usage, FRAMEWORK_ROUTE)
            cases.append(Case(kind, f"{name} (README)", "xfcc", usage, None, False, app, rule))
    return cases, missing


async def measure_asgi_frameworks(cases: list[Case], n: int, reps: int, no_gc: bool) -> None:
    warm_up = max(n // 5, 200)
    for case in cases:
        try:
            await check_asgi_framework(case.app, case.requests(1)[0], case.expect)
        except SanityError as error:
            raise SystemExit(f"sanity check failed: {describe(case)}: {error}") from None
        await run_asgi_framework(case.app, case.requests(warm_up))
    for _ in range(reps):
        for case in cases:
            scopes = case.requests(n)
            with gc_paused(no_gc):
                case.times_ns.append(await run_asgi_framework(case.app, scopes))


def measure_wsgi_frameworks(cases: list[Case], n: int, reps: int, no_gc: bool) -> None:
    warm_up = max(n // 5, 200)
    for case in cases:
        try:
            check_wsgi(case.app, case.requests(1)[0], case.expect)
        except SanityError as error:
            raise SystemExit(f"sanity check failed: {describe(case)}: {error}") from None
        run_wsgi_framework(case.app, case.requests(warm_up))
    for _ in range(reps):
        for case in cases:
            environs = case.requests(n)
            with gc_paused(no_gc):
                case.times_ns.append(run_wsgi_framework(case.app, environs))


def framework_rows(cases: list[Case], missing: list[str], n: int) -> list[Row]:
    rows: list[Row] = []
    for framework in ("Flask (README)", "Quart (README)", "Litestar (README)"):
        bare = _find(cases, framework=framework, middleware="bare")
        central = _find(cases, framework=framework, middleware="central rule")
        if bare is None or central is None:
            continue
        bare_us, central_us = bare.best_us(n), central.best_us(n)
        trivial = _find(cases, framework=framework, middleware="trivial")
        floor_us = max(0.0, trivial.best_us(n) - bare_us) if trivial is not None else 0.0
        for usage in FRAMEWORK_USAGES[1:]:
            case = _find(cases, framework=framework, middleware=usage)
            if case is None:
                continue
            wrapped = case.best_us(n)
            target = result = ""
            if usage == "trivial":
                target = "(the framework's own cost)"
            elif usage != "central rule":
                # Declaring the rule on the route costs little over the same
                # route protected by a central rule (the middleware-only row),
                # apart from the framework's own cost of a decorator or guard.
                target = f"≤ central + trivial + {TARGET_ADDED_US:g} µs"
                result = _verdict(wrapped - central_us - floor_us <= TARGET_ADDED_US)
            rows.append(
                (
                    "6 documented usage",
                    f"{framework.replace(' (README)', '')} · {usage} · XFCC (CPU time)",
                    "—" if usage == "trivial" else "1",
                    f"{wrapped:.2f} µs",
                    f"bare {bare_us:.2f} µs",
                    f"{wrapped - bare_us:.2f} µs",
                    f"{wrapped / bare_us:.3f}{TIMES}",
                    target,
                    result,
                )
            )
    for name in missing:
        rows.append(("6 documented usage", f"{name}: not installed", "", "", "", "", "", "", ""))
    return rows


def render(rows: list[Row]) -> list[str]:
    lines = [
        "| " + " | ".join(HEAD) + " |",
        "|" + "|".join(":--" if i < 3 else "--:" for i in range(len(HEAD))) + "|",
    ]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (CI): small N, R, pools")
    parser.add_argument("--output", metavar="FILE", help="also write the report as Markdown")
    parser.add_argument("-n", "--requests", type=int, help="requests per repetition (N)")
    parser.add_argument("-r", "--repeat", type=int, help="repetitions (R); the best is kept")
    parser.add_argument("--no-gc", action="store_true", help="collector off while timing")
    parser.add_argument("--callers", type=int, help="distinct callers for the memory section")
    parser.add_argument("--duration", type=float, help="seconds per wrk run")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=[
            "inprocess",
            "cold",
            "server",
            "memory",
            "frameworks",
            "grpc",
            "fastapi",
            "django",
            "served",
        ],
        help="leave a section out (repeatable)",
    )
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--anonymous-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--anonymous", type=int, help="refused anonymous requests for the memory section"
    )
    args = parser.parse_args(argv)
    logging.getLogger("peer_middleware").setLevel(logging.WARNING)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return 0
    if args.anonymous_child:
        print(json.dumps(anonymous_child(args.anonymous_child)))
        return 0
    # Short batches, many of them: on a shared machine a short batch has a
    # better chance of running undisturbed, and only the best one counts.
    n = args.requests or (500 if args.quick else 2_000)
    reps = args.repeat or (3 if args.quick else 25)
    callers = args.callers or (10_000 if args.quick else 100_000)
    duration = args.duration or (1.0 if args.quick else 5.0)
    if n <= 0 or reps <= 0 or callers < 2_000 or duration <= 0:
        parser.error("N, R and the duration must be positive, callers at least 2,000")

    header = environment_lines(argv, n, reps, args.no_gc)
    print("\n".join(header), flush=True)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    rows: list[Row] = []
    if "inprocess" not in args.skip:
        progress(
            f"building apps and policies ({', '.join(f'{c:,}' for c in RULE_COUNTS)} rules)..."
        )
        cases = build_cases()
        progress(f"timing {sum(c.kind == 'asgi' for c in cases)} ASGI cases...")
        asyncio.run(measure_asgi([c for c in cases if c.kind == "asgi"], n, reps, args.no_gc))
        progress(f"timing {sum(c.kind == 'wsgi' for c in cases)} WSGI cases...")
        measure_wsgi([c for c in cases if c.kind == "wsgi"], n, reps, args.no_gc)
        rows += (
            inprocess_rows(cases, n)
            + metrics_rows(cases, n, 100 if args.quick else 400)
            + conditions_rows(cases, n)
            + alternative_rows(cases, n)
        )
        # Later sections start from a process holding one policy, as an app does:
        # every object left alive here would be traversed by the garbage collector.
        del cases
        _POLICIES.clear()
        gc.collect()
    if "cold" not in args.skip:
        progress("cold path: minting certificates and tokens...")
        cold = build_cold_cases(CERT_POOL, TOKEN_POOL)
        progress("timing the cold path...")
        asyncio.run(measure_cold(cold, min(5, max(2, reps // 2))))
        rows += cold_rows(cold)
    if "server" not in args.skip:
        progress(f"real server: uvicorn + wrk, {duration:g} s per run...")
        try:
            rows += server_rows(measure_server(duration, 1 if args.quick else 3))
        except SanityError as error:
            raise SystemExit(f"sanity check failed: real server: {error}") from None
    if "frameworks" not in args.skip:
        progress("Flask, Quart and Litestar as their README sections protect them...")
        fw_cases, fw_missing = framework_cases()
        asyncio.run(
            measure_asgi_frameworks([c for c in fw_cases if c.kind == "asgi"], n, reps, args.no_gc)
        )
        measure_wsgi_frameworks([c for c in fw_cases if c.kind == "wsgi"], n, reps, args.no_gc)
        rows += framework_rows(fw_cases, fw_missing, n)
        del fw_cases
        gc.collect()
    if "memory" not in args.skip:
        progress(f"memory: {2 * callers:,} distinct callers in a child process...")
        rows += memory_rows(measure_memory(callers))
        anonymous = args.anonymous or (20_000 if args.quick else 1_000_000)
        progress(f"memory: {anonymous:,} refused anonymous requests in a child process...")
        rows += anonymous_rows(measure_memory(anonymous, "--anonymous-child"))

    if "grpc" not in args.skip:
        progress("gRPC: the interceptor in process, and grpcio servers on loopback...")
        from grpc_bench import grpc_rows

        rows += grpc_rows(n, reps, 200 if args.quick else 500)

    if "fastapi" not in args.skip:
        progress("FastAPI as its README section protects it, in process...")
        from fastapi_bench import fastapi_rows

        rows += fastapi_rows(n, reps, args.no_gc)

    if "django" not in args.skip:
        progress("Django: the README's usage through Django's WSGI and ASGI handlers...")
        from django_bench import django_rows

        rows += django_rows(n, reps)

    if "served" not in args.skip:
        # Five rounds of shorter runs: the median of five needs more runs than the best of three.
        served_duration = args.duration or (1.0 if args.quick else 2.0)
        progress(f"each framework's README usage under its server, {served_duration:g} s wrk runs")
        from served import served_rows

        rows += served_rows(served_duration, 1 if args.quick else 5, progress)

    lines = render(rows)
    print()
    print("\n".join(lines))
    if args.output:
        report = [
            "# peer_middleware: benchmark results",
            "",
            "Generated by `nox -s bench` (`python benchmarks/bench.py --output "
            "benchmarks/RESULTS.md`); the method is in `benchmarks/README.md`. Every ratio "
            f"compares two figures of this one run. Request: `GET {PATH}`, allowed by rule "
            f"`{DECIDING_RULE}` at every policy size; caller `{CALLER}` behind a proxy on "
            "127.0.0.1.",
            "",
            *header,
            "",
            *lines,
            "",
        ]
        with open(args.output, "w", encoding="utf-8") as out:
            out.write("\n".join(report))
        progress(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
