"""X.509-SVID verification, in the app, against SPIFFE trust bundles.

:class:`X509SvidVerifier` authenticates a certificate chain (leaf first) the
way go-spiffe's ``x509svid.Verify`` does, and nothing more; authorization is
the policy's job:

1. bounded input: at most ``max_chain_length`` certificates of at most
   :data:`MAX_CERTIFICATE_BYTES` each, checked before anything is parsed;
2. the leaf's SPIFFE rules (X.509-SVID specification, sections 2, 4.1-4.3):
   exactly one URI SAN, a valid SPIFFE ID naming a workload (not the bare
   trust domain), no NUL byte in any SAN, not a CA, no ``keyCertSign`` or
   ``cRLSign``, ``digitalSignature`` present;
3. path validation by :mod:`cryptography.x509.verification` (RFC 5280,
   signatures, validity at the injectable clock's time, CA constraints)
   against the bundle of the *leaf's* trust domain only, the other presented
   certificates serving as intermediates.

cryptography's defaults are the web PKI's (CA/Browser Forum) profile. One of
its end-entity rules would refuse valid SVIDs, and is relaxed: the
authorityKeyIdentifier extension is required there but optional for SVIDs.
Everything else stays as strict as the web PKI: an empty subject needs a
critical subjectAltName (RFC 5280 section 4.2.1.6; Istio's SVIDs do this), an
extendedKeyUsage, when present, must include ``clientAuth``, and CA
certificates need a critical basicConstraints and keyUsage with
``keyCertSign``. CAs with URI name constraints are not supported by
cryptography's verifier and are refused.

Verified chains are cached (bounded, keyed by the exact values presented)
until the earliest ``notAfter`` in the chain or until the bundle's generation
changes, so a repeat caller costs a dictionary look-up.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ._cache import BoundedCache
from .bundles import CERTIFICATE_ERRORS, X509BundleSource
from .certs import PEM_BEGIN, PEM_END, has_non_positive_serial, split_pem
from .errors import (
    AuthenticationFailed,
    CertificateDecodingError,
    ConfigurationError,
    InvalidSpiffeIdError,
)
from .peer import never_still_valid
from .spiffe import SpiffeId

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "MAX_CHAIN_LENGTH",
    "VerifiedSvid",
    "X509SvidVerifier",
    "split_pem_chain",
    "svid_extension_policies",
]

#: Largest certificate accepted, as DER or PEM text (a 4096-bit RSA leaf is about 2 KB).
MAX_CERTIFICATE_BYTES = 16 * 1024
#: Upper bound for ``max_chain_length`` (leaf included).
MAX_CHAIN_LENGTH = 16


@dataclass(frozen=True, slots=True)
class VerifiedSvid:
    """What a verified X.509-SVID proved.

    ``spiffe_id`` is the leaf's SPIFFE ID, ``sha256`` the lower-case hex SHA-256
    of the leaf's DER (Envoy's XFCC ``Hash``), ``not_after`` the moment the
    verification stops holding: the earliest ``notAfter`` of the verified
    chain (the leaf's, unless a CA expires first). ``still_valid`` answers,
    without verifying again, whether the result still holds.
    """

    spiffe_id: SpiffeId
    sha256: str
    not_after: datetime
    #: True while this result still holds: now within the chain's validity and
    #: the trust bundle unchanged since it was verified.
    still_valid: Callable[[], bool] | None = field(
        default=None, compare=False, repr=False, hash=False
    )


def still_valid_of(verifier: object, result: object) -> Callable[[], bool]:
    """The ``still_valid`` check of ``verifier``'s ``result``, for the peer it proves.

    Only the results of :class:`X509SvidVerifier`'s own ``verify`` are taken
    at their word. A custom verifier, one that wraps this one or a subclass
    that overrides ``verify`` (to add a revocation check, say) gets a check
    that always fails: it is asked again on every request, because nothing
    says its own additions hold as long as the wrapped result does.
    """
    if getattr(type(verifier), "verify", None) is X509SvidVerifier.verify:
        check: Callable[[], bool] | None = getattr(result, "still_valid", None)
        if callable(check):
            return check
    return never_still_valid


def svid_extension_policies() -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """``(ca_policy, ee_policy)`` for :meth:`PolicyBuilder.extension_policies`.

    The web PKI's defaults, except that a leaf's authorityKeyIdentifier is
    optional (the X.509-SVID profile does not require it). Leaf rules specific
    to SPIFFE are checked by :class:`X509SvidVerifier` itself.
    """
    ca_policy = ExtensionPolicy.webpki_defaults_ca()
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None
    )
    return ca_policy, ee_policy


_CHAIN_REASONS = {
    "pem-text": "certificate chain has text outside PEM blocks",
    "pem-truncated": "certificate chain has a truncated PEM block",
    "pem-empty": "certificate chain holds no PEM certificate",
}


def split_pem_chain(text: str, *, max_certificates: int = MAX_CHAIN_LENGTH) -> list[str]:
    """Split concatenated PEM certificates into one string each, in order.

    :func:`peer_middleware.certs.split_pem`, with the reasons a certificate
    chain has always been refused with: text outside the blocks, a block that
    is not terminated, no block, or more than ``max_certificates`` blocks
    (counted before anything is parsed) raise
    :class:`~peer_middleware.errors.CertificateDecodingError`.
    """
    try:
        return split_pem(text, limit=max_certificates)
    except CertificateDecodingError as exc:
        reason = _CHAIN_REASONS.get(
            exc.fault, f"certificate chain has more than {max_certificates} entries"
        )
        raise CertificateDecodingError(reason, fault=exc.fault) from None


_BASE64_BODY = re.compile(r"[A-Za-z0-9+/=\r\n\t ]+")


def _load(item: bytes | str, index: int, count: int) -> tuple[x509.Certificate, bytes]:
    """Parse one presented certificate (DER bytes or one PEM block); return it and its DER.

    PEM is decoded here rather than by cryptography's PEM loader so that the
    DER (hashed for the certificate's fingerprint) is at hand without
    re-encoding the certificate.
    """
    where = "client certificate" if count == 1 else f"certificate {index + 1} of {count}"
    if isinstance(item, str):
        if not item.isascii():
            raise AuthenticationFailed(f"{where} is not ASCII PEM text")
        text: str | None = item
        size = len(item)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        size = len(data)
        text = None
        if data[:5] == b"-----" or data[:1].isspace():
            if not data.isascii():
                raise AuthenticationFailed(f"{where} is not ASCII PEM text")
            text = data.decode("ascii")
    else:
        raise AuthenticationFailed(f"{where} is a {type(item).__name__}, not bytes or str")
    if not size:
        raise AuthenticationFailed(f"{where} is empty")
    if size > MAX_CERTIFICATE_BYTES:
        raise AuthenticationFailed(f"{where} is larger than {MAX_CERTIFICATE_BYTES} bytes")
    if text is not None:
        text = text.strip()
        # Exactly one PEM block: text before or after it, or a second block,
        # is refused rather than ignored.
        if not text.startswith(PEM_BEGIN) or not text.endswith(PEM_END) or text.count("-----") != 4:
            raise AuthenticationFailed(f"{where} is not exactly one PEM certificate")
        body = text[len(PEM_BEGIN) : -len(PEM_END)]
        if _BASE64_BODY.fullmatch(body) is None:
            raise AuthenticationFailed(f"{where} is not valid PEM: bad base64")
        try:
            data = binascii.a2b_base64(body)
        except binascii.Error as exc:
            raise AuthenticationFailed(f"{where} is not valid PEM: {exc}") from None
    if has_non_positive_serial(data):
        raise AuthenticationFailed(f"{where} has a serial number that is not positive")
    try:
        return x509.load_der_x509_certificate(data), data
    except CERTIFICATE_ERRORS as exc:
        raise AuthenticationFailed(f"{where} is not a valid certificate: {exc}") from None


def _leaf_rules(leaf: x509.Certificate) -> SpiffeId:
    """The X.509-SVID leaf rules; return the leaf's SPIFFE ID."""
    try:
        extensions = leaf.extensions
    except CERTIFICATE_ERRORS as exc:
        raise AuthenticationFailed(f"leaf certificate has malformed extensions: {exc}") from None
    # One pass over the extensions (cryptography refuses duplicates when parsing).
    san: x509.SubjectAlternativeName | None = None
    constraints: x509.BasicConstraints | None = None
    usage: x509.KeyUsage | None = None
    for extension in extensions:
        value = extension.value
        kind = type(value)
        if kind is x509.SubjectAlternativeName:
            san = value
        elif kind is x509.BasicConstraints:
            constraints = value
        elif kind is x509.KeyUsage:
            usage = value
    if san is None:
        raise AuthenticationFailed("leaf certificate has no subjectAltName (no SPIFFE ID)")
    uris: list[str] = []
    for name in san:
        text = getattr(name, "value", None)
        if isinstance(text, str):
            if "\x00" in text:
                raise AuthenticationFailed("leaf certificate has a NUL byte in a subjectAltName")
            if type(name) is x509.UniformResourceIdentifier:
                uris.append(text)
    if not uris:
        raise AuthenticationFailed("leaf certificate has no URI SAN (no SPIFFE ID)")
    if len(uris) > 1:
        raise AuthenticationFailed(
            f"leaf certificate has {len(uris)} URI SANs; an X.509-SVID has exactly one"
        )
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except InvalidSpiffeIdError as exc:
        raise AuthenticationFailed(f"leaf certificate URI SAN is not a SPIFFE ID: {exc}") from None
    if spiffe_id.is_trust_domain_id:
        raise AuthenticationFailed(
            f"leaf certificate URI SAN {spiffe_id.uri} names a trust domain, not a workload"
        )
    if constraints is not None and constraints.ca:
        raise AuthenticationFailed("leaf certificate is a CA (basicConstraints CA=TRUE)")
    if usage is None:
        raise AuthenticationFailed(
            "leaf certificate has no keyUsage; an X.509-SVID needs digitalSignature"
        )
    if usage.key_cert_sign:
        raise AuthenticationFailed("leaf certificate has keyUsage keyCertSign")
    if usage.crl_sign:
        raise AuthenticationFailed("leaf certificate has keyUsage cRLSign")
    if not usage.digital_signature:
        raise AuthenticationFailed("leaf certificate lacks keyUsage digitalSignature")
    return spiffe_id


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class X509SvidVerifier:
    """Verify X.509-SVID chains against the bundle of the leaf's trust domain.

    ``bundles`` supplies the trust anchors; ``clock`` returns the current time
    (timezone-aware; the system clock by default); ``cache_size`` bounds the
    cache of verified chains (0 disables it); ``max_chain_length`` bounds the
    presented chain, leaf included (at most :data:`MAX_CHAIN_LENGTH`).

    ``verify`` takes the chain leaf first, each certificate DER ``bytes`` or
    PEM text, and returns a :class:`VerifiedSvid` or raises
    :class:`AuthenticationFailed` with a precise reason. Thread-safe.
    """

    __slots__ = (
        "_cache",
        "_clock",
        "_policies",
        "_stores",
        "bundles",
        "max_chain_length",
    )

    def __init__(
        self,
        bundles: X509BundleSource,
        *,
        clock: Callable[[], datetime] | None = None,
        cache_size: int = 1024,
        max_chain_length: int = 8,
    ) -> None:
        if not isinstance(bundles, X509BundleSource):
            raise ConfigurationError(f"{bundles!r} is not an X509BundleSource")
        if clock is not None and not callable(clock):
            raise ConfigurationError("clock must be callable")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigurationError("cache_size must be a non-negative integer")
        if (
            isinstance(max_chain_length, bool)
            or not isinstance(max_chain_length, int)
            or not 1 <= max_chain_length <= MAX_CHAIN_LENGTH
        ):
            raise ConfigurationError(f"max_chain_length must be between 1 and {MAX_CHAIN_LENGTH}")
        self.bundles = bundles
        self._clock = clock
        self.max_chain_length = max_chain_length
        self._cache = BoundedCache[tuple[bytes | str, ...], VerifiedSvid](cache_size)
        self._policies = svid_extension_policies()
        # trust domain -> (generation, store)
        self._stores: dict[str, tuple[int, Store]] = {}

    def verify(self, chain: Sequence[bytes | str]) -> VerifiedSvid:
        """Verify ``chain`` (leaf first); see the class docstring."""
        if isinstance(chain, (str, bytes)):
            raise AuthenticationFailed("certificate chain must be a sequence of certificates")
        count = len(chain)
        if count == 0:
            raise AuthenticationFailed("no client certificate presented")
        if count > self.max_chain_length:
            raise AuthenticationFailed(
                f"certificate chain has {count} entries; at most {self.max_chain_length} "
                "are accepted"
            )
        key = tuple(chain)
        cached = self._cache.get(key)
        if cached is not None and cached.still_valid is not None and cached.still_valid():
            return cached
        result = self._verify(key, count, self.bundles.generation)
        self._cache.put(key, result)
        return result

    def _validity(self, generation: int, not_before: float, not_after: float) -> Callable[[], bool]:
        """The ``still_valid`` check of a result verified under bundle ``generation``."""
        bundles = self.bundles
        clock = self._clock
        if clock is None:

            def still_valid() -> bool:
                return not_before <= time.time() <= not_after and bundles.generation == generation

        else:

            def still_valid() -> bool:
                now = _utc(clock()).timestamp()
                return not_before <= now <= not_after and bundles.generation == generation

        return still_valid

    def _store(self, trust_domain: str, generation: int) -> Store | None:
        cached = self._stores.get(trust_domain)
        if cached is not None and cached[0] == generation:
            return cached[1]
        authorities = self.bundles.x509_authorities(trust_domain)
        if not authorities:
            return None
        store = Store(list(authorities))
        if len(self._stores) > 4096:  # pragma: no cover - bounded by configured trust domains
            self._stores.clear()
        self._stores[trust_domain] = (generation, store)
        return store

    def _verify(self, chain: tuple[bytes | str, ...], count: int, generation: int) -> VerifiedSvid:
        parsed = [_load(item, index, count) for index, item in enumerate(chain)]
        leaf, leaf_der = parsed[0]
        spiffe_id = _leaf_rules(leaf)
        trust_domain = spiffe_id.trust_domain
        store = self._store(trust_domain, generation)
        if store is None:
            raise AuthenticationFailed(f"no trust bundle for trust domain {trust_domain!r}")
        clock = self._clock
        now = datetime.now(timezone.utc) if clock is None else _utc(clock())
        not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
        if now < not_before:
            raise AuthenticationFailed(
                f"leaf certificate is not valid before {not_before.isoformat()}"
            )
        if now > not_after:
            raise AuthenticationFailed(f"leaf certificate expired at {not_after.isoformat()}")
        ca_policy, ee_policy = self._policies
        verifier = (
            PolicyBuilder()
            .store(store)
            .time(now)
            .max_chain_depth(self.max_chain_length)
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(leaf, [cert for cert, _ in parsed[1:]])
        except VerificationError as exc:
            raise AuthenticationFailed(
                f"certificate chain does not verify against the trust bundle of "
                f"{trust_domain!r}: {exc}"
            ) from None
        except CERTIFICATE_ERRORS as exc:
            # Fields cryptography parses only when path validation reads them.
            raise AuthenticationFailed(f"certificate chain is malformed: {exc}") from None
        for cert in verified.chain[1:]:
            not_after = min(not_after, cert.not_valid_after_utc)
            not_before = max(not_before, cert.not_valid_before_utc)
        digest = hashlib.sha256(leaf_der).hexdigest()
        validity = self._validity(generation, not_before.timestamp(), not_after.timestamp())
        return VerifiedSvid(spiffe_id, digest, not_after, validity)

    def __repr__(self) -> str:
        return f"X509SvidVerifier({self.bundles!r})"
