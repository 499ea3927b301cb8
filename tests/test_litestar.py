"""The Litestar integration: install() in front of the router, require() guards, the peer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

litestar = pytest.importorskip("litestar")

from litestar import Controller, Litestar, Request, Router, get, put, websocket  # noqa: E402
from litestar.connection import WebSocket  # noqa: E402
from litestar.exceptions import WebSocketDisconnect  # noqa: E402
from litestar.params import FromPath  # noqa: E402
from litestar.testing import TestClient  # noqa: E402

from peer_middleware import (  # noqa: E402
    Anyone,
    ConfigurationError,
    Namespace,
    PeerMiddleware,
    Policy,
    Principal,
    XfccAuthenticator,
    allow,
)
from peer_middleware.litestar import (  # noqa: E402
    LitestarRouteTable,
    current_peer,
    install,
    peer_of,
    require,
)
from peer_middleware.testing.processes import UvicornThread  # noqa: E402

TD = "cluster.local"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
READER = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
SHOP = Namespace("shop", trust_domain=TD)
POLICY = Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz")])
BROAD = Policy([allow("broad", Anyone(), paths="/**")])


def headers_for(principal: str | None) -> dict[str, str]:
    return {"x-forwarded-client-cert": f"URI={principal}"} if principal else {}


@get("/healthz")
async def healthz(request: Request[Any, Any, Any]) -> dict[str, Any]:
    peer = current_peer(request)
    return {"caller": peer.principal if peer else None}


@get("/payments/{payment_id:str}", guards=[require(SHOP)])
async def read_payment(
    payment_id: FromPath[str], request: Request[Any, Any, Any]
) -> dict[str, Any]:
    return {"id": payment_id, "caller": peer_of(request).principal}


@get("/payments/export", guards=[require(Principal(ADMIN), name="export")])
async def export(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return {"export": True, "caller": peer_of(request).principal}


@get("/open")
async def open_view() -> str:
    return "open"


class Orders(Controller):
    path = "/orders"
    guards = [require(SHOP)]  # noqa: RUF012 - Litestar's own idiom

    @get("/{order_id:int}")
    async def read(
        self, order_id: FromPath[int], request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        return {"order": order_id, "caller": peer_of(request).principal}

    @put("/{order_id:int}", guards=[require(Principal(CHECKOUT, ADMIN), name="writer")])
    async def update(
        self, order_id: FromPath[int], request: Request[Any, Any, Any]
    ) -> dict[str, Any]:
        return {"order": order_id, "caller": peer_of(request).principal}


@websocket("/ws", guards=[require(SHOP)])
async def stream(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    await socket.send_text(peer_of(socket).principal)
    await socket.close()


def build(policy: Policy = POLICY) -> Litestar:
    shop = Router(path="/shop", route_handlers=[Orders], guards=[require(~Principal(ADMIN))])
    app = Litestar([healthz, read_payment, export, open_view, shop, stream])
    install(app, policy=policy, authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])])
    return app


def at_local_address(app: Any) -> Any:
    """Litestar's TestClient connects from "testclient"; a proxy on 127.0.0.1 here."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            scope["client"] = ("127.0.0.1", 50000)
        await app(scope, receive, send)

    return asgi


def call(app: Any, method: str, url: str, principal: str | None) -> tuple[int, Any]:
    with TestClient(at_local_address(app)) as client:
        response = client.request(method, url, headers=headers_for(principal))
    if response.status_code >= 400 or "json" not in response.headers.get("content-type", ""):
        return response.status_code, response.content
    return response.status_code, response.json()


CASES = [
    ("GET", "/healthz", None, 200, {"caller": None}),
    ("GET", "/healthz", READER, 200, {"caller": READER}),
    ("GET", "/payments/7", READER, 200, {"id": "7", "caller": READER}),
    ("GET", "/payments/7", ADMIN, 403, BODY_403),
    ("GET", "/payments/7", None, 401, BODY_401),
    # The literal path wins over {payment_id}, and only its own guard applies.
    ("GET", "/payments/export", ADMIN, 200, {"export": True, "caller": ADMIN}),
    ("GET", "/payments/export", READER, 403, BODY_403),
    ("GET", "/open", ADMIN, 403, BODY_403),
    ("GET", "/payments/a/../7", READER, 200, {"id": "7", "caller": READER}),
    # Router, controller and handler guards must all hold.
    ("GET", "/shop/orders/3", READER, 200, {"order": 3, "caller": READER}),
    ("GET", "/shop/orders/3", ADMIN, 403, BODY_403),
    ("PUT", "/shop/orders/3", CHECKOUT, 200, {"order": 3, "caller": CHECKOUT}),
    ("PUT", "/shop/orders/3", READER, 403, BODY_403),
    # {order_id:int} does not match, a method no handler has: the central policy alone.
    ("GET", "/shop/orders/three", READER, 403, BODY_403),
    ("DELETE", "/shop/orders/3", CHECKOUT, 403, BODY_403),
]


@pytest.mark.parametrize(("method", "url", "principal", "status", "body"), CASES)
def test_requests(method: str, url: str, principal: str | None, status: int, body: Any) -> None:
    assert call(build(), method, url, principal) == (status, body)


@pytest.mark.parametrize(
    ("url", "principal", "status", "body"),
    [
        ("/open", ADMIN, 200, b"open"),
        ("/payments/7", ADMIN, 403, BODY_403),
        ("/payments/7", None, 401, BODY_401),
        ("/shop/orders/3", ADMIN, 403, BODY_403),
    ],
)
def test_guards_refuse_what_a_broad_policy_lets_through(
    url: str, principal: str | None, status: int, body: bytes
) -> None:
    assert call(build(BROAD), "GET", url, principal) == (status, body)


def test_websocket_allowed_and_refused() -> None:
    with TestClient(at_local_address(build())) as client:
        with client.websocket_connect("/ws", headers=headers_for(READER)) as socket:
            assert socket.receive_text() == READER
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            client.websocket_connect("/ws", headers=headers_for(ADMIN)) as socket,
        ):
            socket.receive_text()  # pragma: no cover - refused before the handshake
    assert refused.value.code == 1008  # the middleware's close before accepting


def test_routes_are_read_from_the_handlers_and_their_layers() -> None:
    app = Litestar([healthz, read_payment, export, open_view, stream])
    names = sorted(route.name for route in LitestarRouteTable(app).rules)

    assert names[:2] == [
        "GET /payments/export export",
        "GET /payments/{payment_id:str} read_payment",
    ]
    # The websocket handler is named by its class, which varies between versions.
    assert len(names) == 3
    assert names[2].endswith(" /ws stream")


@get("/late", guards=[require(Anyone())])
async def late() -> str:  # pragma: no cover - refused
    return "late"


@put("/payments/{payment_id:str}", guards=[require(Anyone())])
async def late_on_a_known_path(payment_id: FromPath[str]) -> str:  # pragma: no cover - refused
    return "late"


@pytest.mark.parametrize("handler", [late, late_on_a_known_path], ids=["new-path", "known-path"])
def test_handlers_registered_after_install_refuse_route_rules(handler: Any) -> None:
    app = build()
    app.register(handler)

    assert call(app, "GET", "/payments/7", READER) == (403, BODY_403)
    assert call(app, "GET", "/healthz", None) == (200, {"caller": None})


def test_install_returns_the_middleware_once() -> None:
    app = Litestar([healthz])
    middleware = install(app, policy=POLICY)

    assert isinstance(middleware, PeerMiddleware)
    assert app.asgi_handler is middleware
    with pytest.raises(ConfigurationError, match="already installed"):
        install(app, policy=POLICY)


def test_guard_without_install_refuses() -> None:
    app = Litestar([read_payment])

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/payments/7", headers=headers_for(READER))

    assert response.status_code == 500
    assert READER not in response.text


@pytest.mark.e2e
def test_under_uvicorn_with_xfcc_from_127_0_0_1() -> None:
    with (
        UvicornThread(build()) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        for url, principal, status in [
            ("/payments/7", READER, 200),
            ("/payments/7", ADMIN, 403),
            ("/payments/7", None, 401),
            ("/payments/export", ADMIN, 200),
            ("/shop/orders/3", READER, 200),
            ("/healthz", None, 200),
            ("/open", READER, 403),
        ]:
            response = client.get(url, headers=headers_for(principal))
            assert response.status_code == status, (url, principal)
            if status >= 400:
                assert response.content == {401: BODY_401, 403: BODY_403}[status]
        assert client.get("/payments/7", headers=headers_for(READER)).json() == {
            "id": "7",
            "caller": READER,
        }


def test_websocket_refused_by_its_guard_under_a_broad_policy() -> None:
    with (
        TestClient(at_local_address(build(BROAD))) as client,
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect("/ws", headers=headers_for(ADMIN)) as socket,
    ):
        socket.receive_text()  # pragma: no cover - refused before accepting
    assert (refused.value.code, refused.value.detail) == (1008, "")
