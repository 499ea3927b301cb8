"""Where the keys that verify bearer tokens come from.

A :class:`KeySource` has one method, :meth:`~KeySource.key_set`, which returns
the current immutable :class:`KeySet` and never does I/O. Sources:

* :class:`StaticJwks`: a JWKS document or file, read once when built;
* :class:`SpiffeJwtBundle`: SPIFFE trust bundles (one JWKS file per trust
  domain, as SPIRE writes them); only keys with ``"use": "jwt-svid"`` are
  taken, each tagged with its trust domain; files are re-read when they change;
* :class:`JwksUrl`: a JWKS fetched over HTTPS;
* :class:`OidcDiscovery`: an issuer's ``/.well-known/openid-configuration``
  and the ``jwks_uri`` it names, as the Kubernetes API server publishes them
  (``--service-account-issuer``); keys are tagged with the issuer, so they
  verify only tokens that name it.

Network and file I/O happen only on a background daemon thread per source
(the shared :class:`~peer_middleware._reload.Reloader`, which holds the source
only weakly), with bounded timeouts and response sizes. Requests only read the
current key set. A token whose ``kid`` is not in the set makes the request
path *signal* a refresh (:meth:`~KeySource.key_set` with ``refresh=True``),
which is rate limited (``min_refresh_interval``) and single flight (one thread
does all fetching); the request itself is refused.

Keys are refreshed every ``ttl`` seconds. When refreshes fail (issuer down,
slow, answering garbage) the last good keys keep serving for ``max_stale``
more seconds; after that :meth:`~KeySource.key_set` raises
:class:`KeysUnavailable` and every token is refused. There is never a
fallback key, and no key material is ever taken from a token.

Key material is checked when loaded: private or symmetric keys (``d``,
``k``), ``oct`` keys, keys whose ``use`` is not for signatures, keys whose
``key_ops`` exclude ``verify``, RSA keys under 2048 bits, keys without a
``kid`` and duplicate ``kid`` values are skipped and logged. A JSON document
in which one object gives a name twice (two ``keys`` arrays, a JWK with two
``use`` members) is refused as a whole, as content that cannot be parsed:
Python's json would silently keep the last one.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import os
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ._reload import Reloader
from .bundles import strict_json_loads
from .errors import ConfigurationError, DuplicateJsonName, InvalidTrustMaterial, KeysUnavailable
from .spiffe import configured_trust_domain

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "JwksUrl",
    "KeySet",
    "KeySource",
    "KeysUnavailable",
    "OidcDiscovery",
    "SpiffeJwtBundle",
    "StaticJwks",
    "VerificationKey",
    "parse_jwks",
]

logger = logging.getLogger("peer_middleware.keys")

#: Every signature algorithm a key may be used with; ``none`` and HMAC never are.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MAX_KID_LENGTH = 256
_MAX_KEYS = 256
_MIN_RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key that may verify tokens.

    ``algorithms`` are those it may be used with (its JWK ``alg``, or all that
    fit its type); ``fingerprint`` identifies the key material and ``kid``
    (a token verified by it stays cached only while it is published);
    ``trust_domain`` / ``issuer`` restrict it to tokens of that trust domain
    (by ``sub``) or issuer (by ``iss``), when known.
    """

    kid: str
    key: Any
    algorithms: frozenset[str]
    fingerprint: str
    trust_domain: str | None = None
    issuer: str | None = None


class KeySet:
    """An immutable set of keys, looked up by ``kid``."""

    __slots__ = ("by_kid", "fetched_at", "fingerprints")

    def __init__(self, keys: Iterable[VerificationKey], fetched_at: float = 0.0) -> None:
        by_kid: dict[str, tuple[VerificationKey, ...]] = {}
        for key in keys:
            by_kid[key.kid] = (*by_kid.get(key.kid, ()), key)
        self.by_kid: Mapping[str, tuple[VerificationKey, ...]] = MappingProxyType(by_kid)
        self.fingerprints = frozenset(k.fingerprint for ks in by_kid.values() for k in ks)
        self.fetched_at = fetched_at

    def find(self, kid: str) -> tuple[VerificationKey, ...]:
        return self.by_kid.get(kid, ())

    def __len__(self) -> int:
        return len(self.fingerprints)

    def __repr__(self) -> str:
        return f"KeySet({sorted(self.by_kid)!r})"


@runtime_checkable
class KeySource(Protocol):
    """Supplies the keys that verify tokens.

    ``key_set`` returns the current key set without doing any I/O, or raises
    :class:`KeysUnavailable`. ``refresh=True`` says a token named a ``kid``
    the set lacks: a source that can fetch should do so soon, at most once per
    its rate limit, without blocking the caller.
    """

    def key_set(self, *, refresh: bool = False) -> KeySet: ...


def _fingerprint(kid: str, key: Any) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(kid.encode("utf-8") + b"\x00" + der).hexdigest()


def _load_key(
    jwk: Any, *, use: str | None, trust_domain: str | None, issuer: str | None
) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise InvalidTrustMaterial("a key is not a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_LENGTH:
        raise InvalidTrustMaterial("a key has no usable 'kid'")
    where = f"key {kid[:64]!r}"
    if _PRIVATE_MEMBERS & jwk.keys() or jwk.get("kty") == "oct":
        raise InvalidTrustMaterial(f"{where} holds private or symmetric key material")
    if jwk.get("use") != use:
        raise InvalidTrustMaterial(f"{where} has use {jwk.get('use')!r}, not {use!r}")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise InvalidTrustMaterial(f"{where} key_ops does not include 'verify'")
    alg = jwk.get("alg")
    if alg is not None and alg not in ASYMMETRIC_ALGORITHMS:
        raise InvalidTrustMaterial(f"{where} has algorithm {alg!r}, which is not allowed")
    try:
        loaded = jwt.PyJWK(jwk).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InvalidTrustMaterial(f"{where} cannot be loaded: {exc}") from None
    if isinstance(loaded, rsa.RSAPublicKey):
        if loaded.key_size < _MIN_RSA_BITS:
            raise InvalidTrustMaterial(f"{where} is an RSA key of {loaded.key_size} bits")
        fitting = _RSA_ALGORITHMS
    elif isinstance(loaded, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        name = _EC_ALGORITHMS.get(curve.get(loaded.curve.name, ""))
        if name is None:
            raise InvalidTrustMaterial(f"{where} uses an unsupported curve {loaded.curve.name}")
        fitting = frozenset({name})
    elif isinstance(loaded, ed25519.Ed25519PublicKey):
        fitting = frozenset({"EdDSA"})
    else:
        raise InvalidTrustMaterial(f"{where} is not a public key of a supported type")
    algorithms = fitting if alg is None else fitting & {alg}
    if not algorithms:
        raise InvalidTrustMaterial(f"{where}: algorithm {alg!r} does not fit the key type")
    return VerificationKey(kid, loaded, algorithms, _fingerprint(kid, loaded), trust_domain, issuer)


def parse_jwks(
    document: Any,
    *,
    use: str | None = None,
    trust_domain: str | None = None,
    issuer: str | None = None,
) -> list[VerificationKey]:
    """The usable verification keys of a JWKS document (a parsed JSON object).

    ``use`` is the only ``use`` value accepted (``None``: the key must have
    none or ``"sig"``; SPIFFE bundles use ``"jwt-svid"``). Keys that are
    unusable are skipped and logged; a document that is not a JWKS raises
    :class:`ValueError`.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise InvalidTrustMaterial("not a JWKS document (an object with a 'keys' list)")
    raw_keys = document["keys"]
    if len(raw_keys) > _MAX_KEYS:
        raise InvalidTrustMaterial(f"more than {_MAX_KEYS} keys")
    keys: list[VerificationKey] = []
    seen: set[str] = set()
    for jwk in raw_keys:
        if use is None and isinstance(jwk, dict) and jwk.get("use") == "sig":
            jwk = {k: v for k, v in jwk.items() if k != "use"}
        if use == "jwt-svid" and isinstance(jwk, dict) and jwk.get("use") != "jwt-svid":
            continue  # x509-svid roots share the bundle
        try:
            key = _load_key(jwk, use=use, trust_domain=trust_domain, issuer=issuer)
        except ValueError as exc:
            logger.warning("skipped a key: %s", exc)
            continue
        if key.kid in seen:
            logger.warning("skipped key %r: its kid appears twice", key.kid[:64])
            keys = [k for k in keys if k.kid != key.kid]
            continue
        seen.add(key.kid)
        keys.append(key)
    return keys


def _decode_json(data: bytes, what: str) -> Any:
    try:
        return strict_json_loads(data)
    except DuplicateJsonName as exc:
        raise InvalidTrustMaterial(f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidTrustMaterial(f"{what} is not JSON: {exc}") from None


# --------------------------------------------------------------------------
# Static keys.
# --------------------------------------------------------------------------


class StaticJwks:
    """Keys from a JWKS document given as a mapping or a file, read once.

    ``trust_domain`` / ``issuer`` restrict the keys to tokens of that trust
    domain or issuer.
    """

    def __init__(
        self,
        document: Mapping[str, Any] | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        trust_domain: str | None = None,
        issuer: str | None = None,
    ) -> None:
        if (document is None) == (path is None):
            raise ConfigurationError("StaticJwks needs exactly one of document= or path=")
        if trust_domain is not None:
            _check_trust_domain(trust_domain)
        try:
            if path is not None:
                document = _decode_json(Path(path).read_bytes(), str(path))
            keys = parse_jwks(dict(document or {}), trust_domain=trust_domain, issuer=issuer)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"StaticJwks: {exc}") from exc
        self._keys = KeySet(keys)
        self.path = path

    def key_set(self, *, refresh: bool = False) -> KeySet:
        return self._keys

    def __repr__(self) -> str:
        return f"StaticJwks({self._keys!r})"


def _check_trust_domain(name: str) -> None:
    configured_trust_domain(name)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be finite")
    return float(value)


# --------------------------------------------------------------------------
# Refreshing sources: one background thread each.
# --------------------------------------------------------------------------


class _RefreshingSource:
    """Holds the current keys; the shared reloader's daemon thread refreshes them.

    Keys are fetched every ``ttl`` seconds (after a failure sooner: every
    ``retry_interval`` seconds, doubling up to ``ttl``) and served for ``ttl +
    max_stale`` seconds after the last successful fetch.
    """

    _label = "keys"

    def __init__(
        self,
        *,
        ttl: float,
        max_stale: float,
        min_refresh_interval: float,
        retry_interval: float,
        clock: Callable[[], float],
        start: bool,
    ) -> None:
        self.ttl = _positive("ttl", ttl)
        self.max_stale = math.inf if max_stale == math.inf else _positive("max_stale", max_stale)
        self.min_refresh_interval = _positive("min_refresh_interval", min_refresh_interval)
        self.retry_interval = _positive("retry_interval", retry_interval)
        if not callable(clock):
            raise ConfigurationError("clock must be callable")
        self._clock = clock
        self._reloader: Reloader[_RefreshingSource, KeySet] = Reloader(
            self,
            _read_keys,
            subject=repr(self),
            noun="keys",
            logger=logger,
            level=logging.WARNING,
            interval=self.ttl,
            retry_interval=self.retry_interval,
            first_delay=0.0,
            max_age=self.ttl + self.max_stale,
            min_signal_interval=self.min_refresh_interval,
            clock=clock,
            thread_name=f"peer_middleware-{self._label}",
            start=start,
        )

    @property
    def last_error(self) -> str | None:
        """The last refresh error, for diagnostics (``None`` after a success)."""
        return self._reloader.last_error

    # The request path -----------------------------------------------------

    def key_set(self, *, refresh: bool = False) -> KeySet:
        reloader = self._reloader
        if refresh:
            reloader.signal()
        snapshot = reloader.snapshot
        if snapshot is None:
            raise KeysUnavailable(f"{self!r}: no keys fetched yet ({self.last_error or 'pending'})")
        if self._clock() > snapshot.expires:
            raise KeysUnavailable(
                f"{self!r}: keys are older than ttl + max_stale and refreshing fails "
                f"({self.last_error})"
            )
        return snapshot.value

    # Operations -----------------------------------------------------------

    def refresh(self, timeout: float = 10.0) -> bool:
        """Fetch now (ignoring the rate limit) and wait; True when it succeeded."""
        return self._reloader.refresh(timeout)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until a first key set is available; True when it is."""
        return self._reloader.wait_ready(timeout)

    def close(self) -> None:
        """Stop the background thread."""
        self._reloader.close()

    def __enter__(self) -> _RefreshingSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _fetch(self) -> list[VerificationKey] | None:  # pragma: no cover - abstract
        """The new keys; ``None`` when unchanged. Raises on any failure."""
        raise NotImplementedError


def _read_keys(source: _RefreshingSource, force: bool) -> KeySet | None:
    """The source's new key set for the reloader; ``None`` when unchanged."""
    keys = source._fetch()
    return None if keys is None else KeySet(keys, source._clock())


# --------------------------------------------------------------------------
# SPIFFE bundles on disk.
# --------------------------------------------------------------------------


class SpiffeJwtBundle(_RefreshingSource):
    """JWT-SVID keys from SPIFFE trust bundles, one JWKS file per trust domain.

    ``bundles`` maps a trust domain to its bundle file (the SPIFFE Trust
    Domain and Bundle format: a JWKS whose keys carry ``"use": "jwt-svid"``
    or ``"x509-svid"``). Only ``jwt-svid`` keys are used, each tagged with its
    trust domain: a JWT-SVID is verified only by a key of its own ``sub``'s
    trust domain. Files are checked every ``poll_interval`` seconds (and on
    an unknown ``kid``, rate limited) and re-read when they change; a file
    that cannot be read or parsed leaves the last good keys in place. All
    files are read once when the source is built, and an unreadable file
    then raises :class:`ConfigurationError`.
    """

    _label = "spiffe-bundle"

    def __init__(
        self,
        bundles: Mapping[str, str | os.PathLike[str]],
        *,
        poll_interval: float = 5.0,
        min_refresh_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(bundles, Mapping) or not bundles:
            raise ConfigurationError("SpiffeJwtBundle needs a mapping of trust domain to file")
        for trust_domain in bundles:
            _check_trust_domain(trust_domain)
        self.bundles = {td: Path(path) for td, path in bundles.items()}
        self._stamps: dict[str, tuple[int, int, int]] = {}
        self._by_domain: dict[str, list[VerificationKey]] = {}
        # Files never go stale: the keys of the last good files serve until replaced.
        super().__init__(
            ttl=poll_interval,
            max_stale=math.inf,
            min_refresh_interval=min_refresh_interval,
            retry_interval=poll_interval,
            clock=clock,
            start=False,
        )
        try:
            keys = self._fetch()
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"SpiffeJwtBundle: {exc}") from exc
        self._reloader.put(KeySet(keys or [], clock()))
        self._reloader.start()

    def _fetch(self) -> list[VerificationKey] | None:
        changed = False
        for trust_domain, path in self.bundles.items():
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if self._stamps.get(trust_domain) == stamp:
                continue
            data = path.read_bytes()
            if len(data) > _MAX_DOCUMENT_BYTES:
                raise InvalidTrustMaterial(f"{path}: larger than {_MAX_DOCUMENT_BYTES} bytes")
            document = _decode_json(data, str(path))
            self._by_domain[trust_domain] = parse_jwks(
                document, use="jwt-svid", trust_domain=trust_domain
            )
            self._stamps[trust_domain] = stamp
            changed = True
        if not changed:
            return None
        return [key for keys in self._by_domain.values() for key in keys]

    def __repr__(self) -> str:
        return f"SpiffeJwtBundle({sorted(self.bundles)!r})"


# --------------------------------------------------------------------------
# HTTP sources.
# --------------------------------------------------------------------------

_MAX_DOCUMENT_BYTES = 1024 * 1024


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate_url(url: str, what: str, *, allow_http: bool = False) -> str:
    """``url`` if it is an absolute ``https`` URL fit to fetch keys from, else raise.

    ``http`` is accepted only with ``allow_http=True`` (tests on 127.0.0.1).
    User info, fragments, whitespace and control characters are refused.
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"{what} must be a non-empty string")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ConfigurationError(f"{what} {url[:200]!r} contains whitespace or control characters")
    parts = urlsplit(url)
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        raise ConfigurationError(
            f"{what} {url[:200]!r} must use https"
            + ("" if allow_http else " (http only with allow_http=True)")
        )
    if not parts.hostname:
        raise ConfigurationError(f"{what} {url[:200]!r} has no host")
    if "@" in parts.netloc:
        raise ConfigurationError(f"{what} {url[:200]!r} must not contain user info")
    if parts.fragment or url.endswith("#"):
        raise ConfigurationError(f"{what} {url[:200]!r} must not contain a fragment")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigurationError(f"{what} {url[:200]!r}: {exc}") from exc
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could lead to another host or to plain http: fail instead.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port)


class _HttpSource(_RefreshingSource):
    """Shared HTTP fetching: bounded time and size, no redirects, optional CA and token."""

    def __init__(
        self,
        *,
        ttl: float,
        max_stale: float,
        min_refresh_interval: float,
        retry_interval: float,
        timeout: float,
        max_bytes: int,
        ca_file: str | os.PathLike[str] | None,
        token_file: str | os.PathLike[str] | None,
        allow_http: bool,
        clock: Callable[[], float],
        start: bool,
    ) -> None:
        self.timeout = _positive("timeout", timeout)
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ConfigurationError("max_bytes must be a positive integer")
        self.max_bytes = max_bytes
        self.allow_http = bool(allow_http)
        try:
            self._ssl = ssl.create_default_context(
                cafile=os.fspath(ca_file) if ca_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"ca_file {ca_file!r}: {exc}") from exc
        self.token_file = Path(token_file) if token_file is not None else None
        if self.token_file is not None and not self.token_file.is_file():
            raise ConfigurationError(f"token_file {os.fspath(self.token_file)!r} does not exist")
        super().__init__(
            ttl=ttl,
            max_stale=max_stale,
            min_refresh_interval=min_refresh_interval,
            retry_interval=retry_interval,
            clock=clock,
            start=start,
        )

    def _get_json(self, url: str, *, send_token: bool) -> Any:
        headers = {"Accept": "application/json", "User-Agent": "peer_middleware"}
        if send_token and self.token_file is not None:
            token = self.token_file.read_text(encoding="ascii").strip()
            headers["Authorization"] = f"Bearer {token}"
        handlers: list[urllib.request.BaseHandler] = [
            _NoRedirect(),
            urllib.request.HTTPSHandler(context=self._ssl),
        ]
        if _is_loopback(urlsplit(url).hostname or ""):
            handlers.append(urllib.request.ProxyHandler({}))
        opener = urllib.request.build_opener(*handlers)
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme validated
        deadline = time.monotonic() + self.timeout
        with opener.open(request, timeout=self.timeout) as response:
            status = response.status
            if status != 200:
                raise InvalidTrustMaterial(f"{url}: HTTP status {status}")
            chunks: list[bytes] = []
            size = 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{url}: no complete answer within {self.timeout}s")
                # Each read waits at most ``timeout``; the deadline bounds the total.
                chunk = response.read1(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise InvalidTrustMaterial(f"{url}: answer larger than {self.max_bytes} bytes")
                chunks.append(chunk)
        return _decode_json(b"".join(chunks), url)


class JwksUrl(_HttpSource):
    """Keys from a JWKS served over HTTPS (``url`` is validated when built).

    ``trust_domain`` / ``issuer`` restrict the keys to JWT-SVIDs of that trust
    domain or tokens of that issuer (a SPIRE OIDC discovery provider, for
    instance, publishes one trust domain's JWT-SVID keys). ``ca_file``
    verifies the server; ``token_file`` is a bearer token sent with each
    fetch (read each time, so a rotated token is picked up). Redirects are
    refused. ``start=False`` leaves the background thread unstarted until
    :meth:`refresh` is called.
    """

    _label = "jwks-url"

    def __init__(
        self,
        url: str,
        *,
        trust_domain: str | None = None,
        issuer: str | None = None,
        ttl: float = 300.0,
        max_stale: float = 3600.0,
        min_refresh_interval: float = 30.0,
        retry_interval: float = 5.0,
        timeout: float = 5.0,
        max_bytes: int = _MAX_DOCUMENT_BYTES,
        ca_file: str | os.PathLike[str] | None = None,
        token_file: str | os.PathLike[str] | None = None,
        allow_http: bool = False,
        clock: Callable[[], float] = time.time,
        start: bool = True,
    ) -> None:
        self.url = validate_url(url, "JWKS URL", allow_http=allow_http)
        if trust_domain is not None:
            _check_trust_domain(trust_domain)
        self.trust_domain = trust_domain
        self.issuer = issuer
        super().__init__(
            ttl=ttl,
            max_stale=max_stale,
            min_refresh_interval=min_refresh_interval,
            retry_interval=retry_interval,
            timeout=timeout,
            max_bytes=max_bytes,
            ca_file=ca_file,
            token_file=token_file,
            allow_http=allow_http,
            clock=clock,
            start=start,
        )

    def _fetch(self) -> list[VerificationKey]:
        document = self._get_json(self.url, send_token=True)
        return parse_jwks(document, trust_domain=self.trust_domain, issuer=self.issuer)

    def __repr__(self) -> str:
        return f"JwksUrl({self.url!r})"


class OidcDiscovery(_HttpSource):
    """Keys of an OpenID Connect issuer, found through its discovery document.

    Fetches ``<issuer>/.well-known/openid-configuration`` (or
    ``discovery_url``), requires its ``issuer`` to equal ``issuer`` exactly
    (OpenID Connect Discovery 1.0, section 4.3), validates its ``jwks_uri``
    as any JWKS URL, and fetches the keys; they verify only tokens whose
    ``iss`` is ``issuer``. This is what the Kubernetes API server publishes
    for service-account tokens; in a pod::

        OidcDiscovery(
            "https://kubernetes.default.svc.cluster.local",
            discovery_url="https://kubernetes.default.svc/.well-known/openid-configuration",
            ca_file="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            token_file="/var/run/secrets/kubernetes.io/serviceaccount/token",
        )

    ``token_file`` is sent to the discovery URL, and to ``jwks_uri`` only
    when it has the same origin.
    """

    _label = "oidc-discovery"

    def __init__(
        self,
        issuer: str,
        *,
        discovery_url: str | None = None,
        ttl: float = 300.0,
        max_stale: float = 3600.0,
        min_refresh_interval: float = 30.0,
        retry_interval: float = 5.0,
        timeout: float = 5.0,
        max_bytes: int = _MAX_DOCUMENT_BYTES,
        ca_file: str | os.PathLike[str] | None = None,
        token_file: str | os.PathLike[str] | None = None,
        allow_http: bool = False,
        clock: Callable[[], float] = time.time,
        start: bool = True,
    ) -> None:
        self.issuer = validate_url(issuer, "issuer", allow_http=allow_http)
        if urlsplit(issuer).query:
            raise ConfigurationError(f"issuer {issuer!r} must not contain a query")
        if discovery_url is None:
            parts = urlsplit(issuer)
            path = parts.path.rstrip("/") + "/.well-known/openid-configuration"
            discovery_url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self.discovery_url = validate_url(discovery_url, "discovery URL", allow_http=allow_http)
        #: The ``jwks_uri`` of the last discovery document.
        self.jwks_uri: str | None = None
        super().__init__(
            ttl=ttl,
            max_stale=max_stale,
            min_refresh_interval=min_refresh_interval,
            retry_interval=retry_interval,
            timeout=timeout,
            max_bytes=max_bytes,
            ca_file=ca_file,
            token_file=token_file,
            allow_http=allow_http,
            clock=clock,
            start=start,
        )

    def _fetch(self) -> list[VerificationKey]:
        document = self._get_json(self.discovery_url, send_token=True)
        if not isinstance(document, dict):
            raise InvalidTrustMaterial(
                f"{self.discovery_url}: the discovery document is not an object"
            )
        if document.get("issuer") != self.issuer:
            raise InvalidTrustMaterial(
                f"{self.discovery_url}: the discovery document names issuer "
                f"{str(document.get('issuer'))[:200]!r}, not {self.issuer!r}"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise InvalidTrustMaterial(
                f"{self.discovery_url}: the discovery document has no jwks_uri"
            )
        try:
            validate_url(jwks_uri, "jwks_uri", allow_http=self.allow_http)
        except ConfigurationError as exc:
            raise InvalidTrustMaterial(str(exc)) from None
        self.jwks_uri = jwks_uri
        same_origin = _origin(jwks_uri) == _origin(self.discovery_url)
        keys_document = self._get_json(jwks_uri, send_token=same_origin)
        return parse_jwks(keys_document, issuer=self.issuer)

    def __repr__(self) -> str:
        return f"OidcDiscovery({self.issuer!r})"
