"""Attacks on request conditions and the Istio loader, through the real adapters.

Each case is a policy and one request, sent as a raw ASGI scope to
PeerMiddleware and as a raw WSGI environ to PeerWSGIMiddleware, each with
its memory of verdicts on and off; the status must be the expected one in
all four.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from peer_middleware import (
    Anyone,
    MemoryLimits,
    PeerMiddleware,
    PeerWSGIMiddleware,
    Policy,
    XfccAuthenticator,
    allow,
    deny,
)
from peer_middleware.conditions import Host, Port, RemoteIp, SourceIp
from peer_middleware.consul import load_consul
from peer_middleware.istio import IstioPolicyError, IstioPolicyFiles, load_istio
from peer_middleware.testing.processes import ManagedProcess

OPEN = [allow("open", Anyone())]
Request = dict[str, Any]


def deny_then_open(*when: Any) -> Policy:
    return Policy([deny("cond", Anyone(), when=list(when)), *OPEN])


def only(*when: Any) -> Policy:
    return Policy([allow("cond", Anyone(), when=list(when))])


def req(
    hosts: tuple[str, ...] = (),
    port: int | None = 8000,
    headers: tuple[tuple[str, str], ...] = (),
    client: tuple[str, int] | None = ("10.1.2.3", 40000),
) -> Request:
    return {"hosts": hosts, "port": port, "headers": headers, "client": client}


def _memory(on: bool) -> MemoryLimits | None:
    return None if on else MemoryLimits.off()


def asgi_status(policy: Policy, request: Request, memory: bool, authenticators: Any = None) -> int:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    extra = {"authenticators": authenticators} if authenticators else {}
    middleware = PeerMiddleware(app, policy=policy, memory=_memory(memory), **extra)
    headers = [(b"host", h.encode("latin-1")) for h in request["hosts"]]
    headers += [(n.encode(), v.encode("latin-1")) for n, v in request["headers"]]
    port = request["port"]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": request.get("path", "/x"),
        "raw_path": request.get("path", "/x").encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("127.0.0.1", port) if port is not None else None,
        "client": list(request["client"]) if request["client"] else None,
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for _ in range(2):  # the second time, from the memory when it is on
        sent.clear()
        asyncio.run(middleware(scope, receive, send))
    return int(sent[0]["status"])


def wsgi_status(policy: Policy, request: Request, memory: bool, authenticators: Any = None) -> int:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    extra = {"authenticators": authenticators} if authenticators else {}
    middleware = PeerWSGIMiddleware(app, policy=policy, memory=_memory(memory), **extra)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": request.get("path", "/x"),
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "wsgi.url_scheme": "http",
    }
    if request["port"] is not None:
        environ["SERVER_PORT"] = str(request["port"])
    if request["client"]:
        environ["REMOTE_ADDR"] = request["client"][0]
        environ["REMOTE_PORT"] = str(request["client"][1])
    if request["hosts"]:
        # A WSGI server joins repeated lines with ", ".
        environ["HTTP_HOST"] = ", ".join(request["hosts"])
    for name, value in request["headers"]:
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = value if key not in environ else environ[key] + ", " + value
    statuses: list[str] = []
    for _ in range(2):
        statuses.clear()
        middleware(environ, lambda status, headers: statuses.append(status))
    return int(statuses[0].split()[0])


ADMIN = "admin.example.com"
XFF = "x-forwarded-for"

# (id, policy, request, status)
CONDITION_CASES: list[tuple[str, Policy, Request, int]] = [
    # A DENY on a Host must not be dodged by a Host it cannot parse.
    ("deny-host-empty-port", deny_then_open(Host(ADMIN)), req((ADMIN + ":",)), 403),
    ("deny-host-port-zero", deny_then_open(Host(ADMIN)), req((ADMIN + ":0",)), 403),
    ("deny-host-two-dots", deny_then_open(Host(ADMIN)), req((ADMIN + "..",)), 403),
    ("deny-host-userinfo", deny_then_open(Host(ADMIN)), req(("u@" + ADMIN,)), 403),
    ("deny-host-repeated", deny_then_open(Host(ADMIN)), req(("x.example.com", ADMIN)), 403),
    ("deny-host-repeated-2", deny_then_open(Host(ADMIN)), req((ADMIN, "x.example.com")), 403),
    (
        "deny-wildcard-host-colon",
        deny_then_open(Host("*.example.com")),
        req(("a.example.com:",)),
        403,
    ),
    (
        "deny-host-still-lets-others",
        deny_then_open(Host(ADMIN)),
        req(("api.example.com:8000",)),
        200,
    ),
    ("deny-host-case-port-dot", deny_then_open(Host(ADMIN)), req(("ADMIN.example.com.:443",)), 403),
    # ... nor an ALLOW of "any host but admin" admit one.
    ("allow-not-host-unparsable", only(~Host(ADMIN)), req((ADMIN + ":",)), 401),
    ("allow-not-host-repeated", only(~Host(ADMIN)), req(("x.example.com", ADMIN)), 401),
    ("allow-not-host-ok", only(~Host(ADMIN)), req(("api.example.com",)), 200),
    # A DENY on the peer's address: an address the server took from X-Forwarded-For
    # (the client wrote its own host and port there) is unknown, and denied.
    (
        "deny-source-rewritten-by-own-xff",
        deny_then_open(SourceIp("192.0.2.66")),
        req(headers=((XFF, "192.0.2.66:40000"),), client=("192.0.2.66", 40000)),
        403,
    ),
    (
        "deny-source-port-zero",
        deny_then_open(SourceIp("192.0.2.0/24")),
        req(headers=((XFF, "198.51.100.1"),), client=("198.51.100.1", 0)),
        403,
    ),
    ("deny-source-none", deny_then_open(SourceIp("192.0.2.0/24")), req(client=None), 403),
    ("deny-source-other", deny_then_open(SourceIp("192.0.2.0/24")), req(), 200),
    ("allow-source-none", only(SourceIp("192.0.2.0/24")), req(client=None), 401),
    # A DENY on the original client: too few hops (the proxy bypassed) or an entry
    # that is not an address is unknown, and denied.
    (
        "deny-remote-no-xff",
        deny_then_open(RemoteIp("192.0.2.0/24", trusted_hops=1)),
        req(client=("192.0.2.66", 40000)),
        403,
    ),
    (
        "deny-remote-entry-with-port",
        deny_then_open(RemoteIp("192.0.2.0/24", trusted_hops=1)),
        req(headers=((XFF, "192.0.2.66:1234"),)),
        403,
    ),
    (
        "deny-remote-garbage",
        deny_then_open(RemoteIp("192.0.2.0/24", trusted_hops=1)),
        req(headers=((XFF, "unknown"),)),
        403,
    ),
    (
        "deny-remote-other",
        deny_then_open(RemoteIp("192.0.2.0/24", trusted_hops=1)),
        req(headers=((XFF, "192.0.2.66, 198.51.100.1"),)),
        200,
    ),
    (
        "allow-not-remote-garbage",
        only(~RemoteIp("192.0.2.0/24", trusted_hops=1)),
        req(headers=((XFF, "unknown"),)),
        401,
    ),
    # A DENY on the server's port: a server that does not report one is denied.
    ("deny-port-unknown", deny_then_open(Port(8443)), req(port=None), 403),
    ("deny-not-port-unknown", deny_then_open(~Port(8000)), req(port=None), 403),
    ("deny-port-other", deny_then_open(Port(8443)), req(port=8000), 200),
    ("allow-not-port-unknown", only(~Port(8443)), req(port=None), 401),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("memory", [True, False], ids=["memory", "no-memory"])
@pytest.mark.parametrize("adapter", [asgi_status, wsgi_status], ids=["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("policy", "request_", "status"),
    [c[1:] for c in CONDITION_CASES],
    ids=[c[0] for c in CONDITION_CASES],
)
def test_condition_attack(
    adapter: Any, memory: bool, policy: Policy, request_: Request, status: int
) -> None:
    assert adapter(policy, request_, memory) == status


# --------------------------------------------------------------------------
# The Istio loader: never wider than Istio.
# --------------------------------------------------------------------------

HEAD = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
"""

ALLOW_ONE_CALLER = (
    HEAD
    + """spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/checkout"]
"""
)


def istio(text: str, tmp_path: Path) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return load_istio(path, namespace="shop")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("adapter", [asgi_status, wsgi_status], ids=["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("pattern", "path", "status"),
    [
        # Envoy's {**} matches zero or more segments: "/admin/" too.
        ("/admin/{**}", "/admin/", 403),
        ("/admin/{**}", "/admin/a/b", 403),
        ("/admin/{**}", "/admin", 200),
        ("/a/{*}/{**}", "/a/b/", 403),
        ("/a/{*}/{**}", "/a/b", 200),
    ],
)
def test_istio_deny_double_star_template(
    adapter: Any, pattern: str, path: str, status: int, tmp_path: Path
) -> None:
    policy = istio(
        HEAD
        + f'spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {{paths: ["{pattern}"]}}\n',
        tmp_path,
    )
    assert adapter(policy, {**req(), "path": path}, True) == status


CUT_SHORT = [
    # Each a file cut off while written: Istio would read the value-less key
    # as absent (match anything); here it is a load error.
    ("from", HEAD + "spec:\n  action: ALLOW\n  rules:\n  - from:\n"),
    ("source", HEAD + "spec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n"),
    ("from-item", HEAD + "spec:\n  action: ALLOW\n  rules:\n  - from:\n    -\n"),
    ("rule", HEAD + "spec:\n  action: ALLOW\n  rules:\n  -\n"),
    ("to", HEAD + "spec:\n  action: ALLOW\n  rules:\n  - to:\n"),
    ("operation", HEAD + "spec:\n  action: ALLOW\n  rules:\n  - to:\n    - operation:\n"),
    ("when", HEAD + "spec:\n  action: ALLOW\n  rules:\n  - when:\n"),
    ("deny-rules", HEAD + "spec:\n  action: DENY\n  rules:\n"),
    (
        "peer-authentication-mtls",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: strict, namespace: shop}\nspec:\n  mtls:\n",
    ),
    (
        "peer-authentication-spec",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: strict, namespace: shop}\nspec:\n",
    ),
]


@pytest.mark.parametrize("text", [c[1] for c in CUT_SHORT], ids=[c[0] for c in CUT_SHORT])
def test_istio_value_less_keys_are_load_errors(text: str, tmp_path: Path) -> None:
    with pytest.raises(IstioPolicyError, match="cut short"):
        istio(text, tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_istio_file_cut_short_keeps_the_last_good_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(ALLOW_ONE_CALLER)
    files = IstioPolicyFiles(path, namespace="shop", interval=None)
    policy = files.policy
    assert asgi_status(policy, req(), True) == 401
    # The same file cut after "- from:": read as written, it would allow anyone.
    cut = ALLOW_ONE_CALLER[: ALLOW_ONE_CALLER.index("- from:") + len("- from:\n")]
    path.write_text(cut)
    os.utime(path, ns=(1, 1))
    with caplog.at_level(logging.ERROR, logger="peer_middleware"):
        assert files.reload() is False
    assert "cut short" in (files.last_error or "")
    assert files.policy is policy
    assert asgi_status(files.policy, req(), True) == 401
    assert wsgi_status(files.policy, req(), True) == 401
    files.close()


def _header_policy(action: str, field: str, value: str, tmp_path: Path) -> Policy:
    rules = f"  rules:\n  - when:\n    - key: request.headers[x-env]\n      {field}: [{value!r}]\n"
    return istio(HEAD + f"spec:\n  action: {action}\n" + rules, tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("adapter", [asgi_status, wsgi_status], ids=["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("action", "field", "value", "lines", "status"),
    [
        # Envoy matches the whole value: "evil, prod" is not "prod".
        ("ALLOW", "values", "prod", ("evil, prod",), 401),
        ("ALLOW", "values", "prod", ("evil", "prod"), 401),
        ("ALLOW", "values", "prod", ("prod",), 200),
        # Two lines are one value "a,b" to Envoy.
        ("DENY", "values", "a,b", ("a", "b"), 403),
        ("DENY", "values", "a,b", ("a,b",), 403),
        ("DENY", "values", "a,b", ("a",), 200),
        # "prod" twice is "prod,prod" to Envoy: not "prod", so denied.
        ("DENY", "notValues", "prod", ("prod", "prod"), 403),
        ("DENY", "notValues", "prod", ("prod",), 200),
        ("ALLOW", "notValues", "prod", ("prod",), 401),
    ],
)
def test_istio_header_values_are_whole_values(
    adapter: Any,
    action: str,
    field: str,
    value: str,
    lines: tuple[str, ...],
    status: int,
    tmp_path: Path,
) -> None:
    policy = _header_policy(action, field, value, tmp_path)
    request = req(headers=tuple(("x-env", line) for line in lines))
    assert adapter(policy, request, True) == status


# --------------------------------------------------------------------------
# The Consul loader: an L7 header is Envoy's whole value too.
# --------------------------------------------------------------------------

CONSUL_TD = "11111111-2222-3333-4444-555555555555.consul"
WEB = f"spiffe://{CONSUL_TD}/ns/default/dc/dc1/svc/web"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("adapter", [asgi_status, wsgi_status], ids=["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("action", "lines", "status"),
    [
        ("allow", ("evil, prod",), 403),
        ("allow", ("evil", "prod"), 403),
        ("allow", ("prod",), 200),
        ("deny", ("prod", "prod"), 200),  # "prod,prod" to Envoy: not "prod"
        ("deny", ("prod",), 403),
    ],
)
def test_consul_header_exact_is_the_whole_value(
    adapter: Any, action: str, lines: tuple[str, ...], status: int, tmp_path: Path
) -> None:
    permissions: list[Any] = [
        {"Action": action, "HTTP": {"Header": [{"Name": "x-env", "Exact": "prod"}]}}
    ]
    if action == "deny":
        permissions.append({"Action": "allow"})
    entry = {
        "Kind": "service-intentions",
        "Name": "api",
        "Sources": [{"Name": "web", "Permissions": permissions}],
    }
    path = tmp_path / "api.json"
    path.write_text(json.dumps(entry))
    policy = load_consul(path, service="api", trust_domain=CONSUL_TD)
    request = req(
        headers=(
            ("x-forwarded-client-cert", f"By=spiffe://{CONSUL_TD}/x;URI={WEB}"),
            *(("x-env", line) for line in lines),
        ),
        client=("127.0.0.1", 50000),
    )
    auth = [XfccAuthenticator(trusted_proxies=["127.0.0.1"])]
    assert adapter(policy, request, True, auth) == status


# --------------------------------------------------------------------------
# The server's port: gunicorn on a unix socket takes SERVER_PORT from Host.
# --------------------------------------------------------------------------

GUNICORN_APP = """
from peer_middleware import Anyone, PeerWSGIMiddleware, Policy, allow
from peer_middleware.conditions import Port


def inner(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


app = PeerWSGIMiddleware(inner, policy=Policy([allow("tls-port", Anyone(), when=Port(8443))]))
"""


def _unix_get(path: Path, host: str) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(path))
        conn.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_gunicorn_unix_socket_port_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "port_attack_app.py").write_text(GUNICORN_APP)
    sock = tmp_path / "app.sock"
    args = [sys.executable, "-m", "gunicorn", "--bind", f"unix:{sock}", "--workers", "1"]
    args += ["--chdir", str(tmp_path), "port_attack_app:app"]
    with ManagedProcess(args, log_dir=tmp_path, name="gunicorn"):
        deadline = time.monotonic() + 15
        while True:
            try:
                status = _unix_get(sock, "api.example.com:8443")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        # SERVER_PORT is the Host header's port here: a client's choice, not known.
        assert status == 401
        assert _unix_get(sock, "api.example.com") == 401


# --------------------------------------------------------------------------
# A directory of files: none skipped for the case of its suffix.
# --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["deny.YAML", "deny.Yml", "deny.json"])
def test_istio_directory_reads_every_policy_file(name: str, tmp_path: Path) -> None:
    text = HEAD + 'spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: ["/admin"]}\n'
    if name.endswith(".json"):
        text = json.dumps(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": "p", "namespace": "shop"},
                "spec": {
                    "action": "DENY",
                    "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}],
                },
            }
        )
    (tmp_path / name).write_text(text)
    policy = load_istio(tmp_path, namespace="shop")
    assert asgi_status(policy, {**req(), "path": "/admin"}, True) == 403
    assert wsgi_status(policy, {**req(), "path": "/admin"}, True) == 403
    assert asgi_status(policy, {**req(), "path": "/other"}, True) == 200


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_consul_directory_reads_an_upper_case_json_file(tmp_path: Path) -> None:
    entry = {
        "Kind": "service-intentions",
        "Name": "api",
        "Sources": [{"Name": "web", "Action": "deny"}, {"Name": "*", "Action": "allow"}],
    }
    (tmp_path / "api.JSON").write_text(json.dumps(entry))
    policy = load_consul(tmp_path, service="api", trust_domain=CONSUL_TD)
    request = req(
        headers=(("x-forwarded-client-cert", f"By=spiffe://{CONSUL_TD}/x;URI={WEB}"),),
        client=("127.0.0.1", 50000),
    )
    auth = [XfccAuthenticator(trusted_proxies=["127.0.0.1"])]
    assert asgi_status(policy, request, True, auth) == 403
    assert wsgi_status(policy, request, True, auth) == 403


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("adapter", [asgi_status, wsgi_status], ids=["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("action", "hosts", "host", "status"),
    [
        # Istio: an exact host with any port, case-insensitive, never a trailing dot...
        ("ALLOW", "api.example.com", "API.example.com:8080", 200),
        ("ALLOW", "api.example.com", "api.example.com.", 401),
        ("ALLOW", "api.example.com", "api.example.com.:8080", 401),
        # ... and *.example.com a suffix of the whole value: no port after it.
        ("ALLOW", "*.example.com", "a.example.com", 200),
        ("ALLOW", "*.example.com", "a.example.com:8080", 401),
        ("ALLOW", "*.example.com:8080", "a.example.com:8080", 200),
        # A DENY stays as wide as Host(): port and trailing dot ignored.
        ("DENY", "*.example.com", "a.example.com.:8080", 403),
        ("DENY", "api.example.com", "api.example.com.", 403),
    ],
)
def test_istio_hosts_as_envoy_matches_them(
    adapter: Any, action: str, hosts: str, host: str, status: int, tmp_path: Path
) -> None:
    policy = istio(
        HEAD
        + f"spec:\n  action: {action}\n  rules:\n  - to:\n"
        + f'    - operation: {{hosts: ["{hosts}"]}}\n',
        tmp_path,
    )
    assert adapter(policy, req((host,)), True) == status
