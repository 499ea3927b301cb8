"""The compiled policy: who may call what.

A :class:`Policy` is a list of named rules (see :mod:`peer_middleware.rules`)
naming matchers (see :mod:`peer_middleware.matchers`), written in code next to
the app::

    policy = Policy([
        allow("healthz", Anyone(), methods=["GET"], paths=["/healthz"]),
        allow("create-payment", Principal("spiffe://cluster.local/ns/shop/sa/checkout"),
              methods=["POST"], paths=["/payments"]),
        allow("read-payment", Namespace("shop", trust_domain="cluster.local"),
              methods=["GET"], paths=["/payments/{payment_id}"]),
        deny("no-legacy-export", Principal("spiffe://cluster.local/ns/shop/sa/legacy-export"),
             paths=["/payments/**"]),
    ])

Semantics (as Istio's AuthorizationPolicy and Envoy's RBAC filter):

* any matching DENY rule refuses (403), whatever else matches;
* otherwise the request passes only if an ALLOW rule matches;
* otherwise it is refused: 401 when the request carries no identity (a
  credential could help), 403 when it does;
* AUDIT rules never change the outcome; a match is logged;
* a rule with ``shadow=True`` is evaluated and its would-be effect logged,
  but it does not change the outcome; a policy with ``mode="shadow"`` lets
  every request through and logs what enforcement would have done.

Every :class:`Decision` names the rule that decided and why. Paths are
matched against the normalised path with the patterns described in
:mod:`peer_middleware.rules`.

The policy is compiled into a segment tree with rules indexed by method and by
the SPIFFE ID, trust domain and namespace they name
(:meth:`Matcher.index_keys`, :func:`~peer_middleware.matchers.index_keys_of`),
so deciding costs the same with ten rules or ten thousand.

The matchers and rules are re-exported here, so ``from peer_middleware.policy
import Principal, allow`` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from .conditions import RequestFacts
from .errors import BadRequest, ConfigurationError
from .matchers import (
    AllOf,
    AnyOf,
    Anyone,
    Authenticated,
    CertificateBound,
    CertificateVerified,
    Claim,
    HasToken,
    Issuer,
    Matcher,
    Namespace,
    Not,
    Principal,
    ProvenBy,
    RequestPrincipal,
    ServiceAccount,
    SidecarAsserted,
    TrustDomain,
    Who,
    index_keys_of,
)
from .paths import check_method, normalise_path
from .peer import Peer
from .rules import (
    MANY0,
    MANY1,
    MANY1N,
    NO_IDENTITY,
    NO_RULE,
    ONE,
    Action,
    Decision,
    Route,
    Rule,
    allow,
    audit,
    deny,
)

__all__ = [
    "Action",
    "AllOf",
    "AnyOf",
    "Anyone",
    "Authenticated",
    "CertificateBound",
    "CertificateVerified",
    "Claim",
    "Decision",
    "Explanation",
    "HasToken",
    "Issuer",
    "Matcher",
    "Namespace",
    "Not",
    "Plan",
    "PlanMemory",
    "Policy",
    "Principal",
    "ProvenBy",
    "RequestPrincipal",
    "Route",
    "Rule",
    "RuleTrace",
    "ServiceAccount",
    "SidecarAsserted",
    "TrustDomain",
    "Who",
    "allow",
    "audit",
    "deny",
]


# --------------------------------------------------------------------------
# The compiled policy.
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    order: int
    rule: Rule
    decision: Decision
    when: bool = False  # the rule has request conditions

    def matches(self, peer: Peer | None, facts: RequestFacts, deny: bool) -> bool:
        """Whether the rule's matcher and every condition match (``deny``: as a DENY rule)."""
        who = self.rule.who
        if not (_deny_matches(who, peer) if deny else who(peer)):
            return False
        return not self.when or all(c.test(facts, deny) for c in self.rule.when)

    def conditions_hold(self, facts: RequestFacts, deny: bool) -> bool:
        return not self.when or all(c.test(facts, deny) for c in self.rule.when)


_NO_FACTS = RequestFacts()


def _deny_matches(who: Matcher, peer: Peer | None) -> bool:
    """Whether a DENY rule's matcher applies to ``peer``.

    A request without identity is judged with plain negation here, as Envoy's
    RBAC and Istio's ``notPrincipals`` do: ``deny(..., ~Authenticated())`` or
    "everybody but the admin" (``~Principal(admin)``) refuses it too. (In an
    ALLOW rule a negation never matches it, so both fail closed.)
    """
    if peer is not None:
        return who(peer)
    if isinstance(who, Not):
        return not _deny_matches(who.matcher, None)
    if isinstance(who, AnyOf):
        return any(_deny_matches(m, None) for m in who.matchers)
    if isinstance(who, AllOf):
        return all(_deny_matches(m, None) for m in who.matchers)
    return who(None)


@dataclass(slots=True)
class _RuleSet:
    """Rules of one action that apply at one place of the tree for one method."""

    by_key: dict[tuple[str, str], list[_Entry]] = field(default_factory=dict)
    scan: list[_Entry] = field(default_factory=list)

    def add(self, entry: _Entry) -> None:
        keys = entry.rule.who.index_keys()
        if keys is None:
            self.scan.append(entry)
        else:
            for key in keys:
                self.by_key.setdefault(key, []).append(entry)

    def first_match(
        self,
        peer: Peer | None,
        best: _Entry | None,
        deny: bool = False,
        facts: RequestFacts = _NO_FACTS,
    ) -> _Entry | None:
        if peer is not None and self.by_key:
            for key in index_keys_of(peer.spiffe_id):
                entries = self.by_key.get(key)
                if entries is not None:
                    # Entries are in rule order; the matcher matches every one
                    # (that is what its index keys mean), the conditions may not.
                    for candidate in entries:
                        if best is not None and candidate.order >= best.order:
                            break
                        if candidate.conditions_hold(facts, deny):
                            best = candidate
                            break
        for entry in self.scan:
            if best is not None and entry.order > best.order:
                break
            if entry.matches(peer, facts, deny):
                return entry
        return best

    def all_matches(
        self, peer: Peer | None, deny: bool = False, facts: RequestFacts = _NO_FACTS
    ) -> list[_Entry]:
        found: list[_Entry] = []
        if peer is not None:
            for key in index_keys_of(peer.spiffe_id):
                found.extend(e for e in self.by_key.get(key, ()) if e.conditions_hold(facts, deny))
        found.extend(entry for entry in self.scan if entry.matches(peer, facts, deny))
        return sorted({id(e): e for e in found}.values(), key=lambda e: e.order)


@dataclass(slots=True)
class _Bucket:
    """Every rule whose pattern ends at one place of the tree, for one method."""

    deny: _RuleSet = field(default_factory=_RuleSet)
    allow: _RuleSet = field(default_factory=_RuleSet)
    extra: list[_Entry] = field(default_factory=list)  # audit and shadow rules

    def add(self, entry: _Entry) -> None:
        if entry.rule.shadow or entry.rule.action is Action.AUDIT:
            self.extra.append(entry)
        elif entry.rule.action is Action.DENY:
            self.deny.add(entry)
        else:
            self.allow.add(entry)


@dataclass(slots=True, eq=False)
class _Terminal:
    """Buckets per method for rules ending at one node in one way."""

    by_method: dict[str, _Bucket] = field(default_factory=dict)
    any_method: _Bucket = field(default_factory=_Bucket)
    pending: list[_Entry] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)

    def finish(self) -> None:
        methods = {m for e in self.pending if e.rule.methods for m in e.rule.methods}
        for entry in sorted(self.pending, key=lambda e: e.order):
            if entry.rule.methods is None:
                self.any_method.add(entry)
                for method in methods:
                    self.by_method.setdefault(method, _Bucket()).add(entry)
            else:
                for method in entry.rule.methods:
                    self.by_method.setdefault(method, _Bucket()).add(entry)
        self.pending = []
        self.seen = set()

    def bucket(self, method: str) -> _Bucket:
        return self.by_method.get(method, self.any_method)


@dataclass(slots=True, eq=False)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    one: _Node | None = None
    many0: _Node | None = None
    many1: _Node | None = None
    many1n: _Node | None = None
    exact: _Terminal | None = None

    def child(self, segment: object) -> _Node:
        if isinstance(segment, str):
            return self.children.setdefault(segment, _Node())
        attr = {ONE: "one", MANY0: "many0", MANY1: "many1", MANY1N: "many1n"}[segment]
        node: _Node | None = getattr(self, attr)
        if node is None:
            node = _Node()
            setattr(self, attr, node)
        return node

    def walk(self) -> Iterable[_Node]:
        yield self
        for child in self.children.values():
            yield from child.walk()
        for special in (self.one, self.many0, self.many1, self.many1n):
            if special is not None:
                yield from special.walk()


def _collect(node: _Node, segments: list[str], index: int, out: list[_Terminal]) -> None:
    # Each pattern has at most one multi-segment wildcard, so the work is
    # bounded by the number of segments times the tree's branching at one place.
    count = len(segments)
    if index == count:
        if node.exact is not None:
            out.append(node.exact)
    else:
        segment = segments[index]
        child = node.children.get(segment)
        if child is not None:
            _collect(child, segments, index + 1, out)
        # "*" and "{id}" match a segment with content, never the empty one a
        # trailing slash leaves ("/payments/" is not "/payments/{id}").
        if node.one is not None and segment:
            _collect(node.one, segments, index + 1, out)
        if node.many1 is not None:
            for end in range(index + 1, count + 1):
                _collect(node.many1, segments, end, out)
        if node.many1n is not None and segment:
            for end in range(index + 1, count + 1):
                _collect(node.many1n, segments, end, out)
    if node.many0 is not None:
        for end in range(index, count + 1):
            _collect(node.many0, segments, end, out)


# Methods no common router dispatches as another method. Anything else may
# reach a handler written for another method: Starlette, Flask and Django
# serve HEAD with the GET handler, and Werkzeug and Django upper-case the
# method ("delete" runs the DELETE view).
_DISPATCHED_AS_SENT = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})

#: The rule buckets that apply to one method at one path (see :meth:`Policy.plan`).
Plan = tuple[_Bucket, ...]


class PlanMemory(Protocol):
    """Somewhere to keep plans between requests (the guard's memory).

    ``get`` returns ``None`` for a key it does not hold; ``put`` may keep or
    drop the entry. A plan depends only on the method and the path, so any
    memory keyed by both is safe.
    """

    def get(self, key: tuple[str, str]) -> Plan | None: ...

    def put(self, key: tuple[str, str], value: Plan) -> None: ...


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """How one rule judged one request (see :meth:`Policy.explain`).

    ``matched`` is True when the rule applies; ``reason`` says why or why not.
    ``route`` names the route the rule is declared on (``None``: a central rule).
    """

    rule: str
    action: str
    matched: bool
    reason: str
    shadow: bool = False
    route: str | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision with its reasons: what :meth:`Policy.explain` returns."""

    method: str
    path: str
    decision: Decision
    trace: tuple[RuleTrace, ...]
    principal: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The explanation as plain JSON-ready values."""
        decision = self.decision
        return {
            "method": self.method,
            "path": self.path,
            "principal": self.principal,
            "allowed": decision.allowed,
            "status": decision.enforced_status if not decision.dry_run else decision.status,
            "rule": decision.rule,
            "reason": decision.reason,
            "dry_run": decision.dry_run,
            "shadow": list(decision.shadow),
            "audit": list(decision.audit),
            "trace": [
                {
                    "rule": t.rule,
                    "action": t.action,
                    "matched": t.matched,
                    "reason": t.reason,
                    "shadow": t.shadow,
                    "route": t.route,
                }
                for t in self.trace
            ],
        }

    def format(self) -> str:
        """The explanation as text, one line per rule considered."""
        decision = self.decision
        outcome = "allowed" if decision.allowed and not decision.dry_run else "refused"
        status = 200 if decision.allowed and not decision.dry_run else decision.status
        lines = [
            f"{self.method} {self.path} as {self.principal or '(no identity)'}",
            f"decision: {outcome} ({status}) by {decision.rule or '(default)'}: {decision.reason}",
            "trace:",
        ]
        for t in self.trace:
            mark = "match" if t.matched else "-    "
            where = f" [route {t.route}]" if t.route else ""
            shadow = " (shadow)" if t.shadow else ""
            lines.append(f"  {mark} {t.action:<5} {t.rule}{shadow}{where}: {t.reason}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class _RouteEntry:
    rule: Rule
    decision: Decision


class Policy:
    """A compiled, immutable set of rules.

    ``rules`` are the central rules, matched by path. ``routes`` maps each
    :class:`Route` to the ALLOW rules declared on it; they apply only when the
    request is dispatched to that route (see :meth:`decide`), after every
    central rule: a central DENY still refuses, and a central ALLOW still
    allows. ``mode="shadow"`` lets every request through and reports what
    enforcement would have done (``Decision.dry_run``). Invalid rules,
    duplicate rule names and unknown modes raise :class:`ConfigurationError`
    here.

    A policy keeps no memory of its own: :meth:`decide` is a pure function of
    its arguments. The guard remembers plans for it (``plans=``).
    """

    __slots__ = ("_root", "_routes", "has_extras", "mode", "reads", "routes", "rules")

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        mode: Literal["enforce", "shadow"] = "enforce",
        routes: Mapping[Route, Iterable[Rule]] | None = None,
    ) -> None:
        if mode not in ("enforce", "shadow"):
            raise ConfigurationError(f"policy mode {mode!r} must be 'enforce' or 'shadow'")
        if isinstance(rules, Rule):
            rules = [rules]
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.mode = mode
        names: set[str] = set()
        root = _Node()
        for order, rule in enumerate(self.rules):
            if not isinstance(rule, Rule):
                raise ConfigurationError(f"{rule!r} is not a Rule")
            if rule.name in names:
                raise ConfigurationError(f"two rules are named {rule.name!r}")
            names.add(rule.name)
            decision = self._decision_for(rule)
            entry = _Entry(order, rule, decision, bool(rule.when))
            for pattern in rule.paths:
                node = root
                for segment in pattern.segments:
                    node = node.child(segment)
                terminal = node.exact
                if terminal is None:
                    terminal = node.exact = _Terminal()
                if order not in terminal.seen:
                    terminal.seen.add(order)
                    terminal.pending.append(entry)
        for node in root.walk():
            if node.exact is not None:
                node.exact.finish()
        self._root = root
        self.has_extras = any(r.shadow or r.action is Action.AUDIT for r in self.rules)
        self.routes: dict[Route, tuple[Rule, ...]] = {}
        self._routes: dict[Route, tuple[_RouteEntry, ...]] = {}
        for route, declared in (routes or {}).items():
            if not isinstance(route, Route):
                raise ConfigurationError(f"{route!r} is not a Route")
            route_rules = (declared,) if isinstance(declared, Rule) else tuple(declared)
            entries = []
            for rule in route_rules:
                if not isinstance(rule, Rule):
                    raise ConfigurationError(f"{rule!r} (declared on {route.name}) is not a Rule")
                if rule.action is not Action.ALLOW or rule.shadow:
                    raise ConfigurationError(
                        f"rule {rule.name!r} declared on {route.name} must be a plain ALLOW rule"
                    )
                if rule.name in names:
                    raise ConfigurationError(f"two rules are named {rule.name!r}")
                names.add(rule.name)
                entries.append(
                    _RouteEntry(
                        rule,
                        Decision(
                            True,
                            200,
                            rule.name,
                            f"allowed by rule {rule.name!r} declared on route {route.name}",
                        ),
                    )
                )
            if entries:
                self.routes[route] = route_rules
                self._routes[route] = tuple(entries)
        #: Every request attribute some rule's conditions read (``"host"``,
        #: ``"port"``, ``"source"``, ``"header:<name>"``): what a memory of
        #: decisions must key on besides the method, path, route and peer.
        self.reads: frozenset[str] = frozenset().union(
            *(r.reads for r in self.rules),
            *(r.reads for rules in self.routes.values() for r in rules),
        )

    @staticmethod
    def _decision_for(rule: Rule) -> Decision:
        if rule.action is Action.ALLOW:
            return Decision(True, 200, rule.name, f"allowed by rule {rule.name!r}")
        return Decision(False, 403, rule.name, f"denied by rule {rule.name!r}")

    def extended(self, rules: Iterable[Rule]) -> Policy:
        """A new policy with central ``rules`` appended (same mode and routes)."""
        return Policy((*self.rules, *rules), mode=self.mode, routes=self.routes)

    def with_routes(self, routes: Mapping[Route, Iterable[Rule]]) -> Policy:
        """A new policy with the same central rules and mode, and these route rules."""
        return Policy(self.rules, mode=self.mode, routes=routes)

    def plan(self, method: str, path: str) -> Plan:
        """The buckets of rules that apply to ``method`` at the normalised ``path``."""
        terminals: list[_Terminal] = []
        _collect(self._root, path[1:].split("/"), 0, terminals)
        return tuple(t.bucket(method) for t in dict.fromkeys(terminals))

    def decide(
        self,
        method: str,
        path: str,
        peer: Peer | None,
        route: Route | None = None,
        *,
        plans: PlanMemory | None = None,
        facts: RequestFacts | None = None,
    ) -> Decision:
        """Decide a request. ``path`` must already be normalised.

        ``route`` is the route the framework dispatches the request to, when
        the caller knows it (``None``: no route, or not known); the rules
        declared on it allow the request when no central rule decided.
        ``plans`` is a memory for :meth:`plan` results. ``facts`` are what
        the rules' conditions read (:attr:`reads`); without them every
        attribute is missing.

        A DENY rule also refuses the methods a router may dispatch to the
        method it names: ``HEAD`` (and any method in lower case) is refused by
        a DENY rule for ``GET`` (for the upper-cased method). ALLOW rules still
        match only the method as sent.
        """
        if facts is None:
            facts = _NO_FACTS
        decision = self._decide_as(method, path, peer, route, plans, facts)
        if method in _DISPATCHED_AS_SENT or not decision.allowed or decision.dry_run:
            return decision
        upper = method.upper()
        aliases = [upper] if upper != method else []
        if upper == "HEAD":
            aliases.append("GET")
        for alias in aliases:
            other = self._decide_as(alias, path, peer, None, plans, facts)
            # Route rules never apply to the alias: only a central DENY decides here.
            if other.rule is not None and (not other.allowed or other.dry_run):
                return other  # refused by a DENY rule
        return decision

    def _decide_as(
        self,
        method: str,
        path: str,
        peer: Peer | None,
        route: Route | None,
        plans: PlanMemory | None,
        facts: RequestFacts,
    ) -> Decision:
        if plans is None:
            buckets = self.plan(method, path)
        else:
            key = (method, path)
            found = plans.get(key)
            if found is None:
                found = self.plan(method, path)
                plans.put(key, found)
            buckets = found
        on_route = self._routes.get(route) if route is not None else None
        return self._decide(buckets, peer, on_route, facts)

    def _decide(
        self,
        buckets: Plan,
        peer: Peer | None,
        on_route: tuple[_RouteEntry, ...] | None = None,
        facts: RequestFacts = _NO_FACTS,
    ) -> Decision:
        denied: _Entry | None = None
        for bucket in buckets:
            denied = bucket.deny.first_match(peer, denied, True, facts)
        if denied is not None:
            decision = denied.decision
        else:
            allowed: _Entry | None = None
            for bucket in buckets:
                allowed = bucket.allow.first_match(peer, allowed, False, facts)
            if allowed is not None:
                decision = allowed.decision
            else:
                decision = NO_IDENTITY if peer is None else NO_RULE
                if on_route is not None:
                    for route_entry in on_route:
                        if route_entry.rule.who(peer) and all(
                            c.test(facts) for c in route_entry.rule.when
                        ):
                            decision = route_entry.decision
                            break
        if self.has_extras:
            decision = self._extras(decision, buckets, peer, facts)
        if not decision.allowed and self.mode == "shadow":
            decision = replace(decision, allowed=True, dry_run=True)
        return decision

    @staticmethod
    def _extras(
        decision: Decision, buckets: Plan, peer: Peer | None, facts: RequestFacts
    ) -> Decision:
        shadow: list[str] = []
        audits: list[str] = []
        # A rule whose patterns end at several places is reported once, and
        # reports follow declaration order.
        entries = {id(e): e for bucket in buckets for e in bucket.extra}
        for entry in sorted(entries.values(), key=lambda e: e.order):
            if not entry.matches(peer, facts, entry.rule.action is Action.DENY):
                continue
            if entry.rule.action is Action.AUDIT:
                audits.append(entry.rule.name)
            else:
                shadow.append(f"{entry.rule.action.value}:{entry.rule.name}")
        if not shadow and not audits:
            return decision
        return replace(decision, shadow=tuple(shadow), audit=tuple(audits))

    def matching_rules(
        self,
        method: str,
        path: str,
        peer: Peer | None,
        route: Route | None = None,
        *,
        facts: RequestFacts | None = None,
    ) -> list[Rule]:
        """Every rule that matches, in order (for explaining a decision); the
        rules declared on ``route`` come after the central ones."""
        facts = facts or _NO_FACTS
        found: list[_Entry] = []
        for bucket in self.plan(method, path):
            found.extend(bucket.deny.all_matches(peer, True, facts))
            found.extend(bucket.allow.all_matches(peer, False, facts))
            found.extend(
                e for e in bucket.extra if e.matches(peer, facts, e.rule.action is Action.DENY)
            )
        unique = {id(e): e for e in found}
        matched = [e.rule for e in sorted(unique.values(), key=lambda e: e.order)]
        if route is not None:
            matched.extend(
                e.rule
                for e in self._routes.get(route, ())
                if e.rule.who(peer) and all(c.test(facts) for c in e.rule.when)
            )
        return matched

    def explain(
        self,
        method: str,
        path: str,
        peer: Peer | None = None,
        route: Route | None = None,
        *,
        facts: RequestFacts | None = None,
    ) -> Explanation:
        """The decision for a request, with the trace of every rule considered.

        ``path`` is the path as sent: it is normalised here as the guard
        would (a path the guard refuses gets a 400 decision and no trace).
        ``route`` and ``facts`` are as in :meth:`decide`. Pure, like
        :meth:`decide`: for tests, tools and decision logs.
        """
        principal = peer.principal if peer is not None else None
        try:
            check_method(method)
            normalised = normalise_path(path)
        except BadRequest as error:
            refused = Decision(False, 400, None, error.reason)
            return Explanation(method, path, refused, (), principal)
        facts = facts or _NO_FACTS
        decision = self.decide(method, normalised, peer, route, facts=facts)
        in_plan = {
            id(entry.rule)
            for bucket in self.plan(method, normalised)
            for entry in _bucket_entries(bucket)
        }
        trace: list[RuleTrace] = []
        for rule in self.rules:
            if rule.methods is not None and method not in rule.methods:
                matched, reason = False, f"method {method} is not {', '.join(sorted(rule.methods))}"
            elif id(rule) not in in_plan:
                patterns = ", ".join(p.text for p in rule.paths)
                matched, reason = False, f"path {normalised} matches none of {patterns}"
            else:
                matched, reason = _explain_match(rule, peer, facts)
            trace.append(RuleTrace(rule.name, rule.action.value, matched, reason, rule.shadow))
        for on, rules in self.routes.items():
            for rule in rules:
                if route is not on:
                    matched, reason = False, "the request is not dispatched to this route"
                else:
                    matched, reason = _explain_match(rule, peer, facts)
                trace.append(
                    RuleTrace(rule.name, rule.action.value, matched, reason, route=on.name)
                )
        return Explanation(method, normalised, decision, tuple(trace), principal)

    def __len__(self) -> int:
        return len(self.rules) + sum(map(len, self.routes.values()))

    def __repr__(self) -> str:
        routes = f", {len(self.routes)} routes with rules" if self.routes else ""
        return f"Policy({len(self.rules)} rules{routes}, mode={self.mode!r})"


def _bucket_entries(bucket: _Bucket) -> Iterable[_Entry]:
    for rule_set in (bucket.deny, bucket.allow):
        for entries in rule_set.by_key.values():
            yield from entries
        yield from rule_set.scan
    yield from bucket.extra


def _explain_match(rule: Rule, peer: Peer | None, facts: RequestFacts) -> tuple[bool, str]:
    deny = rule.action is Action.DENY
    who = rule.who
    if not (_deny_matches(who, peer) if deny else who(peer)):
        caller = peer.principal if peer is not None else "a request without identity"
        return False, f"{caller} does not match {who.describe()}"
    for condition in rule.when:
        if not condition.test(facts, deny):
            return False, f"condition {condition.describe()} does not hold"
    when = "".join(f" and {c.describe()}" for c in rule.when)
    return True, f"{who.describe()}{when} matched"
