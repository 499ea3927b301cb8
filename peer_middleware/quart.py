"""Quart integration: the middleware on ``app.asgi_app``, rules declared on views, ``g.peer``.

::

    from quart import Quart
    from peer_middleware import Anyone, Namespace, Policy, XfccAuthenticator, allow
    from peer_middleware.quart import PeerAuth, current_peer, require

    app = Quart(__name__)
    PeerAuth(app, policy=Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz")]),
             authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])])

    @app.get("/payments/<payment_id>")
    @require(Namespace("shop", trust_domain="cluster.local"))
    async def read_payment(payment_id: str):
        return {"id": payment_id, "caller": current_peer.principal}

:class:`PeerAuth` wraps ``app.asgi_app`` (Quart's place for ASGI middleware)
in :class:`~peer_middleware.PeerMiddleware`, so every HTTP request and
websocket is authenticated and authorized before Quart routes it, and the
path Quart routes is the normalised path the rules saw. :func:`require`
goes *below* the route decorator, as in Flask; placed above it, it raises
:class:`~peer_middleware.errors.ConfigurationError` naming the order.

The rules declared with :func:`require` are read into a
:class:`QuartRouteTable` when the app starts serving (``before_serving``,
run by hypercorn and uvicorn at lifespan start-up), else before the first
request. For a request that no central rule decided, the middleware asks
Quart's own URL adapter (``app.create_url_adapter``, as Quart does for every
request) which view it dispatches to, and applies the rules declared on that
view and no other. The wrapped view checks the peer again, so a view is
never reachable by a caller its declaration does not name.

The peer is on ``quart.g.peer`` (``None`` for an anonymous request), in
:data:`current_peer`, and in ``request.scope["peer_middleware.peer"]``.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

from quart import (
    Quart,
    Response,
    current_app,
    g,
    has_request_context,
    has_websocket_context,
    request,
    websocket,
)
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.local import LocalProxy

from .asgi import DECISION_SCOPE_KEY, PEER_SCOPE_KEY, ASGIApp, PeerMiddleware, Receive, Scope, Send
from .errors import (
    AccessDenied,
    AuthenticationFailed,
    BadRequest,
    ConfigurationError,
    RequestRefused,
)
from .guard import Guard
from .matchers import Matcher
from .memory import MemoryLimits
from .observe import Observer
from .peer import Peer
from .policy import Policy
from .request import Authenticator
from .responses import Responder
from .routes import (
    EndpointTable,
    Requirement,
    declare_on_view,
    enforce,
    outside_root,
    refuse_registered,
)
from .rules import Decision, Route

__all__ = ["PeerAuth", "QuartRouteTable", "current_peer", "get_peer", "require"]

F = TypeVar("F", bound=Callable[..., Any])

EXTENSION_KEY = "peer_middleware"
GUARD_KEY = "peer_middleware.guard"

#: Apps with :class:`PeerAuth`, so that ``@require`` above ``@app.route`` raises at once.
_apps: weakref.WeakSet[Quart] = weakref.WeakSet()


def _scope() -> Scope | None:
    if has_request_context():
        return cast(Scope, request.scope)
    if has_websocket_context():
        return cast(Scope, websocket.scope)
    return None


def get_peer() -> Peer | None:
    """The peer of the current request or websocket, or ``None`` when anonymous."""
    scope = _scope()
    peer = scope.get(PEER_SCOPE_KEY) if scope is not None else None
    return peer if isinstance(peer, Peer) else None


#: The peer of the current request or websocket (``None`` when anonymous).
current_peer: Peer = cast(Peer, LocalProxy(get_peer))


def require(who: Matcher, *, name: str | None = None) -> Callable[[F], F]:
    """Declare on a view (HTTP or websocket) that ``who`` may call it (see the module doc)."""
    requirement = Requirement(who, name)  # validated now, at import time

    def decorate(view: F) -> F:
        refuse_registered(view, _apps, "Quart")
        return cast(F, declare_on_view(view, requirement, _checked))

    return decorate


def _checked(
    inner: Callable[..., Any], requirements: tuple[Requirement, ...]
) -> Callable[..., Any]:
    @functools.wraps(inner)
    async def checked(*args: Any, **kwargs: Any) -> Any:
        scope = _scope()
        if scope is None or DECISION_SCOPE_KEY not in scope:
            # The middleware is not in front of this app: refuse, never assume.
            raise AuthenticationFailed("peer_middleware is not installed in front of this view")
        peer = scope.get(PEER_SCOPE_KEY)
        try:
            enforce(requirements, peer if isinstance(peer, Peer) else None)
        except RequestRefused as error:
            # Answered here: a blueprint's error handlers come before the app's.
            return await _refusal(error)
        if native:
            return await inner(*args, **kwargs)
        return await current_app.ensure_async(inner)(*args, **kwargs)

    # An async view is awaited as it is; only a sync one needs Quart's thread.
    native = inspect.iscoroutinefunction(inner)
    return checked


async def _no_send(message: Any) -> None:  # pragma: no cover - never called by a probe
    raise RuntimeError("a routing probe sends nothing")


class QuartRouteTable(EndpointTable):
    """The views of a Quart app, as its URL map dispatches requests and websockets to them.

    A :class:`~peer_middleware.routes.RouteTable` (the endpoint bookkeeping
    is Flask's, :class:`~peer_middleware.routes.EndpointTable`).
    :meth:`resolve` builds the request or websocket object Quart builds from
    the scope (its connection class's own code) and asks
    ``app.create_url_adapter`` which URL rule matches, so literal rules win
    over variable ones, converters, methods and websocket rules count, and
    blueprints and ``url_prefix`` are what Quart makes of them. A request that
    matches no rule (404), the wrong method (405) or a redirect reaches no
    view: the central policy alone judges it.
    """

    __slots__ = ("_app", "reads_host")

    def __init__(self, app: Quart) -> None:
        super().__init__(app.url_map, app.view_functions, "Quart")
        self._app = app
        self.reads_host = bool(
            app.url_map.host_matching or app.subdomain_matching or app.config.get("SERVER_NAME")
        )

    def variant(self, request: object) -> object:
        """What the view depends on besides method and path: the scope type and
        scheme and, when rules are chosen by host, the ``Host`` header."""
        assert isinstance(request, dict)
        if self.reads_host:
            host = next((v for k, v in request.get("headers", ()) if k == b"host"), None)
            return (request["type"], request.get("scheme"), host)
        return (request["type"], request.get("scheme"))

    def resolve(self, request: object, method: str, path: str) -> Route | None:
        """The view with declared rules that Quart dispatches ``request`` to, if any."""
        assert isinstance(request, dict)
        app = self._app
        probe = dict(request)
        probe["path"] = path
        made: Any
        if probe["type"] == "websocket":
            connection: Any = app.asgi_websocket_class(app, probe)  # type: ignore[arg-type]
            made = connection._create_websocket_from_scope(_no_send)
        else:
            probe["method"] = method
            connection = app.asgi_http_class(app, probe)  # type: ignore[arg-type]
            made = connection._create_request_from_scope(_no_send)
        try:
            adapter = app.create_url_adapter(made)
            if adapter is None:  # pragma: no cover - only without a request
                return None
            url_rule, _ = adapter.match(return_rule=True)
        except (HTTPException, SecurityError):
            # 404, 405, a redirect, a websocket on an HTTP rule: no view runs.
            return None
        return self.route_of(url_rule.endpoint)


class _Middleware(PeerMiddleware):
    """:class:`PeerMiddleware` reading the app's views at start-up or before the first request."""

    __slots__ = ("_table", "table")

    def __init__(self, app: ASGIApp, *, guard: Guard, table: Callable[[], QuartRouteTable]) -> None:
        super().__init__(app, guard=guard)
        self._table: Callable[[], QuartRouteTable] | None = table
        #: The table the guard uses, once read.
        self.table: QuartRouteTable | None = None

    def finalise(self) -> None:
        table = self._table
        if table is not None:
            # Kept until it succeeds: a misplaced @require raises on every request.
            built = table()
            self.guard.use_routes(built)
            self.table = built
            self._table = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._table is not None and scope["type"] != "lifespan":
            self.finalise()
        if scope["type"] in ("http", "websocket") and outside_root(
            scope.get("path", ""), scope.get("root_path", "")
        ):
            # Quart would route another path than the rules judged.
            error = BadRequest("request path is not under the root path")
            method = scope.get("method", "GET")
            verdict = self.guard.reject(error, method, str(scope.get("path", ""))[:200])
            await self._refuse(scope["type"], scope, send, verdict)
            return
        await super().__call__(scope, receive, send)


class PeerAuth:
    """A Quart extension wrapping ``app.asgi_app`` in :class:`~peer_middleware.PeerMiddleware`."""

    def __init__(
        self,
        app: Quart | None = None,
        *,
        policy: Policy,
        authenticators: Iterable[Authenticator] = (),
        responder: Responder | None = None,
        www_authenticate: str | None = None,
        memory: MemoryLimits | None = None,
        observers: Iterable[Observer] = (),
    ) -> None:
        self.policy = policy
        self.memory = memory
        self.observers = tuple(observers)
        self.authenticators = tuple(authenticators)
        self.responder = responder
        self.www_authenticate = www_authenticate
        # Validated now, not on the first request; the first app gets this guard.
        self._unused: Guard | None = self._new_guard()
        self._middlewares: dict[int, _Middleware] = {}
        if app is not None:
            self.init_app(app)

    def _new_guard(self) -> Guard:
        return Guard(
            policy=self.policy,
            authenticators=self.authenticators,
            responder=self.responder,
            www_authenticate=self.www_authenticate,
            memory=self.memory,
            observers=self.observers,
        )

    def init_app(self, app: Quart) -> None:
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError("PeerAuth is already installed on this app")
        QuartRouteTable(app)  # a misplaced @require on a view registered so far raises now
        guard, self._unused = self._unused or self._new_guard(), None
        inner = cast(ASGIApp, app.asgi_app)
        middleware = _Middleware(inner, guard=guard, table=lambda: QuartRouteTable(app))
        app.asgi_app = middleware  # type: ignore[method-assign,assignment]
        app.extensions[EXTENSION_KEY] = self
        app.extensions[GUARD_KEY] = guard
        _apps.add(app)
        self._middlewares[id(app)] = middleware

        async def finalise() -> None:
            middleware.finalise()

        app.before_serving(finalise)

        def misdispatched(connection: Any) -> RequestRefused | None:
            # g.peer for the views and the app's own before functions (set here,
            # not in a second before function: one call per request, not two).
            scope = connection.scope
            peer = scope.get(PEER_SCOPE_KEY)
            g.peer = peer if isinstance(peer, Peer) else None
            # A rule declared on one view allowed the request: Quart must have
            # dispatched to that view (not to another one, after a middleware
            # between the guard and the router changed the method or host).
            decision = scope.get(DECISION_SCOPE_KEY)
            if not isinstance(decision, Decision):
                return None  # the view's own check refuses a request the middleware did not see
            rule = decision.rule
            if rule is None or not decision.allowed or decision.dry_run:
                return None
            url_rule = connection.url_rule
            table = middleware.table
            if url_rule is None or table is None:
                return None  # no view runs (the routing error is raised), or none declares
            if not table.dispatched(rule, url_rule.endpoint):
                return AccessDenied(
                    f"allowed by rule {rule!r} declared on another view than "
                    f"{url_rule.endpoint!r}, which Quart dispatched to"
                )
            return None

        async def check_request() -> Response | None:
            error = misdispatched(request._get_current_object())  # type: ignore[attr-defined]
            return None if error is None else await _refusal(error)

        async def check_websocket() -> Response | None:
            error = misdispatched(websocket._get_current_object())  # type: ignore[attr-defined]
            return None if error is None else await _refusal(error)

        # First of the app's before functions: nothing else runs for a refused request.
        app.before_request_funcs.setdefault(None, []).insert(0, check_request)
        app.before_websocket_funcs.setdefault(None, []).insert(0, check_websocket)
        app.register_error_handler(RequestRefused, _refusal_handler(guard))

    def finalise(self, app: Quart) -> None:
        """Read the views' rules now (else at start-up or before the first request)."""
        self._middlewares[id(app)].finalise()

    def require(self, who: Matcher, *, name: str | None = None) -> Callable[[F], F]:
        """Same as the module-level :func:`require`."""
        return require(who, name=name)


async def _refusal(error: RequestRefused) -> Response:
    """The fixed response for ``error``, logged by the guard of the current app."""
    guard = current_app.extensions.get(GUARD_KEY)
    if not isinstance(guard, Guard):  # pragma: no cover - PeerAuth installs both
        raise error
    return await _refusal_handler(guard)(error)


def _refusal_handler(guard: Guard) -> Callable[[RequestRefused], Awaitable[Response]]:
    async def handle(error: RequestRefused) -> Response:
        if has_websocket_context():
            method, path = "GET", websocket.path
        else:
            method, path = request.method, request.path
        problem = guard.reject(error, method, path, get_peer()).response
        assert problem is not None  # every refused verdict carries its response
        return Response(problem.body, status=problem.status, headers=Headers(problem.headers))

    return handle
