"""A policy replaced while a request is being read: never judged without what it reads."""

from __future__ import annotations

import asyncio
from typing import Any

from peer_middleware import (
    Anyone,
    Guard,
    PeerMiddleware,
    PeerWSGIMiddleware,
    Policy,
    XfccAuthenticator,
    allow,
    deny,
)
from peer_middleware.conditions import Header

OPEN = Policy([allow("open", Anyone())])
NO_DEBUG = Policy([deny("no-debug", Anyone(), when=[Header("x-debug")]), allow("open", Anyone())])
CLIENT = ("10.0.0.7", 40000)


def guard() -> Guard:
    return Guard(policy=OPEN, authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])])


def test_headers_read_for_the_old_policy_are_refused_under_the_new_one() -> None:
    g = guard()
    read = g.header_names  # what an adapter picked the request's headers by
    g.replace_policy(NO_DEBUG)
    assert "x-debug" in g.header_names
    assert "x-debug" not in read
    # The request carried x-debug, but the adapter did not read it.
    verdict = g.check("GET", "/a", "/a", CLIENT, {}, read=read)
    assert verdict.decision.status == 403
    assert "replaced while the request was read" in verdict.decision.reason
    # Read with the new names, the same request is judged by the new policy.
    assert (
        g.check("GET", "/a", "/a", CLIENT, {"x-debug": "1"}, read=g.header_names).decision.status
        == 403
    )
    assert g.check("GET", "/a", "/a", CLIENT, {}, read=g.header_names).decision.status == 200


def test_names_that_cover_the_new_policy_are_enough() -> None:
    g = guard()
    g.replace_policy(NO_DEBUG)
    wider = g.header_names | {"x-other"}
    assert g.check("GET", "/a", "/a", CLIENT, {}, read=wider).decision.status == 200


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _asgi_status(app: PeerMiddleware, headers: list[tuple[bytes, bytes]]) -> int:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/a",
        "raw_path": b"/a",
        "headers": headers,
        "client": CLIENT,
        "server": ("127.0.0.1", 8000),
        "root_path": "",
        "query_string": b"",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return int(sent[0]["status"])


def test_asgi_reads_what_a_replaced_policy_reads() -> None:
    g = guard()
    app = PeerMiddleware(_app, guard=g)
    assert _asgi_status(app, [(b"x-debug", b"1")]) == 200
    g.replace_policy(NO_DEBUG)
    assert _asgi_status(app, [(b"x-debug", b"1")]) == 403
    assert _asgi_status(app, []) == 200


def test_wsgi_reads_what_a_replaced_policy_reads() -> None:
    g = guard()

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    app = PeerWSGIMiddleware(inner, guard=g)

    def status(extra: dict[str, str]) -> int:
        got: list[str] = []
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/a",
            "REMOTE_ADDR": CLIENT[0],
            "REMOTE_PORT": str(CLIENT[1]),
            "SERVER_PORT": "8000",
            **extra,
        }
        b"".join(app(environ, lambda s, h, e=None: got.append(s)))  # type: ignore[misc]
        return int(got[0].split()[0])

    assert status({"HTTP_X_DEBUG": "1"}) == 200
    g.replace_policy(NO_DEBUG)
    assert status({"HTTP_X_DEBUG": "1"}) == 403
    assert status({}) == 200


def test_port_condition_reads_the_servers_port_with_a_forwarded_authenticator() -> None:
    # With a forwarded-identity authenticator, the client's own port is read
    # too (to tell a rewritten address); it must never stand in for the port
    # the app was reached on.
    from peer_middleware.conditions import Port

    policy = Policy([deny("not-on-8000", Anyone(), when=[Port(8000)]), allow("open", Anyone())])
    g = Guard(policy=policy, authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])])
    assert g.check("GET", "/a", "/a", ("127.0.0.1", 40000), {}, port=8000).decision.status == 403
    assert g.check("GET", "/a", "/a", ("127.0.0.1", 8000), {}, port=9000).decision.status == 200
