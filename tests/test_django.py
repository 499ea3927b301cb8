"""Django: the middleware in settings.MIDDLEWARE, rules declared on views, DRF.

Every test runs through Django's own handlers: the WSGI one (Django's test
client) and the ASGI one (``ASGIHandler`` driven by Starlette's test client,
with the peer address a server would give). Rules declared on a view must
apply to the view Django's URL resolver dispatches to and to no other, in the
shapes of tests/test_route_rules.py: pattern order, converters, include()
prefixes, APPEND_SLASH redirects and 404s.
"""

from __future__ import annotations

import logging
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.django_setup import MIDDLEWARE, configure, project, urlconf

configure()

from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import include, path, register_converter  # noqa: E402
from django.views import View  # noqa: E402
from django.views.decorators.common import no_append_slash  # noqa: E402
from rest_framework.permissions import IsAuthenticated  # noqa: E402
from rest_framework.response import Response as DrfResponse  # noqa: E402
from rest_framework.views import APIView  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from peer_middleware import (  # noqa: E402
    Anyone,
    ConfigurationError,
    Namespace,
    Policy,
    Principal,
    XfccAuthenticator,
    allow,
    deny,
)
from peer_middleware.django import (  # noqa: E402
    DjangoConfigurationError,
    PeerMiddleware,
    PeerRequiredMixin,
    get_peer,
    require,
)
from peer_middleware.django.rest_framework import (  # noqa: E402
    PeerAuthentication,
    PeerUser,
    peer_permission,
)
from peer_middleware.peer import Peer, Proof  # noqa: E402
from peer_middleware.spiffe import SpiffeId  # noqa: E402

TD = "cluster.local"
SHOP_CALLER = "spiffe://cluster.local/ns/shop/sa/cart"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
SHOP = Namespace("shop", trust_domain=TD)
PROXY = ("127.0.0.1", 50000)
PROXY_ENV = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000"}
CENTRAL = Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz/")])
BODY_400 = b'{"type":"about:blank","title":"Bad Request","status":400}'
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'
TRANSPORTS = ["wsgi", "asgi"]


def config(policy: Policy = CENTRAL) -> dict[str, Any]:
    return {"POLICY": policy, "AUTHENTICATORS": [XfccAuthenticator(trusted_proxies=["127.0.0.1"])]}


def xfcc(principal: str | None) -> dict[str, str]:
    return {"x-forwarded-client-cert": f"URI={principal}"} if principal else {}


class Answer:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers


def send(
    transport: str,
    url: str,
    principal: str | None = SHOP_CALLER,
    method: str = "GET",
    client: tuple[str, int] = PROXY,
) -> Answer:
    if transport == "wsgi":
        response = Client().generic(
            method,
            url,
            headers=xfcc(principal),
            REMOTE_ADDR=client[0],
            REMOTE_PORT=str(client[1]),
        )
        headers = {k.lower(): v for k, v in response.items()}
        return Answer(response.status_code, response.content, headers)
    test_client = TestClient(ASGIHandler(), client=client, follow_redirects=False)
    answer = test_client.request(method, url, headers=xfcc(principal))
    return Answer(answer.status_code, answer.content, dict(answer.headers))


def status(transport: str, url: str, principal: str | None = SHOP_CALLER, **kw: Any) -> int:
    return send(transport, url, principal, **kw).status


def recorder() -> tuple[list[str], Callable[[str], Callable[..., HttpResponse]]]:
    ran: list[str] = []

    def view(name: str) -> Callable[..., HttpResponse]:
        def handle(request: HttpRequest, **kwargs: Any) -> HttpResponse:
            ran.append(name)
            return HttpResponse(name)

        handle.__qualname__ = name
        return handle

    return ran, view


# --------------------------------------------------------------------------
# Rules declared on views apply to the view Django dispatches to.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_literal_pattern_before_template_does_not_inherit(transport: str) -> None:
    ran, view = recorder()
    patterns = [
        path("payments/export/", view("export")),
        path("payments/<str:payment_id>/", require(SHOP)(view("read"))),
    ]
    with project(patterns, config()):
        assert status(transport, "/payments/export/") == 403
        assert status(transport, "/payments/export/", None) == 401
        assert ran == []
        assert status(transport, "/payments/42/") == 200
        assert ran == ["read"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_template_before_literal_wins_as_django_dispatches(transport: str) -> None:
    # Django tries patterns in order: here the template shadows the literal,
    # so the literal's view never runs and the template's rule decides.
    ran, view = recorder()
    patterns = [
        path("payments/<str:payment_id>/", require(SHOP)(view("read"))),
        path("payments/export/", view("export")),
    ]
    with project(patterns, config()):
        assert status(transport, "/payments/export/") == 200
        assert ran == ["read"]
        assert status(transport, "/payments/export/", ADMIN) == 403


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_converter_is_part_of_the_pattern(transport: str) -> None:
    ran, view = recorder()
    patterns = [
        path("items/<int:item_id>/", require(SHOP)(view("by_id"))),
        path("items/<str:name>/", view("by_name")),
    ]
    with project(patterns, config()):
        assert status(transport, "/items/secret/") == 403
        assert ran == []
        assert status(transport, "/items/5/") == 200
        assert ran == ["by_id"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_include_prefixes(transport: str) -> None:
    ran, view = recorder()
    api = [
        path("orders/<int:order_id>/", require(SHOP)(view("order"))),
        path("orders/<int:order_id>/refund/", view("refund")),
    ]
    patterns = [path("api/v1/", include(api)), path("orders/<int:order_id>/", view("bare"))]
    with project(patterns, config()):
        assert status(transport, "/orders/1/") == 403
        assert status(transport, "/api/v1/orders/1/refund/") == 403
        assert ran == []
        assert status(transport, "/api/v1/orders/1/") == 200
        assert ran == ["order"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_not_found_and_append_slash_redirects_are_judged_centrally(transport: str) -> None:
    ran, view = recorder()
    patterns = [
        path("healthz/", view("healthz")),
        path("payments/<str:payment_id>/", require(SHOP)(view("read"))),
    ]
    policy = Policy([allow("healthz", Anyone(), methods="GET", paths=["/healthz", "/healthz/"])])
    with project(patterns, config(policy)):
        # CommonMiddleware redirects to the slash the callers the target allows...
        answer = send(transport, "/payments/9")
        assert (answer.status, answer.headers["location"]) == (301, "/payments/9/")
        # ...and no one else: the redirect would reveal the view.
        answer = send(transport, "/payments/9", ADMIN)
        assert (answer.status, answer.body) == (403, BODY_403)
        assert send(transport, "/payments/9", None).status == 401
        assert status(transport, "/nowhere/") == 403
        assert status(transport, "/nowhere") == 403
        # A path the central policy allows keeps Django's own redirect.
        answer = send(transport, "/healthz", None)
        assert answer.status == 301
        assert answer.headers["location"] == "/healthz/"
        assert ran == []
    with project(patterns, config(policy), APPEND_SLASH=False):
        assert status(transport, "/payments/9") == 403
    # Without CommonMiddleware nothing redirects: the path serves no view.
    with project(patterns, config(policy), MIDDLEWARE=MIDDLEWARE[:1]):
        assert status(transport, "/payments/9") == 403
    no_slash = [path("payments/<str:payment_id>/", no_append_slash(require(SHOP)(view("read"))))]
    with project(no_slash, config(policy)):
        assert status(transport, "/payments/9") == 403
    assert ran == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_view_under_two_patterns_and_a_neighbour(transport: str) -> None:
    ran, view = recorder()
    read = require(SHOP)(view("read"))
    patterns = [
        path("payments/<int:pk>/", read),
        path("legacy/payments/<int:pk>/", read),
        path("legacy/payments/<int:pk>/raw/", view("raw")),
    ]
    with project(patterns, config()):
        assert status(transport, "/payments/1/") == 200
        assert status(transport, "/legacy/payments/1/") == 200
        assert status(transport, "/legacy/payments/1/raw/") == 403
        assert ran == ["read", "read"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_class_based_view_mixin_and_async_views(transport: str) -> None:
    ran: list[str] = []

    class PaymentView(PeerRequiredMixin, View):
        peer_required = SHOP
        peer_rule_name = "read-payment"

        def get(self, request: HttpRequest, pk: int) -> HttpResponse:
            ran.append(f"cbv {pk} {request.peer.principal}")  # type: ignore[attr-defined]
            return HttpResponse("ok")

    class AsyncAdminView(PeerRequiredMixin, View):
        peer_required = (Principal(ADMIN),)

        async def get(self, request: HttpRequest) -> HttpResponse:
            ran.append("async cbv")
            return HttpResponse("ok")

    @require(SHOP, name="async-view")
    async def async_view(request: HttpRequest) -> HttpResponse:
        ran.append("async view")
        return JsonResponse({"caller": request.peer.principal})  # type: ignore[attr-defined]

    patterns = [
        path("payments/<int:pk>/", PaymentView.as_view()),
        path("admin/", AsyncAdminView.as_view()),
        path("async/", async_view),
    ]
    with project(patterns, config()):
        assert status(transport, "/payments/3/") == 200
        assert status(transport, "/payments/3/", ADMIN) == 403
        assert status(transport, "/admin/") == 403
        assert status(transport, "/admin/", ADMIN) == 200
        answer = send(transport, "/async/")
        assert (answer.status, answer.body) == (200, b'{"caller": "%s"}' % SHOP_CALLER.encode())
        assert send(transport, "/async/", None).body == BODY_401
        assert ran == [f"cbv 3 {SHOP_CALLER}", "async cbv", "async view"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rules_declared_per_method(transport: str) -> None:
    # Django dispatches on the path only: one view answers GET and DELETE,
    # each method with its own callers.
    ran: list[str] = []

    @require(SHOP, name="read", methods="GET")
    @require(Principal(ADMIN), name="delete", methods=["DELETE"])
    def payment(request: HttpRequest, pk: int) -> HttpResponse:
        ran.append(str(request.method))
        return HttpResponse("ok")

    class Order(PeerRequiredMixin, View):
        peer_required = types.MappingProxyType({"GET": SHOP, "DELETE": Principal(ADMIN)})
        peer_rule_name = types.MappingProxyType({"GET": "read-order", "DELETE": "delete-order"})

        def get(self, request: HttpRequest, pk: int) -> HttpResponse:
            ran.append("order GET")
            return HttpResponse("ok")

        def delete(self, request: HttpRequest, pk: int) -> HttpResponse:
            ran.append("order DELETE")
            return HttpResponse("ok")

        def post(self, request: HttpRequest, pk: int) -> HttpResponse:
            ran.append("order POST")
            return HttpResponse("ok")

    patterns = [path("payments/<int:pk>/", payment), path("orders/<int:pk>/", Order.as_view())]
    with project(patterns, config()):
        for prefix in ("/payments/1/", "/orders/1/"):
            assert status(transport, prefix) == 200
            assert status(transport, prefix, method="HEAD") == 200
            assert status(transport, prefix, ADMIN) == 403
            assert status(transport, prefix, method="DELETE") == 403
            assert status(transport, prefix, ADMIN, method="DELETE") == 200
            # Nothing declared for POST: the central policy alone.
            assert status(transport, prefix, ADMIN, method="POST") == 403
        assert ran == ["GET", "HEAD", "DELETE", "order GET", "order GET", "order DELETE"]
    with pytest.raises(DjangoConfigurationError, match="upper case"):
        require(SHOP, methods="get")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_central_allow_still_meets_the_views_own_rule(transport: str) -> None:
    # A central rule decides first; the view still checks its own declaration.
    ran, view = recorder()
    policy = Policy([allow("all-payments", Anyone(), paths="/payments/**")])
    with project([path("payments/<int:pk>/", require(SHOP)(view("read")))], config(policy)):
        answer = send(transport, "/payments/1/", ADMIN)
        assert (answer.status, answer.body) == (403, BODY_403)
        assert send(transport, "/payments/1/", None).body == BODY_401
        assert status(transport, "/payments/1/") == 200
        assert ran == ["read"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_central_deny_beats_a_rule_declared_on_the_view(transport: str) -> None:
    ran, view = recorder()
    policy = Policy([deny("no-cart", Principal(SHOP_CALLER), paths="/payments/**")])
    with project([path("payments/<int:pk>/", require(SHOP)(view("read")))], config(policy)):
        assert status(transport, "/payments/1/") == 403
        assert status(transport, "/payments/1/", "spiffe://cluster.local/ns/shop/sa/x") == 200
        assert ran == ["read"]


def switch_urlconf(other: types.ModuleType) -> Callable[..., Any]:
    """A middleware placed after peer_middleware that changes request.urlconf."""

    class Switch:
        def __init__(self, get_response: Callable[..., Any]) -> None:
            self.get_response = get_response

        def __call__(self, request: HttpRequest) -> Any:
            request.urlconf = other  # type: ignore[attr-defined]
            return self.get_response(request)

    return Switch


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_dispatch_to_another_view_than_decided_is_refused(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran, view = recorder()
    other = urlconf([path("payments/<str:pk>/", view("export"))], "other_urls")
    module = types.ModuleType("switching")
    module.Switch = switch_urlconf(other)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "switching", module)
    patterns = [path("payments/<str:pk>/", require(SHOP)(view("read")))]
    middleware = [MIDDLEWARE[0], "switching.Switch"]
    with project(patterns, config(), MIDDLEWARE=middleware):
        answer = send(transport, "/payments/1/")
        assert (answer.status, answer.body) == (403, BODY_403)
        assert ran == []


# --------------------------------------------------------------------------
# The peer, the path and the refusals.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_peer_on_request_and_normalised_path(transport: str) -> None:
    seen: list[tuple[Any, ...]] = []

    @require(SHOP)
    def read(request: HttpRequest, pk: str) -> HttpResponse:
        seen.append(
            (
                request.peer.principal,  # type: ignore[attr-defined]
                get_peer(request) is request.peer,  # type: ignore[attr-defined]
                request.META["peer_middleware.decision"].rule,
                request.path,
                request.path_info,
                pk,
            )
        )
        return HttpResponse("ok")

    with project([path("payments/<str:pk>/", read)], config()):
        assert status(transport, "/payments//x/../7/") == 200
        assert seen == [
            (
                SHOP_CALLER,
                True,
                f"view {read.__qualname__} /payments/<str:pk>/",
                "/payments/7/",
                "/payments/7/",
                "7",
            )
        ]
        if transport == "wsgi":
            # As gunicorn sends it: the target as received in RAW_URI.
            response = Client().get(
                "/payments%2F7/", REMOTE_ADDR="127.0.0.1", RAW_URI="/payments%2F7/"
            )
            answer = Answer(response.status_code, response.content, {})
        else:
            answer = send(transport, "/payments%2F7/")
        assert (answer.status, answer.body) == (400, BODY_400)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("debug", [False, True])
def test_refusals_are_the_fixed_bodies_even_with_debug(transport: str, debug: bool) -> None:
    ran, view = recorder()
    with project([path("payments/<int:pk>/", require(SHOP)(view("read")))], config(), DEBUG=debug):
        answer = send(transport, "/payments/1/", None)
        assert (answer.status, answer.body) == (401, BODY_401)
        assert answer.headers["content-type"] == "application/problem+json"
        answer = send(transport, "/payments/1/", ADMIN)
        assert (answer.status, answer.body) == (403, BODY_403)
        answer = send(transport, "/payments/1/", "spiffe://bad id")
        assert (answer.status, answer.body) == (401, BODY_401)
        assert ran == []


class Boom:
    """A converter with a bug: resolving raises."""

    regex = "[0-9]+"

    def to_python(self, value: str) -> int:
        raise RuntimeError("converter bug")

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(Boom, "boom")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_exception_in_url_resolution_refuses(
    transport: str, decisions: Callable[[], list[logging.LogRecord]]
) -> None:
    ran, view = recorder()
    with project([path("payments/<boom:pk>/", require(SHOP)(view("read")))], config()):
        answer = send(transport, "/payments/1/")
        assert (answer.status, answer.body) == (403, BODY_403)
    assert ran == []
    assert decisions()[-1].peer_middleware["reason"].startswith("internal error")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_view_declaration_without_the_middleware_refuses(transport: str) -> None:
    ran, view = recorder()
    patterns = [path("payments/<int:pk>/", require(SHOP)(view("read")))]
    with project(patterns, config(), MIDDLEWARE=[]):
        answer = send(transport, "/payments/1/")
        assert (answer.status, answer.body) == (401, BODY_401)
    assert ran == []


# --------------------------------------------------------------------------
# Django REST framework.
# --------------------------------------------------------------------------


class PaymentApi(APIView):
    permission_classes = (peer_permission(SHOP, name="read-payment-api"),)

    def get(self, request: Any, pk: int) -> DrfResponse:
        return DrfResponse({"id": pk, "caller": request.peer.principal})


class OpenApi(APIView):
    def get(self, request: Any, pk: int) -> DrfResponse:
        return DrfResponse({"id": pk})


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("debug", [False, True])
def test_rest_framework_permission(transport: str, debug: bool) -> None:
    patterns = [
        path("api/payments/<int:pk>/", PaymentApi.as_view()),
        path("api/payments/<int:pk>/open/", OpenApi.as_view()),
    ]
    policy = Policy([allow("api", Anyone(), paths="/api/**")])
    with project(patterns, config(), DEBUG=debug):
        answer = send(transport, "/api/payments/4/")
        assert (answer.status, answer.body) == (
            200,
            b'{"id":4,"caller":"%s"}' % SHOP_CALLER.encode(),
        )
        assert send(transport, "/api/payments/4/open/").status == 403
        answer = send(transport, "/api/payments/4/", ADMIN)
        assert (answer.status, answer.body) == (403, BODY_403)
    # Allowed centrally, the permission itself still refuses, with the fixed body.
    with project(patterns, config(policy), DEBUG=debug):
        answer = send(transport, "/api/payments/4/", ADMIN)
        assert (answer.status, answer.body) == (403, BODY_403)
        answer = send(transport, "/api/payments/4/", None)
        assert (answer.status, answer.body) == (401, BODY_401)
        assert send(transport, "/api/payments/4/open/", None).status == 200


class WhoAmI(APIView):
    authentication_classes = (PeerAuthentication,)
    permission_classes = (IsAuthenticated,)

    def get(self, request: Any) -> DrfResponse:
        assert isinstance(request.user, PeerUser)
        return DrfResponse({"user": str(request.user), "proof": request.auth.proof.value})


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rest_framework_authentication_sets_user_and_auth(transport: str) -> None:
    policy = Policy([allow("whoami", Anyone(), paths="/whoami/")])
    with project([path("whoami/", WhoAmI.as_view())], config(policy)):
        answer = send(transport, "/whoami/")
        assert answer.status == 200
        assert answer.body == b'{"user":"%s","proof":"proxy-asserted"}' % SHOP_CALLER.encode()
        # Anonymous: DRF's own IsAuthenticated refuses (the middleware allowed it).
        assert send(transport, "/whoami/", None).status in (401, 403)


# --------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(None, "needs settings.PEER_MIDDLEWARE", id="missing"),
        pytest.param([], "must be a dict", id="not-a-dict"),
        pytest.param({"AUTHENTICATORS": []}, 'needs "POLICY"', id="no-policy"),
        pytest.param({"POLICY": CENTRAL, "POLICIES": 1}, "unknown keys ['POLICIES']", id="typo"),
        pytest.param({"POLICY": "nowhere.POLICY"}, "cannot import 'nowhere.POLICY'", id="bad-path"),
        pytest.param({"POLICY": [allow("a", Anyone())]}, "must be a Policy", id="not-a-policy"),
        pytest.param(
            {"POLICY": CENTRAL, "AUTHENTICATORS": [object()]},
            "is not an Authenticator",
            id="bad-authenticator",
        ),
        pytest.param({"POLICY": CENTRAL, "MEMORY": 5}, "must be a MemoryLimits", id="bad-memory"),
        pytest.param(
            {"POLICY": CENTRAL, "WWW_AUTHENTICATE": 5}, "must be a string", id="bad-challenge"
        ),
    ],
)
def test_bad_settings_raise_when_the_middleware_is_built(value: Any, message: str) -> None:
    with (
        project([path("x/", ok)], value),
        pytest.raises(
            ImproperlyConfigured, match=message.replace("[", r"\[").replace("(", r"\(")
        ) as raised,
    ):
        PeerMiddleware(ok)
    assert isinstance(raised.value, ConfigurationError)


def test_settings_by_dotted_path() -> None:
    value = {
        "POLICY": "tests.django_setup.POLICY_FOR_IMPORT",
        "AUTHENTICATORS": [XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    }
    with project([path("healthz/", ok)], value):
        assert [r.name for r in PeerMiddleware(ok).guard.policy.rules] == ["healthz"]
        assert status("wsgi", "/healthz/", None) == 200


def test_rule_names_declared_twice_on_views_and_centrally_raise() -> None:
    policy = Policy([allow("read", Anyone(), paths="/healthz/")])
    patterns = [path("payments/<int:pk>/", require(SHOP, name="read")(ok))]
    with (
        project(patterns, config(policy)),
        pytest.raises(DjangoConfigurationError, match="two rules are named 'read'"),
    ):
        PeerMiddleware(ok)


def test_bad_declarations_raise_at_import() -> None:
    with pytest.raises(ConfigurationError):
        require("spiffe://cluster.local/ns/shop/sa/x")  # type: ignore[arg-type]
    with pytest.raises(DjangoConfigurationError, match="is not a matcher"):

        class Bad(PeerRequiredMixin, View):
            peer_required = "shop"  # type: ignore[assignment]

    with pytest.raises(DjangoConfigurationError, match="use PeerRequiredMixin"):
        require(SHOP)(View)
    with pytest.raises(DjangoConfigurationError):
        peer_permission("shop")  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mixin_without_requirement_refuses(transport: str) -> None:
    class Nobody(PeerRequiredMixin, View):
        def get(self, request: HttpRequest) -> HttpResponse:
            return HttpResponse("never")

    policy = Policy([allow("all", Anyone(), paths="/**")])
    with project([path("x/", Nobody.as_view())], config(policy)):
        assert status(transport, "/x/") == 403


# --------------------------------------------------------------------------
# The README's Django section, run as written.
# --------------------------------------------------------------------------


def readme_block() -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    start = text.index("\n### Django\n")
    found = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("principal", "expected_status", "body"),
    [
        (SHOP_CALLER, 200, b'{"id": "7", "caller": "%s"}' % SHOP_CALLER.encode()),
        (ADMIN, 403, BODY_403),
        (None, 401, BODY_401),
    ],
)
def test_readme_section(
    transport: str, principal: str | None, expected_status: int, body: bytes
) -> None:
    namespace: dict[str, Any] = {
        "__name__": "readme_django",
        "MIDDLEWARE": ["django.middleware.common.CommonMiddleware"],
    }
    exec(compile(readme_block(), "README.md ### Django", "exec"), namespace)  # noqa: S102
    patterns = [
        path("healthz", ok),
        path("payments/<str:payment_id>", namespace["read_payment"]),
    ]
    with project(patterns, namespace["PEER_MIDDLEWARE"], MIDDLEWARE=namespace["MIDDLEWARE"]):
        answer = send(transport, "/payments/7", principal)
        assert (answer.status, answer.body) == (expected_status, body)
        assert status(transport, "/healthz", None) == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_patterns_added_after_start_up_refuse_what_view_rules_allowed(transport: str) -> None:
    ran, view = recorder()
    module = urlconf([path("payments/<int:pk>/", require(SHOP)(view("read")))], "growing_urls")
    with project(module, config()):
        # One handler (one middleware) for both requests, as a server keeps it.
        if transport == "wsgi":
            client = Client()

            def get() -> int:
                response = client.get("/payments/1/", headers=xfcc(SHOP_CALLER), **PROXY_ENV)
                return int(response.status_code)
        else:
            test_client = TestClient(ASGIHandler(), client=PROXY)

            def get() -> int:
                return test_client.get("/payments/1/", headers=xfcc(SHOP_CALLER)).status_code

        assert get() == 200
        assert get() == 200  # the remembered verdict
        module.urlpatterns.append(path("late/", view("late")))  # type: ignore[attr-defined]
        assert get() == 403
        assert ran == ["read", "read"]


def test_clear_url_caches_is_not_a_change_of_routes() -> None:
    from django.urls import clear_url_caches

    ran, view = recorder()
    with project([path("payments/<int:pk>/", require(SHOP)(view("read")))], config()):
        client = Client()
        for _ in range(2):
            response = client.get(
                "/payments/1/", headers=xfcc(SHOP_CALLER), REMOTE_ADDR="127.0.0.1"
            )
            assert response.status_code == 200
            clear_url_caches()
        assert ran == ["read", "read"]


def test_script_name_and_normalised_path_under_wsgi() -> None:
    seen: list[tuple[str, str]] = []

    @require(SHOP)
    def read(request: HttpRequest, pk: str) -> HttpResponse:
        seen.append((request.path, request.path_info))
        return HttpResponse("ok")

    with project([path("payments/<str:pk>/", read)], config()):
        response = Client().get(
            "/payments//./7/",
            headers=xfcc(SHOP_CALLER),
            REMOTE_ADDR="127.0.0.1",
            SCRIPT_NAME="/svc",
        )
        assert response.status_code == 200
    assert seen == [("/svc/payments/7/", "/payments/7/")]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_urlconfs_a_middleware_before_it_chooses(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A middleware before peer_middleware (django-hosts, tenants) picks the
    # URLconf: its views' declarations count when URLCONFS names it.
    ran, view = recorder()
    tenant = urlconf([path("payments/<int:pk>/", require(SHOP)(view("tenant")))], "tenant_urls")
    module = types.ModuleType("choosing")
    module.Choose = switch_urlconf(tenant)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "choosing", module)
    monkeypatch.setitem(sys.modules, "tenant_urls", tenant)
    middleware = ["choosing.Choose", MIDDLEWARE[0]]
    root = [path("payments/<int:pk>/", view("root"))]
    with project(root, config(), MIDDLEWARE=middleware):
        assert status(transport, "/payments/1/") == 403
    with project(root, {**config(), "URLCONFS": ["tenant_urls"]}, MIDDLEWARE=middleware):
        assert status(transport, "/payments/1/") == 200
        assert status(transport, "/payments/1/", ADMIN) == 403
    assert ran == ["tenant"]
    with (
        project(root, {**config(), "URLCONFS": ["nowhere_urls"]}),
        pytest.raises(ImproperlyConfigured, match="URLCONFS"),
    ):
        PeerMiddleware(ok)
    with (
        project(root, {**config(), "URLCONFS": "tenant_urls"}),
        pytest.raises(ImproperlyConfigured, match="URLCONFS"),
    ):
        PeerMiddleware(ok)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_shadow_mode_enforces_nothing_and_logs_what_it_would_refuse(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="peer_middleware")
    ran, view = recorder()
    policy = Policy([allow("healthz", Anyone(), paths="/healthz/")], mode="shadow")
    with project([path("payments/<int:pk>/", require(SHOP)(view("read")))], config(policy)):
        assert status(transport, "/payments/1/", ADMIN) == 200
        assert status(transport, "/nowhere/", ADMIN) == 404
    assert ran == ["read"]
    assert "would refuse (dry-run): view requires" in caplog.text


def test_a_handler_refuses_route_rules_while_root_urlconf_is_overridden() -> None:
    from django.test import override_settings

    ran, view = recorder()
    read = require(SHOP)(view("read"))
    with project([path("payments/<int:pk>/", read)], config()):
        client = Client()

        def get() -> int:
            response = client.get("/payments/1/", headers=xfcc(SHOP_CALLER), **PROXY_ENV)
            return int(response.status_code)

        assert get() == 200
        with override_settings(ROOT_URLCONF=urlconf([path("payments/<int:pk>/", read)], "b")):
            assert get() == 403
        assert get() == 200
    assert ran == ["read", "read"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_csrf_exempt_stacks_with_require_in_either_order(transport: str) -> None:
    from django.views.decorators.csrf import csrf_exempt

    ran, view = recorder()
    patterns = [
        path("a/", csrf_exempt(require(SHOP)(view("a")))),
        path("b/", require(SHOP)(csrf_exempt(view("b")))),
    ]
    middleware = [*MIDDLEWARE, "django.middleware.csrf.CsrfViewMiddleware"]
    with project(patterns, config(), MIDDLEWARE=middleware):
        for url in ("/a/", "/b/"):
            assert status(transport, url, method="POST") == 200
            assert status(transport, url, ADMIN, method="POST") == 403
    assert ran == ["a", "b"]


# --------------------------------------------------------------------------
# Property: a view runs only for a caller its own declaration or a central
# rule for its path allows (as tests/test_route_rules.py for the others).
# --------------------------------------------------------------------------

WHO = {"shop": SHOP, "admin": Principal(ADMIN)}
TEMPLATES = st.lists(
    st.sampled_from(["a", "export", "<str:x>", "<int:x>", "<path:x>"]), min_size=1, max_size=2
).map(lambda parts: "/".join(p.replace(":x>", f":x{i}>") for i, p in enumerate(parts)))
ROUTES = st.lists(
    st.tuples(TEMPLATES, st.sampled_from([None, "GET", "POST"]), st.sampled_from([None, *WHO])),
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
        st.lists(st.sampled_from(["a", "export", "7"]), min_size=1, max_size=3).map(
            lambda s: "/" + "/".join(s)
        ),
        st.sampled_from(["GET", "POST"]),
        st.sampled_from([None, SHOP_CALLER, ADMIN]),
    ),
    min_size=1,
    max_size=10,
)


def _peer(principal: str | None) -> Peer | None:
    if principal is None:
        return None
    return Peer(SpiffeId.parse(principal), Proof.PROXY_ASSERTED, "xfcc", proxy="127.0.0.1")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ROUTES, CENTRAL_RULES, REQUESTS)
def test_property_view_runs_only_when_allowed(
    routes: list[tuple[str, str | None, str | None]],
    central_rules: list[tuple[str, str, str]],
    requests: list[tuple[str, str, str | None]],
) -> None:
    central = Policy(
        [
            allow(f"c{i}", WHO[who], methods=m, paths=p)
            for i, (p, m, who) in enumerate(central_rules)
        ]
    )
    ran: list[int] = []
    patterns = []
    for index, (template, methods, who) in enumerate(routes):

        def view(request: HttpRequest, _index: int = index, **_: Any) -> HttpResponse:
            ran.append(_index)
            return HttpResponse(str(_index))

        if who:
            view = require(WHO[who], methods=methods)(view)
        patterns.append(path(template, view))
    with project(patterns, config(central)):
        client = Client()
        for url, method, principal in requests:
            ran.clear()
            client.generic(method, url, headers=xfcc(principal), **PROXY_ENV)
            peer = _peer(principal)
            for index in ran:
                _, methods, who = routes[index]
                declared = who is not None and (methods is None or methods == method)
                assert (declared and WHO[str(who)](peer)) or central.decide(
                    method, url, peer
                ).allowed, (routes[index], method, url, principal)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_conditions_on_headers_and_the_port_are_read(transport: str) -> None:
    from peer_middleware.conditions import Header, Port

    ran, view = recorder()
    patterns = [path("open/", view("open"))]
    rules = [
        deny("no-debug", Anyone(), when=[Header("x-forwarded-client-cert", "URI=" + ADMIN)]),
        deny("not-on-80", Anyone(), when=[Port(80)]),
        allow("open", Anyone(), paths="/open/"),
    ]
    with project(patterns, config(Policy(rules[:1] + rules[2:]))):
        assert status(transport, "/open/", ADMIN) == 403
        assert status(transport, "/open/") == 200
    # Django's test clients say the app was reached on port 80.
    with project(patterns, config(Policy(rules))):
        assert status(transport, "/open/") == 403
    assert ran == ["open"]
