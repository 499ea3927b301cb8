"""Section 9 of bench.py: Django as its README section protects a view.

``GET /payments/<payment_id>`` served by Django's own handlers in process,
WSGI (``WSGIHandler``, a sync view) and ASGI (``ASGIHandler``, an async view),
with the repeat caller of the other sections identified by XFCC: the bare
view, the middleware with a central rule, a rule declared on the view
(``@require``), and that view reading ``request.peer``. The target compares
the declared rule with the central one (the middleware-only row).
"""

from __future__ import annotations

import asyncio
import io
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Row = tuple[str, ...]

PATH = "/payments/p-4242"
CALLER = "spiffe://cluster.local/ns/shop/sa/checkout"
CENTRAL = "bench-central"
ROUTE = "bench-route"
USAGES = ("bare", "central rule", "route rule", "route rule + peer")
TARGET_ADDED_US = 2.0
TIMES = "\N{MULTIPLICATION SIGN}"


def _configure() -> None:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="bench-only-not-secret",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=types.ModuleType("bench_empty_urls"),
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
        )
        django.setup()


def _project(usage: str, is_async: bool) -> dict[str, Any]:
    """The settings of one usage: its URLconf, middleware and PEER_MIDDLEWARE."""
    from django.http import HttpRequest, HttpResponse
    from django.urls import path

    from peer_middleware import Namespace, Policy, Principal, XfccAuthenticator, allow
    from peer_middleware.django import require

    rules = [allow("healthz", Namespace("ops", trust_domain="cluster.local"), paths="/healthz")]
    if usage == "central rule":
        rules.append(allow(CENTRAL, Principal(CALLER), methods="GET", paths="/payments/*"))
    peer = usage == "route rule + peer"

    def answer(request: HttpRequest) -> HttpResponse:
        if peer and request.peer.principal != CALLER:  # type: ignore[attr-defined]
            return HttpResponse("wrong peer")
        return HttpResponse("ok")

    view: Callable[..., Any]
    if is_async:

        async def read_async(request: HttpRequest, payment_id: str) -> HttpResponse:
            return answer(request)

        view = read_async
    else:

        def read(request: HttpRequest, payment_id: str) -> HttpResponse:
            return answer(request)

        view = read
    if usage in ("route rule", "route rule + peer"):
        view = require(Principal(CALLER), name=ROUTE)(view)
    urls = types.ModuleType(f"bench_urls_{usage.replace(' ', '_')}")
    urls.urlpatterns = [path("payments/<str:payment_id>", view)]  # type: ignore[attr-defined]
    config = {"ROOT_URLCONF": urls, "MIDDLEWARE": []}
    if usage != "bare":
        config["MIDDLEWARE"] = ["peer_middleware.django.PeerMiddleware"]
        config["PEER_MIDDLEWARE"] = {
            "POLICY": Policy(rules),
            "AUTHENTICATORS": [XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])],
        }
    return config


@contextmanager
def _settings(config: dict[str, Any]) -> Iterator[None]:
    from django.test import override_settings

    with override_settings(**config):
        yield


def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "RAW_URI": PATH,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "127.0.0.1:8080",
        "HTTP_X_FORWARDED_CLIENT_CERT": f"URI={CALLER}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8080"),
            (b"x-forwarded-client-cert", f"URI={CALLER}".encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }


def _run_wsgi(handler: Any, n: int) -> tuple[int, bytes]:
    template = _environ()
    status: list[str] = []

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(line)
        return None

    body = b""
    start = time.perf_counter_ns()
    for _ in range(n):
        environ = dict(template)
        environ["wsgi.input"] = io.BytesIO(b"")
        response = handler(environ, start_response)
        body = b"".join(response)
        response.close()
    elapsed = time.perf_counter_ns() - start
    if status[-1] != "200 OK" or body != b"ok":
        raise RuntimeError(f"Django WSGI bench: {status[-1]} {body[:200]!r}")
    return elapsed, body


async def _run_asgi(handler: Any, n: int) -> int:
    template = _scope()
    sent: list[dict[str, Any]] = []

    body_message = {"type": "http.request", "body": b"", "more_body": False}
    loop = asyncio.get_running_loop()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    start = time.perf_counter_ns()
    for _ in range(n):
        sent.clear()
        given = False

        async def receive() -> dict[str, Any]:
            # The body, then nothing until Django stops listening for a disconnect.
            nonlocal given
            if not given:
                given = True
                return body_message
            return await loop.create_future()  # type: ignore[no-any-return]

        await handler(dict(template), receive, send)
    elapsed = time.perf_counter_ns() - start
    status = sent[0].get("status")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    if status != 200 or body != b"ok":
        raise RuntimeError(f"Django ASGI bench: {status} {body[:200]!r}")
    return elapsed


def _middleware_alone(usage: str, n: int, reps: int) -> float:
    """Best µs per request of ``PeerMiddleware`` around a trivial ``get_response``,
    on requests built beforehand (WSGI)."""
    from django.core.handlers.wsgi import WSGIRequest
    from django.http import HttpResponse

    from peer_middleware.django import PeerMiddleware

    response = HttpResponse("ok")
    best = float("inf")
    with _settings(_project(usage, False)):
        middleware = PeerMiddleware(lambda request: response)
        template = _environ()
        for rep in range(reps + 1):
            requests = [WSGIRequest(dict(template)) for _ in range(n)]
            start = time.perf_counter_ns()
            for request in requests:
                if middleware(request) is not response:
                    raise RuntimeError(f"Django middleware bench: {usage} refused")
            if rep:
                best = min(best, (time.perf_counter_ns() - start) / n / 1000)
    return best


def django_rows(n: int, reps: int) -> list[Row]:
    """Rows for section 9; one row saying so when Django is not installed."""
    try:
        _configure()
        from django.core.handlers.asgi import ASGIHandler
        from django.core.handlers.wsgi import WSGIHandler
    except ImportError:
        return [("9 Django", "Django is not installed; section skipped", *("—",) * 6, "n/a")]
    best: dict[tuple[str, str], float] = {}
    for kind in ("WSGI", "ASGI"):
        is_async = kind == "ASGI"
        count = max(n // 4, 100) if is_async else n
        cases = []
        for usage in USAGES:
            config = _project(usage, is_async)
            with _settings(config):
                handler = ASGIHandler() if is_async else WSGIHandler()
            cases.append((usage, config, handler))
        loop = asyncio.new_event_loop()
        try:
            for rep in range(reps + 1):
                for usage, config, handler in cases:
                    with _settings(config):
                        if is_async:
                            # Django's ASGI handler costs a few times its WSGI one.
                            elapsed = loop.run_until_complete(_run_asgi(handler, count))
                        else:
                            elapsed = _run_wsgi(handler, count)[0]
                    if rep:  # the first round warms up
                        us = elapsed / count / 1000
                        key = (kind, usage)
                        best[key] = min(best.get(key, us), us)
        finally:
            loop.close()
    rows: list[Row] = []
    alone = {usage: _middleware_alone(usage, n, reps) for usage in USAGES[1:3]}
    for usage, measured in alone.items():
        rows.append(
            (
                "9 Django",
                f"Django middleware alone · {usage} · XFCC",
                "1",
                f"{measured:.2f} µs",
                "—",
                f"{measured:.2f} µs",
                "—",
                f"≤ central + {TARGET_ADDED_US:g} µs" if usage == "route rule" else "",
                (
                    ("PASS" if measured - alone["central rule"] <= TARGET_ADDED_US else "**FAIL**")
                    if usage == "route rule"
                    else ""
                ),
            )
        )
    for kind in ("WSGI", "ASGI"):
        bare, central = best[(kind, "bare")], best[(kind, "central rule")]
        for usage in USAGES[1:]:
            measured = best[(kind, usage)]
            target = result = ""
            if usage != "central rule":
                target = f"≤ central + {TARGET_ADDED_US:g} µs"
                result = "PASS" if measured - central <= TARGET_ADDED_US else "**FAIL**"
            rows.append(
                (
                    "9 Django",
                    f"Django {kind} · {usage} · XFCC",
                    "1",
                    f"{measured:.2f} µs",
                    f"bare {bare:.2f} µs",
                    f"{measured - bare:.2f} µs",
                    f"{measured / bare:.3f}{TIMES}",
                    target,
                    result,
                )
            )
    return rows


if __name__ == "__main__":
    for row in django_rows(500, 3):
        print(" | ".join(row))
