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
pattern happens to match never inherits them. The dependency also checks the
peer again inside the route, so a route is never reachable by a caller its
declaration does not name, even if the middleware was left out. Several
requirements on one route must all hold. Routes must be declared before the
app serves its first request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import fastapi.routing
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.routing import Host, Match, Mount, Router
from starlette.websockets import WebSocket

from .asgi import DECISION_SCOPE_KEY, PEER_SCOPE_KEY, PeerMiddleware
from .errors import AccessDenied, AuthenticationFailed, RequestRefused
from .guard import Guard
from .matchers import Matcher
from .memory import MemoryLimits
from .peer import Peer
from .policy import Policy
from .request import Authenticator
from .responses import Responder
from .routes import Requirement, declared_rules
from .rules import Route, Rule

__all__ = [
    "CurrentPeer",
    "OptionalPeer",
    "RouteRequirement",
    "StarletteRouteTable",
    "collect_route_rules",
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


class RouteRequirement:
    """The callable behind :func:`require`: checks the peer inside the route.

    An ``async`` callable, so FastAPI runs it on the event loop (no
    threadpool hop).
    """

    __slots__ = ("name", "requirement", "who")

    def __init__(self, who: Matcher, name: str | None = None) -> None:
        self.requirement = Requirement(who, name)
        self.who = who
        self.name = name

    async def __call__(self, connection: HTTPConnection) -> None:
        peer = _scope_peer(connection)
        if not self.who(peer):
            if peer is None:
                raise AuthenticationFailed(f"route requires {self.who.describe()}; no identity")
            raise AccessDenied(f"route requires {self.who.describe()}; {peer.principal} is not")

    def __repr__(self) -> str:
        return f"require({self.who.describe()})"


def require(who: Matcher, *, name: str | None = None) -> Any:
    """A route dependency that allows ``who`` on this route (see the module doc).

    Use it in ``dependencies=[...]`` of a route, router or app, or as a
    parameter ``_: Annotated[None, require(...)]``.
    """
    return Depends(RouteRequirement(who, name))


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
    Starlette's and FastAPI's routers do. Only full matches count: a route
    that answers 405 or a trailing-slash redirect runs no handler, so the
    central policy alone judges those requests. A mounted app whose routing
    cannot be followed (its own middleware, its own ``root_path``, not a
    Starlette app) is judged by the central policy alone. Routes added after
    the table is built make :meth:`unchanged` false: the guard then refuses
    what only rules declared on routes would allow.
    """

    __slots__ = ("_lists", "_nodes", "reads_host", "rules")

    def __init__(self, routes: Sequence[Any]) -> None:
        declared: list[tuple[Route, list[Requirement]]] = []
        self.reads_host = False
        self._lists: list[tuple[Sequence[Any], int]] = []
        self._nodes = self._build(routes, "", declared)
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
                nodes.append(_Node(matcher, None, children))
                continue
            found = list(_requirements(getattr(matcher, "dependant", None), []))
            route = None
            if found:
                route = Route(_describe(matcher, prefix))
                declared.append((route, found))
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
        return all(len(routes) == count for routes, count in self._lists)

    def resolve(self, request: object, method: str, path: str) -> Route | None:
        """The route with declared rules that the router dispatches ``request`` to, if any."""
        assert isinstance(request, dict)
        probe = dict(request)
        probe["path"] = path
        probe["fastapi"] = {}
        return _match(self._nodes, probe)


def _host(scope: dict[str, Any]) -> bytes | None:
    """The ``Host`` header as sent (Starlette's ``Host`` routes read it)."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return bytes(value)
    return None


def _match(nodes: tuple[_Node, ...], scope: dict[str, Any]) -> Route | None:
    for node in nodes:
        match, child = node.matcher.matches(scope)
        if match is Match.FULL:
            if node.children is not None:
                return _match(node.children, {**scope, **child})
            return node.route
    return None


def route_table(app: FastAPI) -> StarletteRouteTable:
    """The :class:`StarletteRouteTable` of ``app``'s routes as they are now."""
    return StarletteRouteTable(app.router.routes)


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


def install(
    app: FastAPI,
    *,
    policy: Policy,
    authenticators: Iterable[Authenticator] = (),
    responder: Responder | None = None,
    www_authenticate: str | None = None,
    memory: MemoryLimits | None = None,
) -> None:
    """Add :class:`~peer_middleware.PeerMiddleware` to ``app`` with route rules.

    Rules declared with :func:`require` are collected when Starlette builds the
    middleware stack (at start-up), so routes may be added after this call
    (but not once the app serves requests).
    Refusals raised by dependencies get the same fixed responses as the
    middleware's.
    """
    # Built (and so validated) now; Starlette builds the middleware itself
    # later, with this guard, and the route table as the routes are then.
    guard = Guard(
        policy=policy,
        authenticators=authenticators,
        responder=responder,
        www_authenticate=www_authenticate,
        memory=memory,
    )
    app.add_middleware(PeerMiddleware, guard=guard, routes=lambda: route_table(app))
    app.add_exception_handler(RequestRefused, _exception_handler(guard))
