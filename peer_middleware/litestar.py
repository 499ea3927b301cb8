"""Litestar integration: the middleware in front of the router, guards that declare who may call.

::

    from litestar import Litestar, get
    from peer_middleware import Anyone, Namespace, Policy, XfccAuthenticator, allow
    from peer_middleware.litestar import current_peer, install, require

    @get("/payments/{payment_id:str}",
         guards=[require(Namespace("shop", trust_domain="cluster.local"))])
    async def read_payment(payment_id: str, request: Request) -> dict[str, str]:
        return {"id": payment_id, "caller": current_peer(request).principal}

    app = Litestar([read_payment])
    install(app, policy=Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz")]),
            authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])])

:func:`install` puts :class:`~peer_middleware.PeerMiddleware` around the
app's ASGI handler, *before* Litestar routes the request (middleware given
to ``Litestar(middleware=[...])`` runs after routing, on the path the router
already chose, so it cannot be used here): the router sees the normalised
path the rules saw. :func:`require` is a Litestar guard, usable on a handler,
controller, router or the app (``guards=[require(...)]``); several must all
hold. :func:`install` reads them into a :class:`LitestarRouteTable`: for a
request that no central rule decided, the middleware asks Litestar's own
router (``app.asgi_router.handle_routing``, the code that dispatches every
request) which handler will run, and applies the rules declared on that
handler and no other. The guard checks the peer again when Litestar runs
it, so a handler is never reachable by a caller its guards do not name, and
its refusals get the same fixed responses as the middleware's. Handlers
registered after :func:`install` make rules declared on handlers refuse
(register every handler before installing).

The peer is in ``request.scope["peer_middleware.peer"]``, from
:func:`current_peer` (``None`` when anonymous) and :func:`peer_of` (401 when
anonymous).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from litestar import Litestar, Request, Response
from litestar.connection import ASGIConnection, WebSocket
from litestar.exceptions import HTTPException, WebSocketException
from litestar.handlers import BaseRouteHandler
from litestar.utils import normalize_path

from .asgi import DECISION_SCOPE_KEY, PEER_SCOPE_KEY, ASGIApp, PeerMiddleware, Receive, Scope, Send
from .errors import AuthenticationFailed, BadRequest, ConfigurationError, RequestRefused
from .guard import Guard, logger
from .matchers import Matcher
from .memory import MemoryLimits
from .observe import Observer
from .peer import Peer
from .policy import Policy
from .request import Authenticator
from .responses import Responder
from .routes import Requirement, declared_rules, enforce, outside_root
from .rules import Route, Rule

__all__ = [
    "LitestarRouteTable",
    "RouteRequirement",
    "current_peer",
    "install",
    "peer_of",
    "require",
]


def _scope_peer(connection: ASGIConnection[Any, Any, Any, Any]) -> Peer | None:
    scope: Any = connection.scope
    if DECISION_SCOPE_KEY not in scope:
        # Without the middleware nobody was authenticated: refuse rather than
        # treat every caller as anonymous-but-allowed.
        raise AuthenticationFailed("peer_middleware is not installed in front of this handler")
    peer = scope.get(PEER_SCOPE_KEY)
    return peer if isinstance(peer, Peer) else None


def current_peer(connection: ASGIConnection[Any, Any, Any, Any]) -> Peer | None:
    """The peer of ``connection`` (a request or websocket), or ``None`` when anonymous."""
    return _scope_peer(connection)


def peer_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Peer:
    """The peer of ``connection``; 401 when the request has none."""
    peer = _scope_peer(connection)
    if peer is None:
        raise AuthenticationFailed("this handler needs an authenticated peer")
    return peer


class RouteRequirement:
    """A Litestar guard that allows ``who`` on the handlers it guards (see :func:`require`).

    An ``async`` callable, so Litestar runs it on the event loop (a plain
    function guard would run in a thread pool).
    """

    __slots__ = ("requirement",)

    def __init__(self, who: Matcher, name: str | None = None) -> None:
        self.requirement = Requirement(who, name)

    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        try:
            enforce((self.requirement,), _scope_peer(connection), "handler")
        except RequestRefused as error:
            if not isinstance(connection, WebSocket):
                raise  # the exception handler install() registers answers with the fixed body
            # Litestar closes a websocket on an exception without asking exception
            # handlers: close as the middleware does (1008, before accepting, no reason).
            logger.info("refused websocket %r: %s", connection.url.path[:200], error)
            raise WebSocketException(detail="", code=1008) from error

    def __repr__(self) -> str:
        return f"require({self.requirement.who.describe()})"


def require(who: Matcher, *, name: str | None = None) -> RouteRequirement:
    """A guard allowing ``who`` on the handlers it guards (``guards=[require(...)]``)."""
    return RouteRequirement(who, name)


def _requirements(handler: BaseRouteHandler) -> list[Requirement]:
    """The requirements among the guards Litestar resolves for ``handler`` (app to handler)."""
    found: list[Requirement] = []
    for layer in handler.ownership_layers:
        for guard in getattr(layer, "guards", None) or ():
            if isinstance(guard, RouteRequirement):
                found.append(guard.requirement)
    return found


class LitestarRouteTable:
    """The handlers of a Litestar app, as its router dispatches requests to them.

    A :class:`~peer_middleware.routes.RouteTable`: ``rules`` are the rules
    declared with :func:`require` guards (on the handler or any layer above
    it), one :class:`Route` per handler, and :meth:`resolve` asks the app's
    router (``handle_routing``, with the path it would compute: ``root_path``
    removed, normalised) which handler runs. A request no handler serves (404,
    405, a bad ``Host``) runs no handler: the central policy alone judges it.
    """

    __slots__ = ("_app", "_count", "_routes", "rules")

    def __init__(self, app: Litestar) -> None:
        self._app = app
        self._routes: dict[int, tuple[BaseRouteHandler, Route]] = {}
        declared: list[tuple[Route, list[Requirement]]] = []
        for route in app.routes:
            for handler in _handlers(route):
                found = _requirements(handler)
                if not found or id(handler) in self._routes:
                    continue
                methods = getattr(handler, "http_methods", None)
                kind = ",".join(sorted(methods)) if methods else type(handler).__name__
                described = Route(f"{kind} {route.path} {handler.handler_name}")
                self._routes[id(handler)] = (handler, described)
                declared.append((described, found))
        self.rules: dict[Route, tuple[Rule, ...]] = declared_rules(declared)
        self._count = _handler_count(app)

    def variant(self, request: object) -> object:
        """What the handler depends on besides method and path: the scope type
        (a websocket is routed without a method)."""
        assert isinstance(request, dict)
        return request["type"]

    def unchanged(self) -> bool:
        """True while no handler was registered since the table was built."""
        return _handler_count(self._app) == self._count

    def resolve(self, request: object, method: str, path: str) -> Route | None:
        """The handler with declared rules that Litestar dispatches ``request`` to, if any."""
        assert isinstance(request, dict)
        root_path = request.get("root_path", "")
        if root_path:
            path = path.split(root_path, maxsplit=1)[-1]
        try:
            handler = self._app.asgi_router.handle_routing(
                path=normalize_path(path),
                method=method if request["type"] == "http" else None,
            )[1]
        except HTTPException:
            # 404, 405: no handler runs.
            return None
        found = self._routes.get(id(handler))
        return found[1] if found is not None and found[0] is handler else None


def _handlers(route: Any) -> list[BaseRouteHandler]:
    """The handlers of an HTTP, websocket or ASGI route."""
    handlers = getattr(route, "route_handlers", None)
    return list(handlers) if handlers is not None else [route.route_handler]


def _handler_count(app: Litestar) -> tuple[int, int]:
    """Changes when a handler is registered: every handler has its entry in the
    router's index (names are unique), and every new path its route. O(1):
    asked on every request that rules declared on handlers may decide."""
    return len(app.routes), len(app.asgi_router.route_handler_index)


class _Middleware(PeerMiddleware):
    """:class:`PeerMiddleware` refusing a path Litestar would route under another
    ``root_path`` split than the rules judged (:func:`~peer_middleware.routes.outside_root`)."""

    __slots__ = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and outside_root(
            scope.get("path", ""), scope.get("root_path", "")
        ):
            error = BadRequest("request path is not under the root path")
            method = scope.get("method", "GET")
            verdict = self.guard.reject(error, method, str(scope.get("path", ""))[:200])
            await self._refuse(scope["type"], scope, send, verdict)
            return
        await super().__call__(scope, receive, send)


def _exception_handler(guard: Guard) -> Any:
    def handle(request: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
        assert isinstance(error, RequestRefused)  # registered for it only
        peer = request.scope.get(PEER_SCOPE_KEY)
        verdict = guard.reject(
            error, request.method, request.url.path, peer if isinstance(peer, Peer) else None
        )
        problem = verdict.response
        assert problem is not None  # every refused verdict carries its response
        headers = dict(problem.headers)
        media_type = headers.pop("content-type", None)
        return Response(
            problem.body, status_code=problem.status, headers=headers, media_type=media_type
        )

    return handle


def install(
    app: Litestar,
    *,
    policy: Policy,
    authenticators: Iterable[Authenticator] = (),
    responder: Responder | None = None,
    www_authenticate: str | None = None,
    memory: MemoryLimits | None = None,
    observers: Iterable[Observer] = (),
) -> PeerMiddleware:
    """Put :class:`~peer_middleware.PeerMiddleware` in front of ``app``'s router.

    Call it once every handler is registered (after ``Litestar(...)``). The
    rules declared with :func:`require` guards apply to the handler Litestar
    dispatches to; refusals raised by those guards get the middleware's fixed
    responses. Returns the middleware (its ``guard`` holds the policy).
    """
    if isinstance(app.asgi_handler, PeerMiddleware):
        raise ConfigurationError("peer_middleware is already installed on this app")
    guard = Guard(
        policy=policy,
        authenticators=authenticators,
        responder=responder,
        www_authenticate=www_authenticate,
        memory=memory,
        observers=observers,
    )
    table = LitestarRouteTable(app)
    inner = cast(ASGIApp, app.asgi_handler)
    middleware = _Middleware(inner, guard=guard, routes=lambda: table)
    app.asgi_handler = middleware  # type: ignore[assignment]
    app.exception_handlers[RequestRefused] = _exception_handler(guard)
    return middleware
