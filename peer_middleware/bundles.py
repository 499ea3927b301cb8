"""X.509 trust bundles: the CA certificates each trust domain's SVIDs chain to.

A *bundle source* answers one question, "which CA certificates sign X.509-SVIDs
of this trust domain?", and says when its answer changed (``generation``), so
verifiers can drop what they cached. Sources:

* :class:`StaticX509Bundle`: fixed certificates, per trust domain;
* :class:`X509BundleFile`: a PEM file (one trust domain) or a SPIFFE bundle
  JSON file (one trust domain, or an object mapping several), reloaded when it
  changes, from a daemon thread (:mod:`peer_middleware._reload`): a new file
  that cannot be parsed keeps the last good bundle and logs an error;
* :class:`SpiffeBundleSet`: several sources at once (federation), each trust
  domain in one of them only;
* :class:`~peer_middleware.workload.WorkloadApiX509Source`: the SPIFFE
  Workload API (SPIRE agent), with the optional ``spiffe`` package.

SPIFFE bundle JSON is a JWK set (SPIFFE Trust Domain and Bundle
specification, section 4): the keys with ``"use": "x509-svid"`` each carry one
CA certificate, base64 DER, in ``x5c``; keys for JWT-SVIDs and keys with an
unknown ``use`` are ignored. A bundle's keys are authoritative for its trust
domain (section 3): a well-formed bundle without any ``x509-svid`` key, such as
``{"keys": []}``, means that no X.509-SVID of that trust domain is valid. It
replaces the bundle it follows and every such SVID is then refused; it is not
"invalid, keep the last one". A trust domain named twice, in one document
(``"c.local"`` twice, or next to ``"spiffe://c.local"``) or by two sources of
one :class:`SpiffeBundleSet`, is a configuration error: which of the two
bundles is meant cannot be known. Example::

    bundles = SpiffeBundleSet(
        X509BundleFile("/etc/spiffe/bundle.pem", trust_domain="cluster.local"),
        X509BundleFile("/etc/spiffe/federated.json"),  # {"partner.example": {"keys": [...]}}
    )
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cryptography import x509

from ._reload import Outcome, Reloader
from .errors import ConfigurationError, DuplicateJsonName, InvalidTrustMaterial
from .spiffe import SCHEME_PREFIX, configured_trust_domain

__all__ = [
    "MAX_BUNDLE_BYTES",
    "DuplicateJsonName",
    "SpiffeBundleSet",
    "StaticX509Bundle",
    "X509BundleFile",
    "X509BundleSource",
    "parse_pem_bundle",
    "parse_spiffe_bundle",
    "parse_trust_bundles",
    "spiffe_bundle_json",
]

logger = logging.getLogger("peer_middleware")

#: Largest bundle file read (bytes); a bigger file is refused, not truncated.
MAX_BUNDLE_BYTES = 4 * 1024 * 1024

_Authorities = Mapping[str, tuple[x509.Certificate, ...]]


@runtime_checkable
class X509BundleSource(Protocol):
    """Where X.509 trust anchors come from, per trust domain.

    ``x509_authorities`` returns the CA certificates for ``trust_domain``, or
    ``None`` when the source knows nothing of it. ``generation`` changes
    whenever the trust material changes: verifiers cache by it. Both are
    called on the request path, so they must be cheap and never block.
    """

    def x509_authorities(self, trust_domain: str) -> Sequence[x509.Certificate] | None: ...

    @property
    def generation(self) -> int: ...


def _trust_domain(name: str) -> str:
    if not isinstance(name, str):
        raise ConfigurationError(f"trust domain {name!r} must be a string")
    if name.startswith(SCHEME_PREFIX):
        name = name[len(SCHEME_PREFIX) :]
    return configured_trust_domain(name)


def _freeze(
    authorities: Mapping[str, Iterable[x509.Certificate]], *, allow_empty: bool = False
) -> _Authorities:
    """Check and copy ``authorities``; ``allow_empty`` admits a trust domain without a CA.

    An empty set of authorities is what a SPIFFE bundle without ``x509-svid``
    keys says (every X.509-SVID of the trust domain is refused); a mapping
    written in code with an empty list is taken for a mistake.
    """
    frozen: dict[str, tuple[x509.Certificate, ...]] = {}
    if not isinstance(authorities, Mapping):
        raise ConfigurationError("authorities must map trust domain names to certificates")
    for name, certificates in authorities.items():
        domain = _trust_domain(name)
        if isinstance(certificates, x509.Certificate):
            certificates = (certificates,)
        certs = tuple(certificates)
        if not certs and not allow_empty:
            raise ConfigurationError(f"trust domain {domain!r} has no CA certificate")
        for cert in certs:
            if not isinstance(cert, x509.Certificate):
                raise ConfigurationError(
                    f"trust domain {domain!r}: {cert!r} is not an x509.Certificate"
                )
        if domain in frozen:
            raise ConfigurationError(f"trust domain {domain!r} given twice")
        frozen[domain] = certs
    return frozen


#: What cryptography raises for a certificate it cannot parse (only some are ValueErrors;
#: a name attribute of the wrong type is a TypeError, raised when the name is first read).
CERTIFICATE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


_BUNDLE_ENTRY_ERRORS: tuple[type[Exception], ...] = (binascii.Error, *CERTIFICATE_ERRORS)


def parse_pem_bundle(data: bytes | str) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM bundle; raises :class:`ValueError` if there are none.

    PEM has no way to say "no certificate" on purpose: an empty file is what a
    writer that truncated the file and has not written it yet leaves behind, so
    it is refused like any other content that cannot be parsed (a SPIFFE bundle,
    ``{"keys": []}``, says "trust nothing" unambiguously).
    """
    raw = data.encode("ascii", "strict") if isinstance(data, str) else data
    if len(raw) > MAX_BUNDLE_BYTES:
        raise InvalidTrustMaterial(f"bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    if b"-----BEGIN" not in raw:
        raise InvalidTrustMaterial("no certificate in the PEM bundle")
    try:
        certs = tuple(x509.load_pem_x509_certificates(raw))
    except CERTIFICATE_ERRORS as exc:
        raise InvalidTrustMaterial(
            f"PEM bundle holds a certificate that cannot be parsed: {exc}"
        ) from None
    if not certs:  # pragma: no cover - cryptography raises for an empty bundle
        raise InvalidTrustMaterial("no certificate in the PEM bundle")
    return certs


def parse_spiffe_bundle(document: bytes | str | Mapping[str, Any]) -> tuple[x509.Certificate, ...]:
    """The X.509 authorities of one SPIFFE bundle (a JWK set).

    Keys whose ``use`` is ``x509-svid`` must carry exactly one certificate in
    ``x5c`` (SPIFFE Trust Domain and Bundle, section 4.2.2); others are
    ignored. A bundle without such a key (``{"keys": []}``) gives an empty
    tuple: its trust domain has no X.509 authority, and none of its SVIDs is
    valid. Raises :class:`ValueError` when the document is malformed (not an
    object, no ``keys`` array, a name given twice in one object, a key that
    is not an object, an ``x509-svid`` key without exactly one certificate).
    """
    value = _load_json(document) if not isinstance(document, Mapping) else document
    keys = value.get("keys")
    if not isinstance(keys, list):
        raise InvalidTrustMaterial("SPIFFE bundle has no 'keys' array")
    certs: list[x509.Certificate] = []
    for index, key in enumerate(keys):
        if not isinstance(key, Mapping):
            raise InvalidTrustMaterial(f"SPIFFE bundle key {index} is not an object")
        if key.get("use") != "x509-svid":
            continue
        x5c = key.get("x5c")
        if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
            raise InvalidTrustMaterial(
                f"SPIFFE bundle key {index}: x5c must hold exactly one certificate"
            )
        try:
            der = base64.b64decode(x5c[0], validate=True)
            certs.append(x509.load_der_x509_certificate(der))
        except _BUNDLE_ENTRY_ERRORS as exc:
            reason = f"SPIFFE bundle key {index}: x5c is not a certificate: {exc}"
            raise InvalidTrustMaterial(reason) from None
    return tuple(certs)


class _UniqueNames:
    """A ``json.loads`` ``object_pairs_hook`` that notes the first name given twice.

    Python's json keeps the last of two equal names silently, which would let
    a second entry override the first unseen. Objects are completed innermost
    first, so the last call is for the outermost object.
    """

    __slots__ = ("calls", "duplicate")

    def __init__(self) -> None:
        self.calls = 0
        self.duplicate: tuple[str, int] | None = None

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        value = dict(pairs)
        if len(value) != len(pairs) and self.duplicate is None:
            seen: set[str] = set()
            for name, _ in pairs:
                if name in seen:
                    self.duplicate = (name, self.calls)
                    break
                seen.add(name)
        return value


def _parse_json(data: bytes | str) -> tuple[Any, DuplicateJsonName | None]:
    """The parsed document, and the first name it gives twice in one object, if any."""
    hook = _UniqueNames()
    value = json.loads(data, object_pairs_hook=hook)
    if hook.duplicate is None:
        return value, None
    name, call = hook.duplicate
    return value, DuplicateJsonName(name, top_level=call == hook.calls)


def strict_json_loads(data: bytes | str) -> Any:
    """``json.loads``, refusing an object that gives a name twice.

    RFC 8259 (section 4) leaves duplicate names to the parser, and RFC 7517
    (section 4) lets a JWK parser refuse them: trust material is refused.
    Raises :class:`DuplicateJsonName`, or the errors of ``json.loads``.
    """
    value, duplicate = _parse_json(data)
    if duplicate is not None:
        raise duplicate
    return value


def _load_json(document: bytes | str) -> Mapping[str, Any]:
    if len(document) > MAX_BUNDLE_BYTES:
        raise InvalidTrustMaterial(f"bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        value, duplicate = _parse_json(document)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidTrustMaterial(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidTrustMaterial("a SPIFFE bundle must be a JSON object")
    if duplicate is not None:
        if duplicate.top_level and "keys" not in value:
            # The outermost object of a bundle-set file maps trust domains.
            raise InvalidTrustMaterial(
                f"trust domain {_shown_domain(duplicate.name)!r} given twice"
            )
        raise InvalidTrustMaterial(str(duplicate))
    return value


def _shown_domain(name: str) -> str:
    try:
        return _trust_domain(name)
    except ConfigurationError:
        return name


def parse_trust_bundles(
    data: bytes, *, trust_domain: str | None = None
) -> dict[str, tuple[x509.Certificate, ...]]:
    """Parse a bundle file's contents into ``{trust domain: certificates}``.

    Accepted forms: PEM certificates (``trust_domain`` required); one SPIFFE
    bundle, a JWK set (``trust_domain`` required); a JSON object mapping trust
    domain names (``cluster.local`` or ``spiffe://cluster.local``) to SPIFFE
    bundles. A SPIFFE bundle without ``x509-svid`` keys maps its trust domain
    to an empty tuple (see :func:`parse_spiffe_bundle`). Raises
    :class:`ValueError` on anything else, and when the mapping names a trust
    domain twice (even as ``c.local`` and ``spiffe://c.local``).
    """
    if len(data) > MAX_BUNDLE_BYTES:
        raise InvalidTrustMaterial(f"bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    text = data.lstrip()
    if not text.startswith(b"{"):
        if trust_domain is None:
            raise InvalidTrustMaterial("a PEM bundle needs trust_domain=")
        return {trust_domain: parse_pem_bundle(data)}
    value = _load_json(data)
    if "keys" in value:
        if trust_domain is None:
            raise InvalidTrustMaterial("a single SPIFFE bundle needs trust_domain=")
        return {trust_domain: parse_spiffe_bundle(value)}
    if not value:
        raise InvalidTrustMaterial("empty JSON object: no trust domain")
    result: dict[str, tuple[x509.Certificate, ...]] = {}
    named: set[str] = set()
    for name, bundle in value.items():
        try:
            domain = _trust_domain(name)
        except ConfigurationError as exc:
            raise InvalidTrustMaterial(str(exc)) from None
        if domain in named:
            raise InvalidTrustMaterial(f"trust domain {domain!r} given twice")
        named.add(domain)
        if trust_domain is not None and domain != trust_domain:
            continue
        if not isinstance(bundle, Mapping):
            raise InvalidTrustMaterial(f"bundle for {domain!r} is not a JSON object")
        try:
            result[domain] = parse_spiffe_bundle(bundle)
        except ValueError as exc:
            raise InvalidTrustMaterial(f"trust domain {domain!r}: {exc}") from None
    if not result:
        raise InvalidTrustMaterial(f"no bundle for trust domain {trust_domain!r}")
    return result


class StaticX509Bundle:
    """Fixed X.509 authorities: ``StaticX509Bundle({"cluster.local": [ca_cert, ...]})``.

    Trust domain names may be given bare or as ``spiffe://<name>``; each needs
    at least one certificate (:meth:`from_spiffe_bundle` also accepts a bundle
    without any: its trust domain then trusts nothing).
    """

    __slots__ = ("_authorities",)

    def __init__(self, authorities: Mapping[str, Iterable[x509.Certificate]]) -> None:
        self._authorities = _freeze(authorities)

    @classmethod
    def from_pem(cls, trust_domain: str, pem: bytes | str) -> StaticX509Bundle:
        """One trust domain's authorities from PEM text (one or more certificates)."""
        try:
            certs = parse_pem_bundle(pem)
        except ValueError as exc:
            raise ConfigurationError(f"bundle for {trust_domain!r}: {exc}") from exc
        return cls({trust_domain: certs})

    @classmethod
    def from_spiffe_bundle(
        cls, document: bytes | str, *, trust_domain: str | None = None
    ) -> StaticX509Bundle:
        """Authorities from SPIFFE bundle JSON (see :func:`parse_trust_bundles`)."""
        raw = document.encode("utf-8") if isinstance(document, str) else document
        domain = None if trust_domain is None else _trust_domain(trust_domain)
        try:
            authorities = parse_trust_bundles(raw, trust_domain=domain)
        except ValueError as exc:
            raise ConfigurationError(f"SPIFFE bundle: {exc}") from exc
        bundle = cls.__new__(cls)
        bundle._authorities = _freeze(authorities, allow_empty=True)
        return bundle

    @property
    def generation(self) -> int:
        return 0

    @property
    def trust_domains(self) -> frozenset[str]:
        return frozenset(self._authorities)

    def x509_authorities(self, trust_domain: str) -> Sequence[x509.Certificate] | None:
        return self._authorities.get(trust_domain)

    def __repr__(self) -> str:
        return f"StaticX509Bundle(trust_domains={sorted(self._authorities)!r})"


class X509BundleFile:
    """Authorities read from a file, reloaded when it changes.

    ``path`` holds PEM certificates (then ``trust_domain`` is required), one
    SPIFFE bundle (``trust_domain`` required) or a JSON object mapping trust
    domain names to SPIFFE bundles (``trust_domain``, if given, selects one).
    The file is read once here, and a file that cannot be read or parsed
    raises :class:`ConfigurationError`: a service must not start without
    trust. A well-formed SPIFFE bundle without ``x509-svid`` keys
    (``{"keys": []}``) is not such a file: it loads, and its trust domain
    trusts nothing (a warning is logged).

    Every ``reload_interval`` seconds a daemon thread compares the file's
    identity (inode, size, modification time) and, when that changed, its
    SHA-256; new contents are parsed off the request path and swapped in
    atomically, and :attr:`generation` increases. A well-formed bundle always
    replaces the last one, an empty one included: emptying a trust domain's
    bundle revokes its CAs at the next reload. A file that cannot be read or
    parsed (an empty or truncated PEM file, broken JSON, a trust domain given
    twice) keeps the last good bundle and logs an error (once per distinct
    content). ``reload_interval=None`` starts no thread: call :meth:`reload`.
    Replacing the file with a rename (as Kubernetes does for mounted
    ConfigMaps and Secrets) is seen like any other change. The thread is the
    shared :class:`~peer_middleware._reload.Reloader`'s: it holds the source
    only weakly, so an abandoned source is collected and its thread ends.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        trust_domain: str | None = None,
        reload_interval: float | None = 5.0,
    ) -> None:
        self.path = Path(path)
        self.trust_domain = None if trust_domain is None else _trust_domain(trust_domain)
        if reload_interval is not None and (
            isinstance(reload_interval, bool)
            or not isinstance(reload_interval, (int, float))
            or not reload_interval > 0
        ):
            raise ConfigurationError("reload_interval must be a positive number of seconds or None")
        self.reload_interval = reload_interval
        self._signature: tuple[int, ...] | None = None
        self._digest: bytes | None = None
        self._failed_digest: bytes | None = None
        try:
            data, signature = self._read()
            parsed = parse_trust_bundles(data, trust_domain=self.trust_domain)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"trust bundle {str(self.path)!r}: {exc}") from exc
        authorities = _freeze(parsed, allow_empty=True)
        self._warn_empty(authorities)
        self._signature = signature
        self._digest = hashlib.sha256(data).digest()
        self._reloader: Reloader[X509BundleFile, _Authorities] = Reloader(
            self,
            _reread,
            subject=f"trust bundle {str(self.path)!r}",
            noun="bundle",
            logger=logger,
            level=logging.ERROR,
            interval=None if reload_interval is None else float(reload_interval),
            thread_name=f"peer_middleware bundle watcher {self.path.name}",
            start=False,
        )
        self._reloader.put(authorities)
        self._reloader.start()

    def _read(self) -> tuple[bytes, tuple[int, ...]]:
        with open(self.path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_size > MAX_BUNDLE_BYTES:
                raise OSError(f"file is larger than {MAX_BUNDLE_BYTES} bytes")
            data = handle.read(MAX_BUNDLE_BYTES + 1)
        if len(data) > MAX_BUNDLE_BYTES:
            raise OSError(f"file is larger than {MAX_BUNDLE_BYTES} bytes")
        return data, (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)

    @property
    def _authorities(self) -> _Authorities:
        snapshot = self._reloader.snapshot
        return {} if snapshot is None else snapshot.value

    @property
    def _thread(self) -> threading.Thread | None:
        return self._reloader.thread

    @property
    def generation(self) -> int:
        snapshot = self._reloader.snapshot
        return 0 if snapshot is None else snapshot.generation

    @property
    def trust_domains(self) -> frozenset[str]:
        return frozenset(self._authorities)

    def x509_authorities(self, trust_domain: str) -> Sequence[x509.Certificate] | None:
        snapshot = self._reloader.snapshot
        return None if snapshot is None else snapshot.value.get(trust_domain)

    def reload(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed; True when new authorities were swapped in.

        Never raises: a missing, unreadable or invalid file is logged at ERROR
        and the last good authorities stay in use.
        """
        return self._reloader.attempt(force=force) is Outcome.CHANGED

    def _warn_empty(self, authorities: _Authorities) -> None:
        for domain in sorted(authorities):
            if not authorities[domain]:
                logger.warning(
                    "trust bundle %r: trust domain %r holds no X.509 authority: "
                    "its X.509-SVIDs are all refused",
                    str(self.path),
                    domain,
                )

    def close(self) -> None:
        """Stop watching the file (the current authorities stay usable)."""
        self._reloader.close()

    def __enter__(self) -> X509BundleFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"X509BundleFile({str(self.path)!r}, trust_domains={sorted(self._authorities)!r})"


def _reread(bundle: X509BundleFile, force: bool) -> _Authorities | None:
    """The file's new authorities for the reloader; ``None`` when nothing changed.

    Raises when the file cannot be read (:class:`OSError`) or parsed: the
    reloader then logs why and keeps the last good authorities. Content
    already refused once is not parsed, nor logged, again.
    """
    info = os.stat(bundle.path)
    signature: tuple[int, ...] = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    if not force and signature == bundle._signature:
        return None
    data, signature = bundle._read()
    digest = hashlib.sha256(data).digest()
    bundle._signature = signature
    if (digest == bundle._digest and not force) or digest == bundle._failed_digest:
        return None
    try:
        authorities = _freeze(
            parse_trust_bundles(data, trust_domain=bundle.trust_domain), allow_empty=True
        )
    except ValueError:  # ConfigurationError included
        bundle._failed_digest = digest
        raise
    bundle._failed_digest = None
    bundle._digest = digest
    logger.info(
        "trust bundle %r reloaded: trust domains %s",
        str(bundle.path),
        ", ".join(sorted(authorities)),
    )
    bundle._warn_empty(authorities)
    return authorities


def _trust_domains_of(source: X509BundleSource) -> frozenset[str]:
    """The trust domains ``source`` says it knows (its ``trust_domains``, if it has one)."""
    domains = getattr(source, "trust_domains", None)
    if not isinstance(domains, Iterable) or isinstance(domains, (str, bytes)):
        return frozenset()
    return frozenset(domain for domain in domains if isinstance(domain, str))


class SpiffeBundleSet:
    """Several bundle sources at once, for federation: ``SpiffeBundleSet(a, b, ...)``.

    Each trust domain must come from one source only: two sources that both
    know a trust domain (by their ``trust_domains``, which the sources of this
    package have) are a :class:`ConfigurationError` here. A source that comes
    to know a trust domain another source already knows (a reloaded file that
    gained one) makes that trust domain trust nothing, with an error logged,
    until only one source knows it: which bundle is meant cannot be known.
    A source that knows a trust domain but holds no authority for it (an
    empty SPIFFE bundle) is the answer: no other source is asked.
    :attr:`generation` changes whenever any source's does.
    """

    __slots__ = ("_generation", "_lock", "_reported", "_seen", "sources")

    def __init__(self, *sources: X509BundleSource) -> None:
        if not sources:
            raise ConfigurationError("SpiffeBundleSet() needs at least one bundle source")
        for source in sources:
            if not isinstance(source, X509BundleSource):
                raise ConfigurationError(f"{source!r} is not an X509BundleSource")
        owners: dict[str, X509BundleSource] = {}
        for source in sources:
            for domain in sorted(_trust_domains_of(source)):
                owner = owners.get(domain)
                if owner is not None:
                    raise ConfigurationError(
                        f"trust domain {domain!r} is in two bundle sources of one "
                        f"SpiffeBundleSet: {owner!r} and {source!r}"
                    )
                owners[domain] = source
        if len({id(source) for source in sources}) != len(sources):
            raise ConfigurationError("SpiffeBundleSet() is given one bundle source twice")
        self.sources = tuple(sources)
        self._seen = tuple(source.generation for source in self.sources)
        self._generation = 0
        self._lock = threading.Lock()
        # Trust domain known to several sources -> the sources' generations when logged.
        self._reported: dict[str, tuple[int, ...]] = {}

    @property
    def generation(self) -> int:
        seen = tuple(source.generation for source in self.sources)
        if seen != self._seen:
            with self._lock:
                if seen != self._seen:
                    self._seen = seen
                    self._generation += 1
        return self._generation

    @property
    def trust_domains(self) -> frozenset[str]:
        """The trust domains its sources say they know (by their own ``trust_domains``)."""
        domains: set[str] = set()
        for source in self.sources:
            domains |= _trust_domains_of(source)
        return frozenset(domains)

    def x509_authorities(self, trust_domain: str) -> Sequence[x509.Certificate] | None:
        found: Sequence[x509.Certificate] | None = None
        for source in self.sources:
            authorities = source.x509_authorities(trust_domain)
            if authorities is None:
                continue
            if found is not None:
                # Logged once per state of the sources, not on every request.
                state = tuple(source.generation for source in self.sources)
                if self._reported.get(trust_domain) != state:
                    self._reported[trust_domain] = state
                    logger.error(
                        "trust domain %r is in more than one source of %r: "
                        "its X.509-SVIDs are all refused",
                        trust_domain,
                        self,
                    )
                return ()
            found = authorities
        return found

    def __repr__(self) -> str:
        return f"SpiffeBundleSet{self.sources!r}"


def _b64url_uint(value: int, length: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(length, "big")).rstrip(b"=").decode("ascii")


def spiffe_bundle_json(
    authorities: Iterable[x509.Certificate], *, sequence: int | None = None
) -> str:
    """A SPIFFE bundle (JWK set) holding ``authorities`` as ``x509-svid`` keys.

    The inverse of :func:`parse_spiffe_bundle`; each key carries its public
    parameters and the certificate in ``x5c`` (SPIFFE Trust Domain and Bundle,
    section 4.2.2). Supports EC (P-256, P-384, P-521) and RSA keys.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import Encoding

    keys: list[dict[str, Any]] = []
    for cert in authorities:
        public = cert.public_key()
        jwk: dict[str, Any]
        if isinstance(public, ec.EllipticCurvePublicKey):
            size = (public.curve.key_size + 7) // 8
            crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(
                public.curve.name
            )
            if crv is None:
                raise ConfigurationError(f"unsupported curve {public.curve.name}")
            numbers = public.public_numbers()
            jwk = {
                "kty": "EC",
                "crv": crv,
                "x": _b64url_uint(numbers.x, size),
                "y": _b64url_uint(numbers.y, size),
            }
        elif isinstance(public, rsa.RSAPublicKey):
            rsa_numbers = public.public_numbers()
            jwk = {
                "kty": "RSA",
                "n": _b64url_uint(rsa_numbers.n, (rsa_numbers.n.bit_length() + 7) // 8),
                "e": _b64url_uint(rsa_numbers.e, (rsa_numbers.e.bit_length() + 7) // 8),
            }
        else:
            raise ConfigurationError(f"unsupported CA key type {type(public).__name__}")
        jwk["use"] = "x509-svid"
        jwk["x5c"] = [base64.b64encode(cert.public_bytes(Encoding.DER)).decode("ascii")]
        keys.append(jwk)
    document: dict[str, Any] = {"keys": keys}
    if sequence is not None:
        document["spiffe_sequence"] = sequence
    return json.dumps(document, indent=2) + "\n"
