"""The Flask integration: PeerAuth, require, g.peer, current_peer."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Flask, g, request

from peer_middleware import (
    Anyone,
    Authenticated,
    AuthenticationFailed,
    ConfigurationError,
    Namespace,
    PeerWSGIMiddleware,
    Policy,
    Principal,
    ProblemResponse,
    Refusal,
    XfccAuthenticator,
    allow,
)
from peer_middleware.flask import PeerAuth, current_peer, require
from peer_middleware.wsgi import PEER_ENVIRON_KEY

TD = "cluster.local"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
READER = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
PROXY_BASE = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000"}

BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
BODIES = {401: BODY_401, 403: BODY_403}

SHOP = Namespace("shop", trust_domain=TD)
BASE_RULES = [
    allow("healthz", Anyone(), methods="GET", paths="/healthz"),
    allow("whoami", Anyone(), methods="GET", paths="/whoami"),
]
BASE_POLICY = Policy(BASE_RULES)
BROAD_POLICY = Policy([*BASE_RULES, allow("broad", Authenticated(), paths="/payments/**")])


def authenticators() -> list[XfccAuthenticator]:
    return [XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])]


def headers_for(principal: str | None) -> dict[str, str]:
    return {"X-Forwarded-Client-Cert": f"URI={principal}"} if principal else {}


def build(
    policy: Policy = BASE_POLICY, *, style: str = "constructor", **options: Any
) -> tuple[Flask, PeerAuth | None, list[str]]:
    app = Flask("test_flask")
    app.testing = True
    ran: list[str] = []
    peer_auth: PeerAuth | None = None
    if style == "constructor":
        peer_auth = PeerAuth(app, policy=policy, authenticators=authenticators(), **options)
    elif style == "init_app":
        peer_auth = PeerAuth(policy=policy, authenticators=authenticators(), **options)
        peer_auth.init_app(app)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        ran.append("healthz")
        return {"caller": g.peer.principal if g.peer else None}

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        ran.append("whoami")
        found = request.environ[PEER_ENVIRON_KEY]
        return {
            "caller": current_peer.principal if current_peer else None,
            "same": found is g.peer,
        }

    @app.post("/payments")
    @require(Principal(CHECKOUT), name="create-payment")
    def create() -> tuple[dict[str, str], int]:
        ran.append("create")
        return {"created_by": current_peer.principal}, 201

    @app.get("/payments/<payment_id>")
    @require(SHOP)
    def read(payment_id: str) -> dict[str, str]:
        ran.append("read")
        return {"id": payment_id, "caller": g.peer.principal}

    @app.put("/payments/<int:payment_id>")
    @require(SHOP)
    @require(Principal(CHECKOUT, ADMIN), name="writer")
    def update(payment_id: int) -> dict[str, Any]:
        ran.append("update")
        return {"id": payment_id, "caller": current_peer.principal}

    @app.get("/open")
    def open_view() -> str:
        ran.append("open")
        return "open"

    return app, peer_auth, ran


STYLES = ["constructor", "init_app"]

CASES = [
    pytest.param("GET", "/healthz", None, 200, {"caller": None}, ["healthz"], id="healthz-anon"),
    pytest.param(
        "GET", "/healthz", READER, 200, {"caller": READER}, ["healthz"], id="healthz-g-peer"
    ),
    pytest.param(
        "GET", "/whoami", ADMIN, 200, {"caller": ADMIN, "same": True}, ["whoami"], id="current-peer"
    ),
    pytest.param(
        "GET",
        "/whoami",
        None,
        200,
        {"caller": None, "same": True},
        ["whoami"],
        id="current-peer-anonymous",
    ),
    pytest.param(
        "POST",
        "/payments",
        CHECKOUT,
        201,
        {"created_by": CHECKOUT},
        ["create"],
        id="create-checkout",
    ),
    pytest.param("POST", "/payments", READER, 403, None, [], id="create-reader-refused"),
    pytest.param("POST", "/payments", None, 401, None, [], id="create-anonymous-401"),
    pytest.param(
        "GET", "/payments/7", READER, 200, {"id": "7", "caller": READER}, ["read"], id="read-shop"
    ),
    pytest.param("GET", "/payments/7", ADMIN, 403, None, [], id="read-other-namespace"),
    pytest.param(
        "PUT",
        "/payments/7",
        CHECKOUT,
        200,
        {"id": 7, "caller": CHECKOUT},
        ["update"],
        id="update-both-requirements-hold",
    ),
    pytest.param("PUT", "/payments/7", READER, 403, None, [], id="update-only-namespace"),
    pytest.param("PUT", "/payments/7", ADMIN, 403, None, [], id="update-only-principal"),
    pytest.param("GET", "/open", ADMIN, 403, None, [], id="view-without-requirement-denied"),
    pytest.param("GET", "/open", None, 401, None, [], id="view-without-requirement-anon"),
    pytest.param(
        "GET",
        "/payments/a/../7",
        READER,
        200,
        {"id": "7", "caller": READER},
        ["read"],
        id="normalised-path",
    ),
]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(("method", "url", "principal", "status", "body", "ran_views"), CASES)
def test_requests(
    style: str,
    method: str,
    url: str,
    principal: str | None,
    status: int,
    body: dict[str, Any] | None,
    ran_views: list[str],
) -> None:
    app, _, ran = build(style=style)

    response = app.test_client().open(
        url, method=method, headers=headers_for(principal), environ_base=PROXY_BASE
    )

    assert response.status_code == status
    if body is not None:
        assert response.get_json() == body
    else:
        assert response.data == BODIES[status]
        assert response.headers["content-type"] == "application/problem+json"
    assert ran == ran_views


@pytest.mark.parametrize(
    ("method", "url", "principal", "reason"),
    [
        pytest.param(
            "GET",
            "/payments/7",
            ADMIN,
            f"view requires {SHOP.describe()}; {ADMIN} is not",
            id="read-other-ns",
        ),
        pytest.param(
            "PUT",
            "/payments/7",
            READER,
            f"view requires {Principal(CHECKOUT, ADMIN).describe()}; {READER} is not",
            id="update-second-requirement",
        ),
        pytest.param(
            "POST",
            "/payments",
            ADMIN,
            f"view requires {Principal(CHECKOUT).describe()}; {ADMIN} is not",
            id="create",
        ),
    ],
)
def test_view_requirement_refuses_what_a_broad_policy_lets_through(
    method: str, url: str, principal: str, reason: str, decisions: Any
) -> None:
    app, _, ran = build(BROAD_POLICY)

    response = app.test_client().open(
        url, method=method, headers=headers_for(principal), environ_base=PROXY_BASE
    )

    assert response.status_code == 403
    assert response.data == BODY_403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    assert ran == []
    middleware, view = decisions()
    assert middleware.peer_middleware["outcome"] == "allowed"
    assert view.levelno == logging.INFO
    assert view.peer_middleware == {
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


def test_view_refusal_uses_custom_responder() -> None:
    seen: list[Refusal] = []

    def responder(refusal: Refusal) -> ProblemResponse:
        seen.append(refusal)
        return ProblemResponse(refusal.status, (("content-type", "text/plain"),), b"no")

    app, _, _ = build(BROAD_POLICY, responder=responder)
    response = app.test_client().get(
        "/payments/7", headers=headers_for(ADMIN), environ_base=PROXY_BASE
    )

    assert (response.status_code, response.data) == (403, b"no")
    [refusal] = seen
    assert (refusal.status, refusal.rule, refusal.path, refusal.peer.principal) == (  # type: ignore[union-attr]
        403,
        None,
        "/payments/7",
        ADMIN,
    )


# --------------------------------------------------------------------------
# Installation.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_app_is_wrapped(style: str) -> None:
    app, peer_auth, _ = build(style=style)

    assert isinstance(app.wsgi_app, PeerWSGIMiddleware)
    assert app.extensions["peer_middleware"] is peer_auth


@pytest.mark.parametrize("second", ["same-extension", "new-extension"])
def test_double_install_refused(second: str) -> None:
    app, peer_auth, _ = build()
    assert peer_auth is not None
    other = peer_auth if second == "same-extension" else PeerAuth(policy=BASE_POLICY)

    with pytest.raises(ConfigurationError, match="PeerAuth is already installed on this app"):
        other.init_app(app)


def test_one_extension_on_two_apps() -> None:
    peer_auth = PeerAuth(policy=BASE_POLICY, authenticators=authenticators())
    apps = [Flask("one"), Flask("two")]
    for app in apps:
        peer_auth.init_app(app)

        @app.get("/whoami")
        def whoami() -> dict[str, Any]:
            return {"caller": current_peer.principal}

    for app in apps:
        response = app.test_client().get(
            "/whoami", headers=headers_for(READER), environ_base=PROXY_BASE
        )
        assert response.get_json() == {"caller": READER}


def test_finalise_merges_view_rules() -> None:
    app, peer_auth, _ = build()
    assert peer_auth is not None
    middleware = app.wsgi_app
    assert isinstance(middleware, PeerWSGIMiddleware)
    assert [r.name for r in middleware.guard.policy.rules] == ["healthz", "whoami"]

    peer_auth.finalise(app)

    policy = middleware.guard.policy
    assert [r.name for r in policy.rules] == ["healthz", "whoami"]
    described = [(route.name, [r.name for r in rules]) for route, rules in policy.routes.items()]
    assert described == [
        ("view create /payments", ["create-payment"]),
        ("view read /payments/<payment_id>", ["view read /payments/<payment_id>"]),
        ("view update /payments/<int:payment_id>", ["writer"]),
    ]


def test_finalise_unknown_app() -> None:
    _, peer_auth, _ = build()
    assert peer_auth is not None

    with pytest.raises(KeyError):
        peer_auth.finalise(Flask("other"))


def test_extension_require_is_the_module_require() -> None:
    app = Flask("ext")
    peer_auth = PeerAuth(app, policy=BASE_POLICY, authenticators=authenticators())

    @app.get("/reports")
    @peer_auth.require(Principal(ADMIN), name="reports")
    def reports() -> dict[str, str]:
        return {"caller": current_peer.principal}

    client = app.test_client()
    allowed = client.get("/reports", headers=headers_for(ADMIN), environ_base=PROXY_BASE)
    refused = client.get("/reports", headers=headers_for(READER), environ_base=PROXY_BASE)

    assert (allowed.status_code, allowed.get_json()) == (200, {"caller": ADMIN})
    assert (refused.status_code, refused.data) == (403, BODY_403)


def test_view_on_two_url_rules_with_a_named_requirement() -> None:
    app = Flask("two-rules")
    PeerAuth(app, policy=BASE_POLICY, authenticators=authenticators())

    @app.get("/reports")
    @app.get("/reports/latest")
    @require(Principal(ADMIN), name="reports")
    def reports() -> dict[str, str]:
        return {"caller": current_peer.principal}

    client = app.test_client()
    first = client.get("/reports", headers=headers_for(ADMIN), environ_base=PROXY_BASE)
    second = client.get("/reports/latest", headers=headers_for(ADMIN), environ_base=PROXY_BASE)

    assert (first.status_code, second.status_code) == (200, 200)


def test_require_without_peer_auth_refuses() -> None:
    app, _, ran = build(style="none")

    with pytest.raises(
        AuthenticationFailed, match="peer_middleware is not installed in front of this view"
    ):
        app.test_client().get("/payments/7", headers=headers_for(READER), environ_base=PROXY_BASE)

    assert ran == []


@pytest.mark.parametrize(
    ("who", "name", "message"),
    [
        pytest.param(CHECKOUT, None, f"require\\(\\): '{CHECKOUT}' is not a matcher", id="string"),
        pytest.param(
            Anyone(), "", "require\\(\\): name must be a non-empty string", id="empty-name"
        ),
        pytest.param(
            Anyone(), 1, "require\\(\\): name must be a non-empty string", id="name-not-a-string"
        ),
    ],
)
def test_require_configuration_errors(who: Any, name: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        require(who, name=name)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"policy": BASE_RULES}, "policy must be a Policy, not list", id="list"),
        pytest.param(
            {"policy": BASE_POLICY, "authenticators": [object()]},
            "is not an Authenticator",
            id="not-an-authenticator",
        ),
    ],
)
def test_peer_auth_configuration_errors(options: dict[str, Any], message: str) -> None:
    app = Flask("bad")
    wsgi_app = app.wsgi_app

    with pytest.raises(ConfigurationError, match=message):
        PeerAuth(app, **options)

    assert app.wsgi_app == wsgi_app
    assert "peer_middleware" not in app.extensions
