#!/usr/bin/env python
"""In-process per-request cost of peer_middleware (no HTTP server, no sockets).

Run from the repository root::

    python benchmarks/bench.py [--quick] [--output benchmarks/RESULTS.md]

Every app is called directly: ASGI apps with a prebuilt ``http`` scope inside
one running event loop (N requests looped in one coroutine), WSGI apps with a
prebuilt environ and a trivial ``start_response``. The scope / environ is
copied with ``dict()`` for every request, bare baselines included, because the
middleware writes into it. Each case is timed R times (round-robin over the
cases) and the best repetition is reported. See ``benchmarks/README.md``.

The script reports; it never fails on a missed target (exit status 0).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import io
import itertools
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

# Let ``python benchmarks/bench.py`` work from a checkout without installing.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

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
    DECISION_ENVIRON_KEY,
    DECISION_SCOPE_KEY,
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

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

# --------------------------------------------------------------------------
# The request: a repeat caller behind an Istio/Envoy sidecar on 127.0.0.1.
# --------------------------------------------------------------------------

RULE_COUNTS = (10, 1_000, 10_000)
DECIDING_RULE = "read-payment"
PATH = "/payments/p-4242"
CALLER = "spiffe://cluster.local/ns/shop/sa/checkout"
XFCC = (
    "By=spiffe://cluster.local/ns/shop/sa/payments;"
    f"Hash={hashlib.sha256(b'checkout client certificate').hexdigest()};"
    f'Subject="";URI={CALLER}'
)
TRUSTED_PROXIES = ["127.0.0.1", "::1"]

# Targets (repeat caller): added cost at 1,000 rules, and growth from 10 to 10,000 rules.
TARGET_ADDED_US = 2.0
TARGET_ADDED_AT = 1_000
TARGET_SCALING = 1.3
TIMES = "\N{MULTIPLICATION SIGN}"

# Headers as an Istio sidecar forwards them to the app.
HEADERS: tuple[tuple[str, str], ...] = (
    ("host", "payments.shop.svc.cluster.local:8080"),
    ("user-agent", "checkout/2.3.1"),
    ("accept", "application/json"),
    ("x-forwarded-proto", "https"),
    ("x-request-id", "5b0e9f3c-3f1e-4a8e-9a51-4c3e2f0b9d17"),
    ("x-envoy-attempt-count", "1"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("x-b3-spanid", "e457b5a2e4d86bd1"),
    ("x-b3-sampled", "0"),
    ("x-forwarded-client-cert", XFCC),
)


def asgi_scope(path: str = PATH) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("ascii"),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in HEADERS],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }


def wsgi_environ(path: str = PATH) -> Environ:
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
    for name, value in HEADERS:
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


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


# --------------------------------------------------------------------------
# Apps.
# --------------------------------------------------------------------------


async def payment(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app() -> ASGIApp:
    return Starlette(routes=[Route("/payments/{payment_id}", payment, methods=["GET"])])


def flask_app() -> WSGIApp:
    app = Flask("bench")

    @app.get("/payments/<payment_id>")
    def get_payment(payment_id: str) -> str:
        return "ok"

    return app


class XfccHeaderBackend(AuthenticationBackend):
    """Reference: read the XFCC header's URI, no proxy check, no parsing, no policy."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        value = conn.headers.get("x-forwarded-client-cert")
        if value is None:
            return None
        uri = value.rpartition("URI=")[2].partition(";")[0]
        return AuthCredentials(["authenticated"]), SimpleUser(uri)


def authenticator() -> XfccAuthenticator:
    return XfccAuthenticator(trusted_proxies=TRUSTED_PROXIES)


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


def request_paths(n: int, fresh: bool) -> list[str]:
    """``n`` request paths: the same one, or payment ids never used before in this run."""
    if not fresh:
        return [PATH] * n
    return [f"/payments/pay_{next(_payment_ids):09d}" for _ in range(n)]


def asgi_requests(n: int, fresh: bool) -> list[Scope]:
    if not fresh:
        return [asgi_scope()] * n
    return [asgi_scope(path) for path in request_paths(n, fresh)]


def wsgi_requests(n: int, fresh: bool) -> list[Environ]:
    if not fresh:
        return [wsgi_environ()] * n
    return [wsgi_environ(path) for path in request_paths(n, fresh)]


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
        raise SystemExit(f"sanity check failed: status {status}, body {body!r}")
    if expect_rule is not None:
        decision = scope.get(DECISION_SCOPE_KEY)
        if decision is None or decision.rule != expect_rule:
            raise SystemExit(f"sanity check failed: decided by {decision!r}")


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
        raise SystemExit(f"sanity check failed: status {seen}, body {data!r}")
    if expect_rule is not None:
        decision = environ.get(DECISION_ENVIRON_KEY)
        if decision is None or decision.rule != expect_rule:
            raise SystemExit(f"sanity check failed: decided by {decision!r}")


# --------------------------------------------------------------------------
# Cases and measurement.
# --------------------------------------------------------------------------


@dataclass
class Case:
    middleware: str  # "bare" for the app alone
    rules: int | None  # None: no peer_middleware policy
    fresh: bool  # a payment id never seen before on every request (else the same path)
    app: Any
    times_ns: list[int] = field(default_factory=list)

    def best_us(self, n: int) -> float:
        return min(self.times_ns) / n / 1000.0


def build_cases() -> tuple[list[Case], list[Case]]:
    """ASGI and WSGI cases; the bare app of each framework is shared by its wrappers."""
    bare_asgi = starlette_app()
    bare_wsgi = flask_app()
    policies = {count: build_policy(count) for count in RULE_COUNTS}
    asgi: list[Case] = []
    wsgi: list[Case] = []
    for fresh in (False, True):
        asgi.append(Case("bare", None, fresh, bare_asgi))
        wsgi.append(Case("bare", None, fresh, bare_wsgi))
        for count, policy in policies.items():
            # A fresh authenticator per case, so no case warms another's caches.
            asgi_app = PeerMiddleware(bare_asgi, policy=policy, authenticators=[authenticator()])
            wsgi_app = PeerWSGIMiddleware(
                bare_wsgi, policy=policy, authenticators=[authenticator()]
            )
            asgi.append(Case("PeerMiddleware", count, fresh, asgi_app))
            wsgi.append(Case("PeerWSGIMiddleware", count, fresh, wsgi_app))
        if not fresh:
            reference = AuthenticationMiddleware(bare_asgi, backend=XfccHeaderBackend())
            asgi.append(Case("AuthenticationMiddleware", None, fresh, reference))
    return asgi, wsgi


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


def _expected_rule(case: Case) -> str | None:
    return DECIDING_RULE if case.rules is not None else None


async def measure_asgi(cases: list[Case], n: int, reps: int, no_gc: bool) -> None:
    warm_up = max(n // 5, 500)
    for case in cases:
        await check_asgi(case.app, asgi_requests(1, case.fresh)[0], _expected_rule(case))
        await run_asgi(case.app, asgi_requests(warm_up, case.fresh))
    for _ in range(reps):
        for case in cases:  # round-robin, so drift hits every case alike
            scopes = asgi_requests(n, case.fresh)
            with gc_paused(no_gc):
                case.times_ns.append(await run_asgi(case.app, scopes))


def measure_wsgi(cases: list[Case], n: int, reps: int, no_gc: bool) -> None:
    warm_up = max(n // 5, 500)
    for case in cases:
        check_wsgi(case.app, wsgi_requests(1, case.fresh)[0], _expected_rule(case))
        run_wsgi(case.app, wsgi_requests(warm_up, case.fresh))
    for _ in range(reps):
        for case in cases:
            environs = wsgi_requests(n, case.fresh)
            with gc_paused(no_gc):
                case.times_ns.append(run_wsgi(case.app, environs))


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


def environment_lines(n: int, reps: int, no_gc: bool) -> list[str]:
    return [
        f"- Python {platform.python_implementation()} {platform.python_version()}",
        f"- starlette {_version('starlette')}, flask {_version('flask')}, "
        f"werkzeug {_version('werkzeug')}, peer_middleware {peer_middleware.__version__} "
        f"(git {git_revision()})",
        f"- {platform.platform()}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)",
        f"- N = {n:,} requests per repetition, best of R = {reps} repetitions; "
        f"garbage collector {'off' if no_gc else 'on'} while timing",
    ]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


HEAD = (
    "Framework",
    "Middleware",
    "Rules",
    "Request path",
    "Bare µs/req",
    "Wrapped µs/req",
    "Added µs/req",
    "Wrapped/bare",
    "Target",
    "Result",
)


def _rows(name: str, cases: list[Case], n: int, fresh: bool) -> list[tuple[str, ...]]:
    group = [case for case in cases if case.fresh is fresh]
    bare = next(case for case in group if case.rules is None and case.middleware == "bare")
    bare_us = bare.best_us(n)
    where = "new payment id each time" if fresh else "same"
    rows: list[tuple[str, ...]] = []
    added_by_count: dict[int, float] = {}
    for case in group:
        if case is bare:
            continue
        wrapped = case.best_us(n)
        added = wrapped - bare_us
        target = result = ""
        if case.rules is not None:
            added_by_count[case.rules] = added
            if case.rules == TARGET_ADDED_AT and not fresh:
                target = f"added ≤ {TARGET_ADDED_US:g} µs"
                result = _verdict(added <= TARGET_ADDED_US)
        label = case.middleware if case.rules is not None else f"{case.middleware} (reference)"
        rules = f"{case.rules:,}" if case.rules is not None else "—"
        rows.append(
            (
                name,
                label,
                rules,
                where,
                f"{bare_us:.2f}",
                f"{wrapped:.2f}",
                f"{added:.2f}",
                f"{wrapped / bare_us:.3f}{TIMES}",
                target,
                result,
            )
        )
    low, high = added_by_count[RULE_COUNTS[0]], added_by_count[RULE_COUNTS[-1]]
    ratio = high / low if low > 0 else float("inf")
    target = "" if fresh else f"≤ {TARGET_SCALING:g}{TIMES}"
    result = "" if fresh else _verdict(ratio <= TARGET_SCALING)
    rows.append(
        (
            name,
            f"added({RULE_COUNTS[-1]:,}) / added({RULE_COUNTS[0]:,})",
            f"{RULE_COUNTS[-1]:,} vs {RULE_COUNTS[0]:,}",
            where,
            "—",
            "—",
            f"{ratio:.2f}{TIMES}",
            "—",
            target,
            result,
        )
    )
    return rows


def table(asgi: list[Case], wsgi: list[Case], n: int) -> list[str]:
    rows: list[tuple[str, ...]] = []
    for cases, name in ((asgi, "ASGI · Starlette"), (wsgi, "WSGI · Flask")):
        for fresh in (False, True):
            rows.extend(_rows(name, cases, n, fresh))
    lines = [
        "| " + " | ".join(HEAD) + " |",
        "|" + "|".join(":--" if i < 4 else "--:" for i in range(len(HEAD))) + "|",
    ]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=2000, R=3 (smoke run)")
    parser.add_argument("--output", metavar="FILE", help="also write the report as Markdown")
    parser.add_argument("-n", "--requests", type=int, help="requests per repetition (N)")
    parser.add_argument("-r", "--repeat", type=int, help="repetitions (R); the best is kept")
    parser.add_argument(
        "--no-gc",
        action="store_true",
        help="turn the garbage collector off while timing (distorts Flask, which "
        "leaves cyclic garbage behind every request)",
    )
    args = parser.parse_args(argv)
    n = args.requests or (2_000 if args.quick else 20_000)
    reps = args.repeat or (3 if args.quick else 7)
    if n <= 0 or reps <= 0:
        parser.error("N and R must be positive")

    # Decision records are logged at DEBUG; keep them (and their cost) out.
    logging.getLogger("peer_middleware").setLevel(logging.WARNING)

    header = environment_lines(n, reps, args.no_gc)
    print("\n".join(header), flush=True)
    print(
        f"building apps and policies {', '.join(f'{c:,}' for c in RULE_COUNTS)} rules...",
        file=sys.stderr,
        flush=True,
    )
    asgi, wsgi = build_cases()
    print("timing ASGI...", file=sys.stderr, flush=True)
    asyncio.run(measure_asgi(asgi, n, reps, args.no_gc))
    print("timing WSGI...", file=sys.stderr, flush=True)
    measure_wsgi(wsgi, n, reps, args.no_gc)

    lines = table(asgi, wsgi, n)
    print()
    print("\n".join(lines))
    if args.output:
        report = [
            "# peer_middleware: in-process cost per request",
            "",
            "Generated by `python benchmarks/bench.py`; see `benchmarks/README.md` for the "
            "method. Repeat caller (same XFCC header every request), `GET "
            f"{PATH}`, allowed by rule `{DECIDING_RULE}` at every policy size.",
            "",
            *header,
            "",
            *lines,
            "",
        ]
        with open(args.output, "w", encoding="utf-8") as out:
            out.write("\n".join(report))
        print(f"\nwritten to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
