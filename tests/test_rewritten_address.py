"""A client address rewritten from a forwarding header never makes forwarded credentials count.

uvicorn's ``ProxyHeadersMiddleware`` (``--forwarded-allow-ips``) and
hypercorn's ``ProxyFixMiddleware`` replace ``scope["client"]`` with an address
taken from ``X-Forwarded-For`` or ``Forwarded``, which the client writes. The
guard must see through every spelling the servers accept (a port with a
leading zero, a space or a sign; IPv6 in brackets; IPv4-mapped IPv6; a quoted
``Forwarded`` node; port 0 with no header at all), must not let a remembered
verdict cover such a request, and, with the protocol classes of
:mod:`peer_middleware.servers.uvicorn`, must use the address the connection
itself came from.

The first part runs the guard and the ASGI middleware in-process, behind the
servers' own proxy-header middleware; the second runs real uvicorn and
hypercorn processes on 127.0.0.1. There the stranger connects from
``127.0.0.2`` and the trusted proxy is ``127.0.0.1``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rewritten_address_apps import ADMIN, POLICY, echo

from peer_middleware import PeerMiddleware, XfccAuthenticator
from peer_middleware.guard import Guard

XFCC = "x-forwarded-client-cert"
FORGED = f"URI={ADMIN}"
PROXY = ("127.0.0.1", 50000)
STRANGER = ("192.0.2.10", 40000)
CONNECTION = "peer_middleware.connection"
UNTRUSTED_NOTE = "ignored x-forwarded-client-cert from an untrusted peer"
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _decisions_logged(caplog: pytest.LogCaptureFixture) -> None:
    # Decision records enabled, as an operator reading them has them: the
    # one-time hint about disabled refusal reasons is not what these count.
    caplog.set_level(logging.INFO, logger="peer_middleware")


def guard() -> Guard:
    return Guard(
        policy=POLICY,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])],
    )


def forged(forwarded_for: str | None = None, forwarded: str | None = None) -> dict[str, str]:
    headers = {XFCC: FORGED}
    if forwarded_for is not None:
        headers["x-forwarded-for"] = forwarded_for
    if forwarded is not None:
        headers["forwarded"] = forwarded
    return headers


# --------------------------------------------------------------------------
# The guard: every spelling a server turns into the reported address.
# --------------------------------------------------------------------------

# (the address the server reports, X-Forwarded-For, Forwarded)
REWRITTEN = [
    pytest.param(("127.0.0.1", 5), "127.0.0.1:05", None, id="xff-leading-zero"),
    pytest.param(("127.0.0.1", 5), "127.0.0.1: 5", None, id="xff-space-before-port"),
    pytest.param(("127.0.0.1", 5), "127.0.0.1:+5", None, id="xff-plus-sign"),
    pytest.param(("127.0.0.1", 5), "127.0.0.1:5 ", None, id="xff-trailing-space"),
    pytest.param(("127.0.0.1", 50), "127.0.0.1:5_0", None, id="xff-underscore-in-port"),
    pytest.param(("127.0.0.1", -5), "127.0.0.1:-5", None, id="xff-negative-port"),
    pytest.param(("127.0.0.1", 5), "203.0.113.9, 127.0.0.1:05", None, id="xff-second-entry"),
    pytest.param(("127.0.0.1", 5), "127.0.0.1:05,203.0.113.9", None, id="xff-first-entry"),
    pytest.param(("::1", 5), "[::1]:5", None, id="xff-ipv6"),
    pytest.param(("::1", 5), "[::1]:05", None, id="xff-ipv6-leading-zero"),
    pytest.param(("0:0:0:0:0:0:0:1", 5), "[0:0:0:0:0:0:0:1]:5", None, id="xff-ipv6-long-form"),
    pytest.param(("::1", 5), "[0::1]:5", None, id="xff-ipv6-other-spelling"),
    pytest.param(("::1%lo", 5), "[::1%lo]:5", None, id="xff-ipv6-scoped"),
    pytest.param(("::ffff:127.0.0.1", 5), "[::ffff:127.0.0.1]:5", None, id="xff-ipv4-mapped"),
    pytest.param(("::ffff:7f00:1", 5), "[::ffff:7f00:1]:5", None, id="xff-ipv4-mapped-hex"),
    pytest.param(("127.0.0.1", 5), "[::ffff:127.0.0.1]:5", None, id="xff-mapped-entry-v4-client"),
    pytest.param(("127.0.0.1", 0), "127.0.0.1", None, id="xff-port-zero"),
    pytest.param(("127.0.0.1", 0), None, None, id="port-zero-without-any-header"),
    pytest.param(("127.0.0.1", 0), "203.0.113.9", None, id="port-zero-unrelated-header"),
    pytest.param(("127.0.0.1", 70000), None, None, id="port-beyond-65535"),
    pytest.param(("127.0.0.1", -2), None, None, id="port-below-minus-one"),
    pytest.param(("127.0.0.1", "5"), None, None, id="port-not-a-number"),
    pytest.param(("127.0.0.1", 0), None, "for=127.0.0.1", id="forwarded-port-zero"),
    pytest.param(("127.0.0.1", 5), None, 'for="127.0.0.1:5"', id="forwarded-quoted-with-port"),
    pytest.param(("127.0.0.1", 5), None, 'for="127.0.0.1:05"', id="forwarded-leading-zero"),
    pytest.param(("127.0.0.1", 5), None, "for=127.0.0.1:5", id="forwarded-unquoted-with-port"),
    pytest.param(("127.0.0.1", 5), None, 'For="127.0.0.1:5"', id="forwarded-name-case"),
    pytest.param(("127.0.0.1", 5), None, 'for = "127.0.0.1:5"', id="forwarded-spaces"),
    pytest.param(("127.0.0.1", 5), None, 'for="127.0.0.1\\:5"', id="forwarded-quoted-pair"),
    pytest.param(("::1", 5), None, 'for="[::1]:5"', id="forwarded-ipv6"),
    pytest.param(
        ("::ffff:127.0.0.1", 5), None, 'for="[::ffff:127.0.0.1]:5"', id="forwarded-ipv4-mapped"
    ),
    pytest.param(
        ("127.0.0.1", 5),
        None,
        'proto=https;for="127.0.0.1:5";by=_proxy',
        id="forwarded-pair-among-others",
    ),
    pytest.param(
        ("127.0.0.1", 5), None, 'for=203.0.113.9, for="127.0.0.1:5"', id="forwarded-second-element"
    ),
    pytest.param(("_hidden", 0), None, "for=_hidden", id="forwarded-obfuscated"),
    pytest.param(("unknown", 0), None, "for=unknown", id="forwarded-unknown"),
    pytest.param(("127.0.0.1", 5), "203.0.113.9", 'for="127.0.0.1:5"', id="both-headers"),
]

# A real TCP peer (the trusted proxy) with headers that merely mention addresses.
NOT_REWRITTEN = [
    pytest.param(PROXY, None, None, id="no-header"),
    pytest.param(PROXY, "203.0.113.9", None, id="xff-the-proxys-client"),
    pytest.param(PROXY, "127.0.0.1", None, id="xff-local-client-without-port"),
    pytest.param(PROXY, "127.0.0.1:50001", None, id="xff-other-port"),
    pytest.param(PROXY, "127.0.0.2:50000", None, id="xff-other-host"),
    pytest.param(PROXY, "[::1]:50000", None, id="xff-other-family"),
    pytest.param(PROXY, "unknown, , [::1", None, id="xff-garbage"),
    pytest.param(PROXY, None, "for=127.0.0.1", id="forwarded-without-port"),
    pytest.param(PROXY, None, 'for="127.0.0.1:50001"', id="forwarded-other-port"),
    pytest.param(PROXY, None, 'by="127.0.0.1:50000";for=203.0.113.9', id="forwarded-by-not-for"),
    pytest.param(PROXY, None, "for=_hidden", id="forwarded-obfuscated"),
    pytest.param(PROXY, None, "for=unknown", id="forwarded-unknown"),
    pytest.param(PROXY, None, 'for="unterminated', id="forwarded-garbage"),
    pytest.param(("::1", 50000), "[::1]", None, id="ipv6-entry-without-port"),
    pytest.param(("127.0.0.1", -1), None, None, id="wsgi-unknown-port"),
]


@pytest.mark.parametrize(("client", "forwarded_for", "forwarded"), REWRITTEN)
def test_a_rewritten_address_never_makes_forwarded_credentials_count(
    client: Any, forwarded_for: str | None, forwarded: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    checked = guard()
    headers = forged(forwarded_for, forwarded)
    for path in ("/admin/1", "/admin/2", "/admin/1"):
        verdict = checked.check("GET", path, path, client, headers)
        assert verdict.decision.status == 401, verdict.decision
        assert verdict.peer is None
        assert verdict.notes == (UNTRUSTED_NOTE,)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings


@pytest.mark.parametrize(("client", "forwarded_for", "forwarded"), NOT_REWRITTEN)
def test_the_connections_own_peer_is_still_trusted(
    client: Any, forwarded_for: str | None, forwarded: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    checked = guard()
    headers = forged(forwarded_for, forwarded)
    for path in ("/admin/1", "/admin/2", "/admin/1"):
        verdict = checked.check("GET", path, path, client, headers)
        assert verdict.allowed, verdict.decision
        assert verdict.peer is not None
        assert verdict.peer.principal == ADMIN
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_the_guard_reads_forwarded_when_it_reads_forwarded_credentials() -> None:
    assert {"x-forwarded-for", "forwarded"} <= guard().header_names
    without = Guard(policy=POLICY)
    assert not {"x-forwarded-for", "forwarded"} & without.header_names


@pytest.mark.parametrize(
    ("client", "forwarded_for", "forwarded", "says"),
    [
        pytest.param(
            ("127.0.0.1", 5),
            "127.0.0.1:05",
            None,
            "the server reports a client address taken from X-Forwarded-For (127.0.0.1)",
            id="x-forwarded-for",
        ),
        pytest.param(
            ("127.0.0.1", 5),
            None,
            'for="127.0.0.1:5"',
            "the server reports a client address taken from Forwarded (127.0.0.1)",
            id="forwarded",
        ),
        pytest.param(
            ("127.0.0.1", 0),
            None,
            None,
            "the server reports a client address with port 0 (127.0.0.1)",
            id="port-zero",
        ),
    ],
)
def test_the_warning_says_why_and_names_the_settings(
    client: Any,
    forwarded_for: str | None,
    forwarded: str | None,
    says: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard().check("GET", "/admin/1", "/admin/1", client, forged(forwarded_for, forwarded))
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert message == (
        f"{says}, not the connection's own peer; forwarded credentials are ignored because "
        "the proxy cannot be identified. Let the server record the connection's own address "
        "(uvicorn --http peer_middleware.servers.uvicorn:H11Protocol) or turn its rewriting "
        "off (uvicorn --forwarded-allow-ips='' or proxy_headers=False; hypercorn without "
        "ProxyFixMiddleware)."
    )


# --------------------------------------------------------------------------
# The guard's memory: a verdict for the proxy never covers a rewritten address.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "then"),
    [
        pytest.param(
            forged(forwarded="for=203.0.113.9"),
            forged(forwarded='for="127.0.0.1:5"'),
            id="forwarded-header",
        ),
        pytest.param(forged(), forged(), id="no-header"),
        pytest.param(
            forged("203.0.113.9"), forged("127.0.0.1:05, 203.0.113.9"), id="x-forwarded-for"
        ),
    ],
)
@pytest.mark.parametrize("port", [0, 5])
def test_a_remembered_verdict_does_not_cover_a_rewritten_address(
    first: dict[str, str], then: dict[str, str], port: int
) -> None:
    checked = guard()
    for _ in range(3):  # remembered from the second time on
        assert checked.check("GET", "/admin/1", "/admin/1", PROXY, first).allowed
    if port == 5 and "forwarded" not in then and "x-forwarded-for" not in then:
        # Port 5 with no header at all is a real peer: the proxy itself, reconnected.
        assert checked.check("GET", "/admin/1", "/admin/1", ("127.0.0.1", port), then).allowed
        return
    verdict = checked.check("GET", "/admin/1", "/admin/1", ("127.0.0.1", port), then)
    assert verdict.decision.status == 401, verdict.decision
    assert verdict.notes == (UNTRUSTED_NOTE,)


def test_the_proxy_is_remembered_by_host_when_nothing_was_forwarded() -> None:
    # No forwarding header and a real port: the rewrite check cannot depend on
    # the port, so a new connection of the same proxy is the same caller.
    checked = guard()
    first = checked.check("GET", "/admin/1", "/admin/1", PROXY, forged())
    second = checked.check("GET", "/admin/1", "/admin/1", ("127.0.0.1", 50001), forged())
    assert first.allowed
    assert second.allowed
    assert second.peer is first.peer


# --------------------------------------------------------------------------
# Through the servers' own proxy-header middleware, in-process.
# --------------------------------------------------------------------------


class Seen:
    """An ASGI app that notes the client it was handed, then calls ``app``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.clients: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.clients.append(scope.get("client"))
        await self.app(scope, receive, send)


def scope(
    client: Any, headers: dict[str, str], extensions: dict[str, Any] | None = None
) -> dict[str, Any]:
    built: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "method": "GET",
        "path": "/admin/1",
        "raw_path": b"/admin/1",
        "root_path": "",
        "query_string": b"",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    if extensions is not None:
        built["extensions"] = extensions
    return built


async def call(app: Any, request: dict[str, Any]) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(request, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def middleware() -> PeerMiddleware:
    return PeerMiddleware(
        echo,
        policy=POLICY,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])],
    )


@pytest.mark.parametrize(
    ("forwarded_for", "reported"),
    [
        pytest.param("127.0.0.1:05", ("127.0.0.1", 5), id="leading-zero"),
        pytest.param("127.0.0.1: 5", ("127.0.0.1", 5), id="space-before-port"),
        pytest.param("127.0.0.1:+5", ("127.0.0.1", 5), id="plus-sign"),
        pytest.param("127.0.0.1:5_0", ("127.0.0.1", 50), id="underscore"),
        pytest.param("127.0.0.1:-5", ("127.0.0.1", -5), id="negative"),
        pytest.param("127.0.0.1:99999", ("127.0.0.1", 99999), id="beyond-65535"),
        pytest.param("127.0.0.1", ("127.0.0.1", 0), id="no-port"),
        pytest.param("[::1]:5", ("::1", 5), id="ipv6"),
        pytest.param("[::ffff:127.0.0.1]:05", ("::ffff:127.0.0.1", 5), id="ipv4-mapped"),
    ],
)
@pytest.mark.parametrize("trusted_hosts", ["*", "192.0.2.10"], ids=["all", "the-stranger"])
async def test_uvicorn_proxy_headers_rewrite_is_seen_through(
    forwarded_for: str, reported: tuple[str, int], trusted_hosts: str
) -> None:
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    seen = Seen(middleware())
    app = ProxyHeadersMiddleware(seen, trusted_hosts=trusted_hosts)
    status, body = await call(app, scope(STRANGER, forged(forwarded_for)))
    assert seen.clients == [reported]  # uvicorn did rewrite the address
    assert (status, body) == (401, BODY_401)


@pytest.mark.parametrize(
    ("mode", "headers", "reported"),
    [
        pytest.param("modern", forged(forwarded="for=127.0.0.1"), "127.0.0.1", id="forwarded"),
        pytest.param(
            "modern",
            forged(forwarded="for=127.0.0.1;proto=https"),
            "127.0.0.1",
            id="forwarded-with-proto",
        ),
        pytest.param(
            "modern", forged(forwarded="proto=https;for=::1"), "::1", id="forwarded-bare-ipv6"
        ),
        pytest.param(
            "modern",
            forged(forwarded="for=203.0.113.9, for=127.0.0.1"),
            "127.0.0.1",
            id="forwarded-last-hop",
        ),
        pytest.param("legacy", forged("127.0.0.1"), "127.0.0.1", id="x-forwarded-for"),
        pytest.param("legacy", forged("[::1]:5, ::1"), "::1", id="x-forwarded-for-ipv6"),
    ],
)
async def test_hypercorn_proxy_fix_rewrite_is_seen_through(
    mode: Any, headers: dict[str, str], reported: str
) -> None:
    from hypercorn.middleware import ProxyFixMiddleware

    seen = Seen(middleware())
    app = ProxyFixMiddleware(seen, mode=mode, trusted_hops=1)
    status, body = await call(app, scope(STRANGER, headers))
    assert seen.clients == [(reported, 0)]
    assert (status, body) == (401, BODY_401)


# --------------------------------------------------------------------------
# The address the server integration recorded for the connection.
# --------------------------------------------------------------------------


def recorded(client: Any) -> dict[str, Any]:
    return {CONNECTION: {"client": client}}


@pytest.mark.parametrize(
    ("reported", "headers", "extensions", "principal"),
    [
        pytest.param(
            PROXY, forged(), recorded(STRANGER), None, id="stranger-behind-a-rewritten-address"
        ),
        pytest.param(
            ("127.0.0.1", 5),
            forged("127.0.0.1:05"),
            recorded(STRANGER),
            None,
            id="stranger-with-a-spoofed-header",
        ),
        pytest.param(
            ("203.0.113.9", 0),
            forged("203.0.113.9"),
            recorded(PROXY),
            ADMIN,
            id="proxy-whose-client-the-server-reports",
        ),
        pytest.param(
            ("127.0.0.1", 0),
            forged(forwarded="for=127.0.0.1"),
            recorded(("::1", 43000)),
            ADMIN,
            id="proxy-over-ipv6",
        ),
        pytest.param(PROXY, forged(), recorded(None), None, id="unix-socket"),
        pytest.param(PROXY, forged(), recorded("127.0.0.1"), None, id="malformed-address"),
        pytest.param(PROXY, forged(), {CONNECTION: "127.0.0.1"}, None, id="malformed-entry"),
        pytest.param(PROXY, forged(), {"tls": {}}, ADMIN, id="other-extensions-only"),
    ],
)
async def test_the_recorded_connection_address_is_preferred(
    reported: Any,
    headers: dict[str, str],
    extensions: dict[str, Any],
    principal: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    status, body = await call(middleware(), scope(reported, headers, extensions))
    if principal is None:
        assert (status, body) == (401, BODY_401)
    else:
        assert status == 200
        assert httpx.Response(200, content=body).json()["principal"] == principal
    # No warning about a rewritten address (a stranger's forwarded header is
    # warned about as such: the connection's own peer is not a trusted proxy).
    assert [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and "not in the xfcc authenticator's" not in r.getMessage()
    ] == []


# --------------------------------------------------------------------------
# Real servers on 127.0.0.1.
# --------------------------------------------------------------------------


@contextlib.contextmanager
def server(name: str, args: list[str], log_dir: Path) -> Iterator[int]:
    from peer_middleware.testing.processes import ManagedProcess, free_port, wait_for_port

    port = free_port()
    path = [str(TESTS.parent), str(TESTS)]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    command = [sys.executable, "-m", *[arg.replace("{port}", str(port)) for arg in args]]
    with ManagedProcess(command, log_dir=log_dir, name=name, env=env) as process:
        try:
            wait_for_port("127.0.0.1", port, timeout=20, alive=process.is_running)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\n{process.log_text()}") from error
        yield port


def uvicorn(http: str | None) -> list[str]:
    args = [
        "uvicorn",
        "--factory",
        "rewritten_address_apps:uvicorn_app",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--forwarded-allow-ips",
        "*",
        "--lifespan",
        "off",
        "--no-access-log",
        "--ws",
        "wsproto",
    ]
    if http is not None:
        args += ["--http", http]
    return args


HYPERCORN = [
    "hypercorn",
    "--bind",
    "127.0.0.1:{port}",
    "asgi:rewritten_address_apps:hypercorn_app()",
]


def get(port: int, path: str, headers: dict[str, str], source: str) -> httpx.Response:
    """GET from ``source`` (127.0.0.2 is the stranger, 127.0.0.1 the trusted proxy)."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as http:
        return http.get(f"http://127.0.0.1:{port}{path}", headers=headers)


def refused(response: httpx.Response) -> None:
    assert (response.status_code, response.content) == (401, BODY_401), response.text


@pytest.fixture(scope="module")
def uvicorn_star(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with server("uvicorn", uvicorn(None), tmp_path_factory.mktemp("uvicorn")) as port:
        yield port


@pytest.fixture(scope="module")
def hypercorn_modern(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    pytest.importorskip("hypercorn")
    with server("hypercorn", HYPERCORN, tmp_path_factory.mktemp("hypercorn")) as port:
        yield port


@pytest.fixture(
    scope="module",
    params=["H11Protocol", "HttpToolsProtocol"],
)
def uvicorn_recording(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    if request.param == "HttpToolsProtocol":
        pytest.importorskip("httptools")
    http = f"peer_middleware.servers.uvicorn:{request.param}"
    with server("uvicorn", uvicorn(http), tmp_path_factory.mktemp("uvicorn")) as port:
        yield port


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("forwarded_for", "reported"),
    [
        pytest.param("127.0.0.1:05", ["127.0.0.1", 5], id="leading-zero"),
        pytest.param("127.0.0.1: 5", ["127.0.0.1", 5], id="space-before-port"),
        pytest.param("127.0.0.1:+5", ["127.0.0.1", 5], id="plus-sign"),
        pytest.param("[::ffff:127.0.0.1]:5", ["::ffff:127.0.0.1", 5], id="ipv4-mapped"),
        pytest.param("127.0.0.1", ["127.0.0.1", 0], id="no-port"),
    ],
)
def test_uvicorn_forwarded_allow_ips_star(
    uvicorn_star: int, forwarded_for: str, reported: list[Any]
) -> None:
    headers = forged(forwarded_for)
    echoed = get(uvicorn_star, "/echo/x", headers, "127.0.0.2")
    assert echoed.status_code == 200
    assert echoed.json()["client"] == reported  # uvicorn rewrote the address
    assert echoed.json()["principal"] is None
    refused(get(uvicorn_star, "/admin/x", headers, "127.0.0.2"))


@pytest.mark.e2e
def test_uvicorn_forwarded_allow_ips_star_without_a_header(uvicorn_star: int) -> None:
    refused(get(uvicorn_star, "/admin/x", forged(), "127.0.0.2"))
    # The trusted proxy itself, sending no X-Forwarded-For, is still read.
    response = get(uvicorn_star, "/admin/x", forged(), "127.0.0.1")
    assert response.status_code == 200
    assert response.json()["principal"] == ADMIN


@pytest.mark.e2e
@pytest.mark.parametrize(
    "forwarded",
    [
        pytest.param("for=127.0.0.1", id="plain"),
        pytest.param("for=127.0.0.1;proto=https", id="with-proto"),
        pytest.param("for=203.0.113.9, for=127.0.0.1", id="last-hop"),
    ],
)
def test_hypercorn_proxy_fix_modern(hypercorn_modern: int, forwarded: str) -> None:
    headers = forged(forwarded=forwarded)
    echoed = get(hypercorn_modern, "/echo/x", headers, "127.0.0.2")
    assert echoed.status_code == 200
    assert echoed.json()["client"] == ["127.0.0.1", 0]  # hypercorn rewrote the address
    assert echoed.json()["principal"] is None
    refused(get(hypercorn_modern, "/admin/x", headers, "127.0.0.2"))


@pytest.mark.e2e
def test_hypercorn_proxy_fix_modern_without_a_header(hypercorn_modern: int) -> None:
    refused(get(hypercorn_modern, "/admin/x", forged(), "127.0.0.2"))
    response = get(hypercorn_modern, "/admin/x", forged(), "127.0.0.1")
    assert response.status_code == 200
    assert response.json()["principal"] == ADMIN


@pytest.mark.e2e
@pytest.mark.parametrize(
    "forwarded_for",
    [
        pytest.param("127.0.0.1:05", id="leading-zero"),
        pytest.param("127.0.0.1", id="no-port"),
        pytest.param(None, id="no-header"),
    ],
)
def test_uvicorn_protocol_class_records_the_connection(
    uvicorn_recording: int, forwarded_for: str | None
) -> None:
    headers = forged(forwarded_for)
    echoed = get(uvicorn_recording, "/echo/x", headers, "127.0.0.2")
    assert echoed.status_code == 200
    body = echoed.json()
    assert body["connection"]["client"][0] == "127.0.0.2"
    assert body["principal"] is None
    refused(get(uvicorn_recording, "/admin/x", headers, "127.0.0.2"))


@pytest.mark.e2e
def test_uvicorn_protocol_class_lets_the_proxy_forward_its_client(uvicorn_recording: int) -> None:
    # A proxy that adds X-Forwarded-For, as every proxy does: uvicorn reports
    # the proxy's client with port 0, and the recorded address is the proxy's.
    headers = forged("203.0.113.9")
    response = get(uvicorn_recording, "/admin/x", headers, "127.0.0.1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["client"] == ["203.0.113.9", 0]
    assert body["connection"]["client"][0] == "127.0.0.1"
    assert body["principal"] == ADMIN


def websocket(port: int, source: str, headers: dict[str, str]) -> tuple[int, str | None]:
    """Open a WebSocket from ``source``; the first text message, or the refusal's status."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import (
        AcceptConnection,
        CloseConnection,
        RejectConnection,
        RejectData,
        Request,
        TextMessage,
    )

    connection = WSConnection(ConnectionType.CLIENT)
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source, 0)
    ) as sock:
        sock.sendall(
            connection.send(Request(host="127.0.0.1", target="/admin/ws", extra_headers=extra))
        )
        text = ""
        status: int | None = None
        while True:
            data = sock.recv(65536)
            if not data:
                if status is not None:
                    return status, None
                raise ConnectionError("the server closed the connection")
            connection.receive_data(data)
            for event in connection.events():
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        return status, None
                elif isinstance(event, RejectData):
                    if event.body_finished and status is not None:
                        return status, None
                elif isinstance(event, TextMessage):
                    text += event.data
                    if event.message_finished:
                        sock.sendall(connection.send(CloseConnection(code=1000)))
                        return 101, text
                elif not isinstance(event, AcceptConnection):
                    raise AssertionError(f"unexpected event {event!r}")


@pytest.mark.e2e
def test_uvicorn_protocol_class_records_the_connection_of_a_websocket(
    uvicorn_recording: int,
) -> None:
    pytest.importorskip("wsproto")
    status, _ = websocket(uvicorn_recording, "127.0.0.2", forged("127.0.0.1:05"))
    assert status == 401
    status, text = websocket(uvicorn_recording, "127.0.0.1", forged("203.0.113.9"))
    assert status == 101
    assert text is not None
    assert httpx.Response(200, content=text.encode()).json()["principal"] == ADMIN
