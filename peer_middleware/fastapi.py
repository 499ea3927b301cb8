"""FastAPI integration: install the middleware, declare rules on routes, get the peer.

::

    from typing import Annotated
    import fastapi.routing
from fastapi import Depends, FastAPI
    from peer_middleware import Namespace, Policy, XfccAuthenticator, allow, Anyone
    from peer_middleware.fastapi import CurrentPeer, install, require

    app = FastAPI()

    @app.get("/payments/{payment_id}",
             dependencies=[require(Namespace("shop", trust_domain="cluster.local"))])
    def read_payment(payment_id: str, peer: CurrentPeer) -> dict[str, str]:
        return {"id": payment_id, "caller": peer.principal}

    install(app, policy=Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz")]),
            authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])])

:func:`require` does two things. When the middleware is built (at
application start-up) every route's requirements become ALLOW rules for that
route's methods and path template, merged into the policy, so the middleware
lets those callers through *before* the handler runs; and the dependency
checks the peer again inside the route, so a route is never reachable by a
caller its declaration does not name, even if the middleware was left out.
Several requirements on one route must all hold. Routes inside mounted
sub-applications are not visited: give those apps their own rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import fastapi.routing
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from .asgi import DECISION_SCOPE_KEY, PEER_SCOPE_KEY, PeerMiddleware
from .core import Authenticator, Guard, Responder, default_responder, route_refusal
from .errors import AccessDenied, AuthenticationFailed, ConfigurationError, RequestRefused
from .peer import Peer
from .policy import AllOf, Policy, Rule, Who, allow

__all__ = [
    "CurrentPeer",
    "OptionalPeer",
    "RouteRequirement",
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


def get_peer(connection: HTTPConnection) -> Peer:
    """Dependency: the authenticated peer; 401 when the request has none."""
    peer = _scope_peer(connection)
    if peer is None:
        raise AuthenticationFailed("this route needs an authenticated peer")
    return peer


def get_optional_peer(connection: HTTPConnection) -> Peer | None:
    """Dependency: the authenticated peer, or ``None`` for an anonymous request."""
    return _scope_peer(connection)


CurrentPeer = Annotated[Peer, Depends(get_peer)]
OptionalPeer = Annotated[Peer | None, Depends(get_optional_peer)]


class RouteRequirement:
    """The callable behind :func:`require`: checks the peer inside the route."""

    __slots__ = ("name", "who")

    def __init__(self, who: Who, name: str | None = None) -> None:
        if not isinstance(who, Who):
            raise ConfigurationError(f"require(): {who!r} is not a matcher")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigurationError("require(): name must be a non-empty string")
        self.who = who
        self.name = name

    def __call__(self, connection: HTTPConnection) -> None:
        peer = _scope_peer(connection)
        if not self.who(peer):
            if peer is None:
                raise AuthenticationFailed(f"route requires {self.who.describe()}; no identity")
            raise AccessDenied(f"route requires {self.who.describe()}; {peer.principal} is not")

    def __repr__(self) -> str:
        return f"require({self.who.describe()})"


def require(who: Who, *, name: str | None = None) -> Any:
    """A route dependency that allows ``who`` on this route (see the module doc).

    Use it in ``dependencies=[...]`` of a route, router or app, or as a
    parameter ``_: Annotated[None, require(...)]``.
    """
    return Depends(RouteRequirement(who, name))


def _requirements(dependant: Any, seen: set[int]) -> Iterable[RouteRequirement]:
    if id(dependant) in seen:
        return
    seen.add(id(dependant))
    call = getattr(dependant, "call", None)
    if isinstance(call, RouteRequirement):
        yield call
    for sub in getattr(dependant, "dependencies", ()):
        yield from _requirements(sub, seen)


def _routes(app: FastAPI) -> Iterable[tuple[Any, str, Any, Any]]:
    """(route, path, methods, dependant) of every API route, router prefixes applied."""
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_contexts is None:  # pragma: no cover - FastAPI before included-router contexts
        for route in app.routes:
            if isinstance(route, (APIRoute, APIWebSocketRoute)):
                yield route, route.path, getattr(route, "methods", None), route.dependant
        return
    for context in iter_contexts(app.routes):
        route = context.original_route
        if isinstance(route, (APIRoute, APIWebSocketRoute)):
            yield route, context.path, context.methods, context.dependant


def collect_route_rules(app: FastAPI) -> list[Rule]:
    """ALLOW rules from every route's :func:`require` dependencies.

    A requirement used on several routes gives one rule per route; the
    second and later rules of a named requirement get the route in their name.
    """
    rules: list[Rule] = []
    names: set[str] = set()
    for route, path, route_methods, dependant in _routes(app):
        if isinstance(route, APIRoute):
            methods: Iterable[str] = sorted(route_methods or ())
        elif isinstance(route, APIWebSocketRoute):
            methods = ("GET",)
        else:
            continue
        found = list(_requirements(dependant, set()))
        if not found:
            continue
        who = found[0].who if len(found) == 1 else AllOf(*(r.who for r in found))
        where = f"{','.join(methods)} {path}"
        named = [r.name for r in found if r.name]
        name = named[0] if named else f"route {where}"
        if name in names:
            name = f"{name} [{where}]"
        names.add(name)
        rules.append(allow(name, who, methods=methods, paths=path))
    return rules


def _exception_handler(responder: Responder, www_authenticate: str | None) -> Any:
    async def handle(connection: HTTPConnection, exc: Exception) -> Response | None:
        if not isinstance(exc, RequestRefused):  # pragma: no cover - registered for it only
            raise exc
        peer = connection.scope.get(PEER_SCOPE_KEY)
        websocket = connection.scope["type"] == "websocket"
        problem = route_refusal(
            exc,
            method="GET" if websocket else connection.scope.get("method", "GET"),
            path=connection.url.path,
            peer=peer if isinstance(peer, Peer) else None,
            responder=responder,
            www_authenticate=www_authenticate,
        )
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
) -> None:
    """Add :class:`~peer_middleware.PeerMiddleware` to ``app`` with route rules.

    Rules declared with :func:`require` are collected when Starlette builds the
    middleware stack (at start-up), so routes may be added after this call.
    Refusals raised by dependencies get the same fixed responses as the
    middleware's.
    """
    if not isinstance(policy, Policy):
        raise ConfigurationError(f"policy must be a Policy, not {type(policy).__name__}")
    authenticators = tuple(authenticators)
    # Validate everything now; Starlette builds the middleware itself later.
    guard = Guard(
        policy=policy,
        authenticators=authenticators,
        responder=responder,
        www_authenticate=www_authenticate,
    )
    app.add_middleware(
        PeerMiddleware,
        policy=policy,
        authenticators=authenticators,
        responder=responder,
        www_authenticate=www_authenticate,
        route_rules=lambda: collect_route_rules(app),
    )
    app.add_exception_handler(
        RequestRefused, _exception_handler(responder or default_responder, guard.www_authenticate)
    )
