"""Rules declared on routes, shared by the framework integrations.

A rule declared on a route (``require(...)`` in FastAPI and Flask) applies to
the route the framework dispatches a request to, and to nothing else: never
to a path pattern that happens to match a neighbour. Each integration
therefore provides a :class:`RouteTable`: the rules declared on its routes,
keyed by :class:`~peer_middleware.rules.Route`, and a ``resolve`` that finds
the route the framework's own router will pick for a request (same order,
converters, methods, mounts and websockets, by calling the router's own
matching code). The guard asks it only when no central rule decided.

A route that declares nothing is judged by the central policy alone, and so
is a request that no route serves (404, 405, a trailing-slash redirect).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .errors import AccessDenied, AuthenticationFailed, BadRequest, ConfigurationError
from .matchers import AllOf, Matcher
from .paths import normalise_path
from .rules import Route, Rule, allow

__all__ = [
    "EndpointTable",
    "Requirement",
    "RouteResolver",
    "RouteTable",
    "declare_on_view",
    "declared_rules",
    "enforce",
    "misplaced",
    "outside_root",
    "refuse_registered",
    "view_requirements",
]


@runtime_checkable
class RouteResolver(Protocol):
    """Finds the route a framework will dispatch a request to.

    ``resolve(request, method, path)`` returns the :class:`Route` the
    framework's router picks for ``request`` (the adapter's own request
    object: an ASGI scope, a WSGI environ) when its path is the normalised
    ``path``, or ``None`` when no route with declared rules would run. It must
    match routes exactly as the framework's router does. ``variant(request)``
    is everything else the answer depends on (the scope type, the ``Host``
    header for host-based routes, a websocket upgrade): the guard keys its
    memory of routes and verdicts on it. ``unchanged()`` is False once the
    app's routes changed after the table was built; the guard then refuses
    what only rules declared on routes would allow.
    """

    def variant(self, request: object) -> object: ...

    def unchanged(self) -> bool: ...

    def resolve(self, request: object, method: str, path: str) -> Route | None: ...


@runtime_checkable
class RouteTable(RouteResolver, Protocol):
    """A :class:`RouteResolver` with the rules declared on its routes."""

    @property
    def rules(self) -> Mapping[Route, Sequence[Rule]]: ...


@dataclass(frozen=True, slots=True)
class Requirement:
    """``who`` may call the route it is declared on; ``name`` names the rule."""

    who: Matcher
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.who, Matcher):
            raise ConfigurationError(f"require(): {self.who!r} is not a matcher")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise ConfigurationError("require(): name must be a non-empty string")


def declared_rules(
    declared: Iterable[tuple[Route, Sequence[Requirement]]],
    *,
    unnamed: str = "route ",
) -> dict[Route, tuple[Rule, ...]]:
    """One ALLOW rule per route from the requirements declared on it.

    Several requirements on one route must all hold. The rule is named after
    the first named requirement, else ``unnamed`` followed by the route's
    name; a name used on several
    routes gets the route in the second and later rules' names.
    """
    rules: dict[Route, tuple[Rule, ...]] = {}
    names: set[str] = set()
    for route, found in declared:
        if not found:
            continue
        who = found[0].who if len(found) == 1 else AllOf(*(r.who for r in found))
        named = [r.name for r in found if r.name]
        name = named[0] if named else f"{unnamed}{route.name}"
        unique, count = name, 1
        while unique in names:
            count += 1
            unique = f"{name} [{route.name}]" if count == 2 else f"{name} [{route.name} #{count}]"
        name = unique
        names.add(name)
        rules[route] = (allow(name, who),)
    return rules


# Views decorated with ``require(...)`` (Flask, Quart): the wrapper carries the
# requirements, the undecorated function and the function it replaces; every
# function ``require`` wrapped is remembered, so one that is registered while
# no registered function replaces it (``@require`` above the route decorator)
# is found when the app's routes are read.
_REQUIREMENTS = "__peer_middleware_requirements__"
_WRAPPED = "__peer_middleware_wrapped__"
_REPLACES = "__peer_middleware_replaces__"
_wrapped: weakref.WeakSet[Any] = weakref.WeakSet()


def view_requirements(view: object) -> tuple[Requirement, ...]:
    """The requirements declared with ``require(...)`` on ``view``, outermost first."""
    found = getattr(view, _REQUIREMENTS, ())
    return found if isinstance(found, tuple) else ()


def declare_on_view(
    view: Callable[..., Any], requirement: Requirement, wrap: Callable[..., Any]
) -> Callable[..., Any]:
    """The wrapper ``wrap(inner, requirements)`` makes for ``view`` with ``requirement`` added.

    ``inner`` is the undecorated function (several ``require`` on one view
    make one wrapper that checks them all) and ``requirements`` every
    requirement, outermost first.
    """
    inner = getattr(view, _WRAPPED, view)
    requirements = (requirement, *view_requirements(view))
    wrapper: Callable[..., Any] = wrap(inner, requirements)
    setattr(wrapper, _REQUIREMENTS, requirements)
    setattr(wrapper, _WRAPPED, inner)
    setattr(wrapper, _REPLACES, view)
    with contextlib.suppress(TypeError):  # a view that cannot be weakly referenced
        _wrapped.add(view)
    return wrapper


def misplaced(endpoint: str, rule: str, framework: str) -> ConfigurationError:
    """The error for ``@require`` placed above the route decorator of ``endpoint``."""
    return ConfigurationError(
        f"@require(...) is above the route decorator of view {endpoint!r} ({rule}): it wrapped "
        f"the function after {framework} had registered it, so the view {framework} runs "
        "declares nothing. Put the route decorator first and @require(...) below it: "
        "@app.route(...) (or @blueprint.route(...)), then @require(...), then def view(...)"
    )


def refuse_registered(view: object, apps: Iterable[Any], framework: str) -> None:
    """Raise :func:`misplaced` when ``view`` is already a view of one of ``apps``.

    ``require`` is about to wrap a function an app registered: it sits above
    the route decorator. ``apps`` are Flask or Quart apps (``url_map``,
    ``view_functions``).
    """
    for app in list(apps):
        for url_rule in app.url_map.iter_rules():
            if app.view_functions.get(url_rule.endpoint) is view:
                raise misplaced(str(url_rule.endpoint), str(url_rule.rule), framework)


def _replacing(registered: Iterable[object]) -> set[int]:
    """The ids of the functions that registered ``require`` wrappers replace."""
    return {id(getattr(r, _REPLACES)) for r in registered if hasattr(r, _REPLACES)}


def _replaced(view: object, replacing: set[int]) -> bool:
    try:
        if view not in _wrapped:
            return False
    except TypeError:  # pragma: no cover - a view that cannot be weakly referenced
        return False
    return id(view) not in replacing


def enforce(requirements: Sequence[Requirement], peer: Any, where: str = "view") -> None:
    """Raise unless ``peer`` satisfies every requirement (401 without identity, else 403)."""
    for requirement in requirements:
        who = requirement.who
        if not who(peer):
            if peer is None:
                raise AuthenticationFailed(f"{where} requires {who.describe()}; no identity")
            raise AccessDenied(f"{where} requires {who.describe()}; {peer.principal} is not")


class EndpointTable:
    """The part of a route table over a Werkzeug URL map that is the same in Flask and Quart.

    Reads the rules declared with ``require(...)`` on the views of
    ``url_map`` (one :class:`Route` per endpoint), refuses a ``require``
    placed above the route decorator with :class:`ConfigurationError` (the
    function registered would declare nothing), and tells whether URL rules
    were added since (:meth:`unchanged`). Finding the endpoint a request
    reaches is left to the framework's own URL adapter (its subclass).
    """

    __slots__ = ("_by_rule", "_count", "_map", "_owner", "_routes", "_settled", "rules")

    def __init__(
        self, url_map: Any, views: Mapping[str, object], framework: str, app: object = None
    ) -> None:
        self._map = url_map
        self._owner = app
        self._settled = False
        self._routes: dict[str, Route] = {}
        declared: list[tuple[Route, list[Requirement]]] = []
        replacing = _replacing(views.values())
        for url_rule in url_map.iter_rules():
            endpoint = url_rule.endpoint
            view = views.get(endpoint)
            if _replaced(view, replacing):
                raise misplaced(str(endpoint), str(url_rule.rule), framework)
            if endpoint in self._routes:
                continue
            requirements = view_requirements(view)
            if not requirements:
                continue
            route = Route(f"view {endpoint} {url_rule.rule}")
            self._routes[endpoint] = route
            declared.append((route, list(requirements)))
        self.rules: dict[Route, tuple[Rule, ...]] = declared_rules(declared, unnamed="")
        self._by_rule = {rule.name: route for route, rules in self.rules.items() for rule in rules}
        self._count = _rule_count(url_map)

    def unchanged(self) -> bool:
        """True while no URL rule was added since the table was built.

        Asked on every request that rules declared on views may decide. Once
        ``app`` has handled its first request (Flask's ``_got_first_request``),
        Flask refuses every setup method, so one last count settles it.
        """
        if self._settled:
            return True
        if _rule_count(self._map) != self._count:
            return False
        if getattr(self._owner, "_got_first_request", False) is True:
            self._settled = True
        return True

    def route_of(self, endpoint: str) -> Route | None:
        """The route of ``endpoint`` when rules are declared on its view."""
        return self._routes.get(endpoint)

    def dispatched(self, rule: str, endpoint: str | None) -> bool:
        """False when ``rule``, declared on a view, allowed a request that the
        framework dispatched to ``endpoint``, another view (a middleware between
        the guard and the router changed the method, host or path)."""
        expected = self._by_rule.get(rule)
        return expected is None or (endpoint is not None and self._routes.get(endpoint) is expected)


def _rule_count(url_map: Any) -> int:
    # Werkzeug's Map keeps its rules by endpoint (its ``_rules`` builds a new list).
    by_endpoint = getattr(url_map, "_rules_by_endpoint", None)
    if isinstance(by_endpoint, dict):
        return sum(map(len, by_endpoint.values()))
    return sum(1 for _ in url_map.iter_rules())  # pragma: no cover - other Werkzeug


def outside_root(path: str, root_path: str) -> bool:
    """True when ``path``, normalised, is not under ``root_path`` at a segment boundary.

    The rules see the path without its mount point as Starlette's
    ``get_route_path`` makes it (:func:`peer_middleware.guard.route_path`);
    Quart and Litestar strip ``root_path`` with ``str.split``, anywhere in the
    path: for ``/apiadmin`` under ``/api`` they route ``/admin`` while the
    rules saw ``/apiadmin``. Their integrations refuse such a request.
    """
    if not root_path:
        return False
    try:
        path = normalise_path(path)
    except BadRequest:
        return False  # the guard refuses it
    return not (path == root_path or path.startswith(root_path + "/"))
