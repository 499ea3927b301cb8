"""Section 10 of bench.py: every framework's README usage under a real server.

The same request as the other sections, ``GET /payments/p-4242`` from the repeat
caller identified by XFCC, served by the server a team runs each framework
under, one worker, on 127.0.0.1, driven by ``wrk`` at a few concurrency levels:

* FastAPI, Quart, Litestar and Django's ASGI handler under **uvicorn**;
* Flask and Django's WSGI handler under **gunicorn** (one sync worker).

Each app is served as its README section protects it: ``bare``; ``central
rule`` (the rule in the policy handed to the integration); ``route rule`` (the
rule declared on the route or view, none in the policy for it); and ``route
rule + peer`` (the same, the handler reading the peer the framework's way:
``CurrentPeer``, ``current_peer``, ``peer_of(request)``, ``request.peer``).
The apps are the ones sections 6, 8 and 9 time in process.

All the usages of one framework are started at once and measured interleaved
(each ``wrk`` run against each server in turn, round after round); the best
requests/s of the rounds count. Target: every protected usage at **≥ 0.95 times**
the bare app's requests/s.

The server processes import this module: ``served:asgi_app`` (a uvicorn
factory) and ``served:wsgi_app()`` (gunicorn) build the app named by the
``PEER_BENCH_FRAMEWORK`` and ``PEER_BENCH_USAGE`` environment variables.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bench
from bench import TIMES, Row, SanityError, Served, _verdict

SECTION = "10 real servers (README usage)"
USAGES = ("bare", "central rule", "route rule", "route rule + peer")
CONNECTIONS = (4, 16, 64)
TARGET = 0.95  # requests/s of the documented usage / bare


@dataclass(frozen=True)
class Framework:
    name: str
    server: str  # "uvicorn" or "gunicorn"
    needs: str  # the module whose absence skips it
    peer: str  # how "route rule + peer" reads the peer, for the row label
    trivial: str = ""  # the framework's own route-level check that does nothing, if any

    @property
    def usages(self) -> tuple[str, ...]:
        return (USAGES[0], "trivial", *USAGES[1:]) if self.trivial else USAGES


FRAMEWORKS = (
    Framework("FastAPI", "uvicorn", "fastapi", "CurrentPeer", "a trivial async dependency"),
    Framework("Flask", "gunicorn", "flask", "current_peer", "a trivial view decorator"),
    Framework("Quart", "uvicorn", "quart", "current_peer", "a trivial view decorator"),
    Framework("Litestar", "uvicorn", "litestar", "peer_of(request)", "a trivial guard"),
    Framework("Django WSGI", "gunicorn", "django", "request.peer"),
    Framework("Django ASGI", "uvicorn", "django", "request.peer"),
)


# --------------------------------------------------------------------------
# What the server processes run.
# --------------------------------------------------------------------------


def _fastapi(usage: str) -> Any:
    import fastapi_bench

    names = {"route rule + peer": "route rule + CurrentPeer", "trivial": "trivial async dependency"}
    return fastapi_bench.usage_app(names.get(usage, usage))


def _django(usage: str, is_async: bool) -> Any:
    import django_bench
    from django.test import override_settings

    django_bench._configure()
    # Enabled for the life of the process: the server's settings.
    override_settings(**django_bench._project(usage, is_async)).enable()
    if is_async:
        from django.core.handlers.asgi import ASGIHandler

        return ASGIHandler()
    from django.core.handlers.wsgi import WSGIHandler

    return WSGIHandler()


BUILDERS: dict[str, Callable[[str], Any]] = {
    "FastAPI": _fastapi,
    "Flask": bench.flask_usage,
    "Quart": bench.quart_usage,
    "Litestar": bench.litestar_usage,
    "Django WSGI": lambda usage: _django(usage, False),
    "Django ASGI": lambda usage: _django(usage, True),
}


def _build() -> Any:
    logging.getLogger("peer_middleware").setLevel(logging.ERROR)
    framework = os.environ["PEER_BENCH_FRAMEWORK"]
    usage = os.environ["PEER_BENCH_USAGE"]
    if usage not in (*USAGES, "trivial"):
        raise SystemExit(f"unknown usage {usage!r}")
    return BUILDERS[framework](usage)


def asgi_app() -> Any:
    """uvicorn factory (``served:asgi_app --factory``)."""
    return _build()


def wsgi_app() -> Any:
    """gunicorn app factory (``served:wsgi_app()``)."""
    return _build()


# --------------------------------------------------------------------------
# Measuring.
# --------------------------------------------------------------------------


def _command(framework: Framework, port: int) -> list[str]:
    if framework.server == "uvicorn":
        return bench.uvicorn_command("served:asgi_app", port)
    command = [
        sys.executable, "-m", "gunicorn", "--pythonpath", bench.BENCH_DIR,
        "--bind", f"127.0.0.1:{port}", "--workers", "1", "--worker-class", "sync",
        "--log-level", "warning", "served:wsgi_app()",
    ]  # fmt: skip
    if _gunicorn_major() >= 27:
        # gunicorn 27's control socket has one default path: servers run side by side.
        command.insert(3, "--no-control-socket")
    return command


def _gunicorn_major() -> int:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("gunicorn").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 0


def _available(framework: Framework) -> str:
    """Empty when the framework can be served; else why not."""
    for module in (framework.needs, framework.server):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed; skipped"
    return ""


def measure(framework: Framework, duration: float, reps: int) -> dict[tuple[str, int], Served]:
    """Every run of every usage of one framework, per (usage, connections)."""
    commands = {usage: functools.partial(_command, framework) for usage in framework.usages}
    try:
        return bench.serve_interleaved(
            commands,
            duration,
            reps,
            CONNECTIONS,
            env=lambda usage: {"PEER_BENCH_FRAMEWORK": framework.name, "PEER_BENCH_USAGE": usage},
        )
    except SanityError as error:
        raise SanityError(f"{framework.name} · {error}") from None


def rows_of(
    framework: Framework, runs: dict[tuple[str, int], Served], duration: float, reps: int
) -> list[Row]:
    server = "uvicorn (1 worker)" if framework.server == "uvicorn" else "gunicorn (1 sync worker)"
    rules = f"{bench.TARGET_ADDED_AT:,}" if framework.name == "FastAPI" else "2"
    rows: list[Row] = []
    for connections in CONNECTIONS:
        bare = runs[("bare", connections)]
        for usage in framework.usages[1:]:
            measured = runs[(usage, connections)]
            ratio = measured.median_rps / bare.median_rps
            label = {
                "route rule + peer": f"route rule + {framework.peer}",
                "trivial": f"{framework.trivial}, no peer_middleware",
            }.get(usage, usage)
            target, result = f"≥ {TARGET:g}{TIMES} bare", _verdict(ratio >= TARGET)
            if usage == "trivial":
                target, result = "(the framework's own cost, no target)", ""
            rows.append(
                (
                    SECTION,
                    f"{framework.name} · {server} + `wrk -t1 -c{connections} "
                    f"-d{duration:g}s`, median of {reps} · {label}",
                    rules,
                    f"{measured.median_rps:,.0f} req/s ({measured.median_cpu_us:.0f} µs CPU)",
                    f"bare {bare.median_rps:,.0f} req/s ({bare.median_cpu_us:.0f} µs CPU)",
                    f"{measured.median_cpu_us - bare.median_cpu_us:+.1f} µs CPU/req",
                    f"{ratio:.3f}{TIMES}",
                    target,
                    result,
                )
            )
    return rows


def served_rows(
    duration: float, reps: int, progress: Callable[[str], None] | None = None
) -> list[Row]:
    """Every row of section 10; a row saying why for what cannot be served."""
    if shutil.which("wrk") is None:
        note = "wrk is not installed (Debian: apt-get install wrk); section skipped"
        return [(SECTION, "every framework", "—", note, "—", "—", "—", "", "n/a")]
    rows: list[Row] = []
    for framework in FRAMEWORKS:
        missing = _available(framework)
        if missing:
            rows.append((SECTION, framework.name, "—", missing, "—", "—", "—", "", "n/a"))
            continue
        if progress is not None:
            progress(f"  {framework.name} under {framework.server}...")
        try:
            runs = measure(framework, duration, reps)
        except SanityError as error:
            raise SystemExit(f"sanity check failed: real servers: {error}") from None
        rows += rows_of(framework, runs, duration, reps)
    return rows
