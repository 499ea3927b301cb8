"""The exceptions peer_middleware raises.

One root, split by meaning::

    PeerMiddlewareError
    ├── ConfigurationError (also ValueError)   bad configuration, raised when a
    │                                          middleware, policy or rule is built
    ├── InvalidSpiffeIdError (also ValueError) a string that is not a SPIFFE ID;
    │   └── one subclass per rule of the SPIFFE-ID specification
    ├── InvalidTrustMaterial (also ValueError) a trust bundle or key document that
    │   │                                      cannot be parsed
    │   └── DuplicateJsonName                  its JSON gives one name twice in an object
    ├── KeysUnavailable                        no token key set can be trusted now:
    │                                          never fetched, or stale past max_stale
    └── RequestRefused                         a request that must not reach the app
        ├── BadRequest            400  malformed path, method or header
        ├── AuthenticationFailed  401  a credential was presented and is invalid
        │   ├── CertificateDecodingError  a certificate sent as text cannot be decoded
        │   └── InvalidToken              a bearer token (``Bearer error="invalid_token"``)
        │       └── UntrustedIssuer       not from an issuer this authenticator accepts
        └── AccessDenied          403  raised by per-route checks inside handlers

``RequestRefused`` carries a precise ``reason`` for the log. The response a
caller sees never contains it: refusals have fixed, generic bodies.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "AccessDenied",
    "AuthenticationFailed",
    "BadRequest",
    "CertificateDecodingError",
    "CertificateFault",
    "ConfigurationError",
    "DuplicateJsonName",
    "InvalidSpiffeIdError",
    "InvalidToken",
    "InvalidTrustMaterial",
    "KeysUnavailable",
    "PeerMiddlewareError",
    "RequestRefused",
    "SpiffeIdDotSegment",
    "SpiffeIdEmpty",
    "SpiffeIdEmptySegment",
    "SpiffeIdFragment",
    "SpiffeIdInvalidPathCharacter",
    "SpiffeIdInvalidScheme",
    "SpiffeIdInvalidTrustDomainCharacter",
    "SpiffeIdMissingTrustDomain",
    "SpiffeIdPort",
    "SpiffeIdQuery",
    "SpiffeIdTooLong",
    "SpiffeIdTrailingSlash",
    "SpiffeIdUserInfo",
    "UntrustedIssuer",
]


class PeerMiddlewareError(Exception):
    """Root of every exception raised by peer_middleware."""


class ConfigurationError(PeerMiddlewareError, ValueError):
    """The configuration given to a middleware, policy or rule is invalid.

    Raised when the object is built, never while serving a request.
    """


class InvalidSpiffeIdError(PeerMiddlewareError, ValueError):
    """A string is not a valid SPIFFE ID.

    ``value`` is the offending input, ``rule`` a short, stable identifier of the
    specification rule it breaks (also the subclass).
    """

    rule = "invalid"
    message = "invalid SPIFFE ID"

    def __init__(self, value: str, detail: str | None = None) -> None:
        self.value = value
        self.detail = detail
        text = self.message if detail is None else f"{self.message}: {detail}"
        super().__init__(text)


class SpiffeIdEmpty(InvalidSpiffeIdError):
    rule = "empty"
    message = "SPIFFE ID cannot be empty"


class SpiffeIdTooLong(InvalidSpiffeIdError):
    rule = "too-long"
    message = "SPIFFE ID is too long"


class SpiffeIdInvalidScheme(InvalidSpiffeIdError):
    rule = "scheme"
    message = "SPIFFE ID scheme must be 'spiffe://' in lower case"


class SpiffeIdMissingTrustDomain(InvalidSpiffeIdError):
    rule = "missing-trust-domain"
    message = "SPIFFE ID trust domain is missing"


class SpiffeIdInvalidTrustDomainCharacter(InvalidSpiffeIdError):
    rule = "trust-domain-character"
    message = (
        "SPIFFE ID trust domain characters are limited to lowercase letters, "
        "numbers, dots, dashes, and underscores"
    )


class SpiffeIdPort(InvalidSpiffeIdError):
    rule = "port"
    message = "SPIFFE ID trust domain cannot contain a port"


class SpiffeIdUserInfo(InvalidSpiffeIdError):
    rule = "user-info"
    message = "SPIFFE ID cannot contain user info"


class SpiffeIdQuery(InvalidSpiffeIdError):
    rule = "query"
    message = "SPIFFE ID cannot contain a query"


class SpiffeIdFragment(InvalidSpiffeIdError):
    rule = "fragment"
    message = "SPIFFE ID cannot contain a fragment"


class SpiffeIdEmptySegment(InvalidSpiffeIdError):
    rule = "empty-segment"
    message = "SPIFFE ID path cannot contain empty segments"


class SpiffeIdDotSegment(InvalidSpiffeIdError):
    rule = "dot-segment"
    message = "SPIFFE ID path cannot contain dot segments"


class SpiffeIdTrailingSlash(InvalidSpiffeIdError):
    rule = "trailing-slash"
    message = "SPIFFE ID path cannot have a trailing slash"


class SpiffeIdInvalidPathCharacter(InvalidSpiffeIdError):
    rule = "path-character"
    message = (
        "SPIFFE ID path segment characters are limited to letters, numbers, "
        "dots, dashes, and underscores"
    )


class InvalidTrustMaterial(PeerMiddlewareError, ValueError):
    """A trust bundle or key document cannot be parsed (also a ``ValueError``).

    Raised by the public parsers of trust material (``parse_pem_bundle``,
    ``parse_spiffe_bundle``, ``parse_jwks``, ...); a source that re-reads its
    file keeps the last good material when it sees one, and a source being
    built turns it into a :class:`ConfigurationError`.
    """


class DuplicateJsonName(InvalidTrustMaterial):
    """A JSON object of trust material gives one name twice.

    Python's json would keep the last of the two silently; trust material is
    refused instead (RFC 8259 section 4, RFC 7517 section 4). ``name`` is the
    name; ``top_level`` is true when the object is the document's outermost
    one (in a bundle-set file, its names are trust domains).
    """

    def __init__(self, name: str, *, top_level: bool) -> None:
        super().__init__(f"the name {name!r} appears twice in one JSON object")
        self.name = name
        self.top_level = top_level


class KeysUnavailable(PeerMiddlewareError):
    """No key set can be trusted right now (never fetched, or stale for too long)."""


class RequestRefused(PeerMiddlewareError):
    """A request must be refused. ``reason`` is for the log only."""

    status = 400
    problem = "bad-request"
    #: The challenge to send with a 401 for this refusal, when it names one.
    www_authenticate: str | None = None

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BadRequest(RequestRefused):
    """Malformed request: path, method or a header that cannot be parsed (400)."""

    status = 400
    problem = "bad-request"


class AuthenticationFailed(RequestRefused):
    """A credential was presented and could not be verified (401).

    ``scheme`` names the authentication scheme that a ``WWW-Authenticate``
    header should advertise, when one could help the caller.
    ``www_authenticate``, when set, is the whole challenge to send with this
    refusal instead of the middleware's default (RFC 6750 section 3).
    """

    status = 401
    problem = "unauthenticated"

    def __init__(
        self, reason: str, *, scheme: str | None = None, www_authenticate: str | None = None
    ) -> None:
        self.scheme = scheme
        self.www_authenticate = www_authenticate
        super().__init__(reason)


#: What is wrong with a certificate sent as text (:attr:`CertificateDecodingError.fault`).
CertificateFault = Literal[
    "too-many",  # more certificates than the limit (counted before any is decoded)
    "pem-text",  # text outside the PEM CERTIFICATE blocks
    "pem-truncated",  # a PEM block without its END line
    "pem-empty",  # no PEM block at all
    "base64",  # not base64: a character outside the alphabet, truncated, empty, not ASCII
    "url-encoding",  # %XX escapes that are not UTF-8
    "structured-field",  # not an RFC 8941 byte sequence, or a list of them
    "der",  # DER written back to back that does not split into certificates
]


class CertificateDecodingError(AuthenticationFailed):
    """A certificate, or a chain of them, sent as text cannot be decoded (401).

    Raised by the decoders of :mod:`peer_middleware.certs` (PEM, base64 DER,
    RFC 8941 byte sequences, DER written back to back) before anything is
    parsed as a certificate, and again by their callers with their context
    (the forwarded-certificate authenticator puts the header's name in front
    of the reason). ``fault`` says what is wrong, as one short, stable
    :data:`CertificateFault`; the reason says where.
    """

    def __init__(self, reason: str, *, fault: CertificateFault) -> None:
        self.fault: CertificateFault = fault
        super().__init__(reason)


#: The challenge sent with a refused bearer token (RFC 6750 section 3.1). It
#: says only that the token is invalid, never why.
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'  # noqa: S105 - not a secret


class InvalidToken(AuthenticationFailed):
    """A bearer token is malformed or fails verification (401).

    The response carries ``WWW-Authenticate: Bearer error="invalid_token"``;
    ``reason`` (for the log) says precisely what was wrong.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason, scheme="Bearer", www_authenticate=INVALID_TOKEN_CHALLENGE)


class UntrustedIssuer(InvalidToken):
    """A token names an issuer (or trust domain) this authenticator does not accept.

    When several token authenticators are configured, another one may accept
    the token; the request is refused with this error only when none does.
    """


class AccessDenied(RequestRefused):
    """The caller is known but may not do this (403)."""

    status = 403
    problem = "forbidden"
