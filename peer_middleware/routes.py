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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import ConfigurationError
from .matchers import AllOf, Matcher
from .rules import Route, Rule, allow

__all__ = ["Requirement", "RouteResolver", "RouteTable", "declared_rules"]


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
