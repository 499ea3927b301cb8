"""The whole ASGI middleware: fuzzed method, path, raw_path, client and headers.

Input lines: method; decoded path (UTF-8, invalid bytes replaced, as ASGI
servers decode it); raw_path (``-`` for none); the client (an index into a
list of addresses, trusted and not); then headers, ``name: value``.
Expected: the status is 200, 400, 401 or 403, no exception escapes, and
nothing is logged at ERROR (the middleware's "internal error" refusal).
Anything else is a crash.
"""

from __future__ import annotations

from typing import Any

from _common import ErrorLog, fuzz, instrumented, latin1, lines

with instrumented():
    from peer_middleware import (
        Anyone,
        Authenticated,
        Namespace,
        PeerMiddleware,
        Policy,
        Principal,
        TrustDomain,
        XfccAuthenticator,
        allow,
        audit,
        deny,
    )
    from peer_middleware.authenticators import (
        ForwardedCertificateAuthenticator,
        JwtSvidAuthenticator,
    )
    from peer_middleware.bundles import StaticX509Bundle
    from peer_middleware.keys import StaticJwks
    from peer_middleware.x509 import X509SvidVerifier

from peer_middleware.testing import TestCA, forwarded_cert_headers, xfcc_header
from peer_middleware.testing.tokens import TokenMinter

READER = "spiffe://cluster.local/ns/shop/sa/reader"
LEGACY = "spiffe://cluster.local/ns/shop/sa/legacy"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
CA = TestCA.create("cluster.local")
SVID = CA.issue_svid(READER)
VERIFIER = X509SvidVerifier(StaticX509Bundle({"cluster.local": [CA.certificate]}))
MINTER = TokenMinter()
TOKEN = MINTER.jwt_svid(READER, "payments", lifetime=365 * 86400)

POLICY = Policy(
    [
        allow("healthz", Anyone(), methods="GET", paths="/healthz"),
        allow("public", Anyone(), methods="GET", paths="/public/**"),
        allow(
            "read-payment",
            Namespace("shop", trust_domain="cluster.local"),
            methods=["GET", "HEAD"],
            paths="/payments/{payment_id}",
        ),
        allow("admin", Principal(ADMIN), paths="/admin/**"),
        allow("files", TrustDomain("cluster.local"), paths="/files/{rest:path}"),
        allow("items", Authenticated(), methods="GET", paths=["/items/<int:item_id>", "/a/*/c"]),
        deny("no-legacy", Principal(LEGACY), paths="/payments/**"),
        deny("no-secrets", Anyone(), paths="/public/secret/**"),
        audit("audit-admin", Authenticated(), paths="/admin/**"),
    ]
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


MIDDLEWARE = PeerMiddleware(
    app,
    policy=POLICY,
    authenticators=[
        XfccAuthenticator(
            trusted_proxies=["127.0.0.1", "::1"], forward_client_cert="append_forward"
        ),
        ForwardedCertificateAuthenticator(
            "haproxy", trusted_proxies=["127.0.0.2"], verifier=VERIFIER
        ),
        JwtSvidAuthenticator(keys=StaticJwks(MINTER.jwks()), audience="payments"),
    ],
)
CLIENTS: list[tuple[str, int] | None] = [
    ("127.0.0.1", 50000),
    ("127.0.0.2", 50000),
    ("::1", 1),
    ("127.0.0.1", 0),
    ("10.0.0.1", 2),
    ("not-an-address", 3),
    None,
]
ERRORS = ErrorLog()


def _seed(method: str, path: str, raw: str, client: int, headers: dict[str, str]) -> bytes:
    fields = [method, path, raw, str(client), *(f"{k}: {v}" for k, v in headers.items())]
    return "\n".join(fields).encode("utf-8")


SEEDS = [
    _seed("GET", "/healthz", "/healthz", 4, {}),
    _seed("GET", "/payments/1", "/payments/1", 0, {"x-forwarded-client-cert": xfcc_header(READER)}),
    _seed("GET", "/payments/1/../2", "-", 0, {"x-forwarded-client-cert": xfcc_header(LEGACY)}),
    _seed(
        "POST",
        "/admin;x=1//users",
        "/admin;x=1//users",
        2,
        {"x-forwarded-client-cert": xfcc_header(ADMIN)},
    ),
    _seed("GET", "/files/a/b", "/files/a%2Fb", 1, forwarded_cert_headers("haproxy", SVID)),
    _seed("GET", "/items/42", "/items/42", 4, {"authorization": f"Bearer {TOKEN}"}),
    _seed("get", "/public/x", "/public/%C3", 5, {"x-forwarded-for": "127.0.0.1"}),
    _seed(
        "GET",
        "/a/b/c",
        "/a/b/c",
        3,
        {"x-forwarded-for": "10.9.9.9", "x-forwarded-client-cert": "URI=x"},
    ),
]


def _call(scope: dict[str, Any]) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    coroutine = MIDDLEWARE(scope, receive, send)
    try:
        coroutine.send(None)
    except StopIteration:
        pass
    else:
        coroutine.close()
        raise AssertionError("the middleware suspended on in-memory I/O")
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"], sent
    status: int = sent[0]["status"]
    return status


def test_one_input(data: bytes) -> None:
    fields = [*lines(data), b"", b"", b"", b""]
    method = latin1(fields[0])
    path = fields[1].decode("utf-8", "replace")
    raw_path = None if fields[2] == b"-" else fields[2]
    digits = "".join(c for c in latin1(fields[3]) if "0" <= c <= "9")[:3]
    client = CLIENTS[int(digits or 0) % len(CLIENTS)]
    headers = []
    for field in fields[4:]:
        if not field:
            continue
        name, _, value = field.partition(b":")
        headers.append((name.strip().lower(), value.strip(b" \t")))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    if raw_path is not None:
        scope["raw_path"] = raw_path
    status = _call(scope)
    ERRORS.check()
    assert status in (200, 400, 401, 403), status


if __name__ == "__main__":
    fuzz(test_one_input, SEEDS)
