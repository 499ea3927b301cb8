"""Matchers: who a rule applies to.

A matcher is a small callable that looks at the authenticated
:class:`~peer_middleware.peer.Peer` (or ``None`` for a request without
identity) and says whether it matches. Matchers are pure: they read the peer
and nothing else, and keep no memory between calls. Combine them with ``|``
(:class:`AnyOf`), ``&`` (:class:`AllOf`) and ``~`` (:class:`Not`)::

    Namespace("shop", trust_domain="cluster.local") & CertificateVerified()
    Principal("spiffe://cluster.local/ns/ops/sa/admin") | TrustDomain("ops.example")

Identity matchers (:class:`Principal`, :class:`ServiceAccount`,
:class:`TrustDomain`, :class:`Namespace`) read the SPIFFE ID; proof matchers
(:class:`ProvenBy`, :class:`CertificateVerified`, :class:`SidecarAsserted`)
read how it was established; token matchers (:class:`RequestPrincipal`,
:class:`Issuer`, :class:`Claim`, :class:`HasToken`, :class:`CertificateBound`)
read the verified bearer token.

Some matchers can also say which *index keys* they match
(:meth:`Matcher.index_keys`); :func:`index_keys_of` gives the keys a SPIFFE ID
has. The compiled policy uses both to find the rules naming a caller without
trying them one by one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

from .errors import ConfigurationError, InvalidSpiffeIdError
from .peer import Peer, Proof
from .spiffe import SCHEME_PREFIX, SpiffeId, configured_trust_domain

__all__ = [
    "AllOf",
    "AnyOf",
    "Anyone",
    "Authenticated",
    "CertificateBound",
    "CertificateVerified",
    "Claim",
    "HasToken",
    "Issuer",
    "Matcher",
    "Namespace",
    "Not",
    "Principal",
    "ProvenBy",
    "RequestPrincipal",
    "ServiceAccount",
    "SidecarAsserted",
    "TrustDomain",
    "Who",
    "index_keys_of",
]

_SEGMENT = re.compile(r"[a-zA-Z0-9._-]+")


class Matcher:
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

        A peer has the keys :func:`index_keys_of` gives for its SPIFFE ID.
        ``None`` when the matcher cannot be expressed that way; such rules are
        evaluated one by one.
        """
        return None

    def __or__(self, other: Matcher) -> Matcher:
        return AnyOf(self, other)

    def __and__(self, other: Matcher) -> Matcher:
        return AllOf(self, other)

    def __invert__(self) -> Matcher:
        return Not(self)

    def __repr__(self) -> str:
        return self.describe()


#: The former name of :class:`Matcher`, kept until 1.0.
Who = Matcher


class Anyone(Matcher):
    """Every request, including one with no identity (health probes)."""

    __slots__ = ()

    def __call__(self, peer: Peer | None) -> bool:
        return True

    def describe(self) -> str:
        return "Anyone()"


class Authenticated(Matcher):
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


class Principal(Matcher):
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


class TrustDomain(Matcher):
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


class Namespace(Matcher):
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


class ProvenBy(Matcher):
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


def _check_matchers(name: str, matchers: Sequence[Matcher]) -> tuple[Matcher, ...]:
    if not matchers:
        raise ConfigurationError(f"{name}() needs at least one matcher")
    for matcher in matchers:
        if not isinstance(matcher, Matcher):
            raise ConfigurationError(f"{name}(): {matcher!r} is not a matcher")
    return tuple(matchers)


class AnyOf(Matcher):
    """Matches when any of the matchers does."""

    __slots__ = ("matchers",)

    def __init__(self, *matchers: Matcher) -> None:
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


class AllOf(Matcher):
    """Matches when every matcher does."""

    __slots__ = ("matchers",)

    def __init__(self, *matchers: Matcher) -> None:
        self.matchers = _check_matchers("AllOf", matchers)

    def __call__(self, peer: Peer | None) -> bool:
        return all(m(peer) for m in self.matchers)

    def describe(self) -> str:
        return f"AllOf({', '.join(m.describe() for m in self.matchers)})"


class Not(Matcher):
    """Matches an *authenticated* peer that ``matcher`` does not match.

    A request without identity never matches a negation: "not the admin"
    must not include "somebody we know nothing about" (Istio's ``notPrincipals``
    has the same rule).
    """

    __slots__ = ("matcher",)

    def __init__(self, matcher: Matcher) -> None:
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


class RequestPrincipal(Matcher):
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


class Issuer(Matcher):
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


class Claim(Matcher):
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


class HasToken(Matcher):
    """Peers that presented a verified bearer token.

    ``ProvenBy(Proof.MTLS, Proof.FORWARDED_CERTIFICATE, Proof.PROXY_ASSERTED) & HasToken()``
    requires both a certificate identity and a token on the same request.
    """

    __slots__ = ()

    def __call__(self, peer: Peer | None) -> bool:
        return _token_peer(peer) is not None

    def describe(self) -> str:
        return "HasToken()"


class CertificateBound(Matcher):
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
# Index keys: a matcher whose :meth:`Matcher.index_keys` is not ``None``
# matches exactly the peers whose SPIFFE ID has one of those keys.
# --------------------------------------------------------------------------


def index_keys_of(spiffe_id: SpiffeId) -> tuple[tuple[str, str], ...]:
    """The index keys of ``spiffe_id``: its URI, its trust domain and its namespace.

    ``("id", uri)`` and ``("td", trust domain)`` always; ``("ns", "<trust
    domain>/<namespace>")`` when the ID has a Kubernetes namespace. These are
    the keys :class:`Principal`, :class:`TrustDomain` and :class:`Namespace`
    name in :meth:`Matcher.index_keys`.
    """
    return _index_keys(spiffe_id.uri)


# Keyed by the URI alone (a string key is the cheapest lookup, and the URI
# determines the ID); bounded like the parser's own memory. The keys are a
# pure function of the ID, so remembering them changes no answer.
@lru_cache(maxsize=4096)
def _index_keys(uri: str) -> tuple[tuple[str, str], ...]:
    spiffe_id = SpiffeId.parse(uri)
    keys: tuple[tuple[str, str], ...] = (("id", uri), ("td", spiffe_id.trust_domain))
    if spiffe_id.namespace is not None:
        keys += (("ns", f"{spiffe_id.trust_domain}/{spiffe_id.namespace}"),)
    return keys
