"""The Quart integration: PeerAuth on app.asgi_app, require, g.peer, current_peer."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

quart = pytest.importorskip("quart")

from quart import Blueprint, Quart, g, got_request_exception, websocket  # noqa: E402
from quart.testing import WebsocketResponseError  # noqa: E402
from quart.testing.app import LifespanError  # noqa: E402

from peer_middleware import (  # noqa: E402
    Anyone,
    AuthenticationFailed,
    ConfigurationError,
    Namespace,
    Policy,
    Principal,
    XfccAuthenticator,
    allow,
)
from peer_middleware.asgi import PEER_SCOPE_KEY  # noqa: E402
from peer_middleware.quart import PeerAuth, QuartRouteTable, current_peer, require  # noqa: E402
from peer_middleware.testing.processes import UvicornThread  # noqa: E402

TD = "cluster.local"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
READER = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
CLIENT = {"client": ("127.0.0.1", 50000)}
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
SHOP = Namespace("shop", trust_domain=TD)
RULES = [allow("healthz", Anyone(), methods="GET", paths="/healthz")]
POLICY = Policy(RULES)
BROAD = Policy([allow("broad", Anyone(), paths="/**")])
ORDER = "Put the route decorator first and @require\\(\\.\\.\\.\\) below it"


def peer_auth(app: Quart | None = None, policy: Policy = POLICY) -> PeerAuth:
    return PeerAuth(
        app, policy=policy, authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])]
    )


def headers_for(principal: str | None) -> dict[str, str]:
    return {"x-forwarded-client-cert": f"URI={principal}"} if principal else {}


def build(policy: Policy = POLICY, *, factory: bool = False) -> Quart:
    app = Quart("test_quart")
    extension = peer_auth(None if factory else app, policy)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"caller": g.peer.principal if g.peer else None}

    @app.post("/payments")
    @require(Principal(CHECKOUT), name="create-payment")
    async def create() -> tuple[dict[str, str], int]:
        return {"created_by": current_peer.principal}, 201

    @app.get("/payments/<payment_id>")
    @require(SHOP)
    async def read(payment_id: str) -> dict[str, Any]:
        return {"id": payment_id, "caller": g.peer.principal}

    @app.get("/payments/export")
    @require(Principal(ADMIN), name="export")
    def export() -> dict[str, Any]:  # a sync view: Quart runs it in its executor
        return {"export": True, "caller": current_peer.principal}

    @app.put("/payments/<int:payment_id>")
    @require(SHOP)
    @require(Principal(CHECKOUT, ADMIN), name="writer")
    async def update(payment_id: int) -> dict[str, Any]:
        return {"id": payment_id, "caller": current_peer.principal}

    @app.get("/open")
    async def open_view() -> str:
        return "open"

    @app.websocket("/ws")
    @require(SHOP)
    async def stream() -> None:
        await websocket.accept()
        await websocket.send(current_peer.principal)

    shop = Blueprint("shop", __name__, url_prefix="/shop")

    @shop.get("/orders/<order_id>")
    @require(Principal(CHECKOUT))
    async def order(order_id: str) -> dict[str, Any]:
        scope_peer = websocket_or_request_peer()
        return {"order": order_id, "caller": scope_peer, "g": g.peer.principal}

    app.register_blueprint(shop)
    if factory:
        extension.init_app(app)
    return app


def websocket_or_request_peer() -> str:
    from quart import request

    return str(request.scope[PEER_SCOPE_KEY].principal)


async def call(app: Quart, method: str, url: str, principal: str | None) -> tuple[int, Any]:
    client = app.test_client()
    response = await client.open(
        url, method=method, headers=headers_for(principal), scope_base=CLIENT
    )
    data = await response.get_data()
    if response.status_code >= 400 or response.mimetype != "application/json":
        return response.status_code, data
    return response.status_code, await response.get_json()


CASES = [
    ("GET", "/healthz", None, 200, {"caller": None}),
    ("GET", "/healthz", READER, 200, {"caller": READER}),
    ("POST", "/payments", CHECKOUT, 201, {"created_by": CHECKOUT}),
    ("POST", "/payments", READER, 403, BODY_403),
    ("POST", "/payments", None, 401, BODY_401),
    ("GET", "/payments/7", READER, 200, {"id": "7", "caller": READER}),
    ("GET", "/payments/7", ADMIN, 403, BODY_403),
    # The literal rule wins over <payment_id>, and only its own rule applies.
    ("GET", "/payments/export", ADMIN, 200, {"export": True, "caller": ADMIN}),
    ("GET", "/payments/export", READER, 403, BODY_403),
    ("PUT", "/payments/7", CHECKOUT, 200, {"id": 7, "caller": CHECKOUT}),
    ("PUT", "/payments/7", READER, 403, BODY_403),
    ("PUT", "/payments/7", ADMIN, 403, BODY_403),
    # <int:...> does not match: no view, the central policy alone.
    ("PUT", "/payments/seven", CHECKOUT, 403, BODY_403),
    ("GET", "/open", ADMIN, 403, BODY_403),
    ("GET", "/payments/a/../7", READER, 200, {"id": "7", "caller": READER}),
    ("GET", "/shop/orders/9", CHECKOUT, 200, {"order": "9", "caller": CHECKOUT, "g": CHECKOUT}),
    ("GET", "/shop/orders/9", READER, 403, BODY_403),
    ("GET", "/orders/9", CHECKOUT, 403, BODY_403),
]


@pytest.mark.parametrize("factory", [False, True], ids=["constructor", "init_app"])
@pytest.mark.parametrize(("method", "url", "principal", "status", "body"), CASES)
async def test_requests(
    factory: bool, method: str, url: str, principal: str | None, status: int, body: Any
) -> None:
    assert await call(build(factory=factory), method, url, principal) == (status, body)


async def test_view_requirement_refuses_what_a_broad_policy_lets_through() -> None:
    app = build(BROAD)

    assert await call(app, "GET", "/open", ADMIN) == (200, b"open")
    assert await call(app, "GET", "/payments/7", ADMIN) == (403, BODY_403)
    assert await call(app, "GET", "/payments/7", None) == (401, BODY_401)


async def test_websocket_allowed_and_refused() -> None:
    app = build()
    client = app.test_client()

    async with client.websocket(
        "/ws", headers=headers_for(READER), scope_base=CLIENT
    ) as connection:
        assert await connection.receive() == READER

    with pytest.raises(WebsocketResponseError) as refused:
        async with client.websocket(
            "/ws", headers=headers_for(ADMIN), scope_base=CLIENT
        ) as connection:
            await connection.receive()
    assert refused.value.response.status_code == 403


def test_routes_are_read_from_quart_url_map() -> None:
    assert sorted(route.name for route in QuartRouteTable(build()).rules) == [
        "view create /payments",
        "view export /payments/export",
        "view read /payments/<payment_id>",
        "view shop.order /shop/orders/<order_id>",
        "view stream /ws",
        "view update /payments/<int:payment_id>",
    ]


async def test_require_without_peer_auth_refuses() -> None:
    app = Quart("bare")
    app.config["PROPAGATE_EXCEPTIONS"] = True

    @app.get("/payments")
    @require(SHOP)
    async def payments() -> str:  # pragma: no cover - refused
        return "served"

    raised: list[BaseException] = []

    def record(sender: Any, exception: BaseException, **_: Any) -> None:
        raised.append(exception)

    got_request_exception.connect(record, app)
    try:
        response = await app.test_client().get("/payments", headers=headers_for(READER))
    except Exception as error:  # Quart 0.22 propagates it; 0.23 in an ExceptionGroup
        while isinstance(getattr(error, "exceptions", None), tuple) and error.exceptions:  # type: ignore[attr-defined]
            error = error.exceptions[0]  # type: ignore[attr-defined]
        raised.append(error)
    else:  # Quart 0.20 answers 500
        assert response.status_code == 500

    assert isinstance(raised[0], AuthenticationFailed)
    assert "not installed in front of this view" in str(raised[0])


def test_require_above_route_raises_at_decoration() -> None:
    app = Quart("above")
    peer_auth(app, BROAD)

    with pytest.raises(ConfigurationError, match=f"view 'payments' \\(/payments\\).*{ORDER}"):

        @require(SHOP)
        @app.get("/payments")
        async def payments() -> str:  # pragma: no cover - never served
            return "served"


def test_require_above_route_raises_at_init_app() -> None:
    app = Quart("above-init")

    @require(SHOP)
    @app.get("/payments")
    async def payments() -> str:  # pragma: no cover - never served
        return "served"

    with pytest.raises(ConfigurationError, match=ORDER):
        peer_auth(app, BROAD)


def misplaced_in_blueprint() -> Quart:
    app = Quart("bp-above")
    peer_auth(app, BROAD)
    bp = Blueprint("shop", __name__)

    @require(SHOP)
    @bp.get("/payments")
    async def payments() -> str:  # pragma: no cover - never served
        return "served"

    app.register_blueprint(bp, url_prefix="/shop")
    return app


async def test_require_above_blueprint_route_raises_at_start_up() -> None:
    app = misplaced_in_blueprint()

    with pytest.raises(LifespanError, match=f"'shop.payments' \\(/shop/payments\\).*{ORDER}"):
        async with app.test_app():
            pass  # pragma: no cover - start-up fails


async def test_require_above_blueprint_route_never_serves() -> None:
    app = misplaced_in_blueprint()

    for _ in range(2):
        with pytest.raises(ConfigurationError, match=ORDER):
            await app.test_client().get("/shop/payments", headers=headers_for(READER))


def test_double_install_refused() -> None:
    app = Quart("twice")
    peer_auth(app)

    with pytest.raises(ConfigurationError, match="already installed"):
        peer_auth(app)


@pytest.mark.e2e
def test_under_uvicorn_with_xfcc_from_127_0_0_1() -> None:
    """A real uvicorn on 127.0.0.1: start-up reads the views, XFCC from the trusted address."""
    app = build()
    with UvicornThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        cases = [
            ("/payments/7", READER, 200),
            ("/payments/7", ADMIN, 403),
            ("/payments/7", None, 401),
            ("/payments/export", ADMIN, 200),
            ("/healthz", None, 200),
            ("/open", READER, 403),
        ]
        for url, principal, status in cases:
            response = client.get(url, headers=headers_for(principal))
            assert response.status_code == status, (url, principal)
            if status >= 400:
                assert response.content == {401: BODY_401, 403: BODY_403}[status]
        assert client.get("/payments/7", headers=headers_for(READER)).json() == {
            "id": "7",
            "caller": READER,
        }


async def test_websocket_refused_by_its_view_under_a_broad_policy() -> None:
    client = build(BROAD).test_client()

    with pytest.raises(WebsocketResponseError) as refused:
        async with client.websocket(
            "/ws", headers=headers_for(ADMIN), scope_base=CLIENT
        ) as connection:
            await connection.receive()  # pragma: no cover - refused before accepting
    assert refused.value.response.status_code == 403
    assert await refused.value.response.get_data() == BODY_403


@pytest.mark.e2e
def test_under_uvicorn_with_real_mtls(tmp_path: Any) -> None:
    """Direct mTLS: uvicorn with the package's protocol class hands Quart's PeerAuth the chain."""
    import ssl
    from datetime import datetime, timedelta, timezone

    from peer_middleware.authenticators import MtlsAuthenticator
    from peer_middleware.bundles import StaticX509Bundle
    from peer_middleware.testing.pki import TestCA
    from peer_middleware.x509 import X509SvidVerifier

    now = datetime.now(timezone.utc)
    ca = TestCA.create(TD)
    server_ca = TestCA.create("web.test", common_name="quart test server CA")
    server_cert, server_key = server_ca.issue_server_cert().write(tmp_path, "server")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.pem)
    server_ca_file = tmp_path / "server-ca.pem"
    server_ca_file.write_bytes(server_ca.pem)
    clients = {}
    for name, principal in (("reader", READER), ("admin", ADMIN)):
        svid = ca.issue_svid(principal, not_after=now + timedelta(days=1))
        context = ssl.create_default_context(cafile=str(server_ca_file))
        context.load_cert_chain(*svid.write(tmp_path, name))
        clients[name] = context
    verifier = X509SvidVerifier(StaticX509Bundle({TD: [ca.certificate]}))

    app = Quart("mtls")
    PeerAuth(app, policy=POLICY, authenticators=[MtlsAuthenticator(verifier)])

    @app.get("/payments/<payment_id>")
    @require(SHOP)
    async def read(payment_id: str) -> dict[str, Any]:
        return {"id": payment_id, "caller": current_peer.principal}

    with UvicornThread(
        app,
        http="peer_middleware.servers.uvicorn:H11Protocol",
        ssl_certfile=str(server_cert),
        ssl_keyfile=str(server_key),
        ssl_ca_certs=str(bundle),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
    ) as server:
        url = f"https://127.0.0.1:{server.port}/payments/7"
        with httpx.Client(verify=clients["reader"], timeout=10) as client:
            allowed = client.get(url)
        with httpx.Client(verify=clients["admin"], timeout=10) as client:
            refused = client.get(url)
        anonymous_context = ssl.create_default_context(cafile=str(server_ca_file))
        with httpx.Client(verify=anonymous_context, timeout=10) as client:
            anonymous = client.get(url)

    assert (allowed.status_code, allowed.json()["caller"]) == (200, READER)
    assert (refused.status_code, refused.content) == (403, BODY_403)
    assert (anonymous.status_code, anonymous.content) == (401, BODY_401)


async def test_views_added_after_the_first_request_make_declared_rules_refuse() -> None:
    app = build()
    assert await call(app, "GET", "/payments/7", READER) == (200, {"id": "7", "caller": READER})

    @app.get("/late")
    @require(Anyone())
    async def late() -> str:  # pragma: no cover - refused
        return "late"

    assert await call(app, "GET", "/payments/7", READER) == (403, BODY_403)
    assert await call(app, "GET", "/healthz", None) == (200, {"caller": None})
