"""Who may call what: matchers, rules and the compiled policy.

A :class:`Policy` is a list of named :class:`Rule` values, written in code
next to the app::

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

Every :class:`Decision` names the rule that decided and why.

Paths are matched against the normalised path (see :mod:`peer_middleware.paths`).
Patterns:

=====================  ===============================================
``/payments``          exactly that path (case-sensitive, no trailing slash)
``/payments/``         exactly that path, with its trailing slash
``/payments/*``        one more segment, any value
``/payments/**``       ``/payments`` itself and anything below it (a prefix
                       that respects segment boundaries: not ``/paymentsX``)
``/p/{id}``, ``/p/<id>``, ``/p/<int:id>``
                       route templates (FastAPI/Starlette and Flask styles):
                       one non-empty segment
``/p/{x:path}``        the rest after ``/p/``, possibly empty (as Starlette)
``/p/<path:x>``        one or more segments, the first non-empty (as Flask)
``/a/**/z``            a multi-segment wildcard may stand anywhere, once
=====================  ===============================================

The policy is compiled into a segment tree with rules indexed by method and by
the SPIFFE ID, trust domain and namespace they name, so deciding costs the
same with ten rules or ten thousand.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from .errors import ConfigurationError, InvalidSpiffeIdError
from .peer import Peer, Proof
from .spiffe import SCHEME_PREFIX, SpiffeId, configured_trust_domain

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
    "HasToken",
    "Issuer",
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
    "ServiceAccount",
    "SidecarAsserted",
    "TrustDomain",
    "Who",
    "allow",
    "audit",
    "deny",
]

_SEGMENT = re.compile(r"[a-zA-Z0-9._-]+")
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")


# --------------------------------------------------------------------------
# Matchers: who a rule applies to.
# --------------------------------------------------------------------------


class Who:
    """Base class of the matchers that say who a rule applies to.

    A matcher is called with the authenticated :class:`Peer`, or ``None`` for
    a request without identity, and returns whether it matches. Combine with
    ``|`` (any of), ``&`` (all of) and ``~`` (not).
    """

    __slots__ = ()

    def __call__(self, peer: Peer | None) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def index_keys(self) -> frozenset[tuple[str, str]] | None:
        """Keys such that the matcher matches exactly the peers having one of them.

        ``None`` when the matcher cannot be expressed that way; such rules are
        evaluated one by one.
        """
        return None

    def __or__(self, other: Who) -> Who:
        return AnyOf(self, other)

    def __and__(self, other: Who) -> Who:
        return AllOf(self, other)

    def __invert__(self) -> Who:
        return Not(self)

    def __repr__(self) -> str:
        return self.describe()


class Anyone(Who):
    """Every request, including one with no identity (health probes)."""

    __slots__ = ()

    def __call__(self, peer: Peer | None) -> bool:
        return True

    def describe(self) -> str:
        return "Anyone()"


class Authenticated(Who):
    """Any authenticated peer."""

    __slots__ = ()

    def __call__(self, peer: Peer | None) -> bool:
        return peer is not None

    def describe(self) -> str:
        return "Authenticated()"


def _principal_pattern(pattern: str) -> str:
    if not isinstance(pattern, str) or not pattern:
        raise ConfigurationError(f"principal pattern {pattern!r} must be a non-empty string")
    if pattern == "*":
        return pattern
    if "://" in pattern and not pattern.startswith(SCHEME_PREFIX):
        raise ConfigurationError(f"principal {pattern!r} is not a SPIFFE ID (spiffe://...)")
    if not pattern.startswith(SCHEME_PREFIX) and not pattern.startswith("*"):
        # Istio writes principals without the scheme: cluster.local/ns/a/sa/b.
        pattern = SCHEME_PREFIX + pattern
    return pattern


def _exact_spiffe_id(pattern: str, shown: str) -> str:
    try:
        return SpiffeId.parse(pattern).uri
    except InvalidSpiffeIdError as exc:
        raise ConfigurationError(f"principal {shown!r}: {exc}") from exc


class _Globs:
    """Istio-style string patterns: exact values, ``prefix*``, ``*suffix`` and ``*``.

    ``patterns`` pairs each pattern with the text the user wrote (for error
    messages). ``exact`` validates (and may canonicalise) an exact pattern; it
    raises :class:`ConfigurationError` for one it refuses. ``what`` names the
    patterns in error messages.
    """

    __slots__ = ("any", "exact", "prefixes", "suffixes")

    def __init__(
        self,
        patterns: Sequence[tuple[str, str]],
        what: str,
        exact: Callable[[str, str], str],
    ) -> None:
        exact_values: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        self.any = False
        for pattern, shown in patterns:
            stars = pattern.count("*")
            if pattern == "*":
                self.any = True
            elif stars == 0:
                exact_values.add(exact(pattern, shown))
            elif stars == 1 and pattern.endswith("*"):
                prefixes.append(pattern[:-1])
            elif stars == 1 and pattern.startswith("*"):
                suffixes.append(pattern[1:])
            else:
                raise ConfigurationError(
                    f"{what} {shown!r}: '*' is allowed only as the whole pattern, "
                    "its first character or its last character"
                )
        self.exact = frozenset(exact_values)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)

    @property
    def only_exact(self) -> bool:
        return not (self.any or self.prefixes or self.suffixes)

    def match(self, value: str) -> bool:
        if self.any or value in self.exact:
            return True
        if self.prefixes and value.startswith(self.prefixes):
            return True
        return bool(self.suffixes) and value.endswith(self.suffixes)


class Principal(Who):
    """Peers whose SPIFFE ID matches one of the patterns.

    A pattern is an exact SPIFFE ID (``spiffe://cluster.local/ns/shop/sa/checkout``
    or, as Istio writes it, ``cluster.local/ns/shop/sa/checkout``), a prefix
    glob (``spiffe://cluster.local/ns/shop/*``), a suffix glob (``*/sa/checkout``)
    or ``*`` (any authenticated peer). Exact IDs are validated when the matcher
    is built.
    """

    __slots__ = ("_globs", "patterns")

    def __init__(self, *patterns: str) -> None:
        if not patterns:
            raise ConfigurationError("Principal() needs at least one pattern")
        pairs = [(_principal_pattern(raw), raw) for raw in patterns]
        self.patterns = tuple(pattern for pattern, _ in pairs)
        self._globs = _Globs(pairs, "principal pattern", _exact_spiffe_id)

    def __call__(self, peer: Peer | None) -> bool:
        return peer is not None and self._globs.match(peer.spiffe_id.uri)

    def index_keys(self) -> frozenset[tuple[str, str]] | None:
        if not self._globs.only_exact:
            return None
        return frozenset(("id", uri) for uri in self._globs.exact)

    def describe(self) -> str:
        return f"Principal({', '.join(repr(p) for p in self.patterns)})"


class ServiceAccount(Principal):
    """The Kubernetes service account ``namespace/name`` of ``trust_domain``."""

    __slots__ = ()

    def __init__(self, name: str, *, namespace: str, trust_domain: str) -> None:
        for label, value in (("name", name), ("namespace", namespace)):
            if not isinstance(value, str) or _SEGMENT.fullmatch(value) is None:
                raise ConfigurationError(f"ServiceAccount {label} {value!r} is not a valid segment")
        try:
            sid = SpiffeId.for_service_account(trust_domain, namespace, name)
        except InvalidSpiffeIdError as exc:
            raise ConfigurationError(f"ServiceAccount: {exc}") from exc
        super().__init__(sid.uri)


class TrustDomain(Who):
    """Peers of any of the given trust domains (``cluster.local``)."""

    __slots__ = ("names",)

    def __init__(self, *names: str) -> None:
        if not names:
            raise ConfigurationError("TrustDomain() needs at least one name")
        for name in names:
            configured_trust_domain(name)
        self.names = frozenset(names)

    def __call__(self, peer: Peer | None) -> bool:
        return peer is not None and peer.spiffe_id.trust_domain in self.names

    def index_keys(self) -> frozenset[tuple[str, str]] | None:
        return frozenset(("td", name) for name in self.names)

    def describe(self) -> str:
        return f"TrustDomain({', '.join(repr(n) for n in sorted(self.names))})"


class Namespace(Who):
    """Peers in any of the given Kubernetes namespaces of ``trust_domain``.

    The trust domain is required: two clusters can both have a namespace
    called ``shop``, and only the trust domain tells their workloads apart.
    A peer has a namespace only when its SPIFFE ID path is exactly
    ``/ns/<namespace>/sa/<service account>``.
    """

    __slots__ = ("_keys", "names", "trust_domain")

    def __init__(self, *names: str, trust_domain: str) -> None:
        if not names:
            raise ConfigurationError("Namespace() needs at least one name")
        for name in names:
            if not isinstance(name, str) or _SEGMENT.fullmatch(name) is None:
                raise ConfigurationError(f"namespace {name!r} is not a valid path segment")
        configured_trust_domain(trust_domain)
        self.names = frozenset(names)
        self.trust_domain = trust_domain
        self._keys = frozenset(f"{trust_domain}/{name}" for name in names)

    def __call__(self, peer: Peer | None) -> bool:
        if peer is None:
            return False
        sid = peer.spiffe_id
        return sid.trust_domain == self.trust_domain and sid.namespace in self.names

    def index_keys(self) -> frozenset[tuple[str, str]] | None:
        return frozenset(("ns", key) for key in self._keys)

    def describe(self) -> str:
        names = ", ".join(repr(n) for n in sorted(self.names))
        return f"Namespace({names}, trust_domain={self.trust_domain!r})"


class ProvenBy(Who):
    """Peers whose identity was established in one of the given ways.

    ``ProvenBy(Proof.MTLS, Proof.FORWARDED_CERTIFICATE)`` requires a
    certificate verified by the app itself; combine with ``&``.
    """

    __slots__ = ("proofs",)

    def __init__(self, *proofs: Proof) -> None:
        if not proofs or not all(isinstance(p, Proof) for p in proofs):
            raise ConfigurationError("ProvenBy() needs one or more Proof values")
        self.proofs = frozenset(proofs)

    def __call__(self, peer: Peer | None) -> bool:
        return peer is not None and peer.proof in self.proofs

    def describe(self) -> str:
        return f"ProvenBy({', '.join(sorted(p.name for p in self.proofs))})"


class CertificateVerified(ProvenBy):
    """mTLS-grade identity: a client certificate verified by the app itself.

    The certificate came on this connection (:attr:`Proof.MTLS`) or was
    forwarded by a trusted proxy and verified against the trust bundle
    (:attr:`Proof.FORWARDED_CERTIFICATE`). A sidecar's word alone does not
    match. ``allow("pay", Namespace("shop") & CertificateVerified(), ...)``.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(Proof.MTLS, Proof.FORWARDED_CERTIFICATE)

    def describe(self) -> str:
        return "CertificateVerified()"


class SidecarAsserted(ProvenBy):
    """An identity a trusted sidecar asserted, its certificate checked by the sidecar only.

    :attr:`Proof.PROXY_ASSERTED`: for example the ``URI`` of Envoy's
    ``x-forwarded-client-cert`` with no ``Cert`` verified here. To accept a
    sidecar's word *or* better, write ``CertificateVerified() | SidecarAsserted()``.
    """

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(Proof.PROXY_ASSERTED)

    def describe(self) -> str:
        return "SidecarAsserted()"


def _check_matchers(name: str, matchers: Sequence[Who]) -> tuple[Who, ...]:
    if not matchers:
        raise ConfigurationError(f"{name}() needs at least one matcher")
    for matcher in matchers:
        if not isinstance(matcher, Who):
            raise ConfigurationError(f"{name}(): {matcher!r} is not a matcher")
    return tuple(matchers)


class AnyOf(Who):
    """Matches when any of the matchers does."""

    __slots__ = ("matchers",)

    def __init__(self, *matchers: Who) -> None:
        self.matchers = _check_matchers("AnyOf", matchers)

    def __call__(self, peer: Peer | None) -> bool:
        return any(m(peer) for m in self.matchers)

    def index_keys(self) -> frozenset[tuple[str, str]] | None:
        keys: set[tuple[str, str]] = set()
        for matcher in self.matchers:
            sub = matcher.index_keys()
            if sub is None:
                return None
            keys |= sub
        return frozenset(keys)

    def describe(self) -> str:
        return f"AnyOf({', '.join(m.describe() for m in self.matchers)})"


class AllOf(Who):
    """Matches when every matcher does."""

    __slots__ = ("matchers",)

    def __init__(self, *matchers: Who) -> None:
        self.matchers = _check_matchers("AllOf", matchers)

    def __call__(self, peer: Peer | None) -> bool:
        return all(m(peer) for m in self.matchers)

    def describe(self) -> str:
        return f"AllOf({', '.join(m.describe() for m in self.matchers)})"


class Not(Who):
    """Matches an *authenticated* peer that ``matcher`` does not match.

    A request without identity never matches a negation: "not the admin"
    must not include "somebody we know nothing about" (Istio's ``notPrincipals``
    has the same rule).
    """

    __slots__ = ("matcher",)

    def __init__(self, matcher: Who) -> None:
        self.matcher = _check_matchers("Not", (matcher,))[0]

    def __call__(self, peer: Peer | None) -> bool:
        return peer is not None and not self.matcher(peer)

    def describe(self) -> str:
        return f"Not({self.matcher.describe()})"


# --------------------------------------------------------------------------
# Token matchers: they look at the bearer token the peer presented (the
# token attached to a certificate peer, or the peer itself when a token was
# its only credential). A request without a token never matches them.
# --------------------------------------------------------------------------


def _token_peer(peer: Peer | None) -> Peer | None:
    if peer is None:
        return None
    if peer.proof is Proof.TOKEN:
        return peer
    return peer.token


def _issuer_subject(pattern: str, shown: str) -> str:
    if "/" not in pattern:
        raise ConfigurationError(f"request principal {pattern!r} must be '<issuer>/<subject>'")
    return pattern


class RequestPrincipal(Who):
    """Peers whose token's ``<iss>/<sub>`` matches one of the patterns.

    Istio's ``requestPrincipals``: ``"https://issuer.example/spiffe://td/ns/a/sa/b"``
    exactly, ``"https://issuer.example/*"`` (any subject of that issuer, a
    prefix glob), ``"*/system:serviceaccount:shop:cart"`` (a suffix glob) or
    ``"*"`` (any token with both claims).
    """

    __slots__ = ("_globs", "patterns")

    def __init__(self, *patterns: str) -> None:
        if not patterns:
            raise ConfigurationError("RequestPrincipal() needs at least one pattern")
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ConfigurationError(
                    f"request principal {pattern!r} must be a non-empty string"
                )
        self.patterns = tuple(patterns)
        self._globs = _Globs([(p, p) for p in self.patterns], "request principal", _issuer_subject)

    def __call__(self, peer: Peer | None) -> bool:
        token = _token_peer(peer)
        if token is None:
            return False
        issuer = token.issuer
        subject = token.subject
        if issuer is None or subject is None:
            return False
        return self._globs.match(f"{issuer}/{subject}")

    def describe(self) -> str:
        return f"RequestPrincipal({', '.join(repr(p) for p in self.patterns)})"


class Issuer(Who):
    """Peers whose token was issued by one of ``issuers`` (its verified ``iss``)."""

    __slots__ = ("issuers",)

    def __init__(self, *issuers: str) -> None:
        if not issuers or not all(isinstance(i, str) and i for i in issuers):
            raise ConfigurationError("Issuer() needs one or more non-empty strings")
        self.issuers = frozenset(issuers)

    def __call__(self, peer: Peer | None) -> bool:
        token = _token_peer(peer)
        return token is not None and token.issuer in self.issuers

    def describe(self) -> str:
        return f"Issuer({', '.join(repr(i) for i in sorted(self.issuers))})"


_UNSET = object()
_SCALARS = (str, int, float, bool)


def _claim_value(claims: object, path: tuple[str, ...], dotted: bool) -> object:
    # A dotted name is resolved greedily, longest key first, so that claim
    # names which themselves contain dots ("kubernetes.io") are found.
    if not dotted:
        value: object = claims
        for part in path:
            if not isinstance(value, Mapping) or part not in value:
                return _UNSET
            value = value[part]
        return value
    if not path:
        return claims
    if not isinstance(claims, Mapping):
        return _UNSET
    for cut in range(len(path), 0, -1):
        key = ".".join(path[:cut])
        if key in claims:
            found = _claim_value(claims[key], path[cut:], True)
            if found is not _UNSET:
                return found
    return _UNSET


class Claim(Who):
    """Peers whose token has claim ``name`` equal to, or containing, a value.

    ``name`` is a claim name; nested claims are written with dots
    (``"kubernetes.io.namespace"``; names containing dots are found) or as a
    tuple of names (``("kubernetes.io", "namespace")``). ``equals`` compares
    the whole value (same type: ``1`` never equals ``"1"`` or ``True``).
    ``contains`` matches a list claim holding the value, or a string claim
    of space-separated words holding it (OAuth's ``scope``). Give exactly one.
    """

    __slots__ = ("_dotted", "_path", "contains", "equals", "name")

    def __init__(
        self,
        name: str | tuple[str, ...],
        *,
        equals: str | int | float | bool | None = None,
        contains: str | None = None,
    ) -> None:
        if isinstance(name, str):
            if not name or any(not part for part in name.split(".")):
                raise ConfigurationError(f"claim name {name!r} must be non-empty dotted names")
            self._path = tuple(name.split("."))
            self._dotted = True
        elif isinstance(name, tuple) and name and all(isinstance(p, str) and p for p in name):
            self._path = name
            self._dotted = False
        else:
            raise ConfigurationError(f"claim name {name!r} must be a string or a tuple of strings")
        if (equals is None) == (contains is None):
            raise ConfigurationError("Claim() needs exactly one of equals= or contains=")
        if equals is not None and not isinstance(equals, _SCALARS):
            raise ConfigurationError("Claim(equals=...) must be a string, number or boolean")
        if contains is not None and (not isinstance(contains, str) or not contains):
            raise ConfigurationError("Claim(contains=...) must be a non-empty string")
        if contains is not None and any(c.isspace() for c in contains):
            raise ConfigurationError("Claim(contains=...) must be one word (no spaces)")
        self.name = name
        self.equals = equals
        self.contains = contains

    def __call__(self, peer: Peer | None) -> bool:
        token = _token_peer(peer)
        if token is None:
            return False
        value = _claim_value(token.claims, self._path, self._dotted)
        if value is _UNSET:
            return False
        if self.contains is not None:
            if isinstance(value, str):
                return self.contains in value.split()
            if isinstance(value, (list, tuple)):
                return any(isinstance(v, str) and v == self.contains for v in value)
            return False
        return type(value) is type(self.equals) and value == self.equals

    def describe(self) -> str:
        test = f"equals={self.equals!r}" if self.contains is None else f"contains={self.contains!r}"
        return f"Claim({self.name!r}, {test})"


class HasToken(Who):
    """Peers that presented a verified bearer token.

    ``ProvenBy(Proof.MTLS, Proof.FORWARDED_CERTIFICATE, Proof.PROXY_ASSERTED) & HasToken()``
    requires both a certificate identity and a token on the same request.
    """

    __slots__ = ()

    def __call__(self, peer: Peer | None) -> bool:
        return _token_peer(peer) is not None

    def describe(self) -> str:
        return "HasToken()"


class CertificateBound(Who):
    """Peers whose token is bound to the client certificate they presented (RFC 8705).

    The binding (``cnf`` ``x5t#S256``) is checked when the request is
    authenticated; this matcher makes it mandatory on a route, refusing
    unbound tokens and requests without a token.
    """

    __slots__ = ()

    def __call__(self, peer: Peer | None) -> bool:
        if peer is None or peer.token is None:
            return False
        bound = peer.token.certificate_sha256
        return bound is not None and bound == peer.certificate_sha256

    def describe(self) -> str:
        return "CertificateBound()"


# --------------------------------------------------------------------------
# Rules.
# --------------------------------------------------------------------------


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    AUDIT = "audit"


# Path pattern pieces: a literal segment is a str; these mark the others.
_ONE = object()  # exactly one segment, any value
_MANY0 = object()  # zero or more segments ("**")
_MANY1 = object()  # the rest after a slash, possibly empty ("{x:path}", as Starlette)
_MANY1N = object()  # one or more segments, the first not empty ("<path:x>", as Flask)

_BRACE = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<conv>[A-Za-z_]+))?\}")
_ANGLE = re.compile(
    r"<(?:(?P<conv>[A-Za-z_][A-Za-z0-9_]*)(?:\([^)<>]*\))?:)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>"
)
_LITERAL_FORBIDDEN = re.compile(r"[*{}<>;\\\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled path pattern (see the module docstring for the syntax)."""

    text: str
    segments: tuple[object, ...]

    @classmethod
    def compile(cls, text: str) -> PathPattern:
        if not isinstance(text, str) or not text.startswith("/"):
            raise ConfigurationError(f"path pattern {text!r} must be a string starting with '/'")
        parts = text[1:].split("/")
        segments: list[object] = []
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            template = _BRACE.fullmatch(part) or _ANGLE.fullmatch(part)
            if part == "**":
                segments.append(_MANY0)
            elif template is not None and template.group("conv") == "path":
                segments.append(_MANY1 if part.startswith("{") else _MANY1N)
            elif part == "*" or template is not None:
                segments.append(_ONE)
            elif part == "" and not last:
                raise ConfigurationError(f"path pattern {text!r} has an empty segment")
            elif part in (".", ".."):
                raise ConfigurationError(f"path pattern {text!r} has a dot segment")
            elif _LITERAL_FORBIDDEN.search(part):
                raise ConfigurationError(
                    f"path pattern {text!r}: segment {part!r} mixes wildcards or templates "
                    "with text, or has a character no normalised path contains"
                )
            else:
                segments.append(part)
        if sum(1 for s in segments if s is _MANY0 or s is _MANY1 or s is _MANY1N) > 1:
            raise ConfigurationError(
                f"path pattern {text!r} has more than one multi-segment wildcard"
            )
        return cls(text, tuple(segments))


def _as_tuple(value: str | Iterable[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigurationError(f"{what} must be a string or an iterable of strings") from None
    if not items:
        raise ConfigurationError(f"{what} is empty: the rule would never match")
    return items


@dataclass(frozen=True, slots=True)
class Rule:
    """A named rule. Build with :func:`allow`, :func:`deny` or :func:`audit`.

    ``methods`` ``None`` means any method; methods are upper-case HTTP tokens
    compared with the method exactly as sent. ``paths`` are patterns (see the
    module docstring); the default ``("/**",)`` is every path.
    """

    name: str
    action: Action
    who: Who
    methods: frozenset[str] | None = None
    paths: tuple[PathPattern, ...] = ()
    shadow: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError(f"rule name {self.name!r} must be a non-empty string")
        if not isinstance(self.action, Action):
            raise ConfigurationError(f"rule {self.name!r}: action must be an Action")
        if not isinstance(self.who, Who):
            raise ConfigurationError(f"rule {self.name!r}: who={self.who!r} is not a matcher")
        if not self.paths:
            raise ConfigurationError(f"rule {self.name!r} has no paths")

    @classmethod
    def build(
        cls,
        action: Action,
        name: str,
        who: Who,
        *,
        methods: str | Iterable[str] | None = None,
        paths: str | Iterable[str] = "/**",
        shadow: bool = False,
    ) -> Rule:
        method_items = _as_tuple(methods, f"rule {name!r} methods")
        method_set: frozenset[str] | None = None
        if method_items is not None:
            for method in method_items:
                if not isinstance(method, str) or _METHOD.fullmatch(method) is None:
                    raise ConfigurationError(
                        f"rule {name!r}: method {method!r} must be an upper-case HTTP token"
                    )
            method_set = frozenset(method_items)
        path_items = _as_tuple(paths, f"rule {name!r} paths") or ()
        compiled = tuple(PathPattern.compile(p) for p in path_items)
        return cls(name, action, who, method_set, compiled, bool(shadow))

    def describe(self) -> str:
        methods = "*" if self.methods is None else ",".join(sorted(self.methods))
        paths = ",".join(p.text for p in self.paths)
        shadow = " (shadow)" if self.shadow else ""
        return f"{self.action.value} {self.name!r}: {methods} {paths} {self.who.describe()}{shadow}"


def allow(
    name: str,
    who: Who,
    *,
    methods: str | Iterable[str] | None = None,
    paths: str | Iterable[str] = "/**",
    shadow: bool = False,
) -> Rule:
    """An ALLOW rule: ``who`` may call ``methods`` on ``paths``."""
    return Rule.build(Action.ALLOW, name, who, methods=methods, paths=paths, shadow=shadow)


def deny(
    name: str,
    who: Who,
    *,
    methods: str | Iterable[str] | None = None,
    paths: str | Iterable[str] = "/**",
    shadow: bool = False,
) -> Rule:
    """A DENY rule: ``who`` may not call ``methods`` on ``paths``; wins over ALLOW."""
    return Rule.build(Action.DENY, name, who, methods=methods, paths=paths, shadow=shadow)


def audit(
    name: str,
    who: Who,
    *,
    methods: str | Iterable[str] | None = None,
    paths: str | Iterable[str] = "/**",
) -> Rule:
    """An AUDIT rule: a match is logged at INFO and changes nothing."""
    return Rule.build(Action.AUDIT, name, who, methods=methods, paths=paths)


# --------------------------------------------------------------------------
# Decisions.
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a policy for one request.

    ``rule`` is the name of the rule that decided (``None`` when no rule
    matched and the default refusal applied); ``reason`` says why in words.
    ``status`` is 200 when allowed, else 401 or 403. ``dry_run`` is True when
    a shadow-mode policy let through a request it would have refused (then
    ``status``, ``rule`` and ``reason`` describe the refusal it would have
    made). ``shadow`` and ``audit`` list what shadow and audit rules said.
    """

    allowed: bool
    status: int
    rule: str | None
    reason: str
    dry_run: bool = False
    shadow: tuple[str, ...] = ()
    audit: tuple[str, ...] = ()
    #: True for an allow with no dry-run, shadow or audit news (logged at DEBUG).
    quiet: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        quiet = self.allowed and not (self.dry_run or self.shadow or self.audit)
        object.__setattr__(self, "quiet", quiet)

    @property
    def enforced_status(self) -> int:
        """The status the caller actually gets."""
        return 200 if self.allowed else self.status


NO_IDENTITY = Decision(False, 401, None, "no allow rule matched and the request has no identity")
NO_RULE = Decision(False, 403, None, "no allow rule matched this caller")


# --------------------------------------------------------------------------
# The compiled policy.
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    order: int
    rule: Rule
    decision: Decision


def _deny_matches(who: Who, peer: Peer | None) -> bool:
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
        self, peer: Peer | None, best: _Entry | None, deny: bool = False
    ) -> _Entry | None:
        if peer is not None and self.by_key:
            for key in peer.spiffe_id.match_keys:
                entries = self.by_key.get(key)
                if entries is not None:
                    candidate = entries[0]  # entries are in rule order
                    if best is None or candidate.order < best.order:
                        best = candidate
        for entry in self.scan:
            if best is not None and entry.order > best.order:
                break
            if _deny_matches(entry.rule.who, peer) if deny else entry.rule.who(peer):
                return entry
        return best

    def all_matches(self, peer: Peer | None, deny: bool = False) -> list[_Entry]:
        found: list[_Entry] = []
        if peer is not None:
            for key in peer.spiffe_id.match_keys:
                found.extend(self.by_key.get(key, ()))
        found.extend(
            entry
            for entry in self.scan
            if (_deny_matches(entry.rule.who, peer) if deny else entry.rule.who(peer))
        )
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
        attr = {_ONE: "one", _MANY0: "many0", _MANY1: "many1", _MANY1N: "many1n"}[segment]
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


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """A route of the app, as its framework dispatches requests to it.

    Rules declared on a route (FastAPI's and Flask's ``require``) are keyed by
    the :class:`Route` the framework integration resolves for each request,
    never by a path pattern: they apply to that route and to nothing else.
    Two routes are the same only if they are the same object. ``name``
    describes it in logs (``"GET /payments/{payment_id}"``).
    """

    name: str

    def __repr__(self) -> str:
        return f"Route({self.name!r})"


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

    __slots__ = ("_root", "_routes", "has_extras", "mode", "routes", "rules")

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
            entry = _Entry(order, rule, decision)
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
    ) -> Decision:
        """Decide a request. ``path`` must already be normalised.

        ``route`` is the route the framework dispatches the request to, when
        the caller knows it (``None``: no route, or not known); the rules
        declared on it allow the request when no central rule decided.
        ``plans`` is a memory for :meth:`plan` results.

        A DENY rule also refuses the methods a router may dispatch to the
        method it names: ``HEAD`` (and any method in lower case) is refused by
        a DENY rule for ``GET`` (for the upper-cased method). ALLOW rules still
        match only the method as sent.
        """
        decision = self._decide_as(method, path, peer, route, plans)
        if method in _DISPATCHED_AS_SENT or not decision.allowed or decision.dry_run:
            return decision
        upper = method.upper()
        aliases = [upper] if upper != method else []
        if upper == "HEAD":
            aliases.append("GET")
        for alias in aliases:
            other = self._decide_as(alias, path, peer, None, plans)
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
        return self._decide(buckets, peer, self._routes.get(route) if route is not None else None)

    def _decide(
        self,
        buckets: Plan,
        peer: Peer | None,
        on_route: tuple[_RouteEntry, ...] | None = None,
    ) -> Decision:
        denied: _Entry | None = None
        for bucket in buckets:
            denied = bucket.deny.first_match(peer, denied, deny=True)
        if denied is not None:
            decision = denied.decision
        else:
            allowed: _Entry | None = None
            for bucket in buckets:
                allowed = bucket.allow.first_match(peer, allowed)
            if allowed is not None:
                decision = allowed.decision
            else:
                decision = NO_IDENTITY if peer is None else NO_RULE
                if on_route is not None:
                    for route_entry in on_route:
                        if route_entry.rule.who(peer):
                            decision = route_entry.decision
                            break
        if self.has_extras:
            decision = self._extras(decision, buckets, peer)
        if not decision.allowed and self.mode == "shadow":
            decision = replace(decision, allowed=True, dry_run=True)
        return decision

    @staticmethod
    def _extras(decision: Decision, buckets: Plan, peer: Peer | None) -> Decision:
        shadow: list[str] = []
        audits: list[str] = []
        # A rule whose patterns end at several places is reported once, and
        # reports follow declaration order.
        entries = {id(e): e for bucket in buckets for e in bucket.extra}
        for entry in sorted(entries.values(), key=lambda e: e.order):
            if entry.rule.action is Action.DENY:
                if not _deny_matches(entry.rule.who, peer):
                    continue
            elif not entry.rule.who(peer):
                continue
            if entry.rule.action is Action.AUDIT:
                audits.append(entry.rule.name)
            else:
                shadow.append(f"{entry.rule.action.value}:{entry.rule.name}")
        if not shadow and not audits:
            return decision
        return replace(decision, shadow=tuple(shadow), audit=tuple(audits))

    def matching_rules(
        self, method: str, path: str, peer: Peer | None, route: Route | None = None
    ) -> list[Rule]:
        """Every rule that matches, in order (for explaining a decision); the
        rules declared on ``route`` come after the central ones."""
        found: list[_Entry] = []
        for bucket in self.plan(method, path):
            found.extend(bucket.deny.all_matches(peer, deny=True))
            found.extend(bucket.allow.all_matches(peer))
            found.extend(
                e
                for e in bucket.extra
                if (
                    _deny_matches(e.rule.who, peer)
                    if e.rule.action is Action.DENY
                    else e.rule.who(peer)
                )
            )
        unique = {id(e): e for e in found}
        matched = [e.rule for e in sorted(unique.values(), key=lambda e: e.order)]
        if route is not None:
            matched.extend(e.rule for e in self._routes.get(route, ()) if e.rule.who(peer))
        return matched

    def __len__(self) -> int:
        return len(self.rules) + sum(map(len, self.routes.values()))

    def __repr__(self) -> str:
        routes = f", {len(self.routes)} routes with rules" if self.routes else ""
        return f"Policy({len(self.rules)} rules{routes}, mode={self.mode!r})"
