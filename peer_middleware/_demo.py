"""``peer-middleware demo``: the example service behind a real Envoy sidecar.

Everything listens on 127.0.0.1, lives in a temporary directory, and is
stopped by process id (Envoy) or by its server loop (uvicorn, in a thread of
this process, so the decision log can be read back for the table).
"""

from __future__ import annotations

import importlib
import logging
import os
import ssl
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Call", "run_demo"]

TRUST_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Call:
    """One call of the demo and the status the example's policy promises."""

    caller: str  # a workload name from WORKLOADS, or "" for no certificate
    method: str
    path: str
    expected: int | str
    forged_xfcc: str | None = None


WORKLOADS = {
    "checkout": "spiffe://cluster.local/ns/shop/sa/checkout",
    "cart": "spiffe://cluster.local/ns/shop/sa/cart",
    "legacy-export": "spiffe://cluster.local/ns/shop/sa/legacy-export",
    "admin": "spiffe://cluster.local/ns/ops/sa/admin",
    "outsider": "spiffe://cluster.local/ns/web/sa/frontend",
}

CALLS = (
    Call("", "GET", "/healthz", 200),
    Call("checkout", "POST", "/payments", 201),
    Call("checkout", "GET", "/payments/42", 200),
    Call("cart", "GET", "/payments/42", 200),
    Call("cart", "POST", "/payments", 403),
    Call("legacy-export", "GET", "/payments/42", 403),
    Call("legacy-export", "POST", "/payments", 403),
    Call("admin", "DELETE", "/payments/42", 200),
    Call("checkout", "DELETE", "/payments/42", 403),
    Call("outsider", "GET", "/payments/42", 403),
    Call(
        "outsider",
        "POST",
        "/payments",
        403,
        forged_xfcc="URI=spiffe://cluster.local/ns/shop/sa/checkout",
    ),
    Call("", "GET", "/payments/42", 401),
    Call(
        "", "POST", "/payments", 401, forged_xfcc="URI=spiffe://cluster.local/ns/shop/sa/checkout"
    ),
    Call("cart", "GET", "/payments/%2e%2e/admin", 403),
    Call("cart", "GET", "/payments/%2F42", 400),
    Call("untrusted-ca", "GET", "/healthz", "TLS refused"),
)


class _Decisions(logging.Handler):
    """Keeps the decision records of the peer_middleware logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "peer_middleware", None)
        if isinstance(fields, dict):
            self.records.append(fields)


def _load_app(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    return getattr(module, attribute or "app")


def _client_context(ca_pem: bytes, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    # The sidecar presents the service's SVID; SPIFFE identifies workloads by
    # URI SAN, not host name, and the chain is still verified against the CA.
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def run_demo(*, app_spec: str, envoy_binary: str | None = None) -> int:
    import httpx

    from .testing.envoy import EnvoySidecar
    from .testing.pki import TestCA
    from .testing.processes import UvicornThread, free_port

    app = _load_app(app_spec)
    decisions = _Decisions()
    log = logging.getLogger("peer_middleware")
    previous_level = log.level
    log.addHandler(decisions)
    log.setLevel(logging.DEBUG)
    rows: list[tuple[str, str, str, str, str, str]] = []
    failures = 0
    try:
        with tempfile.TemporaryDirectory(prefix="peer-middleware-demo-") as tmp:
            workdir = Path(tmp)
            ca = TestCA.create(TRUST_DOMAIN)
            other_ca = TestCA.create("evil.example")
            server = ca.issue_svid(
                "spiffe://cluster.local/ns/shop/sa/payments", dns_names=("localhost",)
            )
            certs = {
                name: ca.issue_svid(uri).write(workdir, name) for name, uri in WORKLOADS.items()
            }
            certs["untrusted-ca"] = other_ca.issue_svid(
                "spiffe://evil.example/ns/shop/sa/checkout"
            ).write(workdir, "untrusted-ca")
            port = free_port()
            with (
                UvicornThread(app, port=port),
                EnvoySidecar(
                    upstream_port=port,
                    ca_pem=ca.pem,
                    server_cert=server,
                    workdir=workdir,
                    require_client_certificate=False,
                    envoy_binary=envoy_binary,
                ) as sidecar,
            ):
                print(f"payments service on 127.0.0.1:{port}, Envoy sidecar at {sidecar.url}")
                print(f"trust domain {TRUST_DOMAIN}; every call goes through Envoy (mTLS)\n")
                for call in CALLS:
                    rows.append(_make_call(httpx, call, sidecar.url, ca, certs, decisions))
                    if rows[-1][3] != str(call.expected):
                        failures += 1
    finally:
        log.removeHandler(decisions)
        log.setLevel(previous_level)
    _print_table(rows)
    if failures:
        print(f"\n{failures} call(s) did not get the status the policy promises")
        return 1
    print(f"\nall {len(rows)} calls got the status the policy promises")
    return 0


def _make_call(
    httpx: Any,
    call: Call,
    base_url: str,
    ca: Any,
    certs: dict[str, tuple[Path, Path]],
    decisions: _Decisions,
) -> tuple[str, str, str, str, str, str]:
    cert = certs.get(call.caller) if call.caller else None
    caller = call.caller or "(no certificate)"
    if call.forged_xfcc:
        caller += " + forged XFCC"
    headers = {"x-forwarded-client-cert": call.forged_xfcc} if call.forged_xfcc else {}
    before = len(decisions.records)
    context = _client_context(ca.pem, cert)
    try:
        with httpx.Client(verify=context, timeout=10.0, trust_env=False) as client:
            response = client.request(call.method, base_url + call.path, headers=headers)
        status = str(response.status_code)
    except (httpx.TransportError, ssl.SSLError):
        status = "TLS refused"
    rule = reason = ""
    if len(decisions.records) > before:
        record = decisions.records[-1]
        rule = record.get("rule") or "(default deny)" if record.get("status") != 400 else "-"
        reason = str(record.get("reason", ""))
    elif status == "TLS refused":
        rule, reason = "-", "Envoy refused the client certificate"
    expected = str(call.expected)
    mark = "ok" if status == expected else f"EXPECTED {expected}"
    return (caller, call.method, call.path, status, rule, f"{reason} [{mark}]")


def _print_table(rows: list[tuple[str, str, str, str, str, str]]) -> None:
    header = ("caller", "method", "path", "status", "deciding rule", "reason")
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(5)]
    line = "  ".join(h.ljust(w) for h, w in zip(header[:5], widths, strict=True)) + "  " + header[5]
    print(line)
    print("-" * len(line))
    for row in rows:
        cells = "  ".join(str(v).ljust(w) for v, w in zip(row[:5], widths, strict=True))
        print(cells + "  " + row[5])
