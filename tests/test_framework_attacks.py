"""Attacks on the framework integrations: a caller allowed one view reaching another.

Each test is an attack that once succeeded, run through the framework's own
test client (Django's, Flask's), as tests/test_django.py and
tests/test_flask_views.py do.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.django_setup import configure, project

configure()

from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import path  # noqa: E402
from django.views import View  # noqa: E402

from peer_middleware import Anyone, Policy, Principal, XfccAuthenticator, allow, deny  # noqa: E402
from peer_middleware.django import DjangoConfigurationError, PeerRequiredMixin  # noqa: E402

READER = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
CENTRAL = Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz")])
BODY_400 = b'{"type":"about:blank","title":"Bad Request","status":400}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
PROXY_ENV = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000"}


def django_config() -> dict[str, Any]:
    return {"POLICY": CENTRAL, "AUTHENTICATORS": [XfccAuthenticator(trusted_proxies=["127.0.0.1"])]}


def django_get(url: str, principal: str) -> int:
    response = Client().get(
        url, headers={"x-forwarded-client-cert": f"URI={principal}"}, **PROXY_ENV
    )
    return response.status_code


class ReaderView(PeerRequiredMixin, View):
    peer_required = Principal(READER)

    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("secret")


def test_django_as_view_cannot_override_peer_required() -> None:
    """``as_view(peer_required=...)`` was accepted (the class has the attribute)
    but ignored: the class's own declaration still applied, so the reader
    reached the URL declared for the admin only. It is refused when built."""
    with pytest.raises(DjangoConfigurationError):
        ReaderView.as_view(peer_required=Principal(ADMIN))
    with pytest.raises(DjangoConfigurationError):
        ReaderView.as_view(peer_rule_name="admin-only")
    patterns = [path("reader/", ReaderView.as_view())]
    with project(patterns, django_config()):
        assert django_get("/reader/", READER) == 200
        assert django_get("/reader/", ADMIN) == 403


class MethodOverride:
    """The classic WSGI method override: ``X-HTTP-Method-Override`` on a request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method = environ.get("HTTP_X_HTTP_METHOD_OVERRIDE", "").upper()
        if method:
            environ["REQUEST_METHOD"] = method
        return self.app(environ, start_response)


def flask_app(inner: Any = None) -> tuple[Any, list[str]]:
    from flask import Flask

    from peer_middleware.flask import PeerAuth, require

    app = Flask("attacks")
    ran: list[str] = []

    @app.get("/items/<item_id>")
    @require(Principal(READER))
    def read_item(item_id: str) -> str:
        ran.append("read")
        return "item"

    @app.delete("/items/<item_id>")
    def delete_item(item_id: str) -> str:
        ran.append("delete")
        return "deleted"

    if inner is not None:
        app.wsgi_app = inner(app.wsgi_app)  # type: ignore[method-assign]
    PeerAuth(app, policy=CENTRAL, authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])])
    return app, ran


def test_flask_method_override_inside_cannot_reach_another_view() -> None:
    """A method override between the middleware and Flask's router: the reader's
    GET (allowed by the rule declared on read_item) became a DELETE and ran
    delete_item, which declares nothing and the central policy refuses. The
    view Flask dispatched to is checked against the one the decision was for."""
    app, ran = flask_app(MethodOverride)
    client = app.test_client()
    headers = {"x-forwarded-client-cert": f"URI={READER}"}
    assert client.get("/items/1", headers=headers, environ_base=PROXY_ENV).status_code == 200
    headers["x-http-method-override"] = "DELETE"
    response = client.get("/items/1", headers=headers, environ_base=PROXY_ENV)
    assert response.status_code == 403
    assert response.data == b'{"type":"about:blank","title":"Forbidden","status":403}'
    assert ran == ["read"]


class AsgiMethodOverride:
    """An ASGI method override: ``x-http-method-override`` on an HTTP request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"x-http-method-override":
                    scope = {**scope, "method": value.decode("latin-1").upper()}
        await self.app(scope, receive, send)


async def test_quart_method_override_inside_cannot_reach_another_view() -> None:
    """As for Flask: Quart runs the view its router picks after the override,
    which must be the view whose declared rule allowed the request."""
    from quart import Quart

    from peer_middleware.quart import PeerAuth, require

    app = Quart("attacks")
    ran: list[str] = []

    @app.get("/items/<item_id>")
    @require(Principal(READER))
    async def read_item(item_id: str) -> str:
        ran.append("read")
        return "item"

    @app.delete("/items/<item_id>")
    async def delete_item(item_id: str) -> str:
        ran.append("delete")
        return "deleted"

    app.asgi_app = AsgiMethodOverride(app.asgi_app)  # type: ignore[method-assign]
    PeerAuth(app, policy=CENTRAL, authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])])
    client = app.test_client()
    headers = {"x-forwarded-client-cert": f"URI={READER}"}
    scope = {"client": ("127.0.0.1", 50000)}
    response = await client.get("/items/1", headers=headers, scope_base=scope)
    assert response.status_code == 200
    headers["x-http-method-override"] = "DELETE"
    response = await client.get("/items/1", headers=headers, scope_base=scope)
    assert response.status_code == 403
    assert await response.get_data() == b'{"type":"about:blank","title":"Forbidden","status":403}'
    assert ran == ["read"]


def test_drf_action_permission_classes_are_the_declaration() -> None:
    """A router action with its own ``permission_classes`` (DRF passes them to
    ``as_view`` as initkwargs): the middleware read the viewset's class-level
    permission instead, so the action's own caller was refused and the
    class's caller passed the middleware (refused only by DRF). Both now
    follow the permission DRF runs."""
    from rest_framework import viewsets
    from rest_framework.decorators import action
    from rest_framework.response import Response
    from rest_framework.routers import SimpleRouter

    from peer_middleware.django.rest_framework import peer_permission

    class Items(viewsets.ViewSet):
        permission_classes = (peer_permission(Principal(READER)),)

        def list(self, request: Any) -> Response:
            return Response(["item"])

        @action(detail=False, permission_classes=[peer_permission(Principal(ADMIN))])
        def purge(self, request: Any) -> Response:
            return Response("purged")

    router = SimpleRouter()
    router.register("items", Items, basename="items")
    with project(router.urls, django_config()):
        assert django_get("/items/", READER) == 200
        assert django_get("/items/", ADMIN) == 403
        assert django_get("/items/purge/", ADMIN) == 200
        assert django_get("/items/purge/", READER) == 403


# Central rules are written against the path without the mount point (root_path);
# Quart and Litestar strip it with str.split, so "/apiadmin/x" under root_path
# "/api" (hypercorn passes the client's path as it came) is routed as "/admin/x"
# while the rules saw "/apiadmin/x", and a central deny on /admin/** was bypassed.
GUARDED_ADMIN = Policy(
    [deny("admin-only", ~Principal(ADMIN), paths="/admin/**"), allow("all", Anyone(), paths="/**")]
)
OUTSIDE_ROOT = ["/apiadmin/x", "/api/../apiadmin/x", "/zz/api/admin/x"]


@pytest.mark.parametrize("url", OUTSIDE_ROOT)
async def test_quart_path_outside_root_path_is_refused(url: str) -> None:
    from quart import Quart

    from peer_middleware.quart import PeerAuth

    app = Quart("root-path")

    @app.get("/admin/x")
    async def admin_view() -> str:
        return "admin"

    PeerAuth(
        app,
        policy=GUARDED_ADMIN,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    client = app.test_client()
    scope = {"client": ("127.0.0.1", 50000), "root_path": "/api"}
    headers = {"x-forwarded-client-cert": f"URI={READER}"}
    response = await client.get("/api/admin/x", headers=headers, scope_base=scope)
    assert response.status_code == 403
    response = await client.get(url, headers=headers, scope_base=scope)
    assert response.status_code == 400
    assert await response.get_data() == BODY_400
    headers = {"x-forwarded-client-cert": f"URI={ADMIN}"}
    response = await client.get("/api/admin/x", headers=headers, scope_base=scope)
    assert response.status_code == 200


@pytest.mark.parametrize("url", OUTSIDE_ROOT)
def test_litestar_path_outside_root_path_is_refused(url: str) -> None:
    from litestar import Litestar, get
    from litestar.testing import TestClient

    from peer_middleware.litestar import install

    @get("/admin/x")
    async def admin_view() -> str:
        return "admin"

    app = Litestar([admin_view])
    install(
        app,
        policy=GUARDED_ADMIN,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )

    async def served(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            scope["client"] = ("127.0.0.1", 50000)
            scope["root_path"] = "/api"
        await app(scope, receive, send)

    with TestClient(served) as client:
        headers = {"x-forwarded-client-cert": f"URI={READER}"}
        assert client.get("/api/admin/x", headers=headers).status_code == 403
        response = client.get(url, headers=headers)
        assert (response.status_code, response.content) == (400, BODY_400)
        headers = {"x-forwarded-client-cert": f"URI={ADMIN}"}
        assert client.get("/api/admin/x", headers=headers).status_code == 200


def test_flask_blueprint_error_handler_does_not_answer_a_refusal() -> None:
    """Flask asks a blueprint's error handlers before the app's: a blueprint's
    ``errorhandler(Exception)`` answered the refusal of its own declared view
    (500 with the reason: the requirement and the caller's identity). The
    refusal is the fixed response whatever handlers the blueprint has."""
    from flask import Blueprint, Flask

    from peer_middleware.flask import PeerAuth, require

    app = Flask("blueprint-errors")
    blueprint = Blueprint("bp", __name__)

    @blueprint.get("/secret")
    @require(Principal(ADMIN))
    def secret() -> str:
        return "secret"

    @blueprint.errorhandler(Exception)
    def oops(error: Exception) -> tuple[str, int]:
        return f"oops: {error}", 500

    app.register_blueprint(blueprint)
    PeerAuth(
        app,
        policy=Policy([allow("all", Anyone(), paths="/**")]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    client = app.test_client()
    headers = {"x-forwarded-client-cert": f"URI={READER}"}
    response = client.get("/secret", headers=headers, environ_base=PROXY_ENV)
    assert (response.status_code, response.data) == (403, BODY_403)
    headers = {"x-forwarded-client-cert": f"URI={ADMIN}"}
    assert client.get("/secret", headers=headers, environ_base=PROXY_ENV).data == b"secret"


async def test_quart_blueprint_error_handler_does_not_answer_a_refusal() -> None:
    """As for Flask: a Quart blueprint's ``errorhandler(Exception)`` comes first."""
    from quart import Blueprint, Quart

    from peer_middleware.quart import PeerAuth, require

    app = Quart("blueprint-errors")
    blueprint = Blueprint("bp", __name__)

    @blueprint.get("/secret")
    @require(Principal(ADMIN))
    async def secret() -> str:
        return "secret"

    @blueprint.errorhandler(Exception)
    async def oops(error: Exception) -> tuple[str, int]:
        return f"oops: {error}", 500

    app.register_blueprint(blueprint)
    PeerAuth(
        app,
        policy=Policy([allow("all", Anyone(), paths="/**")]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    client = app.test_client()
    scope = {"client": ("127.0.0.1", 50000)}
    headers = {"x-forwarded-client-cert": f"URI={READER}"}
    response = await client.get("/secret", headers=headers, scope_base=scope)
    assert (response.status_code, await response.get_data()) == (403, BODY_403)
    headers = {"x-forwarded-client-cert": f"URI={ADMIN}"}
    response = await client.get("/secret", headers=headers, scope_base=scope)
    assert await response.get_data() == b"secret"


def test_flask_rule_added_to_the_url_map_after_the_first_request() -> None:
    """A URL rule added straight to the URL map once Flask serves (no setup
    method refuses that) shadows a declared view for a path whose route and
    verdict the guard remembers: the view Flask now dispatches to is refused."""
    from werkzeug.routing import Rule

    app, ran = flask_app()
    client = app.test_client()
    headers = {"x-forwarded-client-cert": f"URI={READER}"}
    for _ in range(2):  # the second request settles the table (Flask refuses setup methods)
        assert client.get("/items/export", headers=headers, environ_base=PROXY_ENV).data == b"item"

    def export() -> str:
        ran.append("export")
        return "export"

    app.view_functions["export"] = export
    app.url_map.add(Rule("/items/export", endpoint="export", methods=["GET"]))
    response = client.get("/items/export", headers=headers, environ_base=PROXY_ENV)
    assert (response.status_code, response.data) == (403, BODY_403)
    assert ran == ["read", "read"]
