"""FastAPI done natively: requirements cost no dependency per request, OpenAPI
security requirements, request.user / request.auth, and the docs' own rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, FastAPI, Request, WebSocket
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute
from starlette.testclient import TestClient

import peer_middleware.fastapi as integration
from peer_middleware import (
    Anyone,
    Authenticated,
    JwtSvidAuthenticator,
    Namespace,
    PeerMiddleware,
    Policy,
    Principal,
    XfccAuthenticator,
    allow,
)
from peer_middleware.asgi import PeerCredentials, PeerUser
from peer_middleware.fastapi import (
    CurrentPeer,
    RouteRequirement,
    docs_rules,
    install,
    require,
    route_table,
)
from peer_middleware.keys import StaticJwks
from peer_middleware.peer import Proof
from peer_middleware.testing import TokenMinter

TD = "cluster.local"
READER = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
PROXY = ("127.0.0.1", 50000)
SHOP = Namespace("shop", trust_domain=TD)
CENTRAL = Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz")])
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'


def xfcc() -> XfccAuthenticator:
    return XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])


def headers(principal: str | None) -> dict[str, str]:
    return {"x-forwarded-client-cert": f"URI={principal}"} if principal else {}


def payments_app() -> FastAPI:
    app = FastAPI()

    @app.get("/payments/{payment_id}", dependencies=[require(SHOP)])
    async def read(payment_id: str, peer: CurrentPeer) -> dict[str, str]:
        return {"id": payment_id, "caller": peer.principal}

    @app.get("/param")
    async def param(_: Annotated[None, require(SHOP)]) -> str:
        return "param"

    @app.get("/healthz")
    async def healthz() -> str:
        return "ok"

    router = APIRouter(prefix="/v2", dependencies=[require(SHOP, name="v2")])

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> int:
        return item_id

    app.include_router(router)

    @app.websocket("/ws", dependencies=[require(SHOP, name="ws")])
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    return app


# --------------------------------------------------------------------------
# require() in dependencies=[...] is no dependency per request.
# --------------------------------------------------------------------------


def test_requirements_are_checked_without_solving_a_dependency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    solved: list[str] = []
    check = integration._check

    def counting(who: Any, scope: Any) -> None:
        solved.append(scope["path"])
        check(who, scope)

    monkeypatch.setattr(integration, "_check", counting)
    app = payments_app()
    install(app, policy=CENTRAL, authenticators=[xfcc()])
    with TestClient(app, client=PROXY) as client:
        for _ in range(3):
            assert client.get("/payments/7", headers=headers(READER)).status_code == 200
            assert client.get("/v2/items/3", headers=headers(READER)).status_code == 200
        with client.websocket_connect("/ws", headers=headers(READER)) as websocket:
            assert websocket.receive_text() == "hi"
        # A requirement declared as a parameter stays a dependency.
        assert client.get("/param", headers=headers(READER)).status_code == 200
        # Refused by the check in front of the handler, with the fixed body.
        refused = client.get("/payments/7", headers=headers(ADMIN))
    assert solved == ["/param"]
    assert (refused.status_code, refused.content) == (403, BODY_403)


def test_the_route_still_shows_its_requirements() -> None:
    app = payments_app()
    install(app, policy=CENTRAL, authenticators=[xfcc()])
    before = [rule.name for rules in route_table(app).rules.values() for rule in rules]
    with TestClient(app, client=PROXY):
        pass
    after = route_table(app)
    assert [rule.name for rules in after.rules.values() for rule in rules] == before
    assert after.enforce() == 0  # already done at start-up
    [read] = [r for r in app.routes if getattr(r, "path", "") == "/payments/{payment_id}"]
    calls = [sub.call for sub in read.dependant.dependencies]  # type: ignore[attr-defined]
    assert any(isinstance(call, RouteRequirement) for call in calls)


def test_without_the_middleware_the_requirement_is_still_a_dependency() -> None:
    app = payments_app()
    with (
        TestClient(app, client=PROXY, raise_server_exceptions=False) as client,
    ):
        assert client.get("/payments/7", headers=headers(READER)).status_code == 500


# --------------------------------------------------------------------------
# OpenAPI.
# --------------------------------------------------------------------------


def token_authenticator() -> JwtSvidAuthenticator:
    minter = TokenMinter(kind="ec")
    return JwtSvidAuthenticator(keys=StaticJwks(minter.jwks()), audience="spiffe://td/payments")


@pytest.mark.parametrize(
    ("authenticators", "schemes"),
    [
        pytest.param(lambda: [xfcc()], ["mutualTLS"], id="certificates"),
        pytest.param(lambda: [token_authenticator()], ["peerBearer"], id="tokens"),
        pytest.param(
            lambda: [xfcc(), token_authenticator()], ["mutualTLS", "peerBearer"], id="both"
        ),
    ],
)
def test_openapi_security_requirements(authenticators: Any, schemes: list[str]) -> None:
    app = payments_app()
    install(app, policy=Policy(docs_rules(app, Anyone())), authenticators=authenticators())
    with TestClient(app, client=PROXY) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    described = SHOP.describe()
    paths = document["paths"]
    assert paths["/payments/{payment_id}"]["get"]["security"] == [
        {scheme: [described]} for scheme in schemes
    ]
    assert paths["/v2/items/{item_id}"]["get"]["security"] == [
        {scheme: [described]} for scheme in schemes
    ]
    assert "security" not in paths["/healthz"]["get"]
    declared = document["components"]["securitySchemes"]
    assert sorted(declared) == schemes
    if "mutualTLS" in declared:
        assert declared["mutualTLS"]["type"] == "mutualTLS"
        assert set(declared["mutualTLS"]) == {"type", "description"}
    if "peerBearer" in declared:
        assert declared["peerBearer"]["type"] == "http"
        assert declared["peerBearer"]["scheme"] == "bearer"
    assert app.openapi() is app.openapi()  # generated once, fixed once


def test_openapi_scopes_of_several_requirements() -> None:
    app = FastAPI()

    @app.put("/payments/{payment_id}", dependencies=[require(SHOP), require(Principal(ADMIN))])
    async def update(payment_id: str) -> str:  # pragma: no cover - never called
        return payment_id

    install(app, policy=CENTRAL, authenticators=[xfcc()])
    operation = app.openapi()["paths"]["/payments/{payment_id}"]["put"]
    assert operation["security"] == [{"mutualTLS": [SHOP.describe(), Principal(ADMIN).describe()]}]


# --------------------------------------------------------------------------
# The documentation's own rules.
# --------------------------------------------------------------------------

DOCS = ["/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"]


@pytest.mark.parametrize(
    ("who", "principal", "status"),
    [
        pytest.param(Anyone(), None, 200, id="public"),
        pytest.param(SHOP, READER, 200, id="namespace-allowed"),
        pytest.param(SHOP, ADMIN, 403, id="namespace-other"),
        pytest.param(SHOP, None, 401, id="namespace-anonymous"),
        pytest.param(None, READER, 403, id="no-docs-rules"),
    ],
)
def test_docs_rules(who: Any, principal: str | None, status: int) -> None:
    app = payments_app()
    rules = docs_rules(app, who) if who is not None else []
    install(app, policy=Policy([*CENTRAL.rules, *rules]), authenticators=[xfcc()])
    with TestClient(app, client=PROXY) as client:
        for path in DOCS:
            assert client.get(path, headers=headers(principal)).status_code == status, path
        if status == 200:
            assert client.head("/openapi.json", headers=headers(principal)).status_code == 200
            # Only the documentation: the API itself keeps its rules.
            assert client.post("/openapi.json", headers=headers(principal)).status_code in (
                401,
                403,
            )


def test_docs_rules_follow_the_app_configuration() -> None:
    moved = FastAPI(openapi_url="/api/schema.json", docs_url=None, redoc_url="/api/redoc")
    [rule] = docs_rules(moved, Authenticated(), name="docs")
    assert rule.name == "docs"
    assert [p.text for p in rule.paths] == ["/api/schema.json", "/api/redoc"]
    assert docs_rules(FastAPI(openapi_url=None), Anyone()) == []


# --------------------------------------------------------------------------
# request.user and request.auth.
# --------------------------------------------------------------------------


def test_request_user_and_auth_in_fastapi() -> None:
    app = FastAPI()

    @app.get("/me")
    async def me(request: Request) -> dict[str, Any]:
        user, auth = request.user, request.auth
        return {
            "authenticated": user.is_authenticated,
            "name": user.display_name,
            "identity": user.identity,
            "scopes": auth.scopes,
            "proof": auth.proof.value if auth.proof else None,
        }

    install(app, policy=Policy([allow("me", Anyone(), paths="/me")]), authenticators=[xfcc()])
    with TestClient(app, client=PROXY) as client:
        known = client.get("/me", headers=headers(READER)).json()
        anonymous = client.get("/me").json()
    assert known == {
        "authenticated": True,
        "name": READER,
        "identity": READER,
        "scopes": ["authenticated"],
        "proof": Proof.PROXY_ASSERTED.value,
    }
    assert anonymous == {
        "authenticated": False,
        "name": "",
        "identity": "",
        "scopes": [],
        "proof": None,
    }


def test_starlette_requires_reads_the_peer() -> None:
    @requires("authenticated")
    async def me(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"caller": request.user.display_name})

    app = PeerMiddleware(
        Starlette(routes=[StarletteRoute("/me", me)]),
        policy=Policy([allow("me", Anyone(), paths="/me")]),
        authenticators=[xfcc()],
    )
    with TestClient(app, client=PROXY) as client:
        assert client.get("/me", headers=headers(READER)).json() == {"caller": READER}
        assert client.get("/me").status_code == 403  # Starlette's own refusal


def test_a_user_set_in_front_of_the_middleware_is_kept() -> None:
    seen: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["user"], scope["auth"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = PeerMiddleware(
        inner, policy=Policy([allow("all", Anyone(), paths="/**")]), authenticators=[xfcc()]
    )

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["user"], scope["auth"] = "end-user", "end-user-auth"
        await guarded(scope, receive, send)

    # Without lifespan: the apps here speak HTTP only.
    assert TestClient(outer, client=PROXY).get("/x", headers=headers(READER)).status_code == 204
    assert TestClient(guarded, client=PROXY).get("/x", headers=headers(READER)).status_code == 204
    assert seen[0] == ("end-user", "end-user-auth")
    user, auth = seen[1]
    assert isinstance(user, PeerUser)
    assert isinstance(auth, PeerCredentials)
    assert repr(user) == f"PeerUser({READER!r})"
    assert auth.peer is user.peer


# --------------------------------------------------------------------------
# The README's FastAPI section, run as written.
# --------------------------------------------------------------------------

PLATFORM = "spiffe://cluster.local/ns/platform/sa/portal"


def readme_app() -> Any:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = text.index("\n### FastAPI\n")
    found = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert found is not None
    namespace: dict[str, Any] = {}
    exec(compile(found.group(1), "README.md ### FastAPI", "exec"), namespace)  # noqa: S102
    return namespace["app"]


@pytest.mark.parametrize(
    ("method", "path", "principal", "status", "body"),
    [
        ("GET", "/payments/7", READER, 200, {"id": "7", "caller": READER}),
        ("GET", "/payments/7", ADMIN, 403, None),
        ("GET", "/payments/7", None, 401, None),
        ("GET", "/whoami", READER, 200, {"caller": READER, "proof": "proxy-asserted"}),
        ("GET", "/openapi.json", PLATFORM, 200, None),
        ("GET", "/docs", PLATFORM, 200, None),
        ("GET", "/docs", READER, 403, None),
        ("GET", "/docs", None, 401, None),
        ("POST", "/payments/7", READER, 405, {"detail": "Method Not Allowed"}),
        ("POST", "/payments/7", ADMIN, 403, None),
        ("GET", "/payments/7/", READER, 307, None),
        ("GET", "/payments/7/", ADMIN, 403, None),
        ("GET", "/nowhere", READER, 403, None),
    ],
)
def test_readme_fastapi_section(
    method: str, path: str, principal: str | None, status: int, body: Any
) -> None:
    with TestClient(readme_app(), client=PROXY, follow_redirects=False) as client:
        response = client.request(method, path, headers=headers(principal))
    assert response.status_code == status
    if body is not None:
        assert response.json() == body
    if path == "/openapi.json":
        operation = response.json()["paths"]["/payments/{payment_id}"]["get"]
        assert operation["security"] == [{"mutualTLS": [SHOP.describe()]}]


@pytest.mark.parametrize(
    ("method", "path", "principal", "status"),
    [
        ("POST", "/v2/items/3", READER, 405),
        ("POST", "/v2/items/3", ADMIN, 403),
        ("GET", "/v2/items/3/", READER, 307),
        ("GET", "/v2/items/3/", ADMIN, 403),
        ("POST", "/ws", READER, 403),  # a websocket route never answers HTTP
    ],
)
def test_router_answers_through_an_included_router(
    method: str, path: str, principal: str, status: int
) -> None:
    app = payments_app()
    install(app, policy=CENTRAL, authenticators=[xfcc()])
    with TestClient(app, client=PROXY, follow_redirects=False) as client:
        assert client.request(method, path, headers=headers(principal)).status_code == status
