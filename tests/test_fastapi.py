"""The FastAPI integration: install, require, CurrentPeer, OptionalPeer."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from peer_middleware import (
    AllOf,
    Anyone,
    Authenticated,
    AuthenticationFailed,
    ConfigurationError,
    Namespace,
    Policy,
    Principal,
    ProblemResponse,
    Refusal,
    XfccAuthenticator,
    allow,
)
from peer_middleware.fastapi import (
    CurrentPeer,
    OptionalPeer,
    collect_route_rules,
    install,
    require,
    route_table,
)
from peer_middleware.rules import Action

TD = "cluster.local"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
READER = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
PROXY = ("127.0.0.1", 50000)
XFCC = "x-forwarded-client-cert"

BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
BODIES = {401: BODY_401, 403: BODY_403}

SHOP = Namespace("shop", trust_domain=TD)
BASE_POLICY = Policy(
    [
        allow("healthz", Anyone(), methods="GET", paths="/healthz"),
        allow("whoami", Anyone(), methods="GET", paths="/whoami"),
    ]
)
# Lets every authenticated caller past the middleware on /payments, so that
# the route requirements themselves have to refuse.
BROAD_POLICY = Policy(
    [
        *BASE_POLICY.rules,
        allow("broad", Authenticated(), paths=["/payments/**", "/ws", "/param"]),
    ]
)


def authenticators() -> list[XfccAuthenticator]:
    return [XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])]


def headers_for(principal: str | None) -> dict[str, str]:
    return {XFCC: f"URI={principal}"} if principal else {}


def build(
    policy: Policy = BASE_POLICY, *, installed: bool = True, **options: Any
) -> tuple[FastAPI, list[str]]:
    app = FastAPI()
    ran: list[str] = []

    @app.get("/healthz")
    def healthz(peer: OptionalPeer) -> dict[str, str | None]:
        ran.append("healthz")
        return {"caller": peer.principal if peer else None}

    @app.get("/whoami")
    def whoami(peer: CurrentPeer) -> dict[str, str]:
        ran.append("whoami")
        return {"caller": peer.principal}

    @app.post(
        "/payments",
        status_code=201,
        dependencies=[require(Principal(CHECKOUT), name="create-payment")],
    )
    def create(peer: CurrentPeer) -> dict[str, str]:
        ran.append("create")
        return {"created_by": peer.principal}

    @app.get("/payments/{payment_id}", dependencies=[require(SHOP)])
    def read(payment_id: str, peer: CurrentPeer) -> dict[str, str]:
        ran.append("read")
        return {"id": payment_id, "caller": peer.principal}

    @app.put(
        "/payments/{payment_id}",
        dependencies=[require(SHOP), require(Principal(CHECKOUT, ADMIN), name="writer")],
    )
    def update(payment_id: str, peer: CurrentPeer) -> dict[str, str]:
        ran.append("update")
        return {"id": payment_id, "caller": peer.principal}

    @app.get("/param")
    def param(_: Annotated[None, require(Principal(ADMIN))], peer: CurrentPeer) -> dict[str, str]:
        ran.append("param")
        return {"caller": peer.principal}

    router = APIRouter(prefix="/v2")

    @router.get("/items/{item_id}", dependencies=[require(SHOP, name="v2-items")])
    def item(item_id: int, peer: CurrentPeer) -> dict[str, Any]:
        ran.append("item")
        return {"id": item_id, "caller": peer.principal}

    app.include_router(router)

    admin_router = APIRouter(
        prefix="/v3", dependencies=[require(Principal(ADMIN), name="v3-admin")]
    )

    @admin_router.get("/reports")
    def reports(peer: CurrentPeer) -> dict[str, str]:
        ran.append("reports")
        return {"caller": peer.principal}

    app.include_router(admin_router)

    @app.websocket("/ws", dependencies=[require(SHOP, name="ws")])
    async def ws(websocket: WebSocket, peer: CurrentPeer) -> None:
        ran.append("ws")
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"{text} {peer.principal}")
        await websocket.close()

    if installed:
        install(app, policy=policy, authenticators=authenticators(), **options)
    return app, ran


# --------------------------------------------------------------------------
# Route rules.
# --------------------------------------------------------------------------


def test_collect_route_rules() -> None:
    app, _ = build(installed=False)

    table = route_table(app)
    rules = collect_route_rules(app)

    assert [
        (route.name, [(r.name, r.action, r.who.describe(), r.methods) for r in declared])
        for route, declared in table.rules.items()
    ] == [
        (
            "POST /payments",
            [("create-payment", Action.ALLOW, Principal(CHECKOUT).describe(), None)],
        ),
        (
            "GET /payments/{payment_id}",
            [("route GET /payments/{payment_id}", Action.ALLOW, SHOP.describe(), None)],
        ),
        (
            "PUT /payments/{payment_id}",
            [("writer", Action.ALLOW, AllOf(SHOP, Principal(CHECKOUT, ADMIN)).describe(), None)],
        ),
        ("GET /param", [("route GET /param", Action.ALLOW, Principal(ADMIN).describe(), None)]),
        ("GET /v2/items/{item_id}", [("v2-items", Action.ALLOW, SHOP.describe(), None)]),
        ("GET /v3/reports", [("v3-admin", Action.ALLOW, Principal(ADMIN).describe(), None)]),
        ("WEBSOCKET /ws", [("ws", Action.ALLOW, SHOP.describe(), None)]),
    ]
    assert [r.name for r in rules] == [r.name for d in table.rules.values() for r in d]


def test_collect_route_rules_without_requirements_is_empty() -> None:
    app = FastAPI()

    @app.get("/open")
    def open_route() -> None:  # pragma: no cover - never called
        return None

    assert collect_route_rules(app) == []


# --------------------------------------------------------------------------
# Requests through the installed middleware.
# --------------------------------------------------------------------------

ALLOWED = [
    pytest.param(
        "GET", "/healthz", None, 200, {"caller": None}, "healthz", "healthz", id="healthz-anonymous"
    ),
    pytest.param(
        "GET",
        "/healthz",
        READER,
        200,
        {"caller": READER},
        "healthz",
        "healthz",
        id="healthz-optional-peer",
    ),
    pytest.param(
        "POST",
        "/payments",
        CHECKOUT,
        201,
        {"created_by": CHECKOUT},
        "create",
        "create-payment",
        id="create-checkout",
    ),
    pytest.param(
        "GET",
        "/payments/7",
        READER,
        200,
        {"id": "7", "caller": READER},
        "read",
        "route GET /payments/{payment_id}",
        id="read-shop",
    ),
    pytest.param(
        "PUT",
        "/payments/7",
        CHECKOUT,
        200,
        {"id": "7", "caller": CHECKOUT},
        "update",
        "writer",
        id="update-all-of-holds",
    ),
    pytest.param(
        "GET",
        "/param",
        ADMIN,
        200,
        {"caller": ADMIN},
        "param",
        "route GET /param",
        id="annotated-parameter-requirement",
    ),
    pytest.param(
        "GET",
        "/v2/items/3",
        READER,
        200,
        {"id": 3, "caller": READER},
        "item",
        "v2-items",
        id="router-prefix",
    ),
    pytest.param(
        "GET",
        "/v3/reports",
        ADMIN,
        200,
        {"caller": ADMIN},
        "reports",
        "v3-admin",
        id="router-level-dependency",
    ),
    pytest.param(
        "GET", "/whoami", ADMIN, 200, {"caller": ADMIN}, "whoami", "whoami", id="current-peer"
    ),
]


@pytest.mark.parametrize(
    ("method", "url", "principal", "status", "body", "handler", "rule"), ALLOWED
)
def test_allowed_requests_reach_the_handler(
    method: str,
    url: str,
    principal: str | None,
    status: int,
    body: dict[str, Any],
    handler: str,
    rule: str,
    decisions: Any,
) -> None:
    app, ran = build()
    with TestClient(app, client=PROXY) as client:
        response = client.request(method, url, headers=headers_for(principal))

    assert response.status_code == status
    assert response.json() == body
    assert ran == [handler]
    [record] = decisions()
    assert record.peer_middleware["rule"] == rule
    assert record.peer_middleware["outcome"] == "allowed"


REFUSED_BY_MIDDLEWARE = [
    pytest.param("POST", "/payments", READER, 403, id="create-by-reader"),
    pytest.param("POST", "/payments", None, 401, id="create-anonymous"),
    pytest.param("GET", "/payments/7", ADMIN, 403, id="read-other-namespace"),
    pytest.param("GET", "/payments/7", None, 401, id="read-anonymous"),
    pytest.param("PUT", "/payments/7", READER, 403, id="update-only-one-of-two"),
    pytest.param("PUT", "/payments/7", ADMIN, 403, id="update-other-one-of-two"),
    pytest.param("GET", "/param", READER, 403, id="annotated-parameter-refused"),
    pytest.param("GET", "/items/3", READER, 403, id="route-without-router-prefix"),
    pytest.param("GET", "/v2/items/3", ADMIN, 403, id="router-prefix-refused"),
    pytest.param("GET", "/v3/reports", READER, 403, id="router-level-dependency-refused"),
    pytest.param("DELETE", "/payments/7", ADMIN, 403, id="method-without-route"),
]


@pytest.mark.parametrize(("method", "url", "principal", "status"), REFUSED_BY_MIDDLEWARE)
def test_refused_before_the_handler_runs(
    method: str, url: str, principal: str | None, status: int, decisions: Any
) -> None:
    app, ran = build()
    with TestClient(app, client=PROXY) as client:
        response = client.request(method, url, headers=headers_for(principal))

    assert response.status_code == status
    assert response.content == BODIES[status]
    assert response.headers["content-type"] == "application/problem+json"
    assert ran == []
    [record] = decisions()
    assert record.peer_middleware["outcome"] == "refused"
    assert record.peer_middleware["rule"] is None
    assert record.peer_middleware["principal"] == principal


@pytest.mark.parametrize(
    ("method", "url", "principal", "reason"),
    [
        pytest.param(
            "GET",
            "/payments/7",
            ADMIN,
            f"route requires {SHOP.describe()}; {ADMIN} is not",
            id="read-other-namespace",
        ),
        pytest.param(
            "PUT",
            "/payments/7",
            READER,
            f"route requires {Principal(CHECKOUT, ADMIN).describe()}; {READER} is not",
            id="update-second-requirement",
        ),
        pytest.param(
            "GET",
            "/param",
            READER,
            f"route requires {Principal(ADMIN).describe()}; {READER} is not",
            id="annotated-parameter",
        ),
    ],
)
def test_route_requirement_refuses_what_a_broad_policy_lets_through(
    method: str, url: str, principal: str, reason: str, decisions: Any
) -> None:
    app, ran = build(BROAD_POLICY)
    with TestClient(app, client=PROXY) as client:
        response = client.request(method, url, headers=headers_for(principal))

    assert response.status_code == 403
    assert response.content == BODY_403
    assert response.headers["content-type"] == "application/problem+json"
    assert ran == []
    middleware, route = decisions()
    assert middleware.peer_middleware["outcome"] == "allowed"
    assert route.levelno == logging.INFO
    assert route.peer_middleware == {
        "outcome": "refused",
        "status": 403,
        "rule": None,
        "reason": reason,
        "principal": principal,
        "proof": "proxy-asserted",
        "proxy": "127.0.0.1",
        "method": method,
        "path": url,
        "dry_run": False,
        "shadow": (),
        "audit": (),
        "notes": (),
    }


def test_current_peer_anonymous_is_401_problem(decisions: Any) -> None:
    app, ran = build()
    with TestClient(app, client=PROXY) as client:
        response = client.get("/whoami")

    assert response.status_code == 401
    assert response.content == BODY_401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert ran == []
    _, route = decisions()
    assert route.peer_middleware["reason"] == "this route needs an authenticated peer"
    assert route.peer_middleware["status"] == 401


def test_route_refusal_uses_custom_responder_and_www_authenticate() -> None:
    seen: list[Refusal] = []

    def responder(refusal: Refusal) -> ProblemResponse:
        seen.append(refusal)
        return ProblemResponse(refusal.status, (("content-type", "text/plain"),), b"no")

    app, _ = build(responder=responder, www_authenticate="Bearer")
    with TestClient(app, client=PROXY) as client:
        response = client.get("/whoami")

    assert (response.status_code, response.content) == (401, b"no")
    assert seen == [
        Refusal(
            401, "this route needs an authenticated peer", None, "Bearer", "GET", "/whoami", None
        )
    ]


# --------------------------------------------------------------------------
# Websocket routes.
# --------------------------------------------------------------------------


def test_websocket_route_allowed() -> None:
    app, ran = build()
    with (
        TestClient(app, client=PROXY) as client,
        client.websocket_connect("/ws", headers=headers_for(READER)) as websocket,
    ):
        websocket.send_text("hi")
        assert websocket.receive_text() == f"hi {READER}"

    assert ran == ["ws"]


@pytest.mark.parametrize(
    ("principal", "status"),
    [pytest.param(None, 401, id="anonymous"), pytest.param(ADMIN, 403, id="other-namespace")],
)
def test_websocket_route_refused_by_middleware(principal: str | None, status: int) -> None:
    app, ran = build()
    with (
        TestClient(app, client=PROXY) as client,
        pytest.raises(WebSocketDenialResponse) as denied,
    ):
        client.websocket_connect("/ws", headers=headers_for(principal)).__enter__()

    assert (denied.value.status_code, denied.value.content) == (status, BODIES[status])
    assert ran == []


def test_websocket_route_requirement_refuses(decisions: Any) -> None:
    # The broad policy lets the admin past the middleware; the route's own
    # requirement must refuse it without the handler running.
    app, ran = build(BROAD_POLICY)
    with TestClient(app, client=PROXY) as client, pytest.raises(WebSocketDisconnect):
        client.websocket_connect("/ws", headers=headers_for(ADMIN)).__enter__()

    assert ran == []
    _, route = decisions()
    assert route.peer_middleware["outcome"] == "refused"
    assert route.peer_middleware["status"] == 403
    assert route.peer_middleware["path"] == "/ws"


# --------------------------------------------------------------------------
# Without the middleware.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(
            "/payments/7", "peer_middleware is not installed in front of this route", id="require"
        ),
        pytest.param(
            "/whoami", "peer_middleware is not installed in front of this route", id="current-peer"
        ),
        pytest.param(
            "/healthz",
            "peer_middleware is not installed in front of this route",
            id="optional-peer",
        ),
    ],
)
def test_dependencies_refuse_when_middleware_not_installed(url: str, message: str) -> None:
    app, ran = build(installed=False)
    with (
        TestClient(app, client=PROXY) as client,
        pytest.raises(AuthenticationFailed, match=message),
    ):
        client.get(url, headers=headers_for(READER))

    assert ran == []


def test_without_middleware_the_refusal_is_a_server_error() -> None:
    app, ran = build(installed=False)
    with TestClient(app, client=PROXY, raise_server_exceptions=False) as client:
        response = client.get("/payments/7", headers=headers_for(READER))

    assert response.status_code == 500
    assert ran == []


# --------------------------------------------------------------------------
# Names shared between routes.
# --------------------------------------------------------------------------


def test_one_named_requirement_reused_on_two_routes() -> None:
    app = FastAPI()
    shop_only = require(SHOP, name="shop-only")

    @app.get("/orders/{order_id}", dependencies=[shop_only])
    def read_order(order_id: str) -> dict[str, str]:
        return {"id": order_id}

    @app.delete("/orders/{order_id}", dependencies=[shop_only])
    def delete_order(order_id: str) -> dict[str, str]:
        return {"deleted": order_id}

    install(app, policy=BASE_POLICY, authenticators=authenticators())
    with TestClient(app, client=PROXY) as client:
        read = client.get("/orders/1", headers=headers_for(READER))
        delete = client.delete("/orders/1", headers=headers_for(READER))

    assert (read.status_code, read.json()) == (200, {"id": "1"})
    assert (delete.status_code, delete.json()) == (200, {"deleted": "1"})


# --------------------------------------------------------------------------
# Configuration errors.
# --------------------------------------------------------------------------


class UpperCaseHeader:
    name = "custom"
    header_names = ("X-Token",)
    forwarded = False
    bearer = False
    reads_query = False
    reads_tls = False
    www_authenticate = None

    def authenticate(self, request: Any) -> None:  # pragma: no cover - never called
        return None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"policy": list(BASE_POLICY.rules)},
            "policy must be a Policy, not list",
            id="rules-list",
        ),
        pytest.param(
            {"policy": BASE_POLICY, "authenticators": [object()]},
            "is not an Authenticator",
            id="not-an-authenticator",
        ),
        pytest.param(
            {"policy": BASE_POLICY, "authenticators": [UpperCaseHeader()]},
            "header name 'X-Token' must be lower-case",
            id="upper-case-header",
        ),
        pytest.param(
            {"policy": BASE_POLICY, "responder": "nope"},
            "responder must be callable",
            id="responder",
        ),
    ],
)
def test_install_configuration_errors(options: dict[str, Any], message: str) -> None:
    app = FastAPI()

    with pytest.raises(ConfigurationError, match=message):
        install(app, **options)

    assert app.user_middleware == []


@pytest.mark.parametrize(
    ("who", "name", "message"),
    [
        pytest.param(
            CHECKOUT, None, f"require\\(\\): '{CHECKOUT}' is not a matcher", id="string-not-matcher"
        ),
        pytest.param(None, None, "require\\(\\): None is not a matcher", id="none"),
        pytest.param(
            Anyone(), "", "require\\(\\): name must be a non-empty string", id="empty-name"
        ),
        pytest.param(
            Anyone(), "  ", "require\\(\\): name must be a non-empty string", id="blank-name"
        ),
        pytest.param(
            Anyone(), 3, "require\\(\\): name must be a non-empty string", id="name-not-a-string"
        ),
    ],
)
def test_require_configuration_errors(who: Any, name: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        require(who, name=name)
