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
Flask registers). Its matchers are validated when the module is imported;
the rules it declares are merged into the policy before the first request is
served (:meth:`PeerAuth.finalise` does it earlier if called), as ALLOW rules
for that view's methods and URL rule, so the middleware lets those callers
through before the view runs. The wrapped view checks the peer again, so a
view is never reachable by a caller its declaration does not name.

The peer is on ``flask.g.peer`` (``None`` for an anonymous request), in
:data:`current_peer`, and in ``request.environ["peer_middleware.peer"]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from flask import Flask, Response, g, request
from werkzeug.local import LocalProxy

from .core import Authenticator, Guard, Responder, default_responder, route_refusal
from .errors import AccessDenied, AuthenticationFailed, ConfigurationError, RequestRefused
from .peer import Peer
from .policy import AllOf, Policy, Rule, Who, allow
from .wsgi import DECISION_ENVIRON_KEY, PEER_ENVIRON_KEY, PeerWSGIMiddleware

__all__ = ["PeerAuth", "current_peer", "get_peer", "require"]

F = TypeVar("F", bound=Callable[..., Any])

_REQUIREMENTS = "__peer_middleware_requirements__"
EXTENSION_KEY = "peer_middleware"


def get_peer() -> Peer | None:
    """The peer of the current request, or ``None`` for an anonymous request."""
    peer = request.environ.get(PEER_ENVIRON_KEY)
    return peer if isinstance(peer, Peer) else None


#: The peer of the current request (``None`` when anonymous).
current_peer: Peer = cast(Peer, LocalProxy(get_peer))


def require(who: Who, *, name: str | None = None) -> Callable[[F], F]:
    """Declare on a view that ``who`` may call it (see the module doc)."""
    if not isinstance(who, Who):
        raise ConfigurationError(f"require(): {who!r} is not a matcher")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigurationError("require(): name must be a non-empty string")

    def decorate(view: F) -> F:
        existing: list[tuple[Who, str | None]] = list(getattr(view, _REQUIREMENTS, ()))
        inner = getattr(view, "__wrapped_view__", view)

        @functools.wraps(inner)
        def checked(*args: Any, **kwargs: Any) -> Any:
            _check(requirements)
            return inner(*args, **kwargs)

        requirements = [(who, name), *existing]
        setattr(checked, _REQUIREMENTS, requirements)
        checked.__wrapped_view__ = inner  # type: ignore[attr-defined]
        return cast(F, checked)

    return decorate


def _check(requirements: list[tuple[Who, str | None]]) -> None:
    if DECISION_ENVIRON_KEY not in request.environ:
        # The middleware is not in front of this app: refuse, never assume.
        raise AuthenticationFailed("peer_middleware is not installed in front of this view")
    peer = get_peer()
    for who, _ in requirements:
        if not who(peer):
            if peer is None:
                raise AuthenticationFailed(f"view requires {who.describe()}; no identity")
            raise AccessDenied(f"view requires {who.describe()}; {peer.principal} is not")


def collect_view_rules(app: Flask) -> list[Rule]:
    """ALLOW rules from the :func:`require` declarations of ``app``'s views.

    A view under several URL rules gives one rule per URL rule; the second
    and later rules of a named requirement get the URL rule in their name.
    """
    rules: list[Rule] = []
    seen: set[str] = set()
    for url_rule in app.url_map.iter_rules():
        view = app.view_functions.get(url_rule.endpoint)
        requirements = getattr(view, _REQUIREMENTS, None)
        if not requirements:
            continue
        whos = [who for who, _ in requirements]
        names = [name for _, name in requirements if name]
        methods = sorted(url_rule.methods or ())
        who = whos[0] if len(whos) == 1 else AllOf(*whos)
        where = f"{','.join(methods)} {url_rule.rule}"
        name = names[0] if names else f"view {url_rule.endpoint} {url_rule.rule}"
        if name in seen:
            name = f"{name} [{where}]"
        seen.add(name)
        rules.append(allow(name, who, methods=methods, paths=url_rule.rule))
    return rules


class PeerAuth:
    """A Flask extension wrapping ``app.wsgi_app`` in :class:`PeerWSGIMiddleware`."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        policy: Policy,
        authenticators: Iterable[Authenticator] = (),
        responder: Responder | None = None,
        www_authenticate: str | None = None,
    ) -> None:
        self.policy = policy
        self.authenticators = tuple(authenticators)
        self.responder = responder
        self.www_authenticate = www_authenticate
        # Validate now, not on the first request.
        Guard(
            policy=policy,
            authenticators=self.authenticators,
            responder=responder,
            www_authenticate=www_authenticate,
        )
        self._middlewares: dict[int, PeerWSGIMiddleware] = {}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise ConfigurationError("PeerAuth is already installed on this app")
        middleware = PeerWSGIMiddleware(
            app.wsgi_app,
            policy=self.policy,
            authenticators=self.authenticators,
            responder=self.responder,
            www_authenticate=self.www_authenticate,
            route_rules=lambda: collect_view_rules(app),
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = self
        self._middlewares[id(app)] = middleware
        app.before_request(_load_peer)
        guard = middleware.guard
        responder = self.responder or default_responder

        def handle_refusal(error: RequestRefused) -> Response:
            problem = route_refusal(
                error,
                method=request.method,
                path=request.path,
                peer=get_peer(),
                responder=responder,
                www_authenticate=guard.www_authenticate,
            )
            return Response(problem.body, status=problem.status, headers=list(problem.headers))

        app.register_error_handler(RequestRefused, handle_refusal)

    def finalise(self, app: Flask) -> None:
        """Merge the views' rules into the policy now (else before the first request)."""
        self._middlewares[id(app)].finalise()

    def require(self, who: Who, *, name: str | None = None) -> Callable[[F], F]:
        """Same as the module-level :func:`require`."""
        return require(who, name=name)


def _load_peer() -> None:
    g.peer = get_peer()
