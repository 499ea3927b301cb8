"""Rules declared on a route apply to the route the framework dispatches to, and no other.

Each test builds an app where a route that declares nothing sits next to one
that declares a rule, in a shape where a path pattern taken from the
declaration would also match the neighbour: route order, converters, literal
against variable segments, websocket against HTTP, router prefixes, mounted
sub-applications and blueprints. The neighbour must be judged by the central
policy alone (here it allows nothing), so its handler never runs for a
caller the declaration names.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.testclient import TestClient
from flask import Blueprint, Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Host, Mount
from starlette.websockets import WebSocketDisconnect

from peer_middleware import Anyone, Namespace, Policy, Principal, XfccAuthenticator, allow
from peer_middleware.fastapi import install
from peer_middleware.fastapi import require as fastapi_require
from peer_middleware.flask import PeerAuth
from peer_middleware.flask import require as flask_require
from peer_middleware.peer import Peer, Proof
from peer_middleware.spiffe import SpiffeId

TD = "cluster.local"
SHOP_CALLER = "spiffe://cluster.local/ns/shop/sa/cart"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
SHOP = Namespace("shop", trust_domain=TD)
PROXY = ("127.0.0.1", 50000)
PROXY_BASE = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000"}
CENTRAL = Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz")])


def authenticators() -> list[XfccAuthenticator]:
    return [XfccAuthenticator(trusted_proxies=["127.0.0.1"])]


def xfcc(principal: str | None) -> dict[str, str]:
    return {"x-forwarded-client-cert": f"URI={principal}"} if principal else {}


def get(app: FastAPI, path: str, principal: str | None = SHOP_CALLER, method: str = "GET") -> int:
    with TestClient(app, client=PROXY) as client:
        return client.request(method, path, headers=xfcc(principal)).status_code


# --------------------------------------------------------------------------
# FastAPI.
# --------------------------------------------------------------------------


def test_fastapi_route_order_literal_before_template() -> None:
    # FastAPI's own docs put /users/me before /users/{id}: the literal route
    # wins and must not inherit the template's rule.
    app = FastAPI()
    ran: list[str] = []

    @app.get("/payments/export")
    async def export() -> str:
        ran.append("export")
        return "all payments"

    @app.get("/payments/{payment_id}", dependencies=[fastapi_require(SHOP)])
    async def read(payment_id: str) -> str:
        ran.append(f"read {payment_id}")
        return payment_id

    install(app, policy=CENTRAL, authenticators=authenticators())

    assert get(app, "/payments/export") == 403
    assert get(app, "/payments/export", None) == 401
    assert ran == []
    assert get(app, "/payments/42") == 200
    assert ran == ["read 42"]


def test_fastapi_converter_is_part_of_the_route() -> None:
    app = FastAPI()
    ran: list[str] = []

    @app.get("/items/{item_id:int}", dependencies=[fastapi_require(SHOP)])
    async def by_id(item_id: int) -> int:
        ran.append("by_id")
        return item_id

    @app.get("/items/{name}")
    async def by_name(name: str) -> str:
        ran.append("by_name")
        return name

    install(app, policy=CENTRAL, authenticators=authenticators())

    assert get(app, "/items/secret") == 403
    assert ran == []
    assert get(app, "/items/5") == 200
    assert ran == ["by_id"]


def test_fastapi_methods_are_part_of_the_route() -> None:
    app = FastAPI()
    ran: list[str] = []

    @app.get("/orders/{order_id}", dependencies=[fastapi_require(SHOP)])
    async def read(order_id: str) -> str:
        ran.append("read")
        return order_id

    @app.delete("/orders/{order_id}")
    async def remove(order_id: str) -> str:
        ran.append("remove")
        return order_id

    install(app, policy=CENTRAL, authenticators=authenticators())

    assert get(app, "/orders/1", method="DELETE") == 403
    assert ran == []
    assert get(app, "/orders/1") == 200
    assert ran == ["read"]


def test_fastapi_websocket_route_does_not_inherit_the_http_rule() -> None:
    app = FastAPI()
    ran: list[str] = []

    @app.get("/live", dependencies=[fastapi_require(SHOP)])
    async def poll() -> str:
        ran.append("poll")
        return "poll"

    @app.websocket("/live")
    async def live(websocket: WebSocket) -> None:
        ran.append("websocket")
        await websocket.accept()
        await websocket.send_text("feed")
        await websocket.close()

    install(app, policy=CENTRAL, authenticators=authenticators())

    with TestClient(app, client=PROXY) as client:
        with (
            pytest.raises(WebSocketDisconnect),
            client.websocket_connect("/live", headers=xfcc(SHOP_CALLER)) as ws,
        ):
            ws.receive_text()  # pragma: no cover - refused before accept
        assert ran == []
        assert client.get("/live", headers=xfcc(SHOP_CALLER)).status_code == 200
    assert ran == ["poll"]


def test_fastapi_http_route_does_not_inherit_the_websocket_rule() -> None:
    app = FastAPI()
    ran: list[str] = []

    @app.websocket("/live", dependencies=[fastapi_require(SHOP)])
    async def live(websocket: WebSocket) -> None:
        ran.append("websocket")
        await websocket.accept()
        await websocket.send_text("feed")
        await websocket.close()

    @app.get("/live")
    async def poll() -> str:
        ran.append("poll")
        return "poll"

    install(app, policy=CENTRAL, authenticators=authenticators())

    with TestClient(app, client=PROXY) as client:
        assert client.get("/live", headers=xfcc(SHOP_CALLER)).status_code == 403
        assert ran == []
        with client.websocket_connect("/live", headers=xfcc(SHOP_CALLER)) as ws:
            assert ws.receive_text() == "feed"
    assert ran == ["websocket"]


def test_fastapi_router_prefix_and_included_router_dependencies() -> None:
    app = FastAPI()
    ran: list[str] = []

    @app.get("/v2/items/export")
    async def export() -> str:
        ran.append("export")
        return "all"

    router = APIRouter(prefix="/v2")

    @router.get("/items/{item_id}", dependencies=[fastapi_require(SHOP)])
    async def item(item_id: str) -> str:
        ran.append("item")
        return item_id

    admin = APIRouter(prefix="/admin")

    @admin.get("/{anything}")
    async def admin_page(anything: str) -> str:
        ran.append("admin")
        return anything

    app.include_router(router)
    app.include_router(admin, dependencies=[fastapi_require(Principal(ADMIN))])

    @app.get("/admin-notes/{note}")
    async def notes(note: str) -> str:
        ran.append("notes")
        return note

    install(app, policy=CENTRAL, authenticators=authenticators())

    assert get(app, "/v2/items/export") == 403
    assert get(app, "/admin-notes/1", ADMIN) == 403
    assert get(app, "/admin/1") == 403
    assert ran == []
    assert get(app, "/v2/items/7") == 200
    assert get(app, "/admin/1", ADMIN) == 200
    assert ran == ["item", "admin"]


def test_fastapi_mounted_sub_application() -> None:
    sub = FastAPI()
    ran: list[str] = []

    @sub.get("/items/export")
    async def export() -> str:
        ran.append("export")
        return "all"

    @sub.get("/items/{item_id}", dependencies=[fastapi_require(SHOP)])
    async def item(item_id: str) -> str:
        ran.append("item")
        return item_id

    app = FastAPI(routes=[Mount("/api", app=sub)])

    @app.get("/api/items/{item_id}/raw")
    async def shadowed(item_id: str) -> str:  # pragma: no cover - the mount wins
        ran.append("shadowed")
        return item_id

    @app.get("/other/{item_id}")
    async def other(item_id: str) -> str:
        ran.append("other")
        return item_id

    install(app, policy=CENTRAL, authenticators=authenticators())

    assert get(app, "/api/items/export") == 403
    assert get(app, "/other/1") == 403
    assert get(app, "/api/items/1/raw") == 403  # the mount answers 404 for allowed callers
    assert ran == []
    assert get(app, "/api/items/1") == 200
    assert ran == ["item"]


def test_fastapi_host_routes_are_resolved_per_host() -> None:
    api = FastAPI()
    ran: list[str] = []

    @api.get("/items/{item_id}", dependencies=[fastapi_require(SHOP)])
    async def item(item_id: str) -> str:
        ran.append("api")
        return item_id

    other = FastAPI()

    @other.get("/items/{item_id}")
    async def other_item(item_id: str) -> str:
        ran.append("other")
        return item_id

    app = FastAPI(routes=[Host("api.example.com", app=api), Host("{sub}.example.com", app=other)])
    install(app, policy=CENTRAL, authenticators=authenticators())

    with TestClient(app, client=PROXY) as client:
        for _ in range(3):  # the memory must not carry one host's answer to the other
            headers = {**xfcc(SHOP_CALLER), "host": "www.example.com"}
            assert client.get("/items/1", headers=headers).status_code == 403
            headers = {**xfcc(SHOP_CALLER), "host": "api.example.com"}
            assert client.get("/items/1", headers=headers).status_code == 200
    assert ran == ["api"] * 3


def test_fastapi_served_under_a_root_path() -> None:
    app = FastAPI()
    ran: list[str] = []

    @app.get("/payments/export")
    async def export() -> str:
        ran.append("export")
        return "all"

    @app.get("/payments/{payment_id}", dependencies=[fastapi_require(SHOP)])
    async def read(payment_id: str) -> str:
        ran.append("read")
        return payment_id

    install(app, policy=CENTRAL, authenticators=authenticators())

    with TestClient(app, client=PROXY, root_path="/shop") as client:
        assert client.get("/payments/export", headers=xfcc(SHOP_CALLER)).status_code == 403
        assert ran == []
        assert client.get("/payments/3", headers=xfcc(SHOP_CALLER)).status_code == 200
    assert ran == ["read"]


@pytest.mark.parametrize(
    ("method", "path", "principal", "status"),
    [
        # A caller the route's rules allow gets the router's own answers.
        pytest.param("GET", "/payments/1/", SHOP_CALLER, 307, id="redirect-allowed"),
        pytest.param("POST", "/payments/1", SHOP_CALLER, 405, id="method-allowed"),
        # Any other caller learns nothing about which routes exist.
        pytest.param("GET", "/payments/1/", ADMIN, 403, id="redirect-other"),
        pytest.param("POST", "/payments/1", ADMIN, 403, id="method-other"),
        pytest.param("GET", "/payments/1/", None, 401, id="redirect-anonymous"),
        pytest.param("POST", "/payments/1", None, 401, id="method-anonymous"),
        # No route at all: the central policy alone, which allows nothing here.
        pytest.param("GET", "/nowhere", SHOP_CALLER, 403, id="not-found-allowed-elsewhere"),
        pytest.param("GET", "/nowhere", None, 401, id="not-found-anonymous"),
        pytest.param("GET", "/payments/1/x/", SHOP_CALLER, 403, id="no-route-either-way"),
    ],
)
def test_fastapi_not_found_wrong_method_and_redirects(
    method: str, path: str, principal: str | None, status: int
) -> None:
    app = FastAPI()

    @app.get("/payments/{payment_id}", dependencies=[fastapi_require(SHOP)])
    async def read(payment_id: str) -> str:  # pragma: no cover - never reached here
        return payment_id

    install(app, policy=CENTRAL, authenticators=authenticators())

    with TestClient(app, client=PROXY, follow_redirects=False) as client:
        response = client.request(method, path, headers=xfcc(principal))
    assert response.status_code == status
    if status == 307:
        assert response.headers["location"] == "http://testserver/payments/1"


def test_fastapi_redirect_inside_a_mounted_router() -> None:
    inner = FastAPI()

    @inner.get("/items/{item_id}", dependencies=[fastapi_require(SHOP)])
    async def item(item_id: str) -> str:  # pragma: no cover - never reached here
        return item_id

    app = FastAPI()
    app.mount("/v1", inner)
    install(app, policy=CENTRAL, authenticators=authenticators())

    with TestClient(app, client=PROXY, follow_redirects=False) as client:
        allowed = client.get("/v1/items/3/", headers=xfcc(SHOP_CALLER))
        other = client.get("/v1/items/3/", headers=xfcc(ADMIN))
    assert (allowed.status_code, allowed.headers["location"]) == (
        307,
        "http://testserver/v1/items/3",
    )
    assert other.status_code == 403


# --------------------------------------------------------------------------
# Flask.
# --------------------------------------------------------------------------


def flask_app() -> tuple[Flask, list[str]]:
    app = Flask("route_rules")
    app.testing = True
    PeerAuth(app, policy=CENTRAL, authenticators=authenticators())
    return app, []


def call(app: Flask, path: str, principal: str | None = SHOP_CALLER, method: str = "GET") -> int:
    response = app.test_client().open(
        path, method=method, headers=xfcc(principal), environ_base=PROXY_BASE
    )
    return response.status_code


def test_flask_literal_rule_wins_whatever_the_order() -> None:
    app, ran = flask_app()

    @app.get("/payments/<payment_id>")
    @flask_require(SHOP)
    def read(payment_id: str) -> str:
        ran.append("read")
        return payment_id

    @app.get("/payments/export")
    def export() -> str:
        ran.append("export")
        return "all payments"

    assert call(app, "/payments/export") == 403
    assert ran == []
    assert call(app, "/payments/9") == 200
    assert ran == ["read"]


def test_flask_converter_is_part_of_the_rule() -> None:
    app, ran = flask_app()

    @app.get("/items/<int:item_id>")
    @flask_require(SHOP)
    def by_id(item_id: int) -> str:
        ran.append("by_id")
        return str(item_id)

    @app.get("/items/<name>")
    def by_name(name: str) -> str:
        ran.append("by_name")
        return name

    assert call(app, "/items/secret") == 403
    assert ran == []
    assert call(app, "/items/5") == 200
    assert ran == ["by_id"]


def test_flask_methods_are_part_of_the_rule() -> None:
    app, ran = flask_app()

    @app.get("/orders/<order_id>")
    @flask_require(SHOP)
    def read(order_id: str) -> str:
        ran.append("read")
        return order_id

    @app.delete("/orders/<order_id>")
    def remove(order_id: str) -> str:
        ran.append("remove")
        return order_id

    assert call(app, "/orders/1", method="DELETE") == 403
    assert ran == []
    assert call(app, "/orders/1") == 200
    assert ran == ["read"]


def test_flask_blueprint_url_prefix() -> None:
    app, ran = flask_app()
    blueprint = Blueprint("v2", __name__, url_prefix="/v2")

    @blueprint.get("/items/<item_id>")
    @flask_require(SHOP)
    def item(item_id: str) -> str:
        ran.append("item")
        return item_id

    @blueprint.get("/items/export")
    def export() -> str:
        ran.append("export")
        return "all"

    app.register_blueprint(blueprint)

    assert call(app, "/v2/items/export") == 403
    assert ran == []
    assert call(app, "/v2/items/1") == 200
    assert ran == ["item"]


def test_flask_not_found_and_redirects_are_judged_centrally() -> None:
    app, ran = flask_app()

    @app.get("/folder/")
    @flask_require(SHOP)
    def folder() -> str:  # pragma: no cover - never reached here
        ran.append("folder")
        return "folder"

    assert call(app, "/folder") == 403  # Werkzeug would redirect: no view runs
    assert call(app, "/nowhere") == 403
    assert call(app, "/folder/", method="POST") == 403
    assert ran == []


# --------------------------------------------------------------------------
# Property: a handler runs only for a caller its route's rules or a central
# rule for its path allow.
# --------------------------------------------------------------------------

SEGMENTS = ["a", "export", "7"]
TEMPLATES = st.lists(
    st.sampled_from(["a", "export", "{x}", "{x:int}", "{x:path}"]), min_size=1, max_size=2
).map(lambda parts: "/" + "/".join(_unique_params(parts)))
WHO = {"shop": SHOP, "admin": Principal(ADMIN)}
CALLERS = [None, SHOP_CALLER, ADMIN]


def _unique_params(parts: list[str]) -> list[str]:
    out = []
    for index, part in enumerate(parts):
        if "{x" in part:
            part = part.replace("{x", f"{{x{index}")
        out.append(part)
    # {x:path} only makes sense last
    return [p for i, p in enumerate(out) if ":path}" not in p or i == len(out) - 1]


ROUTES = st.lists(
    st.tuples(TEMPLATES, st.sampled_from(["GET", "POST"]), st.sampled_from([None, *WHO])),
    min_size=1,
    max_size=6,
)
CENTRAL_RULES = st.lists(
    st.tuples(
        st.sampled_from(["/a/**", "/*/export", "/a/*", "/**", "/export"]),
        st.sampled_from(["GET", "POST"]),
        st.sampled_from(list(WHO)),
    ),
    max_size=2,
)
REQUESTS = st.lists(
    st.tuples(
        st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=2).map(
            lambda s: "/" + "/".join(s)
        ),
        st.sampled_from(["GET", "POST"]),
        st.sampled_from(CALLERS),
    ),
    min_size=1,
    max_size=12,
)


def _peer(principal: str | None) -> Peer | None:
    if principal is None:
        return None
    return Peer(SpiffeId.parse(principal), Proof.PROXY_ASSERTED, "xfcc", proxy="127.0.0.1")


def _central(rules: list[tuple[str, str, str]]) -> Policy:
    return Policy(
        [allow(f"c{i}", WHO[who], methods=m, paths=p) for i, (p, m, who) in enumerate(rules)]
    )


def _allowed(
    routes: list[tuple[str, str, str | None]],
    central: Policy,
    ran: int,
    method: str,
    path: str,
    principal: str | None,
) -> bool:
    declared = routes[ran][2]
    peer = _peer(principal)
    by_route = declared is not None and WHO[declared](peer)
    return by_route or central.decide(method, path, peer).allowed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROUTES, CENTRAL_RULES, REQUESTS)
def test_property_fastapi_handler_runs_only_when_allowed(
    routes: list[tuple[str, str, str | None]],
    central_rules: list[tuple[str, str, str]],
    requests: list[tuple[str, str, str | None]],
) -> None:
    app = FastAPI()
    ran: list[int] = []
    for index, (template, method, who) in enumerate(routes):

        async def handler(_index: int = index) -> int:
            ran.append(_index)
            return _index

        dependencies = [fastapi_require(WHO[who])] if who else []
        app.add_api_route(
            template, handler, methods=[method], dependencies=dependencies, name=f"r{index}"
        )
    central = _central(central_rules)
    install(app, policy=central, authenticators=authenticators())
    with TestClient(app, client=PROXY) as client:
        for path, method, principal in requests:
            ran.clear()
            client.request(method, path, headers=xfcc(principal))
            for index in ran:
                assert _allowed(routes, central, index, method, path, principal), (
                    routes[index],
                    method,
                    path,
                    principal,
                )


def _flask_template(template: str) -> str:
    out = []
    for part in template.split("/"):
        if part.startswith("{"):
            name, _, conv = part[1:-1].partition(":")
            out.append(f"<{conv}:{name}>" if conv else f"<{name}>")
        else:
            out.append(part)
    return "/".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROUTES, CENTRAL_RULES, REQUESTS)
def test_property_flask_view_runs_only_when_allowed(
    routes: list[tuple[str, str, str | None]],
    central_rules: list[tuple[str, str, str]],
    requests: list[tuple[str, str, str | None]],
) -> None:
    app = Flask("route_rules_property")
    app.testing = True
    ran: list[int] = []
    central = _central(central_rules)
    PeerAuth(app, policy=central, authenticators=authenticators())
    registered: set[tuple[str, str]] = set()
    for index, (template, method, who) in enumerate(routes):
        rule = _flask_template(template)
        if (rule, method) in registered:
            continue  # Werkzeug refuses two identical rules for one method
        registered.add((rule, method))

        def view(_index: int = index, **_: Any) -> str:
            ran.append(_index)
            return str(_index)

        if who:
            view = flask_require(WHO[who])(view)
        app.add_url_rule(rule, f"r{index}", view, methods=[method])
    client = app.test_client()
    for path, method, principal in requests:
        ran.clear()
        client.open(path, method=method, headers=xfcc(principal), environ_base=PROXY_BASE)
        for index in ran:
            assert _allowed(routes, central, index, method, path, principal), (
                routes[index],
                method,
                path,
                principal,
            )


# --------------------------------------------------------------------------
# What else the dispatch depends on: a websocket upgrade in Flask, a mounted
# app's own root_path, routes added after start-up.
# --------------------------------------------------------------------------

UPGRADE = {"Connection": "keep-alive, Upgrade", "Upgrade": "websocket"}


def test_flask_websocket_rule_does_not_inherit_the_http_view_rule() -> None:
    app, ran = flask_app()

    @app.get("/feed")
    @flask_require(SHOP)
    def feed() -> str:
        ran.append("http")
        return "http feed"

    def admin_stream() -> str:
        ran.append("websocket")
        return "admin stream"

    # As flask-sock registers its views: a websocket rule at the same path.
    app.add_url_rule("/feed", "admin_stream", admin_stream, websocket=True)
    client = app.test_client()

    def send(headers: dict[str, str]) -> int:
        return client.get("/feed", headers=headers, environ_base=PROXY_BASE).status_code

    # Whatever the memory holds (anonymous and allowed plain requests first),
    # the upgrade reaches the websocket rule, which declares nothing.
    assert send({}) == 401
    for _ in range(3):
        assert send(xfcc(SHOP_CALLER)) == 200
    for _ in range(3):
        assert send({**xfcc(SHOP_CALLER), **UPGRADE}) == 403
    assert ran == ["http"] * 3


def test_fastapi_mounted_app_with_its_own_root_path_is_judged_centrally() -> None:
    # FastAPI replaces the mount's root_path with its own, so its router
    # matches another path than the mount suggests: its routes are not followed.
    with pytest.warns(UserWarning, match="root_path"):
        sub = FastAPI(root_path="/v1")
    ran: list[str] = []

    @sub.get("/admin/x")
    async def admin() -> str:
        ran.append("admin")
        return "admin"

    @sub.get("/x", dependencies=[fastapi_require(SHOP)])
    async def x() -> str:  # pragma: no cover - not reached through the mount
        ran.append("x")
        return "x"

    app = FastAPI(routes=[Mount("/admin", app=sub)])
    install(app, policy=CENTRAL, authenticators=authenticators())

    assert get(app, "/admin/x") == 403
    assert ran == []


def test_fastapi_mounted_app_with_its_own_middleware_is_judged_centrally() -> None:
    sub = FastAPI()
    ran: list[str] = []

    @sub.get("/items/{item_id}", dependencies=[fastapi_require(SHOP)])
    async def item(item_id: str) -> str:  # pragma: no cover - refused before
        ran.append("item")
        return item_id

    @sub.middleware("http")
    async def rewrite(request: Any, call_next: Any) -> Any:  # pragma: no cover - not reached
        return await call_next(request)

    app = FastAPI(routes=[Mount("/api", app=sub)])
    install(app, policy=CENTRAL, authenticators=authenticators())

    assert get(app, "/api/items/1") == 403
    assert ran == []


def test_fastapi_routes_added_after_start_up_refuse_what_route_rules_allowed() -> None:
    plugins = APIRouter()
    app = FastAPI()
    app.include_router(plugins)
    ran: list[str] = []

    @app.get("/items/{item_id}", dependencies=[fastapi_require(SHOP)])
    async def item(item_id: str) -> str:
        ran.append(f"item {item_id}")
        return item_id

    install(app, policy=CENTRAL, authenticators=authenticators())
    with TestClient(app, client=PROXY) as client:
        for _ in range(3):  # remembered
            assert client.get("/items/debug-dump", headers=xfcc(SHOP_CALLER)).status_code == 200

        @plugins.get("/items/debug-dump")
        async def dump() -> str:  # pragma: no cover - refused
            ran.append("dump")
            return "secrets"

        assert client.get("/items/debug-dump", headers=xfcc(SHOP_CALLER)).status_code == 403
        assert client.get("/items/1", headers=xfcc(SHOP_CALLER)).status_code == 403
        assert client.get("/healthz").status_code == 404  # central rules still apply
    assert ran == ["item debug-dump"] * 3
