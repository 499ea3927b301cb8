"""SPIFFE IDs, parsed strictly.

A SPIFFE ID is ``spiffe://<trust domain><path>`` (SPIFFE-ID specification,
section 2). This module parses it with no cryptography involved: it says what
a string *is*, never whether anybody proved it.

Rules enforced, each with its own exception (see :mod:`peer_middleware.errors`):

* the scheme is exactly ``spiffe://`` in lower case (section 2.1);
* the trust domain is non-empty, at most 255 bytes, and made of ``a-z``,
  ``0-9``, ``.``, ``-`` and ``_`` only: no upper case, no port, no user info
  (section 2.1);
* the path is empty or a series of ``/segment`` where a segment is made of
  ``a-z``, ``A-Z``, ``0-9``, ``.``, ``-`` and ``_``, is not empty and is not
  ``.`` or ``..``; no trailing slash, no percent-encoding (section 2.2);
* no query and no fragment (section 2);
* the whole ID is at most 2048 bytes (section 2.3).

Example::

    >>> sid = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/checkout")
    >>> sid.trust_domain, sid.namespace, sid.service_account
    ('cluster.local', 'shop', 'checkout')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import (
    ConfigurationError,
    InvalidSpiffeIdError,
    SpiffeIdDotSegment,
    SpiffeIdEmpty,
    SpiffeIdEmptySegment,
    SpiffeIdFragment,
    SpiffeIdInvalidPathCharacter,
    SpiffeIdInvalidScheme,
    SpiffeIdInvalidTrustDomainCharacter,
    SpiffeIdMissingTrustDomain,
    SpiffeIdPort,
    SpiffeIdQuery,
    SpiffeIdTooLong,
    SpiffeIdTrailingSlash,
    SpiffeIdUserInfo,
)

__all__ = ["SpiffeId", "configured_trust_domain", "validate_trust_domain"]

SCHEME_PREFIX = "spiffe://"
MAX_ID_LENGTH = 2048
MAX_TRUST_DOMAIN_LENGTH = 255

_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[a-zA-Z0-9._-]+")


def validate_trust_domain(name: str) -> str:
    """Return ``name`` if it is a valid trust domain name, else raise.

    Raises a subclass of :class:`~peer_middleware.errors.InvalidSpiffeIdError`.
    """
    if not isinstance(name, str):
        raise InvalidSpiffeIdError(repr(name), "not a string")
    if not name:
        raise SpiffeIdMissingTrustDomain(name)
    if len(name.encode("utf-8", "surrogatepass")) > MAX_TRUST_DOMAIN_LENGTH:
        raise SpiffeIdTooLong(name, "trust domain is longer than 255 bytes")
    if _TRUST_DOMAIN_RE.fullmatch(name) is None:
        if "@" in name:
            raise SpiffeIdUserInfo(name)
        if ":" in name:
            raise SpiffeIdPort(name)
        raise SpiffeIdInvalidTrustDomainCharacter(name)
    return name


def configured_trust_domain(name: str) -> str:
    """Validate a trust domain given in configuration; raise :class:`ConfigurationError`."""
    try:
        return validate_trust_domain(name)
    except InvalidSpiffeIdError as exc:
        raise ConfigurationError(f"trust domain {name!r}: {exc}") from exc


def _validate_path(value: str, path: str) -> None:
    if not path:
        return
    if path[0] != "/":  # pragma: no cover - the caller splits at the first "/"
        raise SpiffeIdInvalidPathCharacter(value)
    segments = path[1:].split("/")
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if not segment:
            if index == last:
                raise SpiffeIdTrailingSlash(value)
            raise SpiffeIdEmptySegment(value)
        if segment in (".", ".."):
            raise SpiffeIdDotSegment(value)
        if _SEGMENT_RE.fullmatch(segment) is None:
            raise SpiffeIdInvalidPathCharacter(value)


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A valid SPIFFE ID. Build it with :meth:`parse` or :meth:`from_parts`.

    Equality and hashing use the canonical string, so IDs work as set members
    and dictionary keys. ``str(sid)`` is the URI.
    """

    trust_domain: str
    path: str
    uri: str = field(compare=False, repr=False)
    namespace: str | None = field(compare=False, repr=False)
    service_account: str | None = field(compare=False, repr=False)

    @classmethod
    def parse(cls, value: str) -> SpiffeId:
        """Parse ``value`` strictly; raise an :class:`InvalidSpiffeIdError` leaf."""
        if not isinstance(value, str):
            raise InvalidSpiffeIdError(repr(value), "not a string")
        return _parse_cached(value)

    @classmethod
    def from_parts(cls, trust_domain: str, path: str = "") -> SpiffeId:
        """Build an ID from a trust domain and a path (``""`` or ``/...``)."""
        if path and not path.startswith("/"):
            path = "/" + path
        return cls.parse(SCHEME_PREFIX + trust_domain + path)

    @classmethod
    def for_service_account(cls, trust_domain: str, namespace: str, name: str) -> SpiffeId:
        """The Kubernetes convention: ``spiffe://<td>/ns/<namespace>/sa/<name>``."""
        sid = cls.parse(f"{SCHEME_PREFIX}{trust_domain}/ns/{namespace}/sa/{name}")
        if sid.namespace != namespace or sid.service_account != name:
            # "a/b" as a namespace or name yields a valid ID of another shape.
            raise SpiffeIdInvalidPathCharacter(sid.uri, "namespace and name must be one segment")
        return sid

    @property
    def is_trust_domain_id(self) -> bool:
        """True for the ID of a trust domain itself (no path)."""
        return not self.path

    def member_of(self, trust_domain: str) -> bool:
        """True if this ID belongs to ``trust_domain``."""
        return self.trust_domain == trust_domain

    def __str__(self) -> str:
        return self.uri


def _kubernetes_parts(path: str) -> tuple[str | None, str | None]:
    # Istio and the SPIRE Kubernetes registrar use /ns/<ns>/sa/<sa>; only an
    # exact four-segment match counts, so /ns/a/sa/b/extra names nobody.
    parts = path.split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
        return parts[2], parts[4]
    return None, None


@lru_cache(maxsize=4096)
def _parse_cached(value: str) -> SpiffeId:
    if not value:
        raise SpiffeIdEmpty(value)
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ID_LENGTH:
        raise SpiffeIdTooLong(value, f"longer than {MAX_ID_LENGTH} bytes")
    if not value.startswith(SCHEME_PREFIX):
        raise SpiffeIdInvalidScheme(value)
    rest = value[len(SCHEME_PREFIX) :]
    # Query and fragment are checked before anything else so that a "?" or
    # "#" is reported for what it is, wherever it appears.
    if "#" in rest:
        raise SpiffeIdFragment(value)
    if "?" in rest:
        raise SpiffeIdQuery(value)
    slash = rest.find("/")
    if slash == -1:
        trust_domain, path = rest, ""
    else:
        trust_domain, path = rest[:slash], rest[slash:]
    try:
        validate_trust_domain(trust_domain)
    except InvalidSpiffeIdError as exc:
        raise type(exc)(value, exc.detail) from None
    _validate_path(value, path)
    namespace, service_account = _kubernetes_parts(path)
    return SpiffeId(trust_domain, path, value, namespace, service_account)
