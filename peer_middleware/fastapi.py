"""FastAPI integration: install the middleware, declare rules on routes, get the peer.

::

    from fastapi import FastAPI
    from peer_middleware import Anyone, Namespace, Policy, XfccAuthenticator, allow
    from peer_middleware.fastapi import CurrentPeer, install, require

    app = FastAPI()

    @app.get("/payments/{payment_id}",
             dependencies=[require(Namespace("shop", trust_domain="cluster.local"))])
    async def read_payment(payment_id: str, peer: CurrentPeer) -> dict[str, str]:
        return {"id": payment_id, "caller": peer.principal}

    install(app, policy=Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz")]),
            authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])])

:func:`require` declares that a caller may use *this route*. When the
middleware is built (at application start-up) it reads every route's
requirements (router prefixes, included routers and mounted FastAPI or
Starlette sub-applications included) into a :class:`StarletteRouteTable`.
For each request that no central rule decided, the middleware finds the
route the app's router will dispatch to, with the router's own matching
code (route order, converters, methods, websockets, mounts), and applies
the rules declared on that route and on no other: a neighbour whose path
pattern happens to match never inherits them. The route checks the peer
again itself, so a route is never reachable by a caller its declaration
does not name, even through a broad central rule or with the middleware
left out: a requirement given in ``dependencies=[...]`` is checked in front
of the route's handler (FastAPI solves no dependency for it per request),
one given as a parameter, or on an app without the middleware, by FastAPI
as an ``async`` dependency. Several requirements on one route must all
hold. Routes must be declared before the app serves its first request.

Routes with requirements carry OpenAPI security requirements
(``mutualTLS``, HTTP bearer) naming who may call them; :func:`docs_rules`
opens the documentation to whom the operator chooses. When the router would
answer itself (405, a trailing-slash 307), only a caller the rules of the
route concerned allow gets that answer (see :class:`StarletteRouteTable`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

import fastapi.routing
from fastapi import Depends, FastAPI, Security
from fastapi.openapi.models import HTTPBase as HTTPBaseModel
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import Host, Match, Mount, Router
from starlette.websockets import WebSocket

from .asgi import DECISION_SCOPE_KEY, PEER_SCOPE_KEY, PeerMiddleware
from .errors import AccessDenied, AuthenticationFailed, RequestRefused
from .guard import Guard, route_path
from .matchers import Matcher
from .memory import MemoryLimits
from .observe import Observer, warn_unmatched_rules
from .peer import Peer
from .policy import Policy
from .request import Authenticator
from .responses import Responder
from .routes import Requirement, declared_rules
from .rules import Route, Rule, allow

__all__ = [
    "BEARER_SCHEME",
    "MUTUAL_TLS_SCHEME",
    "CurrentPeer",
    "OptionalPeer",
    "PeerCertificateScheme",
    "PeerTokenScheme",
    "RouteRequirement",
    "StarletteRouteTable",
    "collect_route_rules",
    "docs_rules",
    "get_optional_peer",
    "get_peer",
    "install",
    "require",
]


def _scope_peer(connection: HTTPConnection) -> Peer | None:
    if DECISION_SCOPE_KEY not in connection.scope:
        # Without the middleware nobody was authenticated: refuse rather than
        # treat every caller as anonymous-but-allowed.
        raise AuthenticationFailed("peer_middleware is not installed in front of this route")
    peer = connection.scope.get(PEER_SCOPE_KEY)
    return peer if isinstance(peer, Peer) else None


async def get_peer(connection: HTTPConnection) -> Peer:
    """Dependency: the authenticated peer; 401 when the request has none."""
    peer = _scope_peer(connection)
    if peer is None:
        raise AuthenticationFailed("this route needs an authenticated peer")
    return peer


async def get_optional_peer(connection: HTTPConnection) -> Peer | None:
    """Dependency: the authenticated peer, or ``None`` for an anonymous request."""
    return _scope_peer(connection)


CurrentPeer = Annotated[Peer, Depends(get_peer)]
OptionalPeer = Annotated[Peer | None, Depends(get_optional_peer)]


class _MutualTLSModel(HTTPBaseModel):
    """OpenAPI 3.1's ``mutualTLS`` security scheme (FastAPI's models lack it).

    FastAPI validates its schema against models that know only ``apiKey``,
    ``http``, ``oauth2`` and ``openIdConnect``, so the scheme is generated as
    an ``http`` placeholder and :func:`install` writes ``{"type": "mutualTLS"}``
    in its place.
    """

    scheme: str = Field(default="mutualTLS")


class PeerCertificateScheme(SecurityBase):
    """OpenAPI security scheme ``mutualTLS``: the caller proves its SPIFFE ID
    with a client certificate (to this service, or to the proxy in front of it).

    Only documentation: it reads nothing, the middleware authenticates.
    """

    def __init__(self) -> None:
        self.model = _MutualTLSModel(
            description=(
                "A client certificate (X.509-SVID) proves the caller's SPIFFE ID, presented "
                "to this service or to the proxy in front of it. The scopes name who may call."
            )
        )
        self.scheme_name = MUTUAL_TLS_SCHEME

    async def __call__(self) -> None:
        return None


class PeerTokenScheme(SecurityBase):
    """OpenAPI security scheme ``http`` / ``bearer``: a JWT-SVID or a Kubernetes
    service-account token in ``Authorization: Bearer``.

    Only documentation: it reads nothing, the middleware authenticates.
    """

    def __init__(self) -> None:
        self.model = HTTPBearerModel(
            bearerFormat="JWT",
            description=(
                "A JWT-SVID or Kubernetes service-account token proves the caller's "
                "identity. The scopes name who may call."
            ),
        )
        self.scheme_name = BEARER_SCHEME

    async def __call__(self) -> None:
        return None


#: Names of the security schemes in the OpenAPI document.
MUTUAL_TLS_SCHEME = "mutualTLS"
BEARER_SCHEME = "peerBearer"
_CERTIFICATE = PeerCertificateScheme()
_TOKEN = PeerTokenScheme()


class RouteRequirement:
    """The callable behind :func:`require`.

    Once the middleware is built (at start-up), :func:`install` takes every
    requirement given in ``dependencies=[...]`` out of what FastAPI resolves
    per request and checks it in a small wrapper around the route's own ASGI
    app instead (see :class:`StarletteRouteTable`): no dependency is solved
    for it. Called by FastAPI only when it could not be moved (a requirement
    declared as a parameter, or the middleware not installed): then it checks
    the peer itself, on the event loop (an ``async`` callable, no threadpool
    hop). Its two security sub-dependencies only document the route in OpenAPI.
    """

    __slots__ = ("name", "requirement", "who")

    def __init__(self, who: Matcher, name: str | None = None) -> None:
        self.requirement = Requirement(who, name)
        self.who = who
        self.name = name

    async def __call__(
        self,
        connection: HTTPConnection,
        _certificate: Annotated[None, Security(_CERTIFICATE)],
        _token: Annotated[None, Security(_TOKEN)],
    ) -> None:
        _check(self.who, connection.scope)

    def __repr__(self) -> str:
        return f"require({self.who.describe()})"


def _check(who: Matcher, scope: Any) -> None:
    """Refuse unless the request's peer satisfies ``who`` (the middleware must have run)."""
    if DECISION_SCOPE_KEY not in scope:
        raise AuthenticationFailed("peer_middleware is not installed in front of this route")
    peer = scope.get(PEER_SCOPE_KEY)
    if not isinstance(peer, Peer):
        peer = None
    if not who(peer):
        _refuse(who, peer)


def _refuse(who: Matcher, peer: Peer | None) -> None:
    if peer is None:
        raise AuthenticationFailed(f"route requires {who.describe()}; no identity")
    raise AccessDenied(f"route requires {who.describe()}; {peer.principal} is not")


class _Checked:
    """A route's own ASGI app, behind the requirements declared on the route.

    What :func:`require` costs per request once :func:`install` has moved it
    out of FastAPI's dependency solving: the matchers, called on the peer the
    middleware put in the scope, before the route's handler (its
    dependencies, its body) is touched. A refusal raises, and the exception
    handler :func:`install` registers answers with the fixed response.
    """

    __slots__ = ("app", "whos")

    def __init__(self, app: Any, whos: tuple[Matcher, ...]) -> None:
        self.app = app
        self.whos = whos

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if DECISION_SCOPE_KEY not in scope:
            raise AuthenticationFailed("peer_middleware is not installed in front of this route")
        peer = scope.get(PEER_SCOPE_KEY)
        if peer is not None and not isinstance(peer, Peer):
            peer = None
        for who in self.whos:
            if not who(peer):
                _refuse(who, peer)
        await self.app(scope, receive, send)


def require(who: Matcher, *, name: str | None = None) -> Any:
    """Declare that ``who`` may call this route (see the module doc).

    Use it in ``dependencies=[...]`` of a route, router or app, or as a
    parameter ``_: Annotated[None, require(...)]``. In ``dependencies=[...]``
    it is read when the app starts and costs no dependency per request; the
    route shows a ``mutualTLS`` and/or ``bearer`` security requirement in
    OpenAPI, its scope naming ``who``.
    """
    return Security(RouteRequirement(who, name), scopes=[who.describe()])


def _requirements(dependant: Any, seen: list[Any]) -> Iterable[Requirement]:
    if dependant is None or any(dependant is s for s in seen):
        return
    seen.append(dependant)
    call = getattr(dependant, "call", None)
    if isinstance(call, RouteRequirement):
        yield call.requirement
    for sub in getattr(dependant, "dependencies", ()):
        yield from _requirements(sub, seen)


@dataclass(frozen=True, slots=True, eq=False)
class _Node:
    """One route as the router tries it: what matches, what it declares, what it contains."""

    matcher: Any  # a Starlette route, or FastAPI's RouteContext for an included route
    route: Route | None  # set when rules are declared on it
    children: tuple[_Node, ...] | None  # for Mount and Host: the routes inside
    redirect_slashes: bool = False  # for Mount and Host: whether the router inside redirects


def _contexts(routes: Sequence[Any]) -> Iterable[Any]:
    """The routes in the order the router tries them, included routers flattened."""
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_contexts is None:  # pragma: no cover - FastAPI without included-router contexts
        return list(routes)
    return list(iter_contexts(routes))


def _describe(matcher: Any, prefix: str) -> str:
    path = prefix + str(getattr(matcher, "path", "") or "")
    if isinstance(getattr(matcher, "original_route", matcher), fastapi.routing.APIWebSocketRoute):
        return f"WEBSOCKET {path}"
    methods = getattr(matcher, "methods", None)
    return f"{','.join(sorted(methods)) if methods else '*'} {path}"


def _opaque(mounted: Any) -> bool:
    """True when a mounted app's own routing cannot be followed from here.

    The table descends only into a plain router, or a Starlette or FastAPI
    app that adds no middleware of its own (which could rewrite the path)
    and sets no ``root_path`` (FastAPI replaces the mount's with it): for any
    other app the central policy alone judges what it serves.
    """
    if isinstance(mounted, Router):
        return False
    if isinstance(mounted, Starlette):
        return bool(mounted.user_middleware) or bool(getattr(mounted, "root_path", ""))
    return True


class StarletteRouteTable:
    """The routes of a Starlette or FastAPI app, as its router dispatches them.

    A :class:`~peer_middleware.routes.RouteTable`: ``rules`` are the rules
    declared with :func:`require` (on the route, its router or the app), and
    :meth:`resolve` finds the route the router picks for a request by calling
    each route's own ``matches`` in the router's order: the first full match
    wins (a mount or host descends into the routes inside it), exactly as
    Starlette's and FastAPI's routers do. When no route matches fully, the
    router answers itself, and the table names the route that answer is
    about, so that only a caller that route's rules allow learns it exists:
    the first partial match (the route answers 405, method not allowed), else
    the route a trailing-slash redirect (307) would lead to. A request no
    route matches (404) is judged by the central policy alone. A mounted app
    whose routing cannot be followed (its own middleware, its own
    ``root_path``, not a Starlette app) is judged by the central policy alone.
    Routes added after the table is built make :meth:`unchanged` false: the
    guard then refuses what only rules declared on routes would allow.
    ``redirect_slashes`` is the router's own setting.
    """

    __slots__ = (
        "_counts",
        "_declared",
        "_lists",
        "_nodes",
        "_redirect_slashes",
        "_watched",
        "reads_host",
        "rules",
    )

    def __init__(self, routes: Sequence[Any], *, redirect_slashes: bool = True) -> None:
        declared: list[tuple[Route, list[Requirement]]] = []
        self.reads_host = False
        self._redirect_slashes = redirect_slashes
        self._lists: list[tuple[Sequence[Any], int]] = []
        self._declared: list[Any] = []  # the matchers of routes with requirements
        self._nodes = self._build(routes, "", declared)
        self._watched = tuple(routes for routes, _count in self._lists)
        self._counts = tuple(count for _routes, count in self._lists)
        self.rules: dict[Route, tuple[Rule, ...]] = declared_rules(declared)

    def _watch(self, routes: Sequence[Any]) -> None:
        """Remember a list of routes and its length, and those of the routers it includes."""
        self._lists.append((routes, len(routes)))
        for route in routes:
            included = getattr(route, "original_router", None)  # FastAPI's included routers
            inner = getattr(included, "routes", None)
            if isinstance(inner, list):
                self._watch(inner)

    def _build(
        self, routes: Sequence[Any], prefix: str, declared: list[tuple[Route, list[Requirement]]]
    ) -> tuple[_Node, ...]:
        self._watch(routes)
        nodes: list[_Node] = []
        for matcher in _contexts(routes):
            original = getattr(matcher, "original_route", matcher)
            if isinstance(original, Host):
                self.reads_host = True
            if isinstance(original, (Mount, Host)):
                mounted = getattr(original, "_base_app", None) or original.app
                if _opaque(mounted):
                    nodes.append(_Node(matcher, None, ()))
                    continue
                inner = getattr(matcher, "routes", None) or ()
                mount_path = str(getattr(matcher, "path", "") or "")
                children = self._build(inner, prefix + mount_path, declared)
                redirects = getattr(getattr(mounted, "router", mounted), "redirect_slashes", False)
                nodes.append(_Node(matcher, None, children, bool(redirects)))
                continue
            found = list(_requirements(getattr(matcher, "dependant", None), []))
            route = None
            if found:
                route = Route(_describe(matcher, prefix))
                declared.append((route, found))
                self._declared.append(matcher)
            nodes.append(_Node(matcher, route, None))
        return tuple(nodes)

    def variant(self, request: object) -> object:
        """What the route depends on besides method and path: the scope type, and
        the ``Host`` header when routes are chosen by host."""
        assert isinstance(request, dict)
        if self.reads_host:
            return (request["type"], _host(request))
        return request["type"]

    def unchanged(self) -> bool:
        """True while no route was added to or removed from the app since the table was built."""
        # Asked on every request a route's rules allowed: compared in C, no generator.
        return tuple(map(len, self._watched)) == self._counts

    def resolve(self, request: object, method: str, path: str) -> Route | None:
        """The route with declared rules that the router dispatches ``request`` to
        (or answers 405 or 307 about), if any."""
        assert isinstance(request, dict)
        probe = dict(request)
        probe["path"] = path
        probe["fastapi"] = {}
        return _match(self._nodes, probe, self._redirect_slashes)

    def enforce(self) -> int:
        """Check the requirements given in ``dependencies=[...]`` in the routes'
        own ASGI apps, and take them out of FastAPI's per-request dependency solving.

        For each route with such requirements, the dependant FastAPI's request
        handler solves loses them, the route's ``app`` is wrapped in a check
        of the same matchers, and ``route.dependant`` becomes a copy that
        keeps them (OpenAPI and anything else reading it see the route as
        declared). Requirements declared as parameters stay dependencies. A
        route whose internals are not as expected keeps its dependency: slower,
        never open. Called by :func:`install` when the middleware is built;
        returns how many routes changed. Idempotent.
        """
        changed = 0
        for matcher in self._declared:
            target = _route_object(matcher)
            if target is None or isinstance(getattr(target, "app", None), _Checked):
                continue
            dependant: Any = getattr(target, "dependant", None)
            subs = getattr(dependant, "dependencies", None)
            if not isinstance(subs, list):
                continue
            moved = [
                sub for sub in subs if sub.name is None and isinstance(sub.call, RouteRequirement)
            ]
            if not moved:
                continue
            kept = [sub for sub in subs if not any(sub is m for m in moved)]
            # The handler holds `dependant` itself: it loses the requirements;
            # the route shows a copy that keeps them.
            target.dependant = replace(dependant, dependencies=list(subs))
            dependant.dependencies = kept
            target.app = _Checked(target.app, tuple(sub.call.who for sub in moved))
            changed += 1
        return changed


def _route_object(matcher: Any) -> Any:
    """The object whose ``app`` and ``dependant`` FastAPI's router uses for ``matcher``."""
    context = getattr(matcher, "_route_context", None)
    if context is not None:
        return context if getattr(context, "starlette_route", None) is None else None
    route = getattr(matcher, "route", matcher)
    if isinstance(route, (fastapi.routing.APIRoute, fastapi.routing.APIWebSocketRoute)):
        return route
    return None


def _host(scope: dict[str, Any]) -> bytes | None:
    """The ``Host`` header as sent (Starlette's ``Host`` routes read it)."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return bytes(value)
    return None


def _match(nodes: tuple[_Node, ...], scope: dict[str, Any], redirect_slashes: bool) -> Route | None:
    partial: _Node | None = None
    for node in nodes:
        match, child = node.matcher.matches(scope)
        if match is Match.FULL:
            if node.children is not None:
                return _match(node.children, {**scope, **child}, node.redirect_slashes)
            return node.route
        if match is Match.PARTIAL and partial is None:
            partial = node
    if partial is not None:
        # The router lets this route answer 405 (Mount and Host never match partially).
        return partial.route
    path = scope["path"]
    if (
        redirect_slashes
        and scope["type"] == "http"
        and route_path(path, scope.get("root_path", "")) != "/"
    ):
        # As the router does: the same path with the trailing slash flipped; a
        # route matching it gets a 307 to it.
        flipped = dict(scope)
        flipped["path"] = path.rstrip("/") if path.endswith("/") else path + "/"
        if any(node.matcher.matches(flipped)[0] is not Match.NONE for node in nodes):
            return _match(nodes, flipped, False)
    return None


def route_table(app: FastAPI) -> StarletteRouteTable:
    """The :class:`StarletteRouteTable` of ``app``'s routes as they are now."""
    return StarletteRouteTable(app.router.routes, redirect_slashes=app.router.redirect_slashes)


def route_templates(routes: Iterable[Any], prefix: str = "") -> list[str]:
    """The path templates of ``routes``, mounts included (a mount without
    routes of its own, or a host, as everything under its prefix)."""
    templates: list[str] = []
    for route in routes:
        if isinstance(route, Mount):
            inner = route.routes
            if inner:
                templates += route_templates(inner, prefix + route.path)
            else:
                templates.append(prefix + route.path + "/{rest:path}")
        elif isinstance(route, Host):
            templates.append(prefix + "/{rest:path}")
        elif isinstance(getattr(route, "path", None), str):
            templates.append(prefix + route.path)
    return templates


def collect_route_rules(app: FastAPI) -> list[Rule]:
    """The rules declared with :func:`require` on ``app``'s routes, in route order."""
    return [rule for rules in route_table(app).rules.values() for rule in rules]


def _exception_handler(guard: Guard) -> Any:
    async def handle(connection: HTTPConnection, exc: Exception) -> Response | None:
        if not isinstance(exc, RequestRefused):  # pragma: no cover - registered for it only
            raise exc
        peer = connection.scope.get(PEER_SCOPE_KEY)
        websocket = connection.scope["type"] == "websocket"
        verdict = guard.reject(
            exc,
            "GET" if websocket else connection.scope.get("method", "GET"),
            connection.url.path,
            peer if isinstance(peer, Peer) else None,
        )
        problem = verdict.response
        assert problem is not None  # every refused verdict carries its response
        response = Response(problem.body, status_code=problem.status, headers=dict(problem.headers))
        if not websocket:
            return response
        assert isinstance(connection, WebSocket)
        if "websocket.http.response" in connection.scope.get("extensions", {}):
            await connection.send_denial_response(response)
        else:
            await connection.close(code=1008)
        return None

    return handle


def docs_rules(app: FastAPI, who: Matcher, *, name: str = "openapi-docs") -> list[Rule]:
    """Central rules that let ``who`` read ``app``'s API documentation.

    One ``allow`` rule for ``GET`` and ``HEAD`` on the paths the app serves
    its documentation on, as configured: ``openapi_url``
    (``/openapi.json``), ``docs_url`` (``/docs``) with the Swagger UI OAuth2
    redirect page, and ``redoc_url`` (``/redoc``); a path set to ``None`` is
    left out, and an app with none gets no rule. Without such a rule the
    documentation is refused like any route no rule allows. ``Anyone()``
    publishes it; a matcher such as ``Namespace("platform", ...)`` shows it
    to some callers only::

        policy = Policy([*docs_rules(app, Anyone()), allow("healthz", Anyone(), paths="/healthz")])
    """
    paths = [app.openapi_url]
    if app.openapi_url:
        paths += [app.docs_url, app.redoc_url]
        if app.docs_url:
            paths.append(app.swagger_ui_oauth2_redirect_url)
    served = [path for path in paths if path]
    if not served:
        return []
    return [allow(name, who, methods=["GET", "HEAD"], paths=served)]


def _document_schemes(schema: dict[str, Any], kept: frozenset[str]) -> None:
    """Keep the security schemes the configured authenticators can satisfy, and
    give ``mutualTLS`` its OpenAPI 3.1 form (FastAPI's models cannot express it)."""
    schemes = schema.get("components", {}).get("securitySchemes", {})
    for scheme in (MUTUAL_TLS_SCHEME, BEARER_SCHEME):
        if scheme in schemes and scheme not in kept:
            del schemes[scheme]
    if MUTUAL_TLS_SCHEME in schemes:
        schemes[MUTUAL_TLS_SCHEME] = {
            "type": "mutualTLS",
            "description": _CERTIFICATE.model.description,
        }
    dropped = {MUTUAL_TLS_SCHEME, BEARER_SCHEME} - kept
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            security = operation.get("security") if isinstance(operation, dict) else None
            if not security:
                continue
            security[:] = [entry for entry in security if not dropped.intersection(entry)]
            if not security:
                del operation["security"]


def install(
    app: FastAPI,
    *,
    policy: Policy,
    authenticators: Iterable[Authenticator] = (),
    responder: Responder | None = None,
    www_authenticate: str | None = None,
    memory: MemoryLimits | None = None,
    observers: Iterable[Observer] = (),
) -> None:
    """Add :class:`~peer_middleware.PeerMiddleware` to ``app`` with route rules.

    Rules declared with :func:`require` are collected when Starlette builds the
    middleware stack (at start-up), so routes may be added after this call
    (but not once the app serves requests). Then, too, the requirements given
    in ``dependencies=[...]`` leave FastAPI's per-request dependency solving
    for a check in front of the route's handler (see
    :meth:`StarletteRouteTable.enforce`). Refusals raised by dependencies get
    the same fixed responses as the middleware's. The OpenAPI document lists
    the ``mutualTLS`` scheme when an authenticator reads certificates, the
    bearer scheme when one reads tokens. ``observers`` are told of every
    decision (:mod:`peer_middleware.observe`; metrics in :mod:`peer_middleware.metrics`).
    """
    # Built (and so validated) now; Starlette builds the middleware itself
    # later, with this guard, and the route table as the routes are then.
    guard = Guard(
        policy=policy,
        authenticators=authenticators,
        responder=responder,
        www_authenticate=www_authenticate,
        memory=memory,
        observers=observers,
    )

    def routes() -> StarletteRouteTable:
        table = route_table(app)
        table.enforce()
        warn_unmatched_rules(guard.policy.rules, route_templates(app.router.routes), "the app")
        return table

    app.add_middleware(PeerMiddleware, guard=guard, routes=routes)
    app.add_exception_handler(RequestRefused, _exception_handler(guard))
    kept = frozenset(
        BEARER_SCHEME if authenticator.bearer else MUTUAL_TLS_SCHEME
        for authenticator in guard.authenticators
    )
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        _document_schemes(schema, kept)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
