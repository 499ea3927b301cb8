"""Django integration: a middleware for ``settings.MIDDLEWARE``, rules declared on views.

Three lines protect a project (``settings.py``)::

    MIDDLEWARE.insert(0, "peer_middleware.django.PeerMiddleware")
    PEER_MIDDLEWARE = {
        "POLICY": Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz/")]),
        "AUTHENTICATORS": [XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])],
    }

and on a view (``views.py``)::

    from peer_middleware.django import require

    @require(Namespace("shop", trust_domain="cluster.local"))
    def read_payment(request, payment_id):
        return JsonResponse({"id": payment_id, "caller": request.peer.principal})

``settings.PEER_MIDDLEWARE`` is a dict with these keys (anything else is
refused); each value is the object itself or the dotted path of one
(``"myproject.security.POLICY"``):

``POLICY`` (required)
    a :class:`~peer_middleware.Policy`: the central rules.
``AUTHENTICATORS``
    a list of authenticators, tried in order (forwarded credentials are read
    only from the proxies each one trusts: ``trusted_proxies=``).
``RESPONDER``
    a callable turning a :class:`~peer_middleware.responses.Refusal` into the
    response sent (default: fixed ``application/problem+json`` bodies).
``WWW_AUTHENTICATE``
    the challenge sent with a 401.
``MEMORY``
    :class:`~peer_middleware.MemoryLimits` for what the guard remembers.
``OBSERVERS``
    a list of observers told of every decision
    (:class:`~peer_middleware.metrics.PrometheusMetrics`,
    :mod:`peer_middleware.otel`'s, or your own; see :mod:`peer_middleware.observe`).
``URLCONFS``
    dotted paths of the URLconfs a middleware may put in ``request.urlconf``
    (django-hosts, per-tenant URLconfs), whose views' declarations are read
    besides those of ``ROOT_URLCONF``.

A bad configuration raises :class:`ImproperlyConfigured` (also a
:class:`~peer_middleware.errors.ConfigurationError`) when Django builds its
handler: at start-up under gunicorn, uvicorn or ``runserver``.

Put the middleware **first** in ``MIDDLEWARE``: every request is
authenticated and authorized before any other middleware or view runs (no
redirect from ``CommonMiddleware``, no session lookup, for a refused caller).
The middleware is sync and async capable: under ASGI it runs on the event
loop, without a thread hop.

Rules declared on views -- :func:`require` on a function view,
:class:`PeerRequiredMixin` on a class-based view, the Django REST framework
permission of :mod:`peer_middleware.django.rest_framework` -- apply to the
view Django's URL resolver dispatches a request to, and to no other: for a
request no central rule decided, the middleware resolves its path with the
request's URLconf (``request.urlconf`` or ``ROOT_URLCONF``, in pattern order,
with their converters and ``include()`` prefixes) and applies the rules
declared on the view found. A neighbour whose pattern would also match a
path (``payments/export/`` before ``payments/<str:payment_id>/``,
``items/<str:name>/`` beside ``items/<int:item_id>/``) is judged by the
central policy alone, and so is a request no view serves (404). A path
``APPEND_SLASH`` would redirect is judged by the rules of the view it would
be redirected to: the callers they allow get Django's redirect, others the
refusal. Django dispatches on the path only: a rule declared on a view
covers every method that view answers, unless it names its methods
(``require(..., methods="DELETE")``). Before the view
runs, the middleware checks that Django dispatched to the view the decision
was made for (refusing otherwise, for instance when a later middleware
changes ``request.urlconf``), and the view checks its own rules again, so a
view is never reachable by a caller its declaration does not name.

Views reachable only through a ``request.urlconf`` other than
``ROOT_URLCONF`` and those listed in ``URLCONFS`` are judged by the central
policy alone (their declarations still restrict them further).

``request.peer`` is the :class:`~peer_middleware.Peer` (``None`` for an
anonymous request); ``request.META["peer_middleware.peer"]`` and
``request.META["peer_middleware.decision"]`` hold the peer and the decision.
Refusals are the library's fixed bodies, never Django's error pages; the
reason goes to the ``peer_middleware`` logger. Any error in the integration
refuses the request.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.exceptions import Resolver404
from django.utils.module_loading import import_string
from django.views import View

from peer_middleware.asgi import _server_port as _scope_server_port
from peer_middleware.asgi import _tls_chain as _scope_tls_chain
from peer_middleware.asgi import _wanted, read_scope
from peer_middleware.errors import (
    AccessDenied,
    AuthenticationFailed,
    BadRequest,
    ConfigurationError,
    RequestRefused,
)
from peer_middleware.guard import Guard, Verdict, route_path
from peer_middleware.matchers import Matcher
from peer_middleware.memory import MemoryLimits
from peer_middleware.observe import Observer
from peer_middleware.paths import quote_path
from peer_middleware.peer import Peer
from peer_middleware.policy import Policy
from peer_middleware.request import DECISION_KEY, PEER_KEY, Authenticator
from peer_middleware.responses import ProblemResponse, Refusal, default_responder, respond
from peer_middleware.routes import Requirement, declared_rules
from peer_middleware.rules import Route, Rule
from peer_middleware.wsgi import _environ_keys, _text_to_wsgi, _wsgi_to_text, read_environ
from peer_middleware.wsgi import _server_port as _environ_server_port
from peer_middleware.wsgi import _tls_chain as _environ_tls_chain

if TYPE_CHECKING:
    from peer_middleware.responses import Responder

__all__ = [
    "PERMISSION_REQUIREMENT",
    "SETTING",
    "Declared",
    "DjangoConfigurationError",
    "DjangoRouteTable",
    "PeerMiddleware",
    "PeerRequiredMixin",
    "applicable",
    "get_peer",
    "refusal_response",
    "require",
    "requirement_error",
    "requirements_of",
]

logger = logging.getLogger("peer_middleware")

#: The name of the Django setting read by :class:`PeerMiddleware`.
SETTING = "PEER_MIDDLEWARE"
_KEYS = frozenset(
    {"POLICY", "AUTHENTICATORS", "RESPONDER", "WWW_AUTHENTICATE", "MEMORY", "OBSERVERS", "URLCONFS"}
)
#: Where a function view keeps the requirements declared on it.
_REQUIREMENTS = "__peer_middleware_requirements__"
#: Where a permission class (Django REST framework) keeps its requirement.
PERMISSION_REQUIREMENT = "__peer_middleware_requirement__"
#: The request attribute the middleware leaves for the views' own checks.
_STATE = "_peer_middleware_state"
#: The prefix of the path the resolver does not see (ASGI ``root_path``).
_ROOT = "_peer_middleware_root"

V = TypeVar("V", bound=Callable[..., Any])


class DjangoConfigurationError(ConfigurationError, ImproperlyConfigured):
    """``settings.PEER_MIDDLEWARE`` (or a declaration on a view) is invalid.

    Both Django's :class:`ImproperlyConfigured` and the package's
    :class:`~peer_middleware.errors.ConfigurationError`.
    """


# --------------------------------------------------------------------------
# Settings.
# --------------------------------------------------------------------------


def _load(value: object, key: str) -> object:
    if isinstance(value, str):
        try:
            return import_string(value)
        except ImportError as error:
            raise DjangoConfigurationError(
                f"{SETTING}[{key!r}]: cannot import {value!r}: {error}"
            ) from error
    return value


def _from_settings() -> tuple[Guard, tuple[str, ...]]:
    """The guard ``settings.PEER_MIDDLEWARE`` describes, and its ``URLCONFS``."""
    config = getattr(settings, SETTING, None)
    if config is None:
        raise DjangoConfigurationError(
            f"peer_middleware.django.PeerMiddleware needs settings.{SETTING} "
            '(at least {"POLICY": Policy([...])})'
        )
    if not isinstance(config, dict):
        raise DjangoConfigurationError(
            f"settings.{SETTING} must be a dict, not {type(config).__name__}"
        )
    unknown = sorted(str(key) for key in config if key not in _KEYS)
    if unknown:
        raise DjangoConfigurationError(
            f"settings.{SETTING} has unknown keys {unknown}; known: {sorted(_KEYS)}"
        )
    if "POLICY" not in config:
        raise DjangoConfigurationError(f'settings.{SETTING} needs "POLICY"')
    policy = _load(config["POLICY"], "POLICY")
    if not isinstance(policy, Policy):
        raise DjangoConfigurationError(
            f'{SETTING}["POLICY"] must be a Policy, not {type(policy).__name__}'
        )
    found = _load(config.get("AUTHENTICATORS", ()), "AUTHENTICATORS")
    if isinstance(found, (str, bytes)) or not isinstance(found, Iterable):
        raise DjangoConfigurationError(f'{SETTING}["AUTHENTICATORS"] must be a list')
    authenticators = [_load(item, "AUTHENTICATORS") for item in found]
    found = _load(config.get("OBSERVERS", ()), "OBSERVERS")
    if isinstance(found, (str, bytes)) or not isinstance(found, Iterable):
        raise DjangoConfigurationError(f'{SETTING}["OBSERVERS"] must be a list')
    observers = [_load(item, "OBSERVERS") for item in found]
    responder = _load(config.get("RESPONDER"), "RESPONDER")
    www_authenticate = config.get("WWW_AUTHENTICATE")
    if www_authenticate is not None and not isinstance(www_authenticate, str):
        raise DjangoConfigurationError(f'{SETTING}["WWW_AUTHENTICATE"] must be a string')
    memory = _load(config.get("MEMORY"), "MEMORY")
    if memory is not None and not isinstance(memory, MemoryLimits):
        raise DjangoConfigurationError(f'{SETTING}["MEMORY"] must be a MemoryLimits')
    urlconfs = config.get("URLCONFS", ())
    if (
        isinstance(urlconfs, (str, bytes))
        or not isinstance(urlconfs, Iterable)
        or not all(isinstance(name, str) for name in urlconfs)
    ):
        raise DjangoConfigurationError(
            f'{SETTING}["URLCONFS"] must be a list of dotted module paths'
        )
    try:
        guard = Guard(
            policy=policy,
            authenticators=cast("list[Authenticator]", authenticators),
            responder=cast("Responder | None", responder),
            www_authenticate=www_authenticate,
            memory=memory,
            observers=cast("list[Observer]", observers),
        )
    except ConfigurationError as error:
        raise DjangoConfigurationError(f"settings.{SETTING}: {error}") from error
    return guard, tuple(urlconfs)


# --------------------------------------------------------------------------
# Declarations on views.
# --------------------------------------------------------------------------

#: A requirement and the methods it applies to (``None``: every method).
Declared = tuple[frozenset[str] | None, Requirement]
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")


def _methods(methods: object, where: str) -> frozenset[str] | None:
    if methods is None:
        return None
    found = (methods,) if isinstance(methods, str) else methods
    if not isinstance(found, Iterable):
        raise DjangoConfigurationError(f"{where}: methods must be a string or a list of strings")
    result = frozenset(found)
    if not result or not all(isinstance(m, str) and _METHOD.fullmatch(m) for m in result):
        raise DjangoConfigurationError(
            f"{where}: methods {methods!r} must be HTTP methods in upper case"
        )
    return result


def _declare(who: object, name: object, methods: object, where: str) -> tuple[Declared, ...]:
    if who is None:
        return ()
    matchers = (who,) if isinstance(who, Matcher) else who
    if isinstance(matchers, (str, bytes)) or not isinstance(matchers, Iterable):
        raise DjangoConfigurationError(f"{where}: {who!r} is not a matcher")
    applies = _methods(methods, where)
    try:
        return tuple((applies, Requirement(m, cast("str | None", name))) for m in matchers)
    except ConfigurationError as error:
        raise DjangoConfigurationError(f"{where}: {error}") from error


def applicable(declared: Iterable[Declared], method: str) -> tuple[Requirement, ...]:
    """The requirements of ``declared`` that apply to a request with ``method``.

    ``HEAD`` is checked as ``GET`` unless something is declared for ``HEAD``
    itself (Django's ``View`` answers ``HEAD`` with ``get()``).
    """
    declared = tuple(declared)
    if method == "HEAD" and not any(m is not None and "HEAD" in m for m, _ in declared):
        method = "GET"
    return tuple(r for m, r in declared if m is None or method in m)


_COMMON_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")


class _PerMethod:
    """:func:`applicable` for one declaration, worked out once per method."""

    __slots__ = ("_cache", "_declared")

    def __init__(self, declared: Iterable[Declared]) -> None:
        self._declared = tuple(declared)
        named = {m for methods, _ in self._declared if methods is not None for m in methods}
        self._cache = {m: applicable(self._declared, m) for m in {*_COMMON_METHODS, *named}}

    def __call__(self, method: str) -> tuple[Requirement, ...]:
        found = self._cache.get(method)
        return found if found is not None else applicable(self._declared, method)


def requirements_of(view: object) -> tuple[Declared, ...]:
    """The requirements declared on ``view`` (a URL pattern's callback), with their methods.

    :func:`require` on a function, :class:`PeerRequiredMixin` on the class of a
    class-based view (``view.view_class``), and the permission classes of a
    Django REST framework view (``view.cls``) made by
    :func:`peer_middleware.django.rest_framework.peer_permission`.
    """
    found: list[Declared] = list(getattr(view, _REQUIREMENTS, ()))
    seen: set[int] = set()
    for attribute in ("view_class", "cls"):
        cls = getattr(view, attribute, None)
        if not isinstance(cls, type) or id(cls) in seen:
            continue
        seen.add(id(cls))
        found.extend(getattr(cls, "_peer_declared", None) or ())
        # as_view(permission_classes=...) (a DRF router action's own) replaces the class's.
        initkwargs = getattr(view, "initkwargs", None)
        if not isinstance(initkwargs, Mapping) or "permission_classes" not in initkwargs:
            initkwargs = getattr(view, "view_initkwargs", None)
        if isinstance(initkwargs, Mapping) and "permission_classes" in initkwargs:
            permissions = initkwargs["permission_classes"]
        else:
            permissions = getattr(cls, "permission_classes", None)
        for permission in permissions or ():
            requirement = getattr(permission, PERMISSION_REQUIREMENT, None)
            if isinstance(requirement, Requirement):
                found.append((None, requirement))
    return tuple(found)


def require(
    who: Matcher, *, name: str | None = None, methods: str | Iterable[str] | None = None
) -> Callable[[V], V]:
    """Declare on a function view that ``who`` may call it (see the module doc).

    ``methods`` limits the declaration to requests with those methods (a
    view answering ``GET`` and ``DELETE`` may name different callers for
    each); by default it applies to every method. Works on sync and async
    views; stack it with Django's own decorators in any order. For
    class-based views use :class:`PeerRequiredMixin`.
    """
    own = _declare(who, name, methods, "require()")

    def decorate(view: V) -> V:
        if isinstance(view, type):
            raise DjangoConfigurationError(
                f"require() on the class {view.__qualname__}: use PeerRequiredMixin for "
                "class-based views (or decorate the view returned by as_view())"
            )
        declared = (*own, *getattr(view, _REQUIREMENTS, ()))
        for_method = _PerMethod(own)
        checked: Callable[..., Any]
        if iscoroutinefunction(view):

            async def checked_async(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                refused = _refusal(request, for_method(str(request.method)))
                if refused is not None:
                    return refused
                return await view(request, *args, **kwargs)

            checked = checked_async
        else:

            def checked_sync(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                refused = _refusal(request, for_method(str(request.method)))
                if refused is not None:
                    return refused
                return view(request, *args, **kwargs)

            checked = checked_sync
        functools.wraps(view)(checked)
        setattr(checked, _REQUIREMENTS, declared)
        return cast(V, checked)

    return decorate


class PeerRequiredMixin(View):
    """A class-based view that only the callers named in ``peer_required`` may call.

    ::

        class PaymentView(PeerRequiredMixin, View):
            peer_required = Namespace("shop", trust_domain="cluster.local")
            peer_rule_name = "read-payment"

            def get(self, request, payment_id): ...

    ``peer_required`` is a matcher or a list of matchers (all must hold), or
    a dict from HTTP method to those (``{"GET": reader, "DELETE": admin}``:
    a method not in it is judged by the central policy alone);
    ``peer_rule_name`` names the rule in logs (a string, or a dict from
    method to name). Checked in :meth:`dispatch`, before any handler, for
    sync and async views alike. A view that names nobody refuses every call.
    """

    peer_required: ClassVar[Matcher | Sequence[Matcher] | Mapping[str, Any] | None] = None
    peer_rule_name: ClassVar[str | Mapping[str, str] | None] = None
    _peer_declared: ClassVar[tuple[Declared, ...]] = ()
    _peer_for_method: ClassVar[_PerMethod] = _PerMethod(())

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        where = f"{cls.__qualname__}.peer_required"
        required, names = cls.peer_required, cls.peer_rule_name
        if isinstance(required, Mapping):
            declared: list[Declared] = []
            for method, who in required.items():
                name = names.get(method) if isinstance(names, Mapping) else names
                declared.extend(_declare(who, name, method, where))
            cls._peer_declared = tuple(declared)
        else:
            if isinstance(names, Mapping):
                raise DjangoConfigurationError(
                    f"{cls.__qualname__}.peer_rule_name: a dict needs a dict peer_required"
                )
            cls._peer_declared = _declare(required, names, None, where)
        cls._peer_for_method = _PerMethod(cls._peer_declared)

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Callable[..., HttpResponseBase]:
        """Django's ``as_view``, refusing ``peer_required``/``peer_rule_name`` arguments:
        the declaration is the class's (read when the class is made), so one
        given here would be ignored. Subclass the view to declare otherwise."""
        for key in ("peer_required", "peer_rule_name"):
            if key in initkwargs:
                raise DjangoConfigurationError(
                    f"{cls.__qualname__}.as_view({key}=...): declare {key} on a subclass; "
                    "as_view() arguments cannot change what the class declares"
                )
        return super().as_view(**initkwargs)

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        declared = type(self)._peer_declared
        if declared:
            refused = _refusal(request, type(self)._peer_for_method(str(request.method)))
        else:
            refused = _refusal(request, (), require_some=True)
        if refused is None:
            return super().dispatch(request, *args, **kwargs)
        if self.view_is_async:

            async def answer() -> HttpResponseBase:
                return refused

            return answer()
        return refused


# --------------------------------------------------------------------------
# Checks inside views.
# --------------------------------------------------------------------------


class _State:
    """What the middleware leaves on a request for the view's own checks."""

    __slots__ = ("guard", "middleware", "verdict")

    def __init__(self, middleware: PeerMiddleware, verdict: Verdict) -> None:
        self.middleware = middleware
        self.guard = middleware.guard
        self.verdict = verdict


def get_peer(request: HttpRequest) -> Peer | None:
    """The peer of ``request`` (``None`` when anonymous or not authenticated here)."""
    state = getattr(request, _STATE, None)
    return state.verdict.peer if isinstance(state, _State) else None


def requirement_error(
    request: HttpRequest, requirements: Sequence[Requirement], *, require_some: bool = False
) -> RequestRefused | None:
    """Why ``request`` may not reach a view declaring ``requirements``, or ``None``.

    Refuses when the middleware did not authorize the request (it is not
    installed, or not in front of this view), and, with ``require_some``,
    when nothing is declared (a mixin left without ``peer_required``).
    """
    state = getattr(request, _STATE, None)
    if not isinstance(state, _State):
        return AuthenticationFailed(
            "peer_middleware.django.PeerMiddleware did not authorize this request; "
            "add it to settings.MIDDLEWARE"
        )
    if require_some and not requirements:
        return AccessDenied("PeerRequiredMixin without peer_required names nobody")
    peer = state.verdict.peer
    for requirement in requirements:
        if requirement.who(peer):
            continue
        if state.guard.policy.mode == "shadow":
            logger.info("would refuse (dry-run): view requires %s", requirement.who.describe())
            continue
        if peer is None:
            return AuthenticationFailed(f"view requires {requirement.who.describe()}; no identity")
        return AccessDenied(f"view requires {requirement.who.describe()}; {peer.principal} is not")
    return None


def _refusal(
    request: HttpRequest, requirements: Sequence[Requirement], *, require_some: bool = False
) -> HttpResponse | None:
    """The fixed refusal for a view's own check, or ``None`` to serve the view."""
    try:
        error = requirement_error(request, requirements, require_some=require_some)
    except Exception:
        logger.exception("peer_middleware failed while checking a view's requirements")
        error = AccessDenied("internal error while checking a view's requirements")
    if error is None:
        return None
    return refusal_response(request, error)


def refusal_response(request: HttpRequest, error: RequestRefused) -> HttpResponse:
    """The fixed response for ``error``, logged by the guard of ``request``'s middleware."""
    state = getattr(request, _STATE, None)
    method = str(request.method or "GET")
    path = str(request.path)[:200]
    if isinstance(state, _State):
        problem = state.guard.reject(error, method, path, state.verdict.peer).response
        assert problem is not None  # every refused verdict carries its response
        return _http_response(problem)
    logger.error("refused %s %r: %s", method, path, error.reason)
    refusal = Refusal(error.status, error.reason, None, None, method, path, None)
    return _http_response(respond(default_responder, refusal))


def _http_response(problem: ProblemResponse) -> HttpResponse:
    response = HttpResponse(problem.body, status=problem.status)
    for name, value in problem.headers:
        response[name] = value
    return response


# --------------------------------------------------------------------------
# The route table.
# --------------------------------------------------------------------------


_UNSET = object()
#: The value ``ROOT_URLCONF`` was last set to by ``override_settings`` (tests), as
#: Django's ``setting_changed`` reports it; unset while nothing overrode it.
_ROOT_URLCONF: list[object] = [_UNSET]


def _root_urlconf_changed(*, setting: str, value: object = None, **kwargs: Any) -> None:
    if setting == "ROOT_URLCONF":
        _ROOT_URLCONF[0] = value


setting_changed.connect(_root_urlconf_changed, dispatch_uid="peer_middleware.django")


class DjangoRouteTable:
    """The views of a Django project, as its URL resolver dispatches requests to them.

    A :class:`~peer_middleware.routes.RouteTable`: ``rules`` are the rules
    declared on the views of ``ROOT_URLCONF`` (one :class:`Route` per view
    callable, found through every ``include()``), and :meth:`resolve` asks
    Django's own resolver (``get_resolver(request.urlconf)``, as Django's
    handler does) which view a path reaches: pattern order, converters,
    ``include()`` prefixes and regular expressions are Django's. A path that
    resolves to no view (404) reaches no view; one ``APPEND_SLASH`` would
    redirect is judged by the rules of the view it would be redirected to.
    """

    __slots__ = (
        "_count",
        "_other_counts",
        "_others",
        "_patterns",
        "_redirects",
        "_root",
        "_routes",
        "by_rule",
        "rules",
    )

    def __init__(self, urlconf: str | None = None, *, others: Iterable[str] = ()) -> None:
        self._root = settings.ROOT_URLCONF if urlconf is None else urlconf
        # Only CommonMiddleware's redirect may take a path to its slashed twin.
        self._redirects = _has_common_middleware()
        resolver = get_resolver(urlconf)
        self._patterns = resolver.url_patterns
        self._count = len(self._patterns)
        self._others = tuple(
            (name, get_resolver(name).url_patterns) for name in dict.fromkeys(others)
        )
        self._other_counts = tuple(len(patterns) for _, patterns in self._others)
        # view callable -> (the methods named in its declarations, method or
        # None (every other method) -> route)
        self._routes: dict[object, tuple[frozenset[str], dict[str | None, Route]]] = {}
        declared: list[tuple[Route, tuple[Requirement, ...]]] = []
        every = [(pattern, callback) for pattern, callback in _walk(resolver.url_patterns, "/")]
        for _, patterns in self._others:
            every.extend(_walk(patterns, "/"))
        for pattern, callback in every:
            if callback in self._routes:
                continue
            found = requirements_of(callback)
            if not found:
                continue
            view = getattr(callback, "__qualname__", None) or type(callback).__qualname__
            named = frozenset(m for methods, _ in found if methods is not None for m in methods)
            by_method: dict[str | None, Route] = {}
            for method in [*sorted(named), None]:
                if method is None:
                    requirements = tuple(r for m, r in found if m is None)
                else:
                    requirements = applicable(found, method)
                if not requirements:
                    continue
                suffix = f" {method}" if method else (" (other methods)" if named else "")
                route = Route(f"view {view} {pattern}{suffix}")
                by_method[method] = route
                declared.append((route, requirements))
            self._routes[callback] = (named, by_method)
        self.rules: dict[Route, tuple[Rule, ...]] = declared_rules(declared, unnamed="")
        #: Which route each declared rule belongs to, by rule name.
        self.by_rule: dict[str, Route] = {
            rule.name: route for route, rules in self.rules.items() for rule in rules
        }

    def route_of(self, view: object, method: str) -> Route | None:
        """The route of a view callable for ``method``, when rules are declared for it."""
        try:
            found = self._routes.get(view)
        except TypeError:  # an unhashable callback
            return None
        if found is None:
            return None
        named, by_method = found
        if method not in named:
            method = "GET" if method == "HEAD" and "GET" in named else ""
        return by_method.get(method or None)

    def variant(self, request: object) -> object:
        """The URLconf the request is resolved with (``request.urlconf``, else the root)."""
        return getattr(request, "urlconf", None)

    def unchanged(self) -> bool:
        """True while no URL pattern was added to (or removed from) the URLconfs the
        table was built from, and ``ROOT_URLCONF`` is the one it was built from
        (Django sends ``setting_changed`` when a test overrides it). Called for
        every request a declared rule allowed, so it reads no setting."""
        root = _ROOT_URLCONF[0]
        if root is not _UNSET and root != self._root:
            return False
        if len(self._patterns) != self._count:
            return False
        for (_, patterns), count in zip(self._others, self._other_counts, strict=True):
            if len(patterns) != count:
                return False
        return True

    def resolve(self, request: object, method: str, path: str) -> Route | None:
        """The view with declared rules Django dispatches ``path`` to, if any.

        A path without its trailing slash that only resolves with it (Django's
        ``APPEND_SLASH``, as ``CommonMiddleware`` tests it, when it is in
        ``MIDDLEWARE``) is judged by the rules of the view it would be
        redirected to: a caller they allow gets Django's redirect, any other
        caller the refusal.
        """
        resolver = get_resolver(getattr(request, "urlconf", None))
        path_info = route_path(path, getattr(request, _ROOT, ""))
        try:
            match = resolver.resolve(path_info)
        except Resolver404:
            if not (self._redirects and settings.APPEND_SLASH) or path_info.endswith("/"):
                return None
            try:
                match = resolver.resolve(path_info + "/")
            except Resolver404:
                return None
            if not getattr(match.func, "should_append_slash", True):
                return None
        return self.route_of(match.func, method)


def _has_common_middleware() -> bool:
    """True when ``settings.MIDDLEWARE`` has Django's ``CommonMiddleware`` (or a subclass)."""
    from django.middleware.common import CommonMiddleware

    for path in getattr(settings, "MIDDLEWARE", None) or ():
        try:
            found = import_string(path) if isinstance(path, str) else path
        except ImportError:
            continue
        if isinstance(found, type) and issubclass(found, CommonMiddleware):
            return True
    return False


def _walk(patterns: Iterable[object], prefix: str) -> Iterable[tuple[str, object]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.callback


# --------------------------------------------------------------------------
# The middleware.
# --------------------------------------------------------------------------

_INTERNAL = "internal error in peer_middleware.django; see the traceback"


class PeerMiddleware:
    """Authenticate the calling service and enforce the policy (see the module doc).

    Built by Django from ``settings.PEER_MIDDLEWARE`` when it loads its
    middleware; the rules declared on the views of ``ROOT_URLCONF`` are read
    then too.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
            # Django adapts process_view to the handler's mode; an async one
            # under ASGI spares a thread hop per request.
            self.process_view = self._process_view_async  # type: ignore[method-assign,assignment]
        self.guard, urlconfs = _from_settings()
        try:
            self.routes = DjangoRouteTable(others=urlconfs)
            self.guard.use_routes(self.routes)
        except DjangoConfigurationError:
            raise
        except ConfigurationError as error:
            raise DjangoConfigurationError(f"rules declared on views: {error}") from error
        except ImportError as error:
            raise DjangoConfigurationError(f'{SETTING}["URLCONFS"]: {error}') from error
        names = self.guard.header_names
        # The header names the guard reads, with their ASGI and environ keys:
        # one value, replaced at once when the guard's policy is replaced.
        self._reading = (names, _wanted(names), _environ_keys(names))

    def _headers_read(self) -> tuple[frozenset[str], dict[bytes, str], tuple[tuple[str, str], ...]]:
        """The names the guard reads now, with their keys (rebuilt after a policy reload)."""
        names = self.guard.header_names
        reading = self._reading
        if reading[0] is not names:
            reading = self._reading = (names, _wanted(names), _environ_keys(names))
        return reading

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        refused = self._authorize(request)
        if refused is not None:
            return refused
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        refused = self._authorize(request)
        if refused is not None:
            return refused
        return await self.get_response(request)

    def _authorize(self, request: HttpRequest) -> HttpResponse | None:
        """``None`` when the request may go on (its peer set), else the refusal."""
        try:
            scope = getattr(request, "scope", None)
            if isinstance(scope, dict):
                verdict = self._check_asgi(request, scope)
            else:
                verdict = self._check_wsgi(request)
            if not verdict.decision.allowed:
                problem = verdict.response
                assert problem is not None  # every refused verdict carries its response
                return _http_response(problem)
        except Exception:
            logger.exception("peer_middleware.django failed while authorizing a request")
            verdict = self.guard.reject(
                AccessDenied(_INTERNAL), str(request.method), str(request.path)[:200]
            )
            assert verdict.response is not None
            return _http_response(verdict.response)
        setattr(request, _STATE, _State(self, verdict))
        request.peer = verdict.peer  # type: ignore[attr-defined]
        request.META[PEER_KEY] = verdict.peer
        request.META[DECISION_KEY] = verdict.decision
        return None

    def _check_asgi(self, request: HttpRequest, scope: dict[str, Any]) -> Verdict:
        guard = self.guard
        method = scope.get("method", "GET")
        reading = self._headers_read()
        headers, raw_target, client = read_scope(scope, reading[1])
        path: str = scope.get("path", "")
        # Django strips its script prefix (FORCE_SCRIPT_NAME or root_path).
        root = str(getattr(request, "script_name", "") or "")
        setattr(request, _ROOT, root)
        verdict = guard.check(
            method,
            path,
            raw_target,
            client,
            headers,
            root,
            scope.get("query_string", b"").decode("latin-1") if guard.reads_query else "",
            _scope_tls_chain(scope) if guard.reads_tls else None,
            request=request,
            port=_scope_server_port(scope) if guard.reads_port else None,
            read=reading[0],
        )
        if verdict.allowed and verdict.path != path:
            assert verdict.route is not None
            request.path = verdict.path
            request.path_info = verdict.route
            request.META["PATH_INFO"] = verdict.route
        return verdict

    def _check_wsgi(self, request: HttpRequest) -> Verdict:
        guard = self.guard
        environ = request.META
        method = environ.get("REQUEST_METHOD", "GET")
        reading = self._headers_read()
        headers, raw_uri, client = read_environ(environ, reading[2])
        path_info = environ.get("PATH_INFO", "")
        try:
            path = _wsgi_to_text(path_info)
        except BadRequest as error:
            return guard.reject(error, method, path_info)
        setattr(request, _ROOT, "")
        verdict = guard.check(
            method,
            path,
            raw_uri,
            client,
            headers,
            "",
            environ.get("QUERY_STRING", "") if guard.reads_query else "",
            _environ_tls_chain(environ) if guard.reads_tls else None,
            request=request,
            port=_environ_server_port(environ) if guard.reads_port else None,
            read=reading[0],
        )
        if verdict.allowed and verdict.path != path:
            old = request.path_info
            prefix = request.path[: len(request.path) - len(old)] if old else request.path
            request.path_info = verdict.path
            request.path = prefix + verdict.path
            environ["PATH_INFO"] = _text_to_wsgi(verdict.path)
            query = environ.get("QUERY_STRING")
            uri = quote_path(request.path)
            if query:
                uri += "?" + query
            for key in ("REQUEST_URI", "RAW_URI"):
                if key in environ:
                    environ[key] = uri
        return verdict

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Sequence[Any],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        """Refuse when Django dispatches to another view than the decision was made for."""
        try:
            error = self._dispatched_error(request, view_func)
        except Exception:
            logger.exception("peer_middleware.django failed while checking the dispatched view")
            error = AccessDenied(_INTERNAL)
        return None if error is None else refusal_response(request, error)

    async def _process_view_async(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: Sequence[Any],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        # Not self.process_view: in async mode that name is this method.
        return PeerMiddleware.process_view(self, request, view_func, view_args, view_kwargs)

    def _dispatched_error(self, request: HttpRequest, view: object) -> RequestRefused | None:
        state = getattr(request, _STATE, None)
        if not isinstance(state, _State) or state.middleware is not self:
            return AccessDenied("the request reached a view without this middleware's decision")
        decision = state.verdict.decision
        rule = decision.rule
        if rule is None or not decision.allowed or decision.dry_run:
            return None
        expected = self.routes.by_rule.get(rule)
        if expected is not None and self.routes.route_of(view, str(request.method)) is not expected:
            return AccessDenied(
                f"allowed by rule {rule!r} declared on {expected.name}, but Django "
                f"dispatched to {getattr(view, '__qualname__', view)!r}"
            )
        return None

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """The fixed refusal for a :class:`RequestRefused` raised in a view
        (the Django REST framework permission raises one)."""
        if not isinstance(exception, RequestRefused):
            return None
        try:
            return refusal_response(request, exception)
        except Exception:  # pragma: no cover - the guard's reject does not raise
            logger.exception("peer_middleware.django failed while refusing a request")
            return _http_response(
                default_responder(Refusal(403, _INTERNAL, None, None, "GET", "/", None))
            )
