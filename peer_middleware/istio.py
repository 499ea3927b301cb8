"""Istio security resources: AuthorizationPolicy, PeerAuthentication, RequestAuthentication.

::

    policy = load_istio("/etc/istio-policies", namespace="shop", labels={"app": "payments"})

reads YAML files (a file, or every ``*.yaml``/``*.yml``/``*.json`` file of a directory, in any case,
as a ConfigMap is mounted; each may hold several documents), keeps the
resources that apply to this workload (its ``namespace``, or the mesh-wide
``root_namespace``; a ``selector`` whose ``matchLabels`` are all in
``labels``) and compiles them into a :class:`~peer_middleware.policy.Policy`
with Istio's semantics: any matching DENY refuses; with no ALLOW policy every
request is allowed; otherwise an ALLOW policy must match; AUDIT only logs.

**Never widen.** Any field, value or ``when`` key that cannot be evaluated in
the app (``CUSTOM``, ``targetRef``, ``notPaths``, ``destination.ip``,
``connection.sni``, a path with a mid-segment ``*``...), any unknown field,
duplicate key, duplicate resource or malformed document raises
:class:`IstioPolicyError` naming the resource and the field: Istio once
ignored some fields silently, and CVE-2022-21679 made a policy match
everything. See ``docs/istio.md`` for the mapping of every field.

:class:`IstioPolicyFiles` re-reads them when they change and swaps the
guard's policy as a whole; a bad file keeps the last good policy and logs why.
:func:`istio_authenticators` turns ``RequestAuthentication`` ``jwtRules``
into token authenticators.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .authenticators import JwtSvidAuthenticator
from .conditions import Condition, EnvoyHeader, EnvoyHost, Header, Port, RemoteIp, SourceIp
from .errors import ConfigurationError
from .keys import JwksUrl, KeySource, StaticJwks
from .matchers import (
    AllOf,
    AnyOf,
    Anyone,
    CertificateVerified,
    Matcher,
    Principal,
    RequestPrincipal,
    SidecarAsserted,
    _claim_value,
    _token_peer,
)
from .peer import Peer
from .policy import Policy
from .policy_files import PolicyFiles
from .rules import KNOWN_METHODS, Action, Rule

__all__ = [
    "IstioPolicyError",
    "IstioPolicyFiles",
    "istio_authenticators",
    "load_istio",
    "policy_from_documents",
]

logger = logging.getLogger("peer_middleware")

_API_VERSIONS = ("security.istio.io/v1", "security.istio.io/v1beta1")
_KINDS = ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")


class IstioPolicyError(ConfigurationError):
    """An Istio resource that cannot be loaded without widening; names the resource and field."""


# --------------------------------------------------------------------------
# YAML, strictly: duplicate keys are errors (PyYAML keeps the last silently).
# --------------------------------------------------------------------------


def _yaml_documents(text: str, where: str) -> list[Any]:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - the istio extra
        raise IstioPolicyError(
            "load_istio needs PyYAML: pip install 'peer-middleware[istio]'"
        ) from exc

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise IstioPolicyError(
                    f"{where}: duplicate key {key!r} (line {key_node.start_mark.line + 1})"
                )
            seen[key] = loader.construct_object(value_node, deep=deep)
        return seen

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc is not None]
    except yaml.YAMLError as exc:
        raise IstioPolicyError(f"{where}: malformed YAML: {exc}") from exc


# --------------------------------------------------------------------------
# Matchers Istio has that the package's own do not say the same way.
# --------------------------------------------------------------------------


def _glob(
    values: Iterable[str], what: str
) -> tuple[frozenset[str], tuple[str, ...], tuple[str, ...], bool]:
    """Istio's string match: exact values, ``prefix*``, ``*suffix``, ``*`` (any)."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    anything = False
    for value in values:
        stars = value.count("*")
        if value == "*":
            anything = True
        elif stars == 0:
            exact.add(value)
        elif stars == 1 and value.endswith("*"):
            prefixes.append(value[:-1])
        elif stars == 1 and value.startswith("*"):
            suffixes.append(value[1:])
        else:
            raise ConfigurationError(f"{what} {value!r}: '*' only first, last or alone")
    return frozenset(exact), tuple(prefixes), tuple(suffixes), anything


class _Namespaces(Matcher):
    """Istio's ``namespaces``: the peer's namespace, in any trust domain
    (exact, ``prefix*``, ``*suffix`` or ``*``, as Istio)."""

    __slots__ = ("_match", "names")

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        self._match = _glob(self.names, "namespace")

    def __call__(self, peer: Peer | None) -> bool:
        namespace = peer.spiffe_id.namespace if peer is not None else None
        if namespace is None:
            return False
        exact, prefixes, suffixes, anything = self._match
        return (
            anything
            or namespace in exact
            or (bool(prefixes) and namespace.startswith(prefixes))
            or (bool(suffixes) and namespace.endswith(suffixes))
        )

    def describe(self) -> str:
        return f"IstioNamespaces({', '.join(repr(n) for n in sorted(self.names))})"


class _ClaimIn(Matcher):
    """Istio's ``request.auth.claims[...]``: a string claim equal to, or a list claim
    holding, one of the values."""

    __slots__ = ("path", "values")

    def __init__(self, path: tuple[str, ...], values: Iterable[str]) -> None:
        self.path = path
        self.values = frozenset(values)
        for value in self.values:
            if "*" in value:
                raise ConfigurationError(
                    f"claim value {value!r}: a '*' in a claim value is not evaluated here"
                )

    def __call__(self, peer: Peer | None) -> bool:
        token = _token_peer(peer)
        if token is None:
            return False
        value = _claim_value(token.claims, self.path, False)
        if isinstance(value, str):
            return value in self.values
        if isinstance(value, list):
            return any(isinstance(v, str) and v in self.values for v in value)
        return False

    def describe(self) -> str:
        values = ", ".join(repr(v) for v in sorted(self.values))
        return f"IstioClaim({'.'.join(self.path)!r}, {values})"


# --------------------------------------------------------------------------
# Resources to rules.
# --------------------------------------------------------------------------


class _Resource:
    def __init__(self, doc: Any, where: str) -> None:
        if not isinstance(doc, dict):
            raise IstioPolicyError(f"{where}: a document must be a mapping")
        self.where = where
        self.kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise IstioPolicyError(f"{where}: metadata.name is required")
        self.name: str = meta["name"]
        self.namespace: str = meta.get("namespace") or "default"
        self.label = f"{self.kind} {self.namespace}/{self.name}"
        self._check_keys(doc, {"apiVersion", "kind", "metadata", "spec"}, "")
        if doc.get("apiVersion") not in _API_VERSIONS:
            self.fail("apiVersion", f"must be one of {', '.join(_API_VERSIONS)}")
        if self.kind not in _KINDS:
            self.fail("kind", f"must be one of {', '.join(_KINDS)}")
        spec = doc.get("spec")
        if spec is None:
            if "spec" in doc:
                self.fail("spec", "has no value (a file cut short?)")
            spec = {}
        if not isinstance(spec, dict):
            self.fail("spec", "must be a mapping")
        self.spec: dict[str, Any] = spec

    def fail(self, field: str, message: str) -> None:
        raise IstioPolicyError(f"{self.label} ({self.where}): {field}: {message}")

    def _check_keys(self, value: Any, allowed: set[str], field: str) -> None:
        if not isinstance(value, dict):
            self.fail(field or "(document)", "must be a mapping")
        for key in value:
            if key not in allowed:
                where = f"{field}.{key}" if field else str(key)
                self.fail(where, "unknown or unsupported field (never ignored)")

    def strings(self, value: Any, field: str) -> list[str]:
        if not isinstance(value, list) or not value:
            self.fail(field, "must be a non-empty list of strings")
        for item in value:
            if not isinstance(item, str) or not item:
                self.fail(field, f"{item!r} is not a non-empty string")
        return list(value)

    def selects(self, namespace: str, labels: Mapping[str, str], root: str) -> bool:
        if self.namespace not in (namespace, root):
            return False
        selector = self.spec.get("selector")
        if selector is None:
            return True
        self._check_keys(selector, {"matchLabels"}, "spec.selector")
        wanted = selector.get("matchLabels") or {}
        if not isinstance(wanted, dict):
            self.fail("spec.selector.matchLabels", "must be a mapping")
        return all(labels.get(str(k)) == str(v) for k, v in wanted.items())


_SOURCE_FIELDS = {
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
}
_OPERATION_FIELDS = {
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
}
_CLAIM_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")
_HEADER_KEY = re.compile(r"request\.headers\[([^\[\]]+)\]")
_TEMPLATE = re.compile(r"\{\*\*?\}")


def _path(resource: _Resource, text: str, field: str) -> str:
    """An Istio path as a pattern of :mod:`peer_middleware.rules`, exactly as wide."""
    if text == "*":
        return "/**"
    if not text.startswith("/"):
        resource.fail(field, f"path {text!r} must start with '/' (or be '*')")
    if _TEMPLATE.search(text):
        parts = text[1:].split("/")
        out = []
        for index, part in enumerate(parts):
            if part == "{*}":
                out.append("*")
            elif part == "{**}":
                if index != len(parts) - 1:
                    resource.fail(field, f"path {text!r}: '{{**}}' must be the last operator")
                out.append("{rest:path}")  # zero or more segments, as Envoy
            elif "{" in part or "*" in part:
                resource.fail(field, f"path {text!r}: an operator must be a whole segment")
            else:
                out.append(part)
        return "/" + "/".join(out)
    if text.endswith("/*") and "*" not in text[:-1]:
        return text[:-1] + "{rest:path}"  # the prefix and anything after its slash
    if "*" in text:
        resource.fail(
            field,
            f"path {text!r}: only exact paths, '<prefix>/*' and the {{*}}/{{**}} templates "
            "can be evaluated here (a '*' inside a segment would be widened or narrowed)",
        )
    return text


class _Compiler:
    def __init__(self, *, trusted_hops: int) -> None:
        self.trusted_hops = trusted_hops

    def source(self, res: _Resource, source: Any, field: str) -> tuple[Matcher, list[Condition]]:
        res._check_keys(source, _SOURCE_FIELDS, field)
        who: list[Matcher] = []
        when: list[Condition] = []
        for key, value in source.items():
            values = res.strings(value, f"{field}.{key}")
            negate = key.startswith("not")
            try:
                made: Matcher | Condition
                base = key[3].lower() + key[4:] if negate else key
                if base == "principals":
                    made = Principal(*values)
                elif base == "requestPrincipals":
                    made = RequestPrincipal(*values)
                elif base == "namespaces":
                    made = _Namespaces(values)
                elif base == "ipBlocks":
                    made = SourceIp(*values)
                else:
                    made = RemoteIp(*values, trusted_hops=self.trusted_hops)
            except ConfigurationError as exc:
                res.fail(f"{field}.{key}", str(exc))
            if isinstance(made, Matcher):
                who.append(~made if negate else made)
            else:
                when.append(~made if negate else made)
        return _all(who), when

    def operation(
        self, res: _Resource, operation: Any, field: str, action: Action
    ) -> tuple[frozenset[str] | None, list[str], list[Condition]]:
        res._check_keys(operation, _OPERATION_FIELDS, field)
        methods: frozenset[str] | None = None
        paths = ["/**"]
        when: list[Condition] = []
        for key, value in operation.items():
            values = res.strings(value, f"{field}.{key}")
            where = f"{field}.{key}"
            try:
                if key == "methods":
                    methods = frozenset(values) if methods is None else methods & set(values)
                elif key == "notMethods":
                    if action is not Action.ALLOW:
                        res.fail(
                            where,
                            "in a DENY or AUDIT rule it would miss methods outside the registry",
                        )
                    rest = KNOWN_METHODS - set(values)
                    methods = rest if methods is None else methods & rest
                elif key == "paths":
                    paths = [_path(res, v, where) for v in values]
                elif key == "notPaths":
                    res.fail(where, "cannot be evaluated here; write a DENY rule with 'paths'")
                elif key == "hosts":
                    when.append(EnvoyHost(*values))
                elif key == "notHosts":
                    when.append(~EnvoyHost(*values))
                else:
                    ports = [_port(res, v, where) for v in values]
                    when.append(Port(*ports) if key == "ports" else ~Port(*ports))
            except ConfigurationError as exc:
                if isinstance(exc, IstioPolicyError):
                    raise
                res.fail(where, str(exc))
        return methods, paths, when

    def condition(
        self, res: _Resource, item: Any, field: str
    ) -> tuple[list[Matcher], list[Condition]]:
        res._check_keys(item, {"key", "values", "notValues"}, field)
        key = item.get("key")
        if not isinstance(key, str):
            res.fail(f"{field}.key", "is required")
        if "values" not in item and "notValues" not in item:
            res.fail(field, "needs values or notValues")
        who: list[Matcher] = []
        when: list[Condition] = []
        for name in ("values", "notValues"):
            if name not in item:
                continue
            values = res.strings(item[name], f"{field}.{name}")
            negate = name == "notValues"
            where = f"{field} (key {key})"
            try:
                made = self._when(res, key, values, where)
            except ConfigurationError as exc:
                if isinstance(exc, IstioPolicyError):
                    raise
                res.fail(where, str(exc))
            if isinstance(made, Matcher):
                who.append(~made if negate else made)
            else:
                when.append(~made if negate else made)
        return who, when

    def _when(self, res: _Resource, key: str, values: list[str], where: str) -> Matcher | Condition:
        header = _HEADER_KEY.fullmatch(key)
        if header is not None:
            if "*" in values:
                # Istio's "*" is a presence match: present, even empty.
                return Header(header.group(1))
            return EnvoyHeader(header.group(1), *values)
        claims = _CLAIM_KEY.fullmatch(key)
        if claims is not None:
            path = tuple(part for part in re.findall(r"\[([^\[\]]+)\]", claims.group(1)))
            return _ClaimIn(path, values)
        if key == "source.ip":
            return SourceIp(*values)
        if key == "remote.ip":
            return RemoteIp(*values, trusted_hops=self.trusted_hops)
        if key == "source.namespace":
            return _Namespaces(values)
        if key == "source.principal":
            return Principal(*values)
        if key == "request.auth.principal":
            return RequestPrincipal(*values)
        if key == "request.auth.audiences":
            return _ClaimIn(("aud",), values)
        if key == "request.auth.presenter":
            return _ClaimIn(("azp",), values)
        if key == "destination.port":
            return Port(*[_port(res, v, where) for v in values])
        res.fail(where, f"key {key!r} cannot be evaluated here")
        raise AssertionError  # pragma: no cover - fail raises


def _port(res: _Resource, value: str, field: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= 65535:
        res.fail(field, f"port {value!r} must be a number from 1 to 65535")
    return int(value)


def _all(matchers: Sequence[Matcher]) -> Matcher:
    if not matchers:
        return Anyone()
    if len(matchers) == 1:
        return matchers[0]
    return AllOf(*matchers)


def _given(res: _Resource, raw: Mapping[str, Any], key: str, field: str) -> Any:
    """``raw[key]``, refusing a key written without a value (``from:`` and nothing
    after it): Istio reads it as absent, matching anything, and it is what a file
    cut short while it is written leaves."""
    if key in raw and raw[key] is None:
        res.fail(f"{field}.{key}" if field else key, "has no value (a file cut short?)")
    value = raw.get(key)
    if isinstance(value, list):
        for index, item in enumerate(value):
            if item is None:
                res.fail(f"{field}.{key}[{index}]", "has no value (a file cut short?)")
    return value


def _authorization(res: _Resource, compiler: _Compiler) -> tuple[Action, list[Rule]]:
    spec = res.spec
    res._check_keys(spec, {"selector", "action", "rules"}, "spec")
    action_name = spec.get("action", "ALLOW")
    if action_name == "CUSTOM":
        res.fail("spec.action", "CUSTOM (an external authorizer) cannot be evaluated here")
    actions = {"ALLOW": Action.ALLOW, "DENY": Action.DENY, "AUDIT": Action.AUDIT}
    if action_name not in actions:
        res.fail("spec.action", f"{action_name!r} must be ALLOW, DENY or AUDIT")
    action = actions[action_name]
    raw_rules = _given(res, spec, "rules", "spec") or []
    if not isinstance(raw_rules, list):
        res.fail("spec.rules", "must be a list")
    rules: list[Rule] = []
    for index, raw in enumerate(raw_rules):
        field = f"spec.rules[{index}]"
        res._check_keys(raw, {"from", "to", "when"}, field)
        sources: list[tuple[Matcher, list[Condition]]] = []
        for j, item in enumerate(_given(res, raw, "from", field) or [None]):
            if item is None:
                sources.append((Anyone(), []))
                continue
            res._check_keys(item, {"source"}, f"{field}.from[{j}]")
            source = _given(res, item, "source", f"{field}.from[{j}]")
            sources.append(compiler.source(res, source or {}, f"{field}.from[{j}].source"))
        operations: list[tuple[frozenset[str] | None, list[str], list[Condition]]] = []
        for k, item in enumerate(_given(res, raw, "to", field) or [None]):
            if item is None:
                operations.append((None, ["/**"], []))
                continue
            res._check_keys(item, {"operation"}, f"{field}.to[{k}]")
            operation = _given(res, item, "operation", f"{field}.to[{k}]")
            operations.append(
                compiler.operation(res, operation or {}, f"{field}.to[{k}].operation", action)
            )
        who_when: list[Matcher] = []
        cond_when: list[Condition] = []
        for c, item in enumerate(_given(res, raw, "when", field) or []):
            matchers, conds = compiler.condition(res, item, f"{field}.when[{c}]")
            who_when.extend(matchers)
            cond_when.extend(conds)
        for j, (who, source_conditions) in enumerate(sources):
            for k, (methods, paths, operation_conditions) in enumerate(operations):
                if methods is not None and not methods:
                    continue  # no method left: the pair matches nothing
                name = f"istio:{res.namespace}/{res.name}/rules[{index}]"
                if len(sources) > 1 or len(operations) > 1:
                    name += f"/from[{j}]/to[{k}]"
                try:
                    rules.append(
                        Rule.build(
                            action,
                            name,
                            _all([who, *who_when]) if who_when else who,
                            methods=sorted(methods) if methods is not None else None,
                            paths=paths,
                            when=[*source_conditions, *operation_conditions, *cond_when],
                        )
                    )
                except ConfigurationError as exc:
                    res.fail(field, str(exc))
    return action, rules


_MTLS_MODES = ("UNSET", "STRICT", "PERMISSIVE", "DISABLE")


def _mode(res: _Resource, value: Any, field: str) -> str:
    if value is None:
        return "UNSET"
    res._check_keys(value, {"mode"}, field)
    mode = value.get("mode", "UNSET")
    if mode not in _MTLS_MODES:
        res.fail(f"{field}.mode", f"{mode!r} must be one of {', '.join(_MTLS_MODES)}")
    return str(mode)


def _peer_authentication(resources: list[_Resource], root: str) -> list[Rule]:
    """The DENY rules of the PeerAuthentication resources that select the workload.

    As Istio: the workload's own (with a selector) over its namespace's over
    the mesh's (root namespace), a level whose mode is UNSET inheriting the
    one above, PERMISSIVE by default. Several resources at one level (Istio
    takes the oldest, which files cannot tell): the strictest. STRICT is a
    DENY of every caller not proven by a certificate; ``portLevelMtls``
    (workload level only, as in Istio) sets the mode of one port.
    """
    levels: list[list[tuple[_Resource, str]]] = [[], [], []]  # mesh, namespace, workload
    ports: dict[int, str] = {}
    for res in resources:
        spec = res.spec
        res._check_keys(spec, {"selector", "mtls", "portLevelMtls"}, "spec")
        selected = spec.get("selector") is not None
        if selected and res.namespace == root:
            res.fail("spec.selector", "a selector in the root namespace is not evaluated here")
        level = 2 if selected else (0 if res.namespace == root else 1)
        levels[level].append((res, _mode(res, _given(res, spec, "mtls", "spec"), "spec.mtls")))
        by_port = _given(res, spec, "portLevelMtls", "spec") or {}
        if not isinstance(by_port, dict):
            res.fail("spec.portLevelMtls", "must be a mapping of port to mtls")
        if by_port and not selected:
            res.fail("spec.portLevelMtls", "needs a selector (as in Istio)")
        for raw, value in by_port.items():
            if value is None:
                res.fail(f"spec.portLevelMtls[{raw}]", "has no value (a file cut short?)")
            number = _port(res, str(raw), f"spec.portLevelMtls[{raw}]")
            mode = _mode(res, value, f"spec.portLevelMtls[{raw}]")
            if mode != "UNSET" and ports.get(number) != "STRICT":
                ports[number] = mode
    mode = "PERMISSIVE"
    names: list[str] = []
    for found in levels:
        modes = {m for _, m in found if m != "UNSET"}
        if modes:
            mode = "STRICT" if "STRICT" in modes else sorted(modes)[0]
            names = [f"{r.namespace}/{r.name}" for r, m in found if m != "UNSET"]
    proven = AnyOf(CertificateVerified(), SidecarAsserted())
    rules: list[Rule] = []
    if mode == "STRICT":
        own = sorted(ports)
        rules.append(
            Rule.build(
                Action.DENY,
                f"istio:{names[0]}/strict",
                ~proven,
                when=[~Port(*own)] if own else [],
            )
        )
    for number, port_mode in sorted(ports.items()):
        if port_mode == "STRICT":
            rules.append(
                Rule.build(Action.DENY, f"istio:port {number}/strict", ~proven, when=Port(number))
            )
    return rules


def _files(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    # Any case (DENY.YAML is not skipped); JSON is YAML too.
                    if p.suffix.lower() in (".yaml", ".yml", ".json")
                    and not p.name.startswith(".")
                    and p.is_file()
                )
            )
        else:
            found.append(path)
    return found


def policy_from_documents(
    documents: Iterable[tuple[str, Any]],
    *,
    namespace: str,
    labels: Mapping[str, str] | None = None,
    root_namespace: str = "istio-system",
    trusted_hops: int = 0,
) -> Policy:
    """The policy of parsed resources (``(where, document)`` pairs); see :func:`load_istio`."""
    compiler = _Compiler(trusted_hops=trusted_hops)
    labels = dict(labels or {})
    seen: set[tuple[str, str, str]] = set()
    deny: list[Rule] = []
    allow: list[Rule] = []
    audit: list[Rule] = []
    peer_authentications: list[_Resource] = []
    allow_policies = 0
    for where, document in documents:
        res = _Resource(document, where)
        key = (str(res.kind), res.namespace, res.name)
        if key in seen:
            res.fail("metadata.name", "two resources have this kind, namespace and name")
        seen.add(key)
        if not res.selects(namespace, labels, root_namespace):
            continue
        if res.kind == "PeerAuthentication":
            peer_authentications.append(res)
            continue
        if res.kind == "RequestAuthentication":
            continue  # authenticators, not rules: istio_authenticators()
        action, rules = _authorization(res, compiler)
        if action is Action.ALLOW:
            allow_policies += 1
            allow.extend(rules)
        elif action is Action.DENY:
            deny.extend(rules)
        else:
            audit.extend(rules)
    strict = _peer_authentication(peer_authentications, root_namespace)
    rules = [*strict, *deny, *allow, *audit]
    if allow_policies == 0:
        # Istio: with no ALLOW policy for the workload, every request not denied is allowed.
        rules.append(Rule.build(Action.ALLOW, "istio:(no ALLOW policy)", Anyone()))
    return Policy(rules)


def _read_documents(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[tuple[str, Any]]:
    documents: list[tuple[str, Any]] = []
    for path in _files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise IstioPolicyError(f"{path}: cannot be read: {exc}") from exc
        for index, document in enumerate(_yaml_documents(text, str(path))):
            documents.append((f"{path} document {index + 1}", document))
    return documents


_JWT_RULE_FIELDS = {
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "fromHeaders",
    "fromParams",
    # What Istio forwards to the app once verified: nothing to evaluate here.
    "outputPayloadToHeader",
    "outputClaimToHeaders",
    "forwardOriginalToken",
}


def _jwt_rule(
    res: _Resource, rule: Any, field: str, options: Mapping[str, Any]
) -> JwtSvidAuthenticator:
    res._check_keys(rule, _JWT_RULE_FIELDS, field)
    issuer = rule.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        res.fail(f"{field}.issuer", "is required")
    audiences = res.strings(rule.get("audiences"), f"{field}.audiences (required here)")
    keys: KeySource
    if ("jwks" in rule) == ("jwksUri" in rule):
        res.fail(field, "needs exactly one of jwks and jwksUri")
    try:
        if "jwks" in rule:
            if not isinstance(rule["jwks"], str):
                res.fail(f"{field}.jwks", "must be a JWKS document as a string")
            keys = StaticJwks(json.loads(rule["jwks"]), issuer=issuer)
        else:
            keys = JwksUrl(rule["jwksUri"], issuer=issuer, **options)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, IstioPolicyError):
            raise
        res.fail(f"{field}.jwks", str(exc))
    header: str | None = None
    headers = rule.get("fromHeaders")
    if headers is not None:
        if not isinstance(headers, list) or not headers:
            res.fail(f"{field}.fromHeaders", "must be a non-empty list")
        names = []
        for h, item in enumerate(headers):
            where = f"{field}.fromHeaders[{h}]"
            res._check_keys(item, {"name", "prefix"}, where)
            name = item.get("name")
            if not isinstance(name, str) or not name:
                res.fail(f"{where}.name", "is required")
            if item.get("prefix", "").lower() not in ("", "bearer "):
                res.fail(f"{where}.prefix", "only 'Bearer ' (or none) can be read here")
            names.append(name.lower())
        others = [n for n in names if n != "authorization"]
        if "authorization" not in names or len(others) > 1:
            res.fail(
                f"{field}.fromHeaders",
                "the token is always read from Authorization here, and from at most one "
                "other header: list Authorization and at most one more",
            )
        header = others[0] if others else None
    query: str | None = None
    params = rule.get("fromParams")
    if params is not None:
        values = res.strings(params, f"{field}.fromParams")
        if len(values) > 1:
            res.fail(f"{field}.fromParams", "at most one query parameter can be read here")
        query = values[0]
    try:
        return JwtSvidAuthenticator(
            keys=keys,
            audience=audiences,
            issuers=issuer,
            header=header,
            query_parameter=query,
            name=f"istio:{res.namespace}/{res.name}",
        )
    except ConfigurationError as exc:
        res.fail(field, str(exc))
        raise  # pragma: no cover - fail raises


def istio_authenticators(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    namespace: str,
    labels: Mapping[str, str] | None = None,
    root_namespace: str = "istio-system",
    jwks_options: Mapping[str, Any] | None = None,
) -> list[JwtSvidAuthenticator]:
    """Token authenticators for the ``RequestAuthentication`` resources that apply.

    Each ``jwtRules`` entry becomes a :class:`JwtSvidAuthenticator` (the
    token's ``sub`` must be a SPIFFE ID; other tokens are refused with 401,
    never let through): ``issuer``, ``audiences`` (required here: the
    verifier needs one), ``jwks`` or ``jwksUri`` (a :class:`JwksUrl` built
    with ``jwks_options``), ``fromHeaders`` (Authorization and at most one
    more header) and ``fromParams`` (at most one). ``fromCookies`` and
    ``targetRef`` are refused.
    """
    labels = dict(labels or {})
    found: list[JwtSvidAuthenticator] = []
    seen: set[tuple[str, str]] = set()
    for where, document in _read_documents(paths):
        res = _Resource(document, where)
        if res.kind != "RequestAuthentication":
            continue
        if (res.namespace, res.name) in seen:
            res.fail("metadata.name", "two resources have this kind, namespace and name")
        seen.add((res.namespace, res.name))
        if not res.selects(namespace, labels, root_namespace):
            continue
        res._check_keys(res.spec, {"selector", "jwtRules"}, "spec")
        rules = res.spec.get("jwtRules") or []
        if not isinstance(rules, list):
            res.fail("spec.jwtRules", "must be a list")
        for index, rule in enumerate(rules):
            found.append(_jwt_rule(res, rule, f"spec.jwtRules[{index}]", jwks_options or {}))
    return found


def load_istio(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    namespace: str,
    labels: Mapping[str, str] | None = None,
    root_namespace: str = "istio-system",
    trusted_hops: int = 0,
) -> Policy:
    """The policy of the Istio resources in ``paths`` that apply to this workload.

    ``namespace`` and ``labels`` describe the workload (its pod's namespace
    and labels); resources of ``root_namespace`` apply mesh-wide.
    ``trusted_hops`` is Istio's ``numTrustedProxies`` for ``remoteIpBlocks``
    and ``remote.ip``. Raises :class:`IstioPolicyError` (a
    :class:`~peer_middleware.errors.ConfigurationError`) for anything it
    cannot evaluate, naming the resource and the field.
    """
    return policy_from_documents(
        _read_documents(paths),
        namespace=namespace,
        labels=labels,
        root_namespace=root_namespace,
        trusted_hops=trusted_hops,
    )


class IstioPolicyFiles(PolicyFiles):
    """Istio resources re-read when they change, swapped into a guard as a whole.

    The arguments of :func:`load_istio`, and ``interval`` (seconds between
    checks, ``None`` for none; see :class:`~peer_middleware.policy_files.PolicyFiles`).
    ``bind(guard)`` gives the guard the policy now (its route rules kept);
    a set of files that fails to load keeps the last good policy and logs
    why. The adapters pass what a new policy reads from their next request on.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        namespace: str,
        labels: Mapping[str, str] | None = None,
        root_namespace: str = "istio-system",
        trusted_hops: int = 0,
        interval: float | None = 5.0,
    ) -> None:
        super().__init__(
            paths,
            lambda: load_istio(
                paths,
                namespace=namespace,
                labels=labels,
                root_namespace=root_namespace,
                trusted_hops=trusted_hops,
            ),
            subject=f"Istio policies {paths!r}",
            interval=interval,
        )
