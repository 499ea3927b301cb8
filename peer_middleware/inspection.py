"""The operator's tools behind ``peer-middleware explain`` and ``peer-middleware check``.

:func:`load_target` imports an app (``module:attribute``): a
:class:`~peer_middleware.policy.Policy`, a :class:`~peer_middleware.guard.Guard`,
either middleware, a FastAPI/Starlette app with ``install(...)`` or a Flask app
with ``PeerAuth``, and finds its effective policy (route rules included), the
route table that resolves requests to routes, and the routes the app serves.
:func:`explain` asks the policy about one request, :func:`dump` lists the
effective rules, :func:`check` lints the policy against the app's routes.
Importing the app runs its module: use it on code you trust.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .asgi import PeerMiddleware
from .conditions import NotCondition, RequestFacts
from .errors import BadRequest, ConfigurationError
from .guard import Guard
from .matchers import Anyone, Not
from .paths import normalise_path
from .peer import Peer, Proof
from .policy import Explanation, Policy
from .routes import RouteResolver
from .rules import MANY0, Action, PathPattern, Rule, allow
from .spiffe import SpiffeId
from .wsgi import PeerWSGIMiddleware

__all__ = [
    "AppRoute",
    "Finding",
    "Target",
    "check",
    "dump",
    "explain",
    "load_target",
    "target_of",
    "with_policy",
]


@dataclass(frozen=True, slots=True)
class AppRoute:
    """A route the app serves: its path template and methods (``None``: any)."""

    template: str
    methods: frozenset[str] | None


@dataclass(slots=True)
class Target:
    """What the tools inspect: the effective policy and, when known, the app's routes."""

    policy: Policy
    resolver: RouteResolver | None = None
    kind: str = "policy"  # "asgi", "wsgi" or "policy"
    routes: list[AppRoute] | None = None
    notes: list[str] = field(default_factory=list)


def _import(spec: str) -> object:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"--app {spec!r} must be module:attribute")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)  # the current directory, as python -m does
    module = importlib.import_module(module_name)
    found: object = module
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


def load_target(spec: str) -> Target:
    """The effective policy, route resolver and routes of the object ``spec`` names."""
    return target_of(_import(spec))


def target_of(obj: object) -> Target:
    """As :func:`load_target`, for an object already imported."""
    if isinstance(obj, Policy):
        return Target(obj)
    if isinstance(obj, Guard):
        return Target(obj.policy, obj._router, "asgi")
    if isinstance(obj, PeerWSGIMiddleware):
        obj.finalise()
        return Target(obj.guard.policy, obj.guard._router, "wsgi")
    if isinstance(obj, PeerMiddleware):
        return Target(obj.guard.policy, obj.guard._router, "asgi")
    extensions = getattr(obj, "extensions", None)
    if isinstance(extensions, dict) and "peer_middleware" in extensions:
        auth = extensions["peer_middleware"]
        middleware = auth._middlewares[id(obj)]
        middleware.finalise()
        guard = middleware.guard
        return Target(guard.policy, guard._router, "wsgi", _flask_routes(obj))
    for middleware in getattr(obj, "user_middleware", ()):
        if getattr(middleware, "cls", None) is PeerMiddleware:
            options = middleware.kwargs
            guard = options["guard"]
            policy, resolver = guard.policy, guard._router
            routes_of = options.get("routes")
            if resolver is None and routes_of is not None:
                table = routes_of()
                policy = policy.with_routes(table.rules)
                resolver = table if policy.routes else None
            return Target(policy, resolver, "asgi", _starlette_routes(obj))
    raise ConfigurationError(
        f"{type(obj).__name__} is not a Policy, a Guard, a middleware of this package, "
        "or an app with it installed"
    )


def with_policy(target: Target, policy: Policy) -> Target:
    """``target`` with ``policy`` as its central rules (its route rules and routes kept)."""
    routes = target.policy.routes
    combined = policy.with_routes(routes) if routes else policy
    return Target(combined, target.resolver, target.kind, target.routes)


def _flask_routes(app: Any) -> list[AppRoute]:
    return [
        AppRoute(rule.rule, frozenset(rule.methods) if rule.methods else None)
        for rule in app.url_map.iter_rules()
    ]


def _starlette_routes(app: Any, prefix: str = "") -> list[AppRoute]:
    found: list[AppRoute] = []
    for route in getattr(app, "routes", ()):
        path = getattr(route, "path", None)
        sub = getattr(route, "routes", None)
        if sub is not None and path is not None:  # Mount
            if sub:
                found.extend(_starlette_routes(route, prefix + path))
            else:
                found.append(AppRoute(prefix + path + "/{rest:path}", None))
        elif sub is not None:  # Host
            found.extend(_starlette_routes(route, prefix))
        elif path is not None:
            methods = getattr(route, "methods", None)
            found.append(AppRoute(prefix + path, frozenset(methods) if methods else None))
    return found


# --------------------------------------------------------------------------
# explain and dump
# --------------------------------------------------------------------------


def peer_for(
    principal: str | None, claims: Mapping[str, Any] | None = None, proof: str = "mtls"
) -> Peer | None:
    """The peer to judge: ``principal`` proven by ``proof``, with a token of ``claims``."""
    token = None
    if claims is not None:
        subject = claims.get("sub")
        sid = principal or (subject if isinstance(subject, str) else None)
        if sid is None:
            raise ConfigurationError("--token-claims without --as needs a SPIFFE ID in 'sub'")
        token = Peer(SpiffeId.parse(sid), Proof.TOKEN, "explain", claims=dict(claims))
    if principal is None:
        return token
    peer = Peer(SpiffeId.parse(principal), Proof(proof), "explain")
    if token is not None:
        return Peer(peer.spiffe_id, peer.proof, "explain", token=token)
    return peer


def explain(
    target: Target,
    method: str,
    path: str,
    peer: Peer | None,
    headers: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    source: str | None = None,
) -> Explanation:
    """The policy's explanation of one request, routed as the app would route it."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    facts = RequestFacts(headers.get("host"), port, headers, source)
    route = None
    resolver = target.resolver
    if resolver is not None:
        try:
            normalised = normalise_path(path)
        except BadRequest:
            normalised = None  # refused before any route: Policy.explain says why
        if normalised is not None:
            request = _request(target.kind, method, normalised, headers, port)
            route = resolver.resolve(request, method, normalised)
    return target.policy.explain(method, path, peer, route, facts=facts)


def _request(
    kind: str, method: str, path: str, headers: Mapping[str, str], port: int | None
) -> object:
    host = headers.get("host", "localhost")
    if kind == "wsgi":
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": host.partition(":")[0],
            "SERVER_PORT": str(port or 80),
            "HTTP_HOST": host,
            "wsgi.url_scheme": "http",
        }
        return environ
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode("utf-8"),
        "root_path": "",
        "query_string": b"",
        "scheme": "http",
        "server": ("127.0.0.1", port or 80),
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        or [(b"host", host.encode("latin-1"))],
    }


def _row(rule: Rule, order: int, route: str | None) -> dict[str, object]:
    return {
        "order": order,
        "rule": rule.name,
        "action": rule.action.value,
        "methods": sorted(rule.methods) if rule.methods is not None else None,
        "paths": [p.text for p in rule.paths],
        "who": rule.who.describe(),
        "when": [c.describe() for c in rule.when],
        "shadow": rule.shadow,
        "route": route,
    }


def _all_rules(policy: Policy) -> list[Rule]:
    return [*policy.rules, *(rule for rules in policy.routes.values() for rule in rules)]


def dump(policy: Policy, *, as_json: bool = False) -> str:
    """The effective policy, central rules first then the rules declared on routes."""
    rows = [_row(rule, i, None) for i, rule in enumerate(policy.rules)]
    for route, rules in policy.routes.items():
        rows.extend(_row(rule, len(rows), route.name) for rule in rules)
    if as_json:
        return json.dumps({"mode": policy.mode, "rules": rows}, indent=2)
    header = ("#", "action", "rule", "methods", "paths", "who / when", "route")
    table: list[tuple[str, ...]] = [header]
    for row, rule in zip(rows, _all_rules(policy), strict=True):
        who = rule.who.describe() + "".join(f" when {c.describe()}" for c in rule.when)
        table.append(
            (
                str(row["order"]),
                rule.action.value + (" (shadow)" if rule.shadow else ""),
                rule.name,
                ",".join(sorted(rule.methods)) if rule.methods is not None else "*",
                ",".join(p.text for p in rule.paths) if row["route"] is None else "(route)",
                who,
                str(row["route"] or "-"),
            )
        )
    if not policy.routes:
        table = [line[:-1] for line in table]  # no route column without route rules
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


# --------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing ``check`` found: ``level`` is ``"error"`` or ``"warning"``."""

    level: str
    rule: str | None
    message: str

    def __str__(self) -> str:
        where = f"rule {self.rule!r}: " if self.rule else ""
        return f"{self.level}: {where}{self.message}"


def _sample(pattern: PathPattern) -> str:
    parts: list[str] = []
    for segment in pattern.segments:
        if isinstance(segment, str):
            parts.append(segment)
        elif segment is not MANY0:
            parts.append("x1")
    return "/" + "/".join(parts)


@lru_cache(maxsize=4096)
def _single(text: str) -> Policy:
    return Policy([allow("p", Anyone(), paths=text)])


def _matches(pattern: str, path: str) -> bool:
    return bool(_single(pattern).plan("GET", path))


def _overlaps(rule_pattern: PathPattern, template: str) -> bool:
    try:
        route_pattern = PathPattern.compile(template)
    except ConfigurationError:
        return True  # a template the rules cannot express: assume it may match
    return _matches(rule_pattern.text, _sample(route_pattern)) or _matches(
        template, _sample(rule_pattern)
    )


def _covers(deny: PathPattern, other: PathPattern) -> bool:
    if deny.text == other.text or deny.text == "/**":
        return True
    if deny.text.endswith("/**"):
        base = deny.text[:-3]
        return other.text == base or other.text.startswith(base + "/")
    return False


def _negated(rule: Rule) -> bool:
    return isinstance(rule.who, Not) or any(isinstance(c, NotCondition) for c in rule.when)


def check(target: Target) -> list[Finding]:
    """Lint the policy: errors for rules that can never apply, warnings for risky shapes."""
    policy = target.policy
    findings: list[Finding] = []
    rules = list(policy.rules)
    routes = target.routes
    if routes is not None:
        for rule in rules:
            reached: list[AppRoute] = []
            for pattern in rule.paths:
                found = [route for route in routes if _overlaps(pattern, route.template)]
                if not found:
                    findings.append(
                        Finding("error", rule.name, f"path {pattern.text} matches no route")
                    )
                reached.extend(r for r in found if r not in reached)
            if not reached:
                continue
            if rule.methods is None or any(r.methods is None for r in reached):
                continue
            served = frozenset().union(*(r.methods or () for r in reached))
            for method in sorted(rule.methods - served):
                findings.append(
                    Finding("error", rule.name, f"method {method}: no route on its paths serves it")
                )
    denies = [r for r in rules if r.action is Action.DENY and not r.shadow]
    for rule in rules:
        if rule.action is Action.DENY or rule.shadow:
            continue
        for deny in denies:
            broad = isinstance(deny.who, Anyone) or deny.who.describe() == rule.who.describe()
            methods = deny.methods is None or (
                rule.methods is not None and rule.methods <= deny.methods
            )
            if (
                broad
                and not deny.when
                and methods
                and all(any(_covers(d, p) for d in deny.paths) for p in rule.paths)
            ):
                findings.append(
                    Finding(
                        "error",
                        rule.name,
                        f"shadowed by deny rule {deny.name!r}: it can never apply",
                    )
                )
                break
    for rule in rules:
        if rule.action is Action.ALLOW and _negated(rule):
            findings.append(
                Finding(
                    "warning",
                    rule.name,
                    "ALLOW built on a negation: allow what is wanted, or DENY the negation",
                )
            )
        if rule.action is Action.DENY and not _negated(rule) and not isinstance(rule.who, Anyone):
            findings.append(
                Finding(
                    "warning",
                    rule.name,
                    "DENY built on a positive match: a caller it does not name is not denied; "
                    "prefer DENY on a negation (everybody but ...)",
                )
            )
    allows = any(r.action is Action.ALLOW and not r.shadow for r in rules) or policy.routes
    if not allows:
        findings.append(Finding("error", None, "the policy allows nothing"))
    if policy.mode == "shadow":
        findings.append(
            Finding("warning", None, "the policy is in shadow mode: it enforces nothing")
        )
    return findings
