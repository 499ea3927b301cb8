"""Consul service mesh: SPIFFE IDs of Consul services, and ``service-intentions`` as a policy.

Consul gives each service instance the SPIFFE ID
``spiffe://<trust domain>/ns/<namespace>/dc/<datacenter>/svc/<service>``
(``/ap/<partition>`` first outside the default admin partition), the trust
domain being ``<cluster id>.consul``. :class:`ConsulService` matches them::

    allow("web", ConsulService("web", trust_domain="7f3c...a1.consul"), paths="/api/**")

:func:`load_consul` reads ``service-intentions`` config entries (HCL, as
``consul config write`` takes them, or JSON; one entry per file, or a
directory of ``*.hcl``/``*.json`` files) for one destination service and
compiles them with Consul's semantics: the source of highest precedence that
matches the caller decides (an exact name before ``*``, an exact namespace
before ``*``); its L4 ``Action``, or the first of its L7 ``Permissions`` that
matches the request; a request no intention allows is refused (Consul's
default-deny). Anything that cannot be evaluated in the app (``PathRegex``,
``Regex`` headers, ``JWT``, ``Peer``, ``SamenessGroup``, an unknown field, a
duplicate key, an allow permission before a deny one, whose first-match
order the compiled policy could not keep) is a :class:`ConsulConfigError`
naming the entry and the field. HCL needs ``pip install 'peer-middleware[consul]'``.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .conditions import Condition, EnvoyHeader, Header
from .errors import ConfigurationError
from .matchers import AllOf, Matcher, Not
from .peer import Peer
from .policy import Policy
from .policy_files import PolicyFiles
from .rules import Action, Rule
from .spiffe import configured_trust_domain

__all__ = [
    "ConsulConfigError",
    "ConsulPolicyFiles",
    "ConsulService",
    "consul_identity",
    "load_consul",
]


class ConsulConfigError(ConfigurationError):
    """A Consul config entry that cannot be loaded without widening; names the entry and field."""


def consul_identity(path: str) -> tuple[str, str, str, str] | None:
    """(partition, namespace, datacenter, service) of a Consul SPIFFE ID path, else ``None``."""
    parts = path.split("/")
    if parts[:1] != [""]:
        return None
    parts = parts[1:]
    partition = "default"
    if len(parts) == 8 and parts[0] == "ap":
        partition = parts[1]
        parts = parts[2:]
    if len(parts) != 6 or parts[0] != "ns" or parts[2] != "dc" or parts[4] != "svc":
        return None
    return partition, parts[1], parts[3], parts[5]


class ConsulService(Matcher):
    """Peers that are one of the Consul services ``names`` (``"*"``: any service).

    ``namespace`` (``"*"``: any) and ``partition`` are Consul Enterprise's,
    ``"default"`` otherwise; ``datacenter`` ``None`` means any datacenter.
    The trust domain is required (``<cluster id>.consul``): it tells two
    Consul clusters apart.
    """

    __slots__ = ("datacenter", "names", "namespace", "partition", "trust_domain")

    def __init__(
        self,
        *names: str,
        trust_domain: str,
        namespace: str = "default",
        partition: str = "default",
        datacenter: str | None = None,
    ) -> None:
        if not names or not all(isinstance(n, str) and n and "/" not in n for n in names):
            raise ConfigurationError("ConsulService() needs one or more service names")
        for label, value in (("namespace", namespace), ("partition", partition)):
            if not isinstance(value, str) or not value or "/" in value:
                raise ConfigurationError(f"ConsulService {label} {value!r} is not a name")
        configured_trust_domain(trust_domain)
        self.names = frozenset(names)
        self.trust_domain = trust_domain
        self.namespace = namespace
        self.partition = partition
        self.datacenter = datacenter

    def __call__(self, peer: Peer | None) -> bool:
        if peer is None or peer.spiffe_id.trust_domain != self.trust_domain:
            return False
        found = consul_identity(peer.spiffe_id.path)
        if found is None:
            return False
        partition, namespace, datacenter, service = found
        return (
            partition == self.partition
            and (self.namespace == "*" or namespace == self.namespace)
            and (self.datacenter is None or datacenter == self.datacenter)
            and ("*" in self.names or service in self.names)
        )

    def describe(self) -> str:
        names = ", ".join(repr(n) for n in sorted(self.names))
        extra = "" if self.namespace == "default" else f", namespace={self.namespace!r}"
        if self.partition != "default":
            extra += f", partition={self.partition!r}"
        if self.datacenter is not None:
            extra += f", datacenter={self.datacenter!r}"
        return f"ConsulService({names}{extra})"


# --------------------------------------------------------------------------
# Reading config entries, strictly.
# --------------------------------------------------------------------------


def _no_duplicate_keys_json(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ConsulConfigError(f"duplicate key {key!r}")
        found[key] = value
    return found


def _hcl_duplicates(text: str, where: str) -> None:
    """Refuse a key given twice in one object (pyhcl would keep the last silently)."""
    lexer = importlib.import_module("hcl.lexer").Lexer()
    lexer.input(text)
    # Each frame: [kind, keys seen, state]; kind "object" or "list".
    stack: list[list[Any]] = [["object", set(), "key"]]
    while True:
        token = lexer.token()
        if token is None:
            return
        kind = token.type
        frame = stack[-1]
        if frame[0] == "list":
            if kind == "LEFTBRACE":
                stack.append(["object", set(), "key"])
            elif kind == "LEFTBRACKET":
                stack.append(["list", None, None])
            elif kind == "RIGHTBRACKET":
                stack.pop()
                stack[-1][2] = "key"
            continue
        state = frame[2]
        if state == "key":
            if kind in ("IDENTIFIER", "STRING"):
                if token.value in frame[1]:
                    raise ConsulConfigError(f"{where}: duplicate key {token.value!r}")
                frame[1].add(token.value)
                frame[2] = "after"
            elif kind == "RIGHTBRACE":
                stack.pop()
                if stack:
                    stack[-1][2] = "key"
        elif state == "after":
            if kind in ("EQUAL", "COLON"):
                frame[2] = "value"
            elif kind == "LEFTBRACE":  # a block
                stack.append(["object", set(), "key"])
        elif kind == "LEFTBRACE":
            stack.append(["object", set(), "key"])
        elif kind == "LEFTBRACKET":
            stack.append(["list", None, None])
        elif kind != "MINUS":
            frame[2] = "key"


def _entries(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Any]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    # Any case: a DENY.JSON is not skipped.
                    if p.suffix.lower() in (".hcl", ".json")
                    and p.is_file()
                    and not p.name.startswith(".")
                )
            )
        else:
            files.append(path)
    entries: list[Any] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConsulConfigError(f"{path}: cannot be read: {exc}") from exc
        try:
            if path.suffix.lower() == ".json":
                document = json.loads(text, object_pairs_hook=_no_duplicate_keys_json)
            else:
                try:
                    hcl: Any = importlib.import_module("hcl")
                except ImportError as exc:  # pragma: no cover - the consul extra
                    raise ConsulConfigError(
                        "HCL config entries need pyhcl: pip install 'peer-middleware[consul]'"
                    ) from exc
                _hcl_duplicates(text, str(path))
                document = hcl.loads(text)
        except ConsulConfigError as exc:
            raise ConsulConfigError(f"{path}: {exc}") from exc
        except ValueError as exc:  # JSON and pyhcl both raise ValueError subclasses
            raise ConsulConfigError(f"{path}: malformed: {exc}") from exc
        for index, entry in enumerate(document if isinstance(document, list) else [document]):
            entries.append((f"{path} entry {index + 1}", entry))
    return entries


# --------------------------------------------------------------------------
# Compiling.
# --------------------------------------------------------------------------

_ENTRY_FIELDS = {"Kind", "Name", "Namespace", "Partition", "Meta", "Sources"}
_SOURCE_FIELDS = {
    "Name",
    "Namespace",
    "Partition",
    "Action",
    "Permissions",
    "Type",
    "Description",
    "Precedence",
    "LegacyID",
    "LegacyMeta",
    "LegacyCreateTime",
    "LegacyUpdateTime",
}
_HTTP_FIELDS = {"PathExact", "PathPrefix", "Methods", "Header"}
_HEADER_FIELDS = {"Name", "Present", "Exact", "Prefix", "Suffix", "Invert", "IgnoreCase"}


class _Entry:
    def __init__(self, where: str, document: Any) -> None:
        self.where = where
        if not isinstance(document, dict):
            raise ConsulConfigError(f"{where}: a config entry must be a mapping")
        self.name = document.get("Name")
        self.label = f"service-intentions {self.name!r} ({where})"
        if document.get("Kind") != "service-intentions":
            self.fail("Kind", "must be 'service-intentions'")
        if not isinstance(self.name, str) or not self.name:
            self.fail("Name", "is required")
        self.keys(document, _ENTRY_FIELDS, "")
        self.document = document

    def fail(self, field: str, message: str) -> None:
        raise ConsulConfigError(f"{self.label}: {field}: {message}")

    def keys(self, value: Any, allowed: set[str], field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(field or "(entry)", "must be a mapping")
        for key in value:
            if key not in allowed:
                where = f"{field}.{key}" if field else str(key)
                self.fail(where, "unknown or unsupported field (never ignored)")
        return dict(value)


def _text(entry: _Entry, value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        entry.fail(field, "must be a non-empty string")
    return str(value)


def _http(
    entry: _Entry, http: Any, field: str, allow: bool
) -> tuple[list[str], list[str] | None, list[Condition]]:
    entry.keys(http, _HTTP_FIELDS | {"PathRegex"}, field)
    if "PathRegex" in http:
        entry.fail(f"{field}.PathRegex", "regular expressions are not evaluated here")
    paths = ["/**"]
    if "PathExact" in http and "PathPrefix" in http:
        entry.fail(field, "give at most one of PathExact and PathPrefix")
    if "PathExact" in http:
        paths = [_text(entry, http["PathExact"], f"{field}.PathExact")]
    elif "PathPrefix" in http:
        prefix = _text(entry, http["PathPrefix"], f"{field}.PathPrefix")
        if prefix == "/":
            paths = ["/**"]
        elif prefix.endswith("/"):
            paths = [prefix + "{rest:path}"]
        else:
            entry.fail(
                f"{field}.PathPrefix",
                f"{prefix!r} is a prefix of any text ('{prefix}x' too); only a prefix ending "
                "in '/' can be evaluated exactly here",
            )
    methods = None
    if "Methods" in http:
        raw = http["Methods"]
        if not isinstance(raw, list) or not raw:
            entry.fail(f"{field}.Methods", "must be a non-empty list")
        methods = [_text(entry, m, f"{field}.Methods") for m in raw]
    conditions: list[Condition] = []
    for h, item in enumerate(http.get("Header") or []):
        where = f"{field}.Header[{h}]"
        entry.keys(item, _HEADER_FIELDS | {"Regex", "Contains"}, where)
        name = _text(entry, item.get("Name"), f"{where}.Name")
        if "Regex" in item or "Contains" in item:
            entry.fail(where, "Regex and Contains are not evaluated here")
        if item.get("IgnoreCase"):
            entry.fail(f"{where}.IgnoreCase", "case-insensitive values are not evaluated here")
        tests = [k for k in ("Present", "Exact", "Prefix", "Suffix") if k in item]
        if len(tests) != 1:
            entry.fail(where, "needs exactly one of Present, Exact, Prefix, Suffix")
        test = tests[0]
        try:
            if test == "Present":
                if item["Present"] is not True:
                    entry.fail(f"{where}.Present", "must be true")
                condition: Condition = Header(name)
            else:
                value = _text(entry, item[test], f"{where}.{test}")
                if "*" in value:
                    entry.fail(f"{where}.{test}", "a value with '*' is not evaluated here")
                pattern = {"Exact": value, "Prefix": value + "*", "Suffix": "*" + value}[test]
                condition = EnvoyHeader(name, pattern)
        except ConfigurationError as exc:
            if isinstance(exc, ConsulConfigError):
                raise
            entry.fail(where, str(exc))
        if item.get("Invert") and test == "Present" and allow:
            entry.fail(
                f"{where}.Invert",
                "an inverted Present in an allow permission would never match here (a "
                "negation never matches a missing header in an allow rule): deny the "
                "header's presence in a deny permission first",
            )
        conditions.append(~condition if item.get("Invert") else condition)
    return paths, methods, conditions


def _source_matcher(
    entry: _Entry, source: dict[str, Any], field: str, trust_domain: str
) -> Matcher:
    name = _text(entry, source.get("Name"), f"{field}.Name")
    namespace = source.get("Namespace", "default")
    partition = source.get("Partition", "default")
    try:
        return ConsulService(
            name, trust_domain=trust_domain, namespace=namespace, partition=partition
        )
    except ConfigurationError as exc:
        entry.fail(field, str(exc))
        raise  # pragma: no cover - fail raises


def _precedence(source: dict[str, Any]) -> int:
    # Consul: exact namespace and name first, then a wildcard name, then both wildcards.
    name_wild = source.get("Name") == "*"
    namespace_wild = source.get("Namespace", "default") == "*"
    return (1 if name_wild else 0) + (1 if namespace_wild else 0)


def _compile(entry: _Entry, trust_domain: str) -> list[Rule]:
    sources = entry.document.get("Sources") or []
    if not isinstance(sources, list):
        entry.fail("Sources", "must be a list")
    checked: list[tuple[int, dict[str, Any]]] = []
    for index, source in enumerate(sources):
        field = f"Sources[{index}]"
        for refused in ("Peer", "SamenessGroup"):
            if refused in source if isinstance(source, dict) else False:
                entry.fail(f"{field}.{refused}", "cluster peers are not evaluated here")
        entry.keys(source, _SOURCE_FIELDS, field)
        if source.get("Type", "consul") != "consul":
            entry.fail(f"{field}.Type", "only 'consul' sources are evaluated here")
        if ("Action" in source) == ("Permissions" in source):
            entry.fail(field, "needs exactly one of Action and Permissions")
        checked.append((index, source))
    checked.sort(key=lambda pair: _precedence(pair[1]))
    rules: list[Rule] = []
    earlier: list[Matcher] = []
    for index, source in checked:
        field = f"Sources[{index}]"
        matcher = _source_matcher(entry, source, field, trust_domain)
        # A caller an intention of higher precedence names is decided there.
        who: Matcher = AllOf(matcher, *(Not(m) for m in earlier)) if earlier else matcher
        earlier.append(matcher)
        base = f"consul:{entry.name}/{field}:{source['Name']}"
        if "Action" in source:
            rules.append(_rule(entry, source["Action"], f"{field}.Action", base, who))
            continue
        permissions = source["Permissions"]
        if not isinstance(permissions, list) or not permissions:
            entry.fail(f"{field}.Permissions", "must be a non-empty list")
        seen_allow = False
        for p, permission in enumerate(permissions):
            where = f"{field}.Permissions[{p}]"
            entry.keys(permission, {"Action", "HTTP", "JWT"}, where)
            if "JWT" in permission:
                entry.fail(f"{where}.JWT", "JWT requirements are not evaluated here")
            action = permission.get("Action")
            if action == "deny" and seen_allow:
                entry.fail(
                    where,
                    "a deny after an allow: Consul takes the first permission that matches, "
                    "which the compiled policy keeps only with deny permissions first",
                )
            seen_allow = seen_allow or action == "allow"
            paths, methods, conditions = (
                _http(entry, permission["HTTP"], f"{where}.HTTP", action == "allow")
                if "HTTP" in permission
                else (["/**"], None, [])
            )
            rules.append(
                _rule(
                    entry, action, f"{where}.Action", f"{base}/{p}", who, methods, paths, conditions
                )
            )
    return rules


def _rule(
    entry: _Entry,
    action: Any,
    field: str,
    name: str,
    who: Matcher,
    methods: Sequence[str] | None = None,
    paths: Sequence[str] = ("/**",),
    conditions: Sequence[Condition] = (),
) -> Rule:
    actions = {"allow": Action.ALLOW, "deny": Action.DENY}
    if action not in actions:
        entry.fail(field, f"{action!r} must be 'allow' or 'deny'")
    try:
        return Rule.build(actions[action], name, who, methods=methods, paths=paths, when=conditions)
    except ConfigurationError as exc:
        entry.fail(field.rsplit(".", 1)[0], str(exc))
        raise  # pragma: no cover - fail raises


def load_consul(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    service: str,
    trust_domain: str,
    namespace: str = "default",
    partition: str = "default",
) -> Policy:
    """The policy of the ``service-intentions`` entries in ``paths`` for ``service``.

    ``trust_domain`` is the Consul cluster's (``<cluster id>.consul``);
    ``namespace`` and ``partition`` those of ``service`` (Consul Enterprise).
    Raises :class:`ConsulConfigError` for anything it cannot evaluate.
    """
    configured_trust_domain(trust_domain)
    rules: list[Rule] = []
    found = False
    seen: set[tuple[str, str, str]] = set()
    for where, document in _entries(paths):
        entry = _Entry(where, document)
        key = (
            str(entry.name),
            document.get("Namespace", "default"),
            document.get("Partition", "default"),
        )
        if key in seen:
            entry.fail("Name", "two entries for one destination")
        seen.add(key)
        if key != (service, namespace, partition):
            continue
        found = True
        rules.extend(_compile(entry, trust_domain))
    if not found:
        raise ConsulConfigError(f"no service-intentions entry for {service!r} in {paths!r}")
    return Policy(rules)


class ConsulPolicyFiles(PolicyFiles):
    """``service-intentions`` entries re-read when they change, swapped into a guard.

    The arguments of :func:`load_consul`, and ``interval`` (seconds between
    checks, ``None`` for none). ``bind(guard)`` gives the guard the policy
    now; entries that fail to load keep the last good policy and log why.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        *,
        service: str,
        trust_domain: str,
        namespace: str = "default",
        partition: str = "default",
        interval: float | None = 5.0,
    ) -> None:
        super().__init__(
            paths,
            lambda: load_consul(
                paths,
                service=service,
                trust_domain=trust_domain,
                namespace=namespace,
                partition=partition,
            ),
            subject=f"Consul intentions {paths!r}",
            interval=interval,
        )
