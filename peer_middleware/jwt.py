"""JWT verification: a compact JWS in, the peer it proves out; no request in sight.

A :class:`JwtVerifier` takes a token (however it arrived: a header, a query
parameter, gRPC metadata) and returns the :class:`~peer_middleware.peer.Peer`
it proves, or raises :class:`~peer_middleware.errors.InvalidToken`.
:class:`JwtSvidVerifier` says which identity a JWT-SVID proves,
:class:`KubernetesTokenVerifier` which one a Kubernetes service-account
token proves. The authenticators that read tokens from a request are in
:mod:`peer_middleware.authenticators.bearer`; they are these verifiers plus the
reading. ::

    from peer_middleware.jwt import JwtSvidVerifier
    from peer_middleware.keys import SpiffeJwtBundle

    verifier = JwtSvidVerifier(
        keys=SpiffeJwtBundle({"example.org": "/run/spire/bundle/example.org.jwks"}),
        audience="spiffe://example.org/payments",
    )
    peer = verifier.verify(token)

Checks, in order; the first that fails raises :class:`InvalidToken` with the
precise reason (the token itself is never in it):

1. cache: a token verified before is served from a bounded cache keyed by its
   signature's SHA-256 (the signed part compared byte for byte), while it has
   not expired and its key is still published;
2. shape: three base64url segments (compact JWS);
3. header: ``alg`` in the configured allow-list of asymmetric algorithms
   (``none`` and HMAC can never be configured; for JWT-SVIDs, only those of
   the JWT-SVID specification, section 2.1); no ``jku``, ``x5u``, ``jwk``,
   ``x5c`` or ``crit``; ``typ`` absent, ``JWT`` or ``JOSE``; a ``kid``;
4. key: chosen by ``kid`` in the configured key sources, never from the
   token; an unknown ``kid`` signals a rate-limited refresh and is refused;
   the key must allow ``alg``; keys unavailable (never fetched, or stale
   past their bound) refuse everything;
5. pyjwt verifies the signature with that key and algorithm, the audience
   (required in configuration), the issuer allow-list, and that ``exp``,
   ``aud`` and ``sub`` are present;
6. times against the injectable ``clock`` with ``leeway``: ``exp`` in the
   future, ``nbf`` and ``iat`` not in the future; all must be numbers;
7. the key's issuer / trust domain must be the token's;
8. ``cnf``: only ``x5t#S256`` (RFC 8705) is understood, and the thumbprint
   must be a base64url SHA-256; the request then needs that certificate
   (the peer's ``certificate_sha256``, which the policy checks);
9. identity: a JWT-SVID's ``sub`` is a workload SPIFFE ID (of an allowed
   trust domain); a Kubernetes token's ``sub`` is
   ``system:serviceaccount:<ns>:<sa>`` agreeing with its ``kubernetes.io``
   claim, and becomes ``spiffe://<trust_domain>/ns/<ns>/sa/<sa>``.

Legacy Kubernetes service-account secrets (no ``exp``, no ``aud``, no
``kubernetes.io`` claim) fail steps 5 and 9.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import jwt

from ._cache import BoundedCache
from .errors import (
    ConfigurationError,
    InvalidSpiffeIdError,
    InvalidToken,
    KeysUnavailable,
    UntrustedIssuer,
)
from .keys import ASYMMETRIC_ALGORITHMS, KeySet, KeySource, VerificationKey
from .peer import Peer, Proof
from .spiffe import SpiffeId, configured_trust_domain

__all__ = [
    "DEFAULT_ALGORITHMS",
    "JWT_SVID_ALGORITHMS",
    "KUBERNETES_ALGORITHMS",
    "JwtSvidVerifier",
    "JwtVerifier",
    "KubernetesTokenVerifier",
]

#: The signature algorithms of JWT-SVIDs (SPIFFE JWT-SVID specification,
#: section 2.1: a validator must reject any other): the default of
#: :class:`JwtSvidVerifier`, and all it may be configured with.
JWT_SVID_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
)
#: The algorithms :class:`KubernetesTokenVerifier` (and :class:`JwtVerifier`)
#: accept unless configured otherwise.
KUBERNETES_ALGORITHMS = ("RS256", "ES256", "ES384", "PS256", "EdDSA")
#: The earlier name of :data:`KUBERNETES_ALGORITHMS`, kept for compatibility.
#: It is not the default of :class:`JwtSvidVerifier`.
DEFAULT_ALGORITHMS = KUBERNETES_ALGORITHMS

_FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c", "crit"})
_TYPES = frozenset({"JWT", "JOSE"})
_COMPACT = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_CACHE_SIZE = 256
#: The longest header segment remembered (256 of them at most).
_MAX_CACHED_HEADER = 512
_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)
_SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
_MAX_KID = 256

# One cached verification: the peer, the token's signed part (header.payload,
# which is not a usable credential without its signature; the cache is keyed
# by the SHA-256 of the signature), and the check that says whether it still
# holds (the expiry, the key source and the key's fingerprint).
_Entry = tuple[Peer, str, Callable[[], bool]]


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken(f"claim {name!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidToken(f"claim {name!r} is not a finite number")
    return number


def _certificate_thumbprint(claims: Mapping[str, Any]) -> str | None:
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, dict):
        raise InvalidToken("claim 'cnf' is not an object")
    other = set(cnf) - {"x5t#S256"}
    if other:
        # A confirmation method this middleware cannot check (DPoP's jkt, a
        # jwk, ...): accepting the token as a plain bearer token would drop
        # the binding its issuer asked for.
        raise InvalidToken(f"unsupported confirmation method(s) in 'cnf': {sorted(other)!r}"[:200])
    thumbprint = cnf.get("x5t#S256")
    if thumbprint is None:
        return None
    if not isinstance(thumbprint, str) or len(thumbprint) != 43:
        raise InvalidToken("cnf x5t#S256 is not a base64url SHA-256 thumbprint")
    try:
        digest = base64.urlsafe_b64decode(thumbprint + "=")
    except (binascii.Error, ValueError):
        raise InvalidToken("cnf x5t#S256 is not a base64url SHA-256 thumbprint") from None
    if len(digest) != 32 or base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != thumbprint:
        raise InvalidToken("cnf x5t#S256 is not a base64url SHA-256 thumbprint")
    return digest.hex()


def _peek_header(token: str, what: str) -> dict[str, Any]:
    """The JOSE header, decoded only to choose the key; pyjwt verifies the token.

    pyjwt's own ``get_unverified_header`` decodes and checks every segment,
    which would double the cost of a verification; the header segment alone
    is enough to pick the key.
    """
    segment = token[: token.index(".")]
    if len(segment) > 4096:
        raise InvalidToken(f"{what}: header longer than 4096 characters")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidToken(f"{what}: the header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise InvalidToken(f"{what}: the header is not a JSON object")
    return header


def _trust_domain_of(subject: object) -> str | None:
    if not isinstance(subject, str) or not subject.startswith("spiffe://"):
        return None
    return subject[len("spiffe://") :].split("/", 1)[0]


class JwtVerifier:
    """Verifies JWTs; :class:`JwtSvidVerifier` and :class:`KubernetesTokenVerifier`
    say what identity a token proves.

    Configuration is keyword-only and validated here:

    ``keys``
        one :class:`~peer_middleware.keys.KeySource` or several; a key is
        chosen by the token's ``kid`` (and, for JWT-SVIDs, the trust domain
        of its ``sub``), never from the token's own headers.
    ``audience``
        the audience (or audiences) this service accepts; required, never empty.
    ``issuers``
        the ``iss`` values accepted (required for Kubernetes tokens).
    ``algorithms``
        allowed signature algorithms, a subset of the asymmetric ones
        (default :data:`KUBERNETES_ALGORITHMS`; :class:`JwtSvidVerifier`
        has its own).
    ``leeway``
        seconds of clock skew tolerated for ``exp``, ``nbf`` and ``iat``.
    ``cache_size``
        verified tokens kept (by SHA-256 of the signature); ``clock`` the time source.
    ``name``
        names the verifier in refusal reasons and as the peer's ``source``.
    """

    kind = "jwt"

    def __init__(
        self,
        *,
        keys: KeySource | Iterable[KeySource],
        audience: str | Iterable[str],
        issuers: str | Iterable[str] | None = None,
        algorithms: Iterable[str] = KUBERNETES_ALGORITHMS,
        leeway: float = 30.0,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
    ) -> None:
        sources = (keys,) if isinstance(keys, KeySource) else tuple(keys)
        if not sources or not all(isinstance(s, KeySource) for s in sources):
            raise ConfigurationError("keys must be one or more KeySource objects")
        self.sources: tuple[KeySource, ...] = sources
        audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        if not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ConfigurationError("audience must be one or more non-empty strings")
        self.audience: tuple[str, ...] = audiences
        if issuers is not None:
            issuer_list = (issuers,) if isinstance(issuers, str) else tuple(issuers)
            if not issuer_list or not all(isinstance(i, str) and i for i in issuer_list):
                raise ConfigurationError("issuers must be one or more non-empty strings")
            self.issuers: frozenset[str] | None = frozenset(issuer_list)
        else:
            self.issuers = None
        algorithm_set = frozenset(algorithms)
        bad = algorithm_set - ASYMMETRIC_ALGORITHMS
        if bad or not algorithm_set:
            raise ConfigurationError(
                f"algorithms must be asymmetric signature algorithms from "
                f"{sorted(ASYMMETRIC_ALGORITHMS)}; refused: {sorted(map(str, bad))}"
            )
        self.algorithms = algorithm_set
        if isinstance(leeway, bool) or not isinstance(leeway, (int, float)):
            raise ConfigurationError("leeway must be a number of seconds")
        if not 0 <= leeway <= 300:
            raise ConfigurationError("leeway must be between 0 and 300 seconds")
        self.leeway = float(leeway)
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigurationError("cache_size must be a non-negative integer")
        self._cache = BoundedCache[bytes, _Entry](cache_size)
        if not callable(clock):
            raise ConfigurationError("clock must be callable")
        self._clock = clock
        self.name = name or self.kind
        self._required = ["exp", "aud", "sub"] + (["iss"] if self.issuers is not None else [])
        self._pyjwt = jwt.PyJWT()
        self._audience = list(self.audience)
        self._decode_options: jwt.types.Options = {
            "require": self._required,
            "verify_exp": False,  # checked against the injectable clock
            "verify_nbf": False,
            "verify_iat": False,
        }
        self._what = f"{self.name} token"
        # header segment -> (alg, kid), for segments that passed every check
        self._headers = BoundedCache[str, tuple[str, str]](_HEADER_CACHE_SIZE)

    def verify(self, token: str) -> Peer:
        """The peer ``token`` proves; raises :class:`InvalidToken` (or
        :class:`UntrustedIssuer`, when another verifier may accept it)."""
        return self.verify_while(token)[0]

    def verify_while(self, token: str) -> tuple[Peer, Callable[[], bool]]:
        """The peer ``token`` proves, and a check that is True while it still
        proves it (unexpired, its key still published and fresh)."""
        # A hit needs the same signature (by its SHA-256) and the same signed
        # part, byte for byte: the same token. The cache never holds one.
        signed, _, signature = token.rpartition(".")
        digest = hashlib.sha256(signature.encode("utf-8", "surrogatepass")).digest()
        entry = self._cache.get(digest)
        if entry is not None and entry[1] == signed and entry[2]():
            return entry[0], entry[2]
        entry = self._verify(token, signed, self._clock())
        self._cache.put(digest, entry)
        return entry[0], entry[2]

    def _validity(self, expires: float, source: KeySource, fingerprint: str) -> Callable[[], bool]:
        """The ``still_valid`` check of a verified token: unexpired, its key still
        published by ``source``, and ``source``'s keys fresh."""
        clock = self._clock

        def still_valid() -> bool:
            if clock() >= expires:
                return False
            try:
                return fingerprint in source.key_set().fingerprints
            except KeysUnavailable:
                return False

        return still_valid

    def _key_set(self, source: KeySource, *, refresh: bool = False) -> KeySet:
        try:
            return source.key_set(refresh=refresh)
        except KeysUnavailable as exc:
            raise InvalidToken(f"{self.name}: no trusted keys: {exc}") from exc

    # Verification ------------------------------------------------------------

    def _verify(self, token: str, signed: str, now: float) -> _Entry:
        """Every check of a token not in the cache, in order (steps 2 to 9)."""
        what = self._what
        # The shape only; pyjwt checks every segment's alphabet and padding.
        if token.count(".") != 2:
            raise InvalidToken(f"{what}: not a compact JWS (three base64url segments)")
        segment = token[: token.index(".")]
        # Tokens signed by one key share their header segment: its checks are
        # pure, so they are kept per segment.
        checked = self._headers.get(segment)
        if checked is None:
            checked = self._check_header(token, segment, what)
            if len(segment) <= _MAX_CACHED_HEADER:
                # Real JOSE headers are short: a long one (sent to fill this
                # cache) is checked every time it comes.
                self._headers.put(segment, checked)
        alg, kid = checked
        index, key = self._choose_key(token, kid, alg, what)
        try:
            claims = self._pyjwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self.issuers,
                options=self._decode_options,
            )
        except jwt.InvalidIssuerError:
            raise UntrustedIssuer(f"{what}: issuer not accepted (kid {kid[:64]!r})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"{what}: missing claim {exc.claim!r} (kid {kid[:64]!r})") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(f"{what}: audience not accepted (kid {kid[:64]!r})") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken(f"{what}: signature does not verify (kid {kid[:64]!r})") from None
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError) as exc:
            raise InvalidToken(f"{what}: {type(exc).__name__}: {exc}"[:300]) from None
        issuer = claims.get("iss")
        if issuer is not None and not isinstance(issuer, str):
            raise InvalidToken(f"{what}: claim 'iss' is not a string")
        where = f"(iss {_shown(issuer)}, kid {kid[:64]!r})"
        exp = _number(claims, "exp")
        if exp is None:
            raise InvalidToken(f"{what}: missing claim 'exp' {where}")
        leeway = self.leeway
        if exp <= now - leeway:
            raise InvalidToken(f"{what}: expired {now - exp:.0f}s ago {where}")
        nbf = _number(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise InvalidToken(f"{what}: not valid before {nbf - now:.0f}s from now {where}")
        iat = _number(claims, "iat")
        if iat is not None and iat > now + leeway:
            raise InvalidToken(f"{what}: issued {iat - now:.0f}s in the future {where}")
        if key.issuer is not None and issuer != key.issuer:
            raise InvalidToken(f"{what}: signed by a key of issuer {key.issuer!r} {where}")
        bound = _certificate_thumbprint(claims)
        spiffe_id = self._identity(claims, key, where)
        peer = Peer(
            spiffe_id,
            Proof.TOKEN,
            source=self.name,
            certificate_sha256=bound,
            claims=_freeze(claims),
        )
        return (peer, signed, self._validity(exp + leeway, self.sources[index], key.fingerprint))

    def _check_header(self, token: str, segment: str, what: str) -> tuple[str, str]:
        """The ``alg`` and ``kid`` of a header segment that passes every check."""
        if _COMPACT.fullmatch(segment) is None:
            raise InvalidToken(f"{what}: not a compact JWS (three base64url segments)")
        header = _peek_header(token, what)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken(f"{what}: algorithm {_shown(alg)} is not allowed")
        carried = _FORBIDDEN_HEADERS & header.keys()
        if carried:
            raise InvalidToken(f"{what}: refused header parameter(s) {sorted(carried)!r}")
        typ = header.get("typ")
        if typ is not None and typ not in _TYPES:
            raise InvalidToken(f"{what}: typ {_shown(typ)} is not JWT or JOSE")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID:
            raise InvalidToken(f"{what}: no usable kid in the header")
        return alg, kid

    def _choose_key(self, token: str, kid: str, alg: str, what: str) -> tuple[int, VerificationKey]:
        candidates: list[tuple[int, VerificationKey]] = []
        unavailable: InvalidToken | None = None
        for index, source in enumerate(self.sources):
            try:
                found = self._key_set(source).find(kid)
            except InvalidToken as exc:
                unavailable = unavailable or exc
                continue
            candidates.extend((index, key) for key in found)
        if not candidates:
            hint = self._unverified_claims(token)
            self._check_mine(hint, what)
            if unavailable is not None:
                raise unavailable
            for source in self.sources:
                with contextlib.suppress(KeysUnavailable):
                    source.key_set(refresh=True)
            raise InvalidToken(f"{what}: unknown kid {kid[:64]!r}; a key refresh was requested")
        fitting = [(i, k) for i, k in candidates if alg in k.algorithms]
        if not fitting:
            raise InvalidToken(f"{what}: key {kid[:64]!r} does not allow algorithm {alg!r}")
        if len(fitting) > 1:
            # The same kid in several trust domains or issuers: pick by the
            # token's own (still unverified) sub / iss; the choice is checked
            # again after verification.
            hint = self._unverified_claims(token)
            fitting = [(i, k) for i, k in fitting if self._key_fits(k, hint)] or fitting[:1]
        return fitting[0]

    @staticmethod
    def _unverified_claims(token: str) -> Mapping[str, Any]:
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            return {}
        return claims if isinstance(claims, dict) else {}

    def _key_fits(self, key: VerificationKey, claims: Mapping[str, Any]) -> bool:
        if key.issuer is not None:
            return claims.get("iss") == key.issuer
        return True

    def _check_mine(self, claims: Mapping[str, Any], what: str) -> None:
        """Raise :class:`UntrustedIssuer` for a token another verifier may own."""
        issuer = claims.get("iss")
        if self.issuers is not None and (not isinstance(issuer, str) or issuer not in self.issuers):
            raise UntrustedIssuer(f"{what}: issuer {_shown(issuer)} not accepted")

    def _identity(
        self, claims: Mapping[str, Any], key: VerificationKey, where: str
    ) -> SpiffeId:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, audience={list(self.audience)!r})"


def jwt_svid_algorithms(algorithms: Iterable[str]) -> tuple[str, ...]:
    """``algorithms`` as a tuple, when all are JWT-SVID algorithms; else
    :class:`ConfigurationError` (JWT-SVID specification, section 2.1)."""
    # A tuple: the caller's iterable may be read only once.
    chosen = (algorithms,) if isinstance(algorithms, str) else tuple(algorithms)
    refused = sorted({str(a) for a in chosen} - frozenset(JWT_SVID_ALGORITHMS))
    if refused:
        raise ConfigurationError(
            f"JWT-SVID algorithms must be among {', '.join(JWT_SVID_ALGORITHMS)} "
            f"(JWT-SVID specification, section 2.1); refused: {refused}"
        )
    return chosen


class JwtSvidVerifier(JwtVerifier):
    """JWT-SVIDs (SPIFFE JWT-SVID specification): ``sub`` is the peer's SPIFFE ID.

    With :class:`~peer_middleware.keys.SpiffeJwtBundle` keys, a token is
    verified only by a key of its ``sub``'s trust domain. ``trust_domains``
    additionally limits the trust domains accepted. ``issuers`` is optional
    (the specification does not require ``iss``). ``algorithms`` defaults to
    :data:`JWT_SVID_ALGORITHMS`, the specification's nine (section 2.1); any
    other, ``EdDSA`` included, is a :class:`ConfigurationError`.
    """

    kind = "jwt-svid"

    def __init__(
        self,
        *,
        keys: KeySource | Iterable[KeySource],
        audience: str | Iterable[str],
        trust_domains: Iterable[str] | None = None,
        issuers: str | Iterable[str] | None = None,
        algorithms: Iterable[str] = JWT_SVID_ALGORITHMS,
        leeway: float = 30.0,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
    ) -> None:
        if trust_domains is not None:
            domains = (trust_domains,) if isinstance(trust_domains, str) else tuple(trust_domains)
            if not domains:
                raise ConfigurationError("trust_domains must name at least one trust domain")
            for domain in domains:
                configured_trust_domain(domain)
            self.trust_domains: frozenset[str] | None = frozenset(domains)
        else:
            self.trust_domains = None
        JwtVerifier.__init__(
            self,
            keys=keys,
            audience=audience,
            issuers=issuers,
            algorithms=jwt_svid_algorithms(algorithms),
            leeway=leeway,
            cache_size=cache_size,
            clock=clock,
            name=name,
        )

    def _key_fits(self, key: VerificationKey, claims: Mapping[str, Any]) -> bool:
        if key.trust_domain is not None:
            return _trust_domain_of(claims.get("sub")) == key.trust_domain
        return super()._key_fits(key, claims)

    def _check_mine(self, claims: Mapping[str, Any], what: str) -> None:
        super()._check_mine(claims, what)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.startswith("spiffe://"):
            raise UntrustedIssuer(f"{what}: sub {_shown(subject)} is not a SPIFFE ID")

    def _identity(self, claims: Mapping[str, Any], key: VerificationKey, where: str) -> SpiffeId:
        subject = claims["sub"]
        what = f"{self.name} token"
        try:
            spiffe_id = SpiffeId.parse(subject)
        except InvalidSpiffeIdError as exc:
            raise InvalidToken(f"{what}: sub is not a SPIFFE ID: {exc} {where}") from None
        if spiffe_id.is_trust_domain_id:
            raise InvalidToken(f"{what}: sub names a trust domain, not a workload {where}")
        if key.trust_domain is not None and spiffe_id.trust_domain != key.trust_domain:
            raise InvalidToken(
                f"{what}: sub is in trust domain {spiffe_id.trust_domain!r} but the key "
                f"belongs to {key.trust_domain!r} {where}"
            )
        if self.trust_domains is not None and spiffe_id.trust_domain not in self.trust_domains:
            raise UntrustedIssuer(
                f"{what}: trust domain {spiffe_id.trust_domain!r} not accepted {where}"
            )
        return spiffe_id


class KubernetesTokenVerifier(JwtVerifier):
    """Kubernetes service-account tokens (projected, audience-bound, expiring).

    ``sub`` must be ``system:serviceaccount:<namespace>:<name>`` and agree
    with the ``kubernetes.io`` claim; the peer's SPIFFE ID is
    ``spiffe://<trust_domain>/ns/<namespace>/sa/<name>``, so the rules that
    name certificate identities (``Namespace``, ``ServiceAccount``,
    ``Principal``) serve tokens too. ``issuers`` is required (the API
    server's ``--service-account-issuer``). Legacy secret-based tokens (no
    ``exp``, no audience) are refused.
    """

    kind = "kubernetes"

    def __init__(
        self,
        *,
        keys: KeySource | Iterable[KeySource],
        audience: str | Iterable[str],
        issuers: str | Iterable[str],
        trust_domain: str,
        algorithms: Iterable[str] = KUBERNETES_ALGORITHMS,
        leeway: float = 30.0,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
    ) -> None:
        if issuers is None:
            raise ConfigurationError(f"{type(self).__name__} needs issuers")
        configured_trust_domain(trust_domain)
        self.trust_domain = trust_domain
        JwtVerifier.__init__(
            self,
            keys=keys,
            audience=audience,
            issuers=issuers,
            algorithms=algorithms,
            leeway=leeway,
            cache_size=cache_size,
            clock=clock,
            name=name,
        )

    def _check_mine(self, claims: Mapping[str, Any], what: str) -> None:
        super()._check_mine(claims, what)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.startswith(_SERVICE_ACCOUNT_PREFIX):
            raise UntrustedIssuer(f"{what}: sub {_shown(subject)} is not a service account")

    def _identity(self, claims: Mapping[str, Any], key: VerificationKey, where: str) -> SpiffeId:
        what = f"{self.name} token"
        subject = claims["sub"]
        if not subject.startswith(_SERVICE_ACCOUNT_PREFIX):
            raise InvalidToken(f"{what}: sub {_shown(subject)} is not a service account {where}")
        parts = subject[len(_SERVICE_ACCOUNT_PREFIX) :].split(":")
        if len(parts) != 2:
            raise InvalidToken(f"{what}: sub {_shown(subject)} is malformed {where}")
        namespace, name = parts
        if _DNS_LABEL.fullmatch(namespace) is None:
            raise InvalidToken(f"{what}: namespace {_shown(namespace)} is invalid {where}")
        if len(name) > 253 or _DNS_SUBDOMAIN.fullmatch(name) is None:
            raise InvalidToken(f"{what}: service account {_shown(name)} is invalid {where}")
        info = claims.get("kubernetes.io")
        if not isinstance(info, dict):
            raise InvalidToken(f"{what}: no 'kubernetes.io' claim (a legacy token?) {where}")
        account = info.get("serviceaccount")
        if (
            info.get("namespace") != namespace
            or not isinstance(account, dict)
            or account.get("name") != name
        ):
            raise InvalidToken(f"{what}: 'kubernetes.io' claim disagrees with sub {where}")
        try:
            return SpiffeId.for_service_account(self.trust_domain, namespace, name)
        except InvalidSpiffeIdError as exc:
            raise InvalidToken(f"{what}: cannot map {subject!r} to a SPIFFE ID: {exc}") from None
