"""Soak test: the FastAPI example under uvicorn workers behind a real Envoy, under load and faults.

``nox -s soak`` (or ``python benchmarks/soak.py [--duration S] [--concurrency N]``
from the repository root) does, all on 127.0.0.1, in a temporary directory:

1. mints a CA for ``cluster.local`` and X.509-SVIDs for checkout, cart,
   legacy-export, admin and an outsider; a second ``cluster.local`` CA (added
   to the trust bundle mid-run) with an SVID for ``shop/reports``; and a rogue
   CA nobody trusts, with an SVID that claims to be checkout;
2. writes the app's trust bundle file (the first CA only), starts a JWKS
   server and mints Kubernetes service-account tokens (valid, expired, wrong
   audience, unknown key, legacy, unsigned, garbage);
3. starts ``uvicorn examples.fastapi_app.app:app --workers N
   --forwarded-allow-ips=''`` as a subprocess, configured by environment
   variables (``PEER_MIDDLEWARE_BUNDLE_FILE``, ``PEER_MIDDLEWARE_TOKEN_*``),
   and a real Envoy in front of it (mTLS optional, so anonymous and token
   callers get through; ``SANITIZE_SET`` with ``Cert=``/``Chain=``);
4. drives a weighted mix of legitimate, forbidden, anonymous, forged,
   malformed, token, rotated-CA and untrusted-CA calls from ``--concurrency``
   asyncio tasks (one httpx connection pool per client certificate) for
   ``--warmup`` then ``--duration`` seconds, comparing every status with the
   one the example's policy promises;
5. meanwhile stops the JWKS server (port closed) at 20 % of the run and
   restarts it on the same port at 60 %, and at 40 % replaces the bundle file
   (by rename) with one holding both CAs.

It prints requests per class and status, 5xx, wrong decisions, transport
errors and the resident memory (VmRSS) of each uvicorn worker after the
warm-up and at the end, and exits 1 on any 5xx, wrong decision, transport
error of a trusted caller, worker restart, or RSS growth over
``--max-rss-growth`` MiB in any worker. Linux only (it reads ``/proc``).
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import re
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from peer_middleware.testing.envoy import EnvoySidecar  # noqa: E402
from peer_middleware.testing.pki import TestCA  # noqa: E402
from peer_middleware.testing.processes import ManagedProcess, free_port, wait_for_port  # noqa: E402
from peer_middleware.testing.tokens import JwksServer, SigningKey, TokenMinter  # noqa: E402

TRUST_DOMAIN = "cluster.local"
ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "payments"
SELF = "spiffe://cluster.local/ns/shop/sa/payments"

WORKLOADS = {
    "checkout": "spiffe://cluster.local/ns/shop/sa/checkout",
    "cart": "spiffe://cluster.local/ns/shop/sa/cart",
    "legacy-export": "spiffe://cluster.local/ns/shop/sa/legacy-export",
    "admin": "spiffe://cluster.local/ns/ops/sa/admin",
    "outsider": "spiffe://cluster.local/ns/web/sa/frontend",
}
# (namespace, service account) of the valid token pools
TOKEN_ACCOUNTS = {
    "tok-cart": ("shop", "cart"),
    "tok-checkout": ("shop", "checkout"),
    "tok-admin": ("ops", "admin"),
    "tok-outsider": ("web", "frontend"),
    "tok-legacy": ("shop", "legacy-export"),
}
TOKENS_PER_ACCOUNT = 32  # distinct tokens per account: exercises the token cache

TLS_REFUSED = "TLS refused"
ROTATION = "401 before rotation, 200 after"  # the rotated-CA caller's expectation
FORGED_CHECKOUT = "URI=spiffe://cluster.local/ns/shop/sa/checkout"
FORGED_ADMIN = f"By={SELF};Hash=00;URI=spiffe://cluster.local/ns/ops/sa/admin"


@dataclass(frozen=True)
class Call:
    """One kind of request and the status the example's policy promises for it."""

    kind: str  # the class it is counted under
    caller: str | None  # client certificate name, None for none
    method: str
    path: str  # "{id}" becomes a fresh payment id on every request
    expected: int | str
    weight: int = 1
    headers: tuple[tuple[str, str], ...] = ()
    token: str | None = None  # a token pool name; "garbage" is new on every request


def _calls() -> tuple[Call, ...]:
    c = Call
    return (
        # legitimate callers, per the policy table of examples/README.md
        c("legitimate", "checkout", "POST", "/payments", 201, 6),
        c("legitimate", "checkout", "GET", "/payments/{id}", 200, 6),
        c("legitimate", "cart", "GET", "/payments/{id}", 200, 8),
        c("legitimate", "admin", "DELETE", "/payments/{id}", 200, 4),
        c("legitimate", "legacy-export", "GET", "/healthz", 200, 2),
        c("legitimate", "outsider", "GET", "/healthz", 200, 2),
        # identified but not allowed
        c("forbidden", "cart", "POST", "/payments", 403, 3),
        c("forbidden", "legacy-export", "GET", "/payments/{id}", 403, 3),
        c("forbidden", "legacy-export", "POST", "/payments", 403, 2),
        c("forbidden", "checkout", "DELETE", "/payments/{id}", 403, 2),
        c("forbidden", "outsider", "GET", "/payments/{id}", 403, 2),
        c("forbidden", "admin", "GET", "/payments/{id}", 403, 2),
        c("forbidden", "cart", "GET", "/admin/{id}", 403, 1),
        # no certificate, no token
        c("anonymous", None, "GET", "/healthz", 200, 3),
        c("anonymous", None, "GET", "/payments/{id}", 401, 3),
        c("anonymous", None, "POST", "/payments", 401, 2),
        c("anonymous", None, "DELETE", "/payments/{id}", 401, 2),
        # XFCC (and X-Forwarded-For) written by the client: Envoy replaces it
        c(
            "forged",
            None,
            "POST",
            "/payments",
            401,
            3,
            (("x-forwarded-client-cert", FORGED_CHECKOUT),),
        ),
        c(
            "forged",
            "outsider",
            "POST",
            "/payments",
            403,
            2,
            (("x-forwarded-client-cert", FORGED_CHECKOUT),),
        ),
        c(
            "forged",
            "cart",
            "DELETE",
            "/payments/{id}",
            403,
            2,
            (("x-forwarded-client-cert", FORGED_ADMIN),),
        ),
        c(
            "forged",
            "legacy-export",
            "GET",
            "/payments/{id}",
            403,
            2,
            (("x-forwarded-client-cert", f"{FORGED_CHECKOUT},{FORGED_CHECKOUT}"),),
        ),
        c(
            "forged",
            "cart",
            "GET",
            "/payments/{id}",
            200,
            2,
            (("x-forwarded-client-cert", FORGED_ADMIN),),
        ),
        c(
            "forged",
            None,
            "GET",
            "/payments/{id}",
            401,
            1,
            (("x-forwarded-client-cert", 'URI="unterminated;;'), ("x-forwarded-for", "127.0.0.1")),
        ),
        c("forged", None, "GET", "/healthz", 200, 1, (("x-forwarded-client-cert", ";;;=,"),)),
        # paths the normaliser refuses or rewrites
        c("malformed-path", "cart", "GET", "/payments/%2F{id}", 400, 2),
        c("malformed-path", "cart", "GET", "/payments/{id}%5C..", 400, 1),
        c("malformed-path", None, "GET", "/payments/%zz{id}", 400, 1),
        c("malformed-path", "cart", "GET", "/payments/%00{id}", 400, 1),
        c("malformed-path", "cart", "GET", "/payments/%2e%2e/admin/{id}", 403, 2),
        c("malformed-path", "legacy-export", "GET", "/healthz/%2e%2e/payments/{id}", 403, 1),
        c("malformed-path", None, "GET", "/payments/%2e%2e/healthz", 200, 1),
        c("malformed-path", "cart", "GET", "/payments//{id}", 200, 1),
        c("malformed-path", "checkout", "GET", "/payments/{id};v=1", 200, 1),
        c("malformed-path", "cart", "GET", "/x/%2e%2e/payments/./{id}", 200, 1),
        # Kubernetes service-account tokens, no certificate
        c("token", None, "GET", "/payments/{id}", 200, 4, token="tok-cart"),
        c("token", None, "POST", "/payments", 201, 3, token="tok-checkout"),
        c("token", None, "DELETE", "/payments/{id}", 200, 2, token="tok-admin"),
        c("token", None, "GET", "/payments/{id}", 403, 2, token="tok-outsider"),
        c("token", None, "GET", "/payments/{id}", 403, 1, token="tok-legacy"),
        c("token", None, "GET", "/payments/{id}", 401, 1, token="expired"),
        c("token", None, "GET", "/payments/{id}", 401, 1, token="wrong-audience"),
        c("token", None, "GET", "/payments/{id}", 401, 1, token="other-issuer"),
        c("token", None, "GET", "/payments/{id}", 401, 1, token="unknown-kid"),
        c("token", None, "GET", "/payments/{id}", 401, 1, token="legacy-secret"),
        c("token", None, "GET", "/payments/{id}", 401, 1, token="unsigned"),
        c("token", None, "GET", "/healthz", 401, 1, token="garbage"),
        c("token", None, "GET", "/payments/{id}", 401, 1, token="garbage"),
        # a certificate and a token: the certificate names the peer
        c("token", "cart", "DELETE", "/payments/{id}", 403, 1, token="tok-admin"),
        # a CA added to the bundle file mid-run
        c("rotated-ca", "reports", "GET", "/payments/{id}", ROTATION, 3),
        # a CA nobody trusts: Envoy ends the handshake
        c("untrusted-ca", "rogue", "GET", "/healthz", TLS_REFUSED, 1),
    )


CALLS = _calls()
CLASSES = tuple(dict.fromkeys(call.kind for call in CALLS))


# -- servers ------------------------------------------------------------------


class RestartableJwksServer(JwksServer):
    """A :class:`JwksServer` that comes back on the port it had after :meth:`stop`."""

    def __init__(self, jwks: dict[str, Any], *, issuer: str) -> None:
        super().__init__(jwks, issuer=issuer)
        self.bind_port = 0

    def start(self) -> RestartableJwksServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", self.bind_port), Handler)
        server.daemon_threads = True
        self._server = server
        self.bind_port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="jwks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        super().stop()
        self._server = None

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.bind_port}/jwks.json"


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def uvicorn_workers(master: int) -> list[int]:
    """The worker processes of a uvicorn master (not multiprocessing's helpers)."""
    return [
        pid
        for pid in _children(master)
        if "multiprocessing" in _cmdline(pid) and "resource_tracker" not in _cmdline(pid)
    ]


# -- credentials ----------------------------------------------------------------


@dataclass
class Credentials:
    contexts: dict[str | None, ssl.SSLContext]
    tokens: dict[str, list[str]]
    ca_pem: bytes


def _client_context(ca_pem: bytes, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    # SPIFFE names workloads by URI SAN, not host name; the chain is still verified.
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def _tokens(minter: TokenMinter, lifetime: float) -> dict[str, list[str]]:
    tokens: dict[str, list[str]] = {}
    for name, (namespace, account) in TOKEN_ACCOUNTS.items():
        # every token differs (its pod and service-account uids are random)
        tokens[name] = [
            minter.kubernetes(namespace, account, AUDIENCE, lifetime=lifetime)
            for _ in range(TOKENS_PER_ACCOUNT)
        ]
    stranger = SigningKey("ec")  # never published in the JWKS
    other = TokenMinter(issuer="https://evil.example", keys=minter.keys)
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
    valid = tokens["tok-admin"][0]
    tokens.update(
        {
            "expired": [minter.kubernetes("shop", "cart", AUDIENCE, lifetime=-600)],
            "wrong-audience": [minter.kubernetes("shop", "cart", "billing", lifetime=lifetime)],
            "other-issuer": [other.kubernetes("shop", "cart", AUDIENCE, lifetime=lifetime)],
            "unknown-kid": [minter.kubernetes("shop", "cart", AUDIENCE, key=stranger)],
            "legacy-secret": [minter.legacy_kubernetes_secret("shop", "cart")],
            "unsigned": [unsigned_header.decode() + "." + valid.split(".")[1] + "."],
        }
    )
    return tokens


# -- the load ------------------------------------------------------------------


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    wrong: Counter[str] = field(default_factory=Counter)
    wrong_examples: list[str] = field(default_factory=list)
    server_errors: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)
    transitional: int = 0
    rotated_ok_after: int = 0
    latencies: list[float] = field(default_factory=list)
    warmup_requests: int = 0

    def record(self, call: Call, outcome: str, expected: str, ok: bool, detail: str) -> None:
        self.requests[call.kind] += 1
        self.statuses.setdefault(call.kind, Counter())[outcome] += 1
        if outcome.isdigit() and int(outcome) >= 500:
            self.server_errors += 1
        if not ok:
            self.wrong[call.kind] += 1
            if len(self.wrong_examples) < 20:
                caller = call.caller or "(no certificate)"
                token = f" token={call.token}" if call.token else ""
                self.wrong_examples.append(
                    f"{call.kind}: {caller}{token} {call.method} {detail} -> {outcome},"
                    f" expected {expected}"
                )


@dataclass
class Timeline:
    """Monotonic times of the faults (None until they happen)."""

    rotated_at: float | None = None
    # X509BundleFile looks at the file every 5 s; 3 s more for a busy worker
    grace: float = 8.0
    ended_at: float | None = None
    jwks_served: list[int] = field(default_factory=list)  # at the stop, at the restart
    events: list[tuple[float, str]] = field(default_factory=list)

    def expected(self, call: Call, sent_at: float) -> tuple[set[str], str]:
        """The acceptable outcomes of ``call`` sent at ``sent_at``, and how to show them."""
        if call.expected != ROTATION:
            return {str(call.expected)}, str(call.expected)
        rotated = self.rotated_at
        if rotated is None or sent_at < rotated - 1.0:
            return {"401"}, "401 (before the rotation)"
        if sent_at > rotated + self.grace:
            return {"200"}, "200 (after the rotation)"
        return {"401", "200"}, "401 or 200 (while the bundle reloads)"


class Load:
    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        *,
        concurrency: int,
        seed: int,
        timeline: Timeline,
    ) -> None:
        self.base_url = base_url
        self.credentials = credentials
        self.concurrency = concurrency
        self.random = random.Random(seed)
        self.timeline = timeline
        self.weights = [call.weight for call in CALLS]
        self.counter = 0
        self.stats = Stats()
        self.clients: dict[str | None, httpx.AsyncClient] = {}

    async def __aenter__(self) -> Load:
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        for name, context in self.credentials.contexts.items():
            self.clients[name] = httpx.AsyncClient(
                verify=context,
                limits=limits,
                timeout=httpx.Timeout(15.0),
                trust_env=False,
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for client in self.clients.values():
            await client.aclose()

    def _next_id(self) -> str:
        self.counter += 1
        return f"p-{self.counter:08d}"

    def _token(self, pool: str) -> str:
        if pool == "garbage":
            # a new, undecodable bearer value on every request: never cacheable
            noise = base64.urlsafe_b64encode(self.random.randbytes(24)).rstrip(b"=").decode()
            return f"eyJhbGciOiJFUzI1NiJ9.{noise}.{self._next_id()}"
        return self.random.choice(self.credentials.tokens[pool])

    async def one(self, call: Call, stats: Stats) -> None:
        path = call.path.replace("{id}", self._next_id())
        headers = dict(call.headers)
        if call.token:
            headers["authorization"] = f"Bearer {self._token(call.token)}"
        client = self.clients[call.caller]
        sent_at = time.monotonic()
        try:
            response = await client.request(call.method, self.base_url + path, headers=headers)
            outcome = str(response.status_code)
        except (httpx.TransportError, OSError) as exc:  # ssl.SSLError is an OSError
            outcome = TLS_REFUSED if call.expected == TLS_REFUSED else "transport error"
            if call.expected != TLS_REFUSED:
                stats.transport_errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
        stats.latencies.append(time.monotonic() - sent_at)
        allowed, shown = self.timeline.expected(call, sent_at)
        if len(allowed) > 1:
            stats.transitional += 1
        elif call.expected == ROTATION and outcome == "200":
            stats.rotated_ok_after += 1
        stats.record(call, outcome, shown, outcome in allowed, path)

    async def run(self, seconds: float, max_requests: int, stats: Stats) -> None:
        deadline = time.monotonic() + seconds
        budget = [max_requests]

        async def worker() -> None:
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                call = self.random.choices(CALLS, self.weights)[0]
                await self.one(call, stats)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))


# -- the run -------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _wait(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # retried until the deadline
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready within {timeout:g} s (last error: {last!r})")


async def _faults(
    seconds: float, jwks: RestartableJwksServer, bundle: Path, both_cas: bytes, timeline: Timeline
) -> None:
    start = time.monotonic()
    plan = [
        (0.2, "JWKS server stopped (port closed)"),
        (0.4, "trust bundle file replaced: old CA + new CA"),
        (0.6, "JWKS server restarted on the same port"),
    ]
    for fraction, event in plan:
        delay = start + fraction * seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if event.startswith("JWKS server stopped"):
            timeline.jwks_served.append(jwks.count("/jwks.json"))
            await asyncio.to_thread(jwks.stop)
        elif event.startswith("trust bundle"):
            _write_atomically(bundle, both_cas)
            timeline.rotated_at = time.monotonic()
        else:
            timeline.jwks_served.append(jwks.count("/jwks.json"))
            await asyncio.to_thread(jwks.start)
        timeline.events.append((time.monotonic() - start, event))


async def _sample_rss(
    seconds: float, workers: list[int], samples: list[tuple[float, list[int | None]]]
) -> None:
    start = time.monotonic()
    for step in range(1, 10):
        await asyncio.sleep(max(0.0, start + step * seconds / 10 - time.monotonic()))
        samples.append((time.monotonic() - start, [rss_kib(pid) for pid in workers]))


async def _soak(
    load: Load,
    args: argparse.Namespace,
    jwks: RestartableJwksServer,
    bundle: Path,
    both_cas: bytes,
    timeline: Timeline,
    workers: list[int],
) -> tuple[Stats, list[int | None], list[int | None], list[tuple[float, list[int | None]]]]:
    async with load:
        warmup = Stats()
        print(f"warm-up: {args.warmup:g} s")
        await load.run(args.warmup, args.max_requests, warmup)
        if warmup.wrong or warmup.server_errors or warmup.transport_errors:
            print("warm-up failed:", *warmup.wrong_examples, sep="\n  ")
            print("  ", dict(warmup.transport_errors))
        start_rss = [rss_kib(pid) for pid in workers]
        samples: list[tuple[float, list[int | None]]] = [(0.0, start_rss)]
        stats = Stats()
        print(f"soak: {args.duration:g} s, concurrency {args.concurrency}")
        await asyncio.gather(
            load.run(args.duration, args.max_requests, stats),
            _faults(args.duration, jwks, bundle, both_cas, timeline),
            _sample_rss(args.duration, workers, samples),
        )
        timeline.ended_at = time.monotonic()
        end_rss = [rss_kib(pid) for pid in workers]
        samples.append((args.duration, end_rss))
        stats.warmup_requests = sum(warmup.requests.values())
        if warmup.wrong or warmup.server_errors or warmup.transport_errors:
            stats.wrong["warm-up"] += sum(warmup.wrong.values())
            stats.server_errors += warmup.server_errors
            stats.transport_errors.update(warmup.transport_errors)
            stats.wrong_examples[:0] = [f"(warm-up) {e}" for e in warmup.wrong_examples]
        return stats, start_rss, end_rss, samples


def _mib(kib: int | None) -> str:
    return "gone" if kib is None else f"{kib / 1024:.1f}"


def _report(
    stats: Stats,
    args: argparse.Namespace,
    workers: list[int],
    workers_after: list[int],
    start_rss: list[int | None],
    end_rss: list[int | None],
    samples: list[tuple[float, list[int | None]]],
    timeline: Timeline,
    jwks_total: int,
    key_refresh_failures: int,
) -> int:
    total = sum(stats.requests.values())
    statuses = sorted({s for counter in stats.statuses.values() for s in counter})
    print()
    header = ["class", "requests", *statuses, "wrong"]
    rows = [
        [
            kind,
            str(stats.requests[kind]),
            *(str(stats.statuses.get(kind, Counter())[s] or "") for s in statuses),
            str(stats.wrong[kind]),
        ]
        for kind in CLASSES
    ]
    rows.append(
        [
            "total",
            str(total),
            *(str(sum(c[s] for c in stats.statuses.values())) for s in statuses),
            str(sum(stats.wrong.values())),
        ]
    )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for index, row in enumerate((header, *rows)):
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0 or index == len(rows) - 1:
            print("  ".join("-" * w for w in widths))
    latencies = sorted(stats.latencies)
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0.0
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0
    print(
        f"\n{total} requests in {args.duration:g} s ({total / args.duration:.0f}/s),"
        f" after {stats.warmup_requests} warm-up requests;"
        f" latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    print("faults:")
    for at, event in timeline.events:
        print(f"  t={at:5.1f} s  {event}")
    if len(timeline.jwks_served) == 2:
        at_stop, at_restart = timeline.jwks_served
        print(
            f"  JWKS fetches served: {at_stop} before the outage,"
            f" {jwks_total - at_restart} after the restart;"
            f" failed key refreshes logged by the workers: {key_refresh_failures}"
        )
    print(
        f"  rotated-CA calls: {stats.transitional} while the bundle reloads (401 or 200"
        f" accepted), {stats.rotated_ok_after} answered 200 after it"
    )
    print(f"\n5xx responses: {stats.server_errors}")
    print(f"wrong decisions: {sum(stats.wrong.values())}")
    for example in stats.wrong_examples:
        print(f"  {example}")
    transport = sum(stats.transport_errors.values())
    print(f"transport errors (trusted callers): {transport}")
    for error, count in stats.transport_errors.most_common(5):
        print(f"  {count} x {error}")
    print("\nresident memory (VmRSS, MiB) of the uvicorn workers:")
    growths = []
    for pid, start, end in zip(workers, start_rss, end_rss, strict=True):
        growth = None if start is None or end is None else (end - start) / 1024
        growths.append(growth)
        trend = " ".join(_mib(s[1][workers.index(pid)]) for s in samples)
        shown = "n/a" if growth is None else f"{growth:+.1f}"
        print(f"  worker {pid}: start {_mib(start)}, end {_mib(end)}, growth {shown}  [{trend}]")
    known = [g for g in growths if g is not None]
    if known and total:
        per_request = sum(known) * 1024 * 1024 / total
        print(
            f"  together {sum(known):+.1f} MiB over {total} requests: {per_request:+.0f} B/request"
        )
    failures = []
    if stats.server_errors:
        failures.append(f"{stats.server_errors} 5xx responses")
    if sum(stats.wrong.values()):
        failures.append(f"{sum(stats.wrong.values())} wrong decisions")
    if transport:
        failures.append(f"{transport} transport errors")
    if sorted(workers_after) != sorted(workers):
        failures.append(f"uvicorn workers changed: {workers} -> {workers_after}")
    for pid, growth in zip(workers, growths, strict=True):
        if growth is None:
            failures.append(f"worker {pid} gone")
        elif growth > args.max_rss_growth:
            failures.append(f"worker {pid} grew {growth:.1f} MiB (> {args.max_rss_growth:g})")
    rotated, ended = timeline.rotated_at, timeline.ended_at
    checked = rotated is not None and ended is not None and ended - rotated > timeline.grace + 2
    if checked and not stats.rotated_ok_after:
        failures.append("the CA added to the bundle was never accepted")
    if failures:
        print("\nFAIL: " + "; ".join(failures))
        return 1
    print(
        f"\nPASS: no 5xx, no wrong decision, RSS growth <= {args.max_rss_growth:g} MiB per worker"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="seconds before the RSS baseline"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent requests (32)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers (2)")
    parser.add_argument(
        "--max-requests", type=int, default=2_000_000, help="stop after this many per phase"
    )
    parser.add_argument(
        "--max-rss-growth", type=float, default=10.0, help="MiB a worker may grow (10)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the request mix")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 3600 or not 0 <= args.warmup <= 600:
        parser.error("--duration must be 1..3600 s and --warmup 0..600 s")
    if not 1 <= args.concurrency <= 256 or not 1 <= args.workers <= 16:
        parser.error("--concurrency must be 1..256 and --workers 1..16")

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="peer-soak-")))
        ca = TestCA.create(TRUST_DOMAIN)
        new_ca = TestCA.create(TRUST_DOMAIN, common_name="peer-middleware soak rotated-in CA")
        rogue_ca = TestCA.create(TRUST_DOMAIN, common_name="rogue CA")
        certs: dict[str | None, tuple[Path, Path] | None] = {None: None}
        for name, uri in WORKLOADS.items():
            certs[name] = ca.issue_svid(uri).write(workdir, name)
        certs["reports"] = new_ca.issue_svid("spiffe://cluster.local/ns/shop/sa/reports").write(
            workdir, "reports"
        )
        certs["rogue"] = rogue_ca.issue_svid(WORKLOADS["checkout"]).write(workdir, "rogue")
        server_cert = ca.issue_svid(SELF, dns_names=("localhost",))
        bundle = workdir / "bundle.pem"
        bundle.write_bytes(ca.pem)

        minter = TokenMinter(issuer=ISSUER)
        lifetime = args.warmup + args.duration + 900
        jwks = RestartableJwksServer(minter.jwks(), issuer=ISSUER)
        jwks.start()
        stack.callback(jwks.stop)

        port = free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PEER_MIDDLEWARE_") and "proxy" not in key.lower()
        }
        env.update(
            {
                "PEER_MIDDLEWARE_BUNDLE_FILE": str(bundle),
                "PEER_MIDDLEWARE_TOKEN_AUDIENCE": AUDIENCE,
                "PEER_MIDDLEWARE_TOKEN_ISSUER": ISSUER,
                "PEER_MIDDLEWARE_JWKS_URL": jwks.jwks_url,
                "PEER_MIDDLEWARE_TOKEN_ALLOW_HTTP": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            }
        )
        uvicorn = ManagedProcess(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "examples.fastapi_app.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.workers),
                "--forwarded-allow-ips=",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            log_dir=workdir,
            name="uvicorn",
            env=env,
            cwd=ROOT,
            stop_timeout=10.0,
        )
        stack.enter_context(uvicorn)
        wait_for_port("127.0.0.1", port, 30.0, alive=uvicorn.is_running)
        sidecar = stack.enter_context(
            EnvoySidecar(
                upstream_port=port,
                ca_pem=ca.pem + new_ca.pem,  # Envoy already trusts the CA the app gets later
                server_cert=server_cert,
                workdir=workdir,
                require_client_certificate=False,
            )
        )
        contexts = {name: _client_context(ca.pem, cert) for name, cert in certs.items()}
        credentials = Credentials(contexts, _tokens(minter, lifetime), ca.pem)
        base_url = sidecar.url
        print(f"app: uvicorn pid {uvicorn.pid} on 127.0.0.1:{port}, {args.workers} workers")
        print(f"Envoy pid {sidecar.pid} at {base_url}; JWKS at {jwks.jwks_url}")

        def ready() -> bool:
            token = credentials.tokens["tok-cart"][0]
            with httpx.Client(verify=contexts[None], timeout=5.0, trust_env=False) as client:
                for _ in range(20):
                    response = client.get(
                        base_url + "/payments/1", headers={"authorization": f"Bearer {token}"}
                    )
                    if response.status_code != 200:
                        return False
            return len(uvicorn_workers(uvicorn.pid)) == args.workers

        try:
            _wait("the app behind Envoy", ready, 60.0)
        except TimeoutError:
            print(uvicorn.log_text(), file=sys.stderr)
            raise
        workers = uvicorn_workers(uvicorn.pid)
        print(f"uvicorn workers: {workers}")

        timeline = Timeline()
        load = Load(
            base_url,
            credentials,
            concurrency=args.concurrency,
            seed=args.seed,
            timeline=timeline,
        )
        stats, start_rss, end_rss, samples = asyncio.run(
            _soak(load, args, jwks, bundle, ca.pem + new_ca.pem, timeline, workers)
        )
        workers_after = uvicorn_workers(uvicorn.pid)
        log = uvicorn.log_text(limit=5_000_000)
        refresh_failures = len(
            re.findall(r"(?:cannot be read|is invalid), (?:keeping the last good|no) keys", log)
        )
        if uvicorn.poll() is not None:
            print(f"uvicorn exited with {uvicorn.poll()}:\n{uvicorn.log_text()}")
        return _report(
            stats,
            args,
            workers,
            workers_after,
            start_rss,
            end_rss,
            samples,
            timeline,
            jwks.count("/jwks.json"),
            refresh_failures,
        )
    return 1  # pragma: no cover - ExitStack does not swallow exceptions


if __name__ == "__main__":
    raise SystemExit(main())
