"""Apps that real servers load in tests/test_rewritten_address.py (by import path).

Each serves one ASGI app behind ``PeerMiddleware`` with an
:class:`~peer_middleware.XfccAuthenticator` that trusts ``127.0.0.1`` only:

* ``/admin/...`` is allowed to ``spiffe://cluster.local/ns/ops/sa/admin`` only;
* ``/echo/...`` is allowed to anyone.

Both answer with what the app was handed: ``scope["client"]`` (after the
server's own rewriting), the connection entry
:mod:`peer_middleware.servers.uvicorn` records, and the principal the
middleware found (``null`` without one). WebSockets get the same JSON as one
text message.
"""

from __future__ import annotations

import json
from typing import Any

from peer_middleware import Anyone, PeerMiddleware, Policy, Principal, XfccAuthenticator, allow

ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
CONNECTION_EXTENSION = "peer_middleware.connection"
POLICY = Policy(
    [
        allow("admin", Principal(ADMIN), paths="/admin/**"),
        allow("echo", Anyone(), paths="/echo/**"),
    ]
)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    peer = scope.get("peer_middleware.peer")
    connection = (scope.get("extensions") or {}).get(CONNECTION_EXTENSION)
    body = json.dumps(
        {
            "client": None if scope.get("client") is None else list(scope["client"]),
            "connection": None
            if connection is None
            else {"client": None if connection["client"] is None else list(connection["client"])},
            "principal": None if peer is None else peer.principal,
        }
    )
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": body})
        await send({"type": "websocket.close", "code": 1000})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def guarded() -> PeerMiddleware:
    """The echo behind PeerMiddleware, reading XFCC from 127.0.0.1 only."""
    return PeerMiddleware(
        echo,
        policy=POLICY,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )


def uvicorn_app() -> PeerMiddleware:
    """For ``uvicorn --factory rewritten_address_apps:uvicorn_app``."""
    return guarded()


def hypercorn_app() -> Any:
    """hypercorn's own ProxyFixMiddleware (RFC 7239 ``Forwarded``) in front of the guard."""
    from hypercorn.middleware import ProxyFixMiddleware

    return ProxyFixMiddleware(guarded(), mode="modern", trusted_hops=1)
