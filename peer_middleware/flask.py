"""Flask integration: the middleware, rules declared on views, the peer in ``g``.

::

    from flask import Flask
    from peer_middleware import Namespace, Policy, XfccAuthenticator, allow, Anyone
    from peer_middleware.flask import PeerAuth, current_peer, require

    app = Flask(__name__)
    peer_auth = PeerAuth(
        app,
        policy=Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz")]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])],
    )

    @app.get("/payments/<payment_id>")
    @require(Namespace("shop", trust_domain="cluster.local"))
    def read_payment(payment_id: str):
        return {"id": payment_id, "caller": current_peer.principal}

:func:`require` goes *below* the route decorator (it must wrap the function
Flask registers); placed above it, it raises
:class:`~peer_middleware.errors.ConfigurationError` naming the order, when
it decorates a view of an app that has :class:`PeerAuth`, else when the
views are read (:meth:`PeerAuth.init_app`, :meth:`PeerAuth.finalise`, which
an app factory should call once its blueprints are registered, or the first
request, which then fails rather than serve). Its matchers are validated
when the module is imported; the rules it declares are read before the first request is served
(:meth:`PeerAuth.finalise` does it earlier if called) into a
:class:`FlaskRouteTable`. For a request that no central rule decided, the
middleware asks the app's own URL adapter which view Flask will dispatch to,
and applies the rules declared on that view and no other: a literal rule
such as ``/payments/export`` never inherits the rules of
``/payments/<payment_id>``, nor ``/items/<name>`` those of
``/items/<int:item_id>``. The wrapped view checks the peer again, so a view
is never reachable by a caller its declaration does not name.

The peer is on ``flask.g.peer`` (``None`` for an anonymous request), in
:data:`current_peer`, and in ``request.environ["peer_middleware.peer"]``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, SecurityError
from werkzeug.local import LocalProxy

from .errors import AccessDenied, AuthenticationFailed, ConfigurationError, RequestRefused
from .guard import Guard
from .matchers import Matcher
from .memory import MemoryLimits
from .observe import Observer, warn_unmatched_rules
from .peer import Peer
from .policy import Policy
from .request import Authenticator
from .responses import Responder
from .routes import EndpointTable, Requirement, declare_on_view, enforce, refuse_registered
from .rules import Decision, Route, Rule
from .wsgi import DECISION_ENVIRON_KEY, PEER_ENVIRON_KEY, PeerWSGIMiddleware, _text_to_wsgi

__all__ = [
    "FlaskRouteTable",
    "PeerAuth",
    "collect_view_rules",
    "current_peer",
    "get_peer",
    "require",
]

F = TypeVar("F", bound=Callable[..., Any])

EXTENSION_KEY = "peer_middleware"
GUARD_KEY = "peer_middleware.guard"


def get_peer() -> Peer | None:
    """The peer of the current request, or ``None`` for an anonymous request."""
    peer = request.environ.get(PEER_ENVIRON_KEY)
    return peer if isinstance(peer, Peer) else None


#: The peer of the current request (``None`` when anonymous).
current_peer: Peer = cast(Peer, LocalProxy(get_peer))


def require(who: Matcher, *, name: str | None = None) -> Callable[[F], F]:
    """Declare on a view that ``who`` may call it (see the module doc).

    Goes *below* the route decorator. Placed above it, it would wrap a
    function Flask already registered: that raises
    :class:`~peer_middleware.errors.ConfigurationError` here when the app
    already has :class:`PeerAuth`, else when :class:`PeerAuth` reads the
    views (``init_app``, :meth:`PeerAuth.finalise`, or the first request).
    """
    requirement = Requirement(who, name)  # validated now, at import time

    def decorate(view: F) -> F:
        refuse_registered(view, _apps, "Flask")
        return cast(F, declare_on_view(view, requirement, _checked))

    return decorate


def _checked(
    inner: Callable[..., Any], requirements: tuple[Requirement, ...]
) -> Callable[..., Any]:
    @functools.wraps(inner)
    def checked(*args: Any, **kwargs: Any) -> Any:
        environ = request.environ
        if DECISION_ENVIRON_KEY not in environ:
            # The middleware is not in front of this app: refuse, never assume.
            raise AuthenticationFailed("peer_middleware is not installed in front of this view")
        peer = environ.get(PEER_ENVIRON_KEY)
        try:
            enforce(requirements, peer if isinstance(peer, Peer) else None)
        except RequestRefused as error:
            # Answered here: a blueprint's error handlers come before the app's.
            return _refusal(error)
        return inner(*args, **kwargs)

    return checked


def _refusal(error: RequestRefused) -> Response:
    """The fixed response for ``error``, logged by the guard of the current app."""
    guard = current_app.extensions.get(GUARD_KEY)
    if not isinstance(guard, Guard):  # pragma: no cover - PeerAuth installs both
        raise error
    problem = guard.reject(error, request.method, request.path, get_peer()).response
    assert problem is not None  # every refused verdict carries its response
    return Response(problem.body, status=problem.status, headers=list(problem.headers))


#: Apps with :class:`PeerAuth`, so that ``@require`` above ``@app.route`` raises at once.
_apps: weakref.WeakSet[Flask] = weakref.WeakSet()


class FlaskRouteTable(EndpointTable):
    """The views of a Flask app, as its URL map dispatches requests to them.

    A :class:`~peer_middleware.routes.RouteTable`: ``rules`` are the rules
    declared with :func:`require` on views (one :class:`Route` per endpoint),
    and :meth:`resolve` asks the app's own URL adapter
    (``app.create_url_adapter``, as Flask does for every request) which URL
    rule matches, so literal rules win over variable ones, converters
    (``<int:id>``) and methods count, and blueprints and ``url_prefix`` are
    what Flask makes of them. A request that matches no rule (404), the wrong
    method (405) or a redirect (a missing trailing slash) reaches no view:
    the central policy alone judges it.
    """

    __slots__ = ("_app", "reads_host")

    def __init__(self, app: Flask) -> None:
        super().__init__(app.url_map, app.view_functions, "Flask", app)
        self._app = app
        self.reads_host = bool(
            app.url_map.host_matching or app.subdomain_matching or app.config.get("SERVER_NAME")
        )

    def variant(self, request: object) -> object:
        """What the view depends on besides method and path, as Werkzeug's
        ``bind_to_environ`` reads it: the scheme (``ws``/``wss`` for a websocket
        upgrade) and, when rules are chosen by host, the ``Host`` header."""
        assert isinstance(request, dict)
        scheme = request.get("wsgi.url_scheme")
        connection = request.get("HTTP_CONNECTION")
        if (
            connection
            and request.get("HTTP_UPGRADE", "").lower() == "websocket"
            and any(v.strip(" \t") == "upgrade" for v in connection.lower().split(","))
        ):
            scheme = "wss" if scheme == "https" else "ws"
        if self.reads_host:
            return (scheme, request.get("HTTP_HOST"))
        return scheme

    def resolve(self, request: object, method: str, path: str) -> Route | None:
        """The view with declared rules that Flask dispatches ``request`` to, if any."""
        assert isinstance(request, dict)
        probe = dict(request)
        probe["PATH_INFO"] = _text_to_wsgi(path)
        probe["REQUEST_METHOD"] = method
        app = self._app
        try:
            adapter = app.create_url_adapter(app.request_class(probe))
            if adapter is None:  # pragma: no cover - only without a request
                return None
            url_rule, _ = adapter.match(return_rule=True)
        except (HTTPException, SecurityError):
            # 404, 405, a redirect, an untrusted host: no view runs.
            return None
        return self.route_of(url_rule.endpoint)


def collect_view_rules(app: Flask) -> list[Rule]:
    """The rules declared with :func:`require` on ``app``'s views."""
    return [rule for rules in FlaskRouteTable(app).rules.values() for rule in rules]


class PeerAuth:
    """A Flask extension wrapping ``app.wsgi_app`` in :class:`PeerWSGIMiddleware`.

    ``observers`` are told of every decision (:mod:`peer_middleware.observe`).
    """

    def __init__(
        self,
        app: Flask | None = None,
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
        self._middlewares: dict[int, PeerWSGIMiddleware] = {}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError("PeerAuth is already installed on this app")
        FlaskRouteTable(app)  # a misplaced @require on a view registered so far raises now
        guard, self._unused = self._unused or self._new_guard(), None
        tables: list[FlaskRouteTable] = []

        def routes() -> FlaskRouteTable:
            paths = [rule.rule for rule in app.url_map.iter_rules()]
            warn_unmatched_rules(guard.policy.rules, paths, f"the Flask app {app.name!r}")
            table = FlaskRouteTable(app)
            tables[:] = [table]
            return table

        def check_dispatched() -> Response | None:
            # g.peer for the views and the app's own before_request functions
            # (one function, so Flask prepares one call per request, not two).
            environ = request.environ
            peer = environ.get(PEER_ENVIRON_KEY)
            g.peer = peer if isinstance(peer, Peer) else None
            # A rule declared on one view allowed the request: Flask must have
            # dispatched to that view (not to another one, after a middleware
            # between the guard and the router changed the method or host).
            decision = environ.get(DECISION_ENVIRON_KEY)
            if not isinstance(decision, Decision):
                return None  # the view's own check refuses a request the middleware did not see
            rule = decision.rule
            if rule is None or not decision.allowed or decision.dry_run:
                return None
            url_rule = request.url_rule
            if url_rule is None or not tables:
                return None  # no view runs (the routing error is raised), or none declares
            if not tables[0].dispatched(rule, url_rule.endpoint):
                return _refusal(
                    AccessDenied(
                        f"allowed by rule {rule!r} declared on another view than "
                        f"{url_rule.endpoint!r}, which Flask dispatched to"
                    )
                )
            return None

        middleware = PeerWSGIMiddleware(app.wsgi_app, guard=guard, routes=routes)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = self
        app.extensions[GUARD_KEY] = guard
        _apps.add(app)
        self._middlewares[id(app)] = middleware
        # First of the app's before_request functions: nothing else runs for a
        # refused request, and the others see g.peer.
        app.before_request_funcs.setdefault(None, []).insert(0, check_dispatched)

        def handle_refusal(error: RequestRefused) -> Response:
            problem = guard.reject(error, request.method, request.path, get_peer()).response
            assert problem is not None  # every refused verdict carries its response
            return Response(problem.body, status=problem.status, headers=list(problem.headers))

        app.register_error_handler(RequestRefused, handle_refusal)

    def _new_guard(self) -> Guard:
        return Guard(
            policy=self.policy,
            authenticators=self.authenticators,
            responder=self.responder,
            www_authenticate=self.www_authenticate,
            memory=self.memory,
            observers=self.observers,
        )

    def finalise(self, app: Flask) -> None:
        """Merge the views' rules into the policy now (else before the first request)."""
        self._middlewares[id(app)].finalise()

    def require(self, who: Matcher, *, name: str | None = None) -> Callable[[F], F]:
        """Same as the module-level :func:`require`."""
        return require(who, name=name)
