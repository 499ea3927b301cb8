"""Section 8 of the benchmark suite: FastAPI as the README's FastAPI section protects it.

The same route, ``GET /payments/{payment_id}`` (``async def``), served:

* ``bare``: no middleware;
* ``trivial async dependency``: bare, plus one ``async def`` dependency that
  returns a constant (what FastAPI's dependency injection costs by itself);
* ``middleware only``: the bare app wrapped in ``PeerMiddleware`` (section 1's row);
* ``central rule``: ``install(app, policy=...)``, the rule in the central policy;
* ``route rule``: ``dependencies=[require(...)]`` on the route, no central rule for it;
* ``route rule + CurrentPeer``: the same, with ``peer: CurrentPeer`` in the handler.

In process (one coroutine, the repeat caller of section 1, 1,000 rules).
Imported by ``bench.py`` (``--skip fastapi``); section 10 (``served.py``)
serves the same apps under uvicorn.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Annotated, Any

import bench
from bench import (
    CALLER,
    DECIDING_RULE,
    TARGET_ADDED_AT,
    TARGET_ADDED_US,
    TIMES,
    TRUST_DOMAIN,
    Case,
    Row,
    SanityError,
    _verdict,
)
from fastapi import Depends, FastAPI
from starlette.responses import PlainTextResponse

from peer_middleware import Namespace, Policy
from peer_middleware.fastapi import CurrentPeer, install, require

USAGES = (
    "bare",
    "trivial async dependency",
    "middleware only",
    "central rule",
    "route rule",
    "route rule + CurrentPeer",
)
SERVED = ("bare", "central rule", "route rule", "route rule + CurrentPeer")
CONNECTIONS = (4, 16, 64)
TARGET_SERVER = 0.95  # requests/s of the documented usage / bare
SECTION = "8 FastAPI (README)"
SHOP = Namespace("shop", trust_domain=TRUST_DOMAIN)


async def _constant() -> int:
    return 1


def _route_policy() -> Policy:
    """Section 1's policy of 1,000 rules without the rule that decides the request."""
    return Policy([r for r in bench.policy(TARGET_ADDED_AT).rules if r.name != DECIDING_RULE])


def usage_app(usage: str) -> Any:
    """The FastAPI app of one usage (see the module doc)."""
    app = FastAPI()
    if usage == "trivial async dependency":

        @app.get("/payments/{payment_id}")
        async def trivial(payment_id: str, _: Annotated[int, Depends(_constant)]) -> Any:
            return PlainTextResponse("ok")

    elif usage == "route rule":

        @app.get("/payments/{payment_id}", dependencies=[require(SHOP, name=DECIDING_RULE)])
        async def declared(payment_id: str) -> Any:
            return PlainTextResponse("ok")

    elif usage == "route rule + CurrentPeer":

        @app.get("/payments/{payment_id}", dependencies=[require(SHOP, name=DECIDING_RULE)])
        async def with_peer(payment_id: str, peer: CurrentPeer) -> Any:
            return PlainTextResponse("ok" if peer.principal == CALLER else "wrong peer")

    else:

        @app.get("/payments/{payment_id}")
        async def bare(payment_id: str) -> Any:
            return PlainTextResponse("ok")

    authenticators = [bench.pki().authenticator("xfcc")]
    if usage == "middleware only":
        return bench.PeerMiddleware(
            app, policy=bench.policy(TARGET_ADDED_AT), authenticators=authenticators
        )
    if usage == "central rule":
        install(app, policy=bench.policy(TARGET_ADDED_AT), authenticators=authenticators)
    elif usage.startswith("route rule"):
        install(app, policy=_route_policy(), authenticators=authenticators)
    return app


def _expect(usage: str) -> str | None:
    return None if usage in ("bare", "trivial async dependency") else DECIDING_RULE


def cases() -> list[Case]:
    return [
        Case(
            "asgi",
            "FastAPI (README)",
            "xfcc",
            usage,
            TARGET_ADDED_AT,
            False,
            usage_app(usage),
            _expect(usage),
        )
        for usage in USAGES
    ]


BATCH = 200  # requests per timed batch: short batches, many of them


async def _run_cpu(app: Any, scopes: list[Any]) -> int:
    """The thread's CPU time (ns) for one request per scope: time the thread spent
    descheduled on a loaded machine is left out, unlike section 1's wall clock."""
    receive, send, copy = bench._receive, bench._send, dict
    start = time.thread_time_ns()
    for scope in scopes:
        await app(copy(scope), receive, send)
    return time.thread_time_ns() - start


async def measure(cases: list[Case], n: int, reps: int, no_gc: bool) -> None:
    """Best of ``reps * n / BATCH`` batches of ``BATCH`` requests per case, round-robin."""
    warm_up = max(n // 5, 200)
    for case in cases:
        try:
            await bench.check_asgi(case.app, case.requests(1)[0], case.expect)
        except SanityError as error:
            raise SystemExit(f"sanity check failed: FastAPI {case.middleware}: {error}") from None
        await bench.run_asgi(case.app, case.requests(warm_up))
    batch = min(n, BATCH)
    for _ in range(reps * max(1, n // batch)):
        for case in cases:  # round-robin, so drift hits every case alike
            scopes = case.requests(batch)
            with bench.gc_paused(no_gc):
                case.times_ns.append(await _run_cpu(case.app, scopes))


def inprocess_rows(cases: list[Case], n: int) -> list[Row]:
    best = {case.middleware: case.best_us(min(n, BATCH)) for case in cases}
    bare, trivial = best["bare"], best["trivial async dependency"]
    middleware, central = best["middleware only"], best["central rule"]
    route, peer = best["route rule"], best["route rule + CurrentPeer"]
    rows: list[Row] = []
    targets = {
        "trivial async dependency": ("(FastAPI's own cost, no target)", None),
        "middleware only": ("(section 1's row)", None),
        "central rule": (
            f"≤ middleware only + {TARGET_ADDED_US:g} µs",
            central - middleware <= TARGET_ADDED_US,
        ),
        "route rule": (
            f"≤ central rule + {TARGET_ADDED_US:g} µs",
            route - central <= TARGET_ADDED_US,
        ),
        "route rule + CurrentPeer": (
            f"CurrentPeer ({peer - route:.2f} µs) ≤ trivial dependency "
            f"({trivial - bare:.2f} µs) + 1 µs",
            peer - route <= trivial - bare + 1.0,
        ),
    }
    for usage in USAGES[1:]:
        measured = best[usage]
        target, ok = targets[usage]
        rows.append(
            (
                SECTION,
                f"in process (thread CPU time) · {usage} · XFCC repeat caller",
                f"{TARGET_ADDED_AT:,}",
                f"{measured:.2f} µs",
                f"bare {bare:.2f} µs",
                f"{measured - bare:.2f} µs",
                f"{measured / bare:.3f}{TIMES}",
                target,
                "" if ok is None else _verdict(ok),
            )
        )
    return rows


def fastapi_rows(n: int, reps: int, no_gc: bool) -> list[Row]:
    """Every row of section 8 (in process; section 10 serves the same apps under uvicorn)."""
    measured = cases()
    asyncio.run(measure(measured, n, reps, no_gc))
    rows = inprocess_rows(measured, n)
    del measured
    gc.collect()
    return rows
