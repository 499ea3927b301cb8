"""Flask: ``@require`` in the wrong place raises; blueprints and ``url_prefix`` keep working."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Blueprint, Flask, g

from peer_middleware import (
    Anyone,
    ConfigurationError,
    Namespace,
    Policy,
    Principal,
    XfccAuthenticator,
    allow,
)
from peer_middleware.flask import FlaskRouteTable, PeerAuth, current_peer, require

TD = "cluster.local"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
READER = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
PROXY = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000"}
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
SHOP = Namespace("shop", trust_domain=TD)
POLICY = Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz")])
# A central rule broader than the view's: a misplaced @require would leave it alone in charge.
BROAD = Policy([allow("broad", Anyone(), paths="/**")])
ORDER = "Put the route decorator first and @require\\(\\.\\.\\.\\) below it"


def peer_auth(app: Flask | None = None, policy: Policy = POLICY) -> PeerAuth:
    return PeerAuth(
        app, policy=policy, authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])]
    )


def get(app: Flask, url: str, principal: str | None) -> tuple[int, Any]:
    headers = {"x-forwarded-client-cert": f"URI={principal}"} if principal else {}
    response = app.test_client().get(url, headers=headers, environ_base=PROXY)
    if response.status_code >= 400 or response.mimetype != "application/json":
        return response.status_code, response.data
    return response.status_code, response.get_json()


def test_require_above_route_raises_at_decoration() -> None:
    app = Flask("above")
    peer_auth(app, BROAD)

    with pytest.raises(ConfigurationError, match=f"view 'payments' \\(/payments\\).*{ORDER}"):

        @require(SHOP)
        @app.get("/payments")
        def payments() -> str:  # pragma: no cover - never registered with its rule
            return "served"


def test_require_above_route_raises_at_init_app() -> None:
    app = Flask("above-init")

    @require(SHOP)
    @app.get("/payments")
    def payments() -> str:  # pragma: no cover - never served
        return "served"

    extension = peer_auth(policy=BROAD)
    wsgi_app = app.wsgi_app

    with pytest.raises(ConfigurationError, match=ORDER):
        extension.init_app(app)

    assert app.wsgi_app == wsgi_app  # nothing installed


def test_require_above_route_raises_at_constructor() -> None:
    app = Flask("above-constructor")

    @require(SHOP)
    @app.get("/payments")
    def payments() -> str:  # pragma: no cover - never served
        return "served"

    with pytest.raises(ConfigurationError, match=ORDER):
        peer_auth(app, BROAD)


def test_one_require_above_and_one_below_raises() -> None:
    app = Flask("mixed")
    peer_auth(app, BROAD)

    with pytest.raises(ConfigurationError, match=ORDER):

        @require(Principal(CHECKOUT))
        @app.get("/payments")
        @require(SHOP)
        def payments() -> str:  # pragma: no cover - never served
            return "served"


def blueprint_above() -> Blueprint:
    bp = Blueprint("shop", __name__)

    @require(SHOP)
    @bp.get("/payments")
    def payments() -> str:  # pragma: no cover - never served
        return "served"

    return bp


def test_require_above_blueprint_route_raises_at_finalise() -> None:
    app = Flask("bp-above")
    extension = peer_auth(app, BROAD)
    app.register_blueprint(blueprint_above(), url_prefix="/shop")

    with pytest.raises(ConfigurationError, match=f"'shop.payments' \\(/shop/payments\\).*{ORDER}"):
        extension.finalise(app)


def test_require_above_blueprint_route_never_serves() -> None:
    """Without finalise, the first request raises: nothing is served, whatever the policy."""
    app = Flask("bp-above-request")
    peer_auth(app, BROAD)
    app.register_blueprint(blueprint_above(), url_prefix="/shop")

    for _ in range(2):
        with pytest.raises(ConfigurationError, match=ORDER):
            get(app, "/shop/payments", READER)


def test_a_decorated_function_registered_as_well_is_not_misplaced() -> None:
    """The same function registered open and, wrapped, closed: the wrapper is registered."""
    app = Flask("both")
    peer_auth(app, Policy([allow("open", Anyone(), paths="/open")]))

    def report() -> str:
        return "report"

    app.add_url_rule("/closed", "closed", require(Principal(ADMIN))(report))
    app.add_url_rule("/open", "open", report)

    assert get(app, "/open", None) == (200, b"report")
    assert get(app, "/closed", ADMIN) == (200, b"report")
    assert get(app, "/closed", READER) == (403, BODY_403)


def blueprints_app(*, factory: bool) -> Flask:
    app = Flask("blueprints")
    extension = peer_auth(policy=POLICY)
    if not factory:
        extension.init_app(app)
    shop = Blueprint("shop", __name__, url_prefix="/shop")
    payments = Blueprint("payments", __name__)

    @payments.get("/<payment_id>")
    @require(SHOP)
    def read(payment_id: str) -> dict[str, Any]:
        return {"id": payment_id, "caller": current_peer.principal, "g": g.peer.principal}

    @payments.get("/export")
    @require(Principal(ADMIN), name="export")
    def export() -> dict[str, Any]:
        return {"export": True, "caller": g.peer.principal}

    @payments.get("/open")
    def open_view() -> str:  # pragma: no cover - refused by the central policy
        return "open"

    @shop.get("/whoami")
    @require(Anyone())
    def whoami() -> dict[str, Any]:
        return {
            "caller": current_peer.principal if current_peer else None,
            "g": g.peer.principal if g.peer else None,
        }

    shop.register_blueprint(payments, url_prefix="/payments")
    app.register_blueprint(shop)
    # The same blueprint again, under another prefix and name.
    app.register_blueprint(payments, url_prefix="/v2/payments", name="payments_v2")
    if factory:
        extension.init_app(app)
    return app


@pytest.mark.parametrize("factory", [False, True], ids=["init-first", "factory"])
@pytest.mark.parametrize(
    ("url", "principal", "status", "body"),
    [
        ("/shop/payments/7", READER, 200, {"id": "7", "caller": READER, "g": READER}),
        ("/shop/payments/7", ADMIN, 403, BODY_403),
        ("/shop/payments/7", None, 401, BODY_401),
        # The literal rule wins over <payment_id>, and only its own rule applies.
        ("/shop/payments/export", ADMIN, 200, {"export": True, "caller": ADMIN}),
        ("/shop/payments/export", READER, 403, BODY_403),
        ("/v2/payments/7", READER, 200, {"id": "7", "caller": READER, "g": READER}),
        ("/v2/payments/7", ADMIN, 403, BODY_403),
        ("/v2/payments/export", ADMIN, 200, {"export": True, "caller": ADMIN}),
        ("/v2/payments/export", CHECKOUT, 403, BODY_403),
        ("/shop/payments/open", READER, 403, BODY_403),
        ("/shop/whoami", None, 200, {"caller": None, "g": None}),
        ("/shop/whoami", CHECKOUT, 200, {"caller": CHECKOUT, "g": CHECKOUT}),
        # No such route: the central policy alone, which allows nothing here.
        ("/payments/7", READER, 403, BODY_403),
    ],
)
def test_blueprints_and_url_prefix(
    factory: bool, url: str, principal: str | None, status: int, body: Any
) -> None:
    assert get(blueprints_app(factory=factory), url, principal) == (status, body)


def test_blueprint_routes_are_named_by_endpoint() -> None:
    table = FlaskRouteTable(blueprints_app(factory=True))

    assert sorted(route.name for route in table.rules) == [
        "view payments_v2.export /v2/payments/export",
        "view payments_v2.read /v2/payments/<payment_id>",
        "view shop.payments.export /shop/payments/export",
        "view shop.payments.read /shop/payments/<payment_id>",
        "view shop.whoami /shop/whoami",
    ]


def test_url_map_is_counted_until_flask_refuses_new_routes() -> None:
    """After its first request Flask refuses setup methods: the table stops counting rules."""
    app = blueprints_app(factory=False)
    table = FlaskRouteTable(app)
    assert table.unchanged()
    assert get(app, "/shop/whoami", READER)[0] == 200
    assert table.unchanged()  # settled: Flask now refuses new routes

    with pytest.raises(AssertionError, match="can no longer be called"):
        app.add_url_rule("/late", "late", lambda: "late")


def test_url_rules_added_before_serving_are_noticed() -> None:
    app = blueprints_app(factory=False)
    table = FlaskRouteTable(app)
    app.add_url_rule("/late", "late", lambda: "late")

    assert not table.unchanged()
