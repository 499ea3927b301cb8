"""Client certificates forwarded by a TLS-terminating proxy, read only from trusted proxies.

A proxy that terminates mTLS in front of the app can copy the client's
certificate into a request header. :class:`ForwardedCertificateAuthenticator`
reads that header, decodes the certificate (and its intermediates, when the
proxy sends them) and verifies the chain **in the app** against the trust
bundle, with an X.509-SVID verifier (see :mod:`peer_middleware.x509`). The
peer's proof is :attr:`Proof.FORWARDED_CERTIFICATE`.

.. warning::
   A certificate is public: anybody who can reach the app directly can paste
   somebody else's certificate into the header. Proof of possession of the
   private key happened in the proxy's TLS handshake, so the header is worth
   exactly as much as the connection it arrived on. It is read only when the
   connection comes from one of ``trusted_proxies``; from any other peer it
   is ignored, whatever it says. The proxy must **overwrite** the header on
   every request (including requests without a client certificate), so that
   a client's own copy never reaches the app, and the app must not be
   reachable except through the proxy.

What each preset reads
======================

Header names are case-insensitive; the lower-case names below are the
defaults. The names an operator chooses in the proxy's configuration
(``nginx``, ``haproxy``, ``caddy``, ``apache``, ``gcp``) can be changed with
``headers={"cert": ..., "verify": ...}``.

``nginx`` (``ngx_http_ssl_module``)
    ``x-ssl-client-cert`` from ``$ssl_client_escaped_cert`` (the leaf
    certificate, PEM, URL-encoded; nginx has no variable for the client's
    intermediates, so the leaf must be signed by a CA in the bundle) and
    ``x-ssl-client-verify`` from ``$ssl_client_verify``: ``SUCCESS``,
    ``FAILED:<reason>`` or ``NONE`` (no certificate). A certificate is
    accepted only with ``SUCCESS``; ``NONE`` without a certificate means an
    anonymous request. Configure::

        ssl_verify_client optional;          # or "on"; not optional_no_ca
        ssl_client_certificate /etc/nginx/spiffe-bundle.pem;
        proxy_set_header X-SSL-Client-Cert   $ssl_client_escaped_cert;
        proxy_set_header X-SSL-Client-Verify $ssl_client_verify;

    ``proxy_set_header`` replaces the client's header; with an empty value
    (no certificate) nginx sends no header at all, which also drops the
    client's copy. A ``location`` (or ``server``) block with any
    ``proxy_set_header`` of its own inherits **none** from the level above,
    so repeat both lines wherever another ``proxy_set_header`` appears. With
    ``optional_no_ca`` nginx forwards certificates it could not verify and
    ``$ssl_client_verify`` says ``FAILED:...``; the app refuses them. nginx
    drops header names with underscores (``ignore_invalid_headers on``, the
    default); keep it so, see the WSGI note in :mod:`peer_middleware.wsgi`.

``traefik`` (``passTLSClientCert`` middleware, ``pem: true``)
    ``x-forwarded-tls-client-cert``: every certificate the client sent, leaf
    first, each as base64 DER (PEM without armour or line breaks), joined
    with ``,``. Traefik v2 URL-escaped the value; both forms are accepted.
    Traefik sets the header only when the client sent a certificate; a
    client's copy is removed by the entry point's ``forwardedHeaders``
    handling unless the client's address is in ``forwardedHeaders.trustedIPs``
    or ``forwardedHeaders.insecure`` is on, so leave both off for clients.
    Verify in Traefik with ``clientAuthType: RequireAndVerifyClientCert`` (or
    ``VerifyClientCertIfGiven``) and ``caFiles``.

``caddy`` (``reverse_proxy`` with ``header_up``)
    ``x-client-cert`` from ``{http.request.tls.client.certificate_der_base64}``
    (leaf only, base64 DER; Caddy has no placeholder for the intermediates).
    ``header_up`` replaces the client's header. Without a client certificate
    Caddy still sends the header: empty (Caddy 2.11) or ``<nil>`` (older
    releases); both mean "no certificate". Configure ``client_auth { mode verify_if_given
    trust_pool file /path/bundle.pem }`` (or ``require_and_verify``)::

        reverse_proxy 127.0.0.1:8000 {
            header_up X-Client-Cert {http.request.tls.client.certificate_der_base64}
        }

``haproxy``
    ``x-ssl-client-cert`` from ``%[ssl_c_der,base64]`` (leaf, base64 DER),
    ``x-ssl-client-chain`` from ``%[ssl_c_chain_der,base64]`` (the
    intermediates the client sent, concatenated DER, base64), and two status
    headers: ``x-ssl-client-used`` from ``%[ssl_c_used]`` (``1`` when the
    client sent a certificate) and ``x-ssl-client-verify`` from
    ``%[ssl_c_verify]`` (``0`` when verification succeeded). ``ssl_c_verify``
    is also ``0`` when **no** certificate was sent; only ``ssl_c_used`` tells
    the two apart, so both are required. Use ``http-request set-header``,
    which replaces the client's header; ``add-header`` appends a second value
    after the client's, which the app refuses. HAProxy sends empty values
    when there is no certificate::

        bind 127.0.0.1:8443 ssl crt server.pem ca-file bundle.pem verify optional
        http-request set-header X-SSL-Client-Cert   %[ssl_c_der,base64]
        http-request set-header X-SSL-Client-Chain  %[ssl_c_chain_der,base64]
        http-request set-header X-SSL-Client-Used   %[ssl_c_used]
        http-request set-header X-SSL-Client-Verify %[ssl_c_verify]

    HAProxy forwards header names with underscores as they are; behind a WSGI
    server add ``http-request del-header X_SSL_Client_Cert`` (and the others).

``apache`` (``mod_ssl`` + ``mod_headers``)
    ``x-ssl-client-cert`` from ``%{SSL_CLIENT_CERT}s``: PEM whose line breaks
    ``mod_headers`` turned into spaces; ``(null)`` when unset.
    ``x-ssl-client-cert-chain-0`` ... ``-3`` from ``%{SSL_CLIENT_CERT_CHAIN_n}s``
    (intermediates, same encoding). ``x-ssl-client-verify`` from
    ``%{SSL_CLIENT_VERIFY}s``: ``SUCCESS`` is required; ``NONE`` means no
    certificate; ``GENEROUS`` (``SSLVerifyClient optional_no_ca``) and
    ``FAILED:...`` are refused. ``RequestHeader set`` replaces the client's
    header (``RequestHeader add`` does not)::

        SSLVerifyClient optional
        RequestHeader set X-SSL-Client-Cert "%{SSL_CLIENT_CERT}s"
        RequestHeader set X-SSL-Client-Cert-Chain-0 "%{SSL_CLIENT_CERT_CHAIN_0}s"
        RequestHeader set X-SSL-Client-Verify "%{SSL_CLIENT_VERIFY}s"

``aws-alb`` (Application Load Balancer, mTLS *verify* mode)
    ``x-amzn-mtls-clientcert-leaf``: the leaf certificate, PEM, URL-encoded
    with ``+``, ``=`` and ``/`` left as they are (so the value is decoded
    with ``%``-unescaping only, never ``+`` to space). The ALB verified the
    chain against its trust store and sends no intermediates.

``aws-alb-passthrough`` (mTLS *passthrough* mode)
    ``x-amzn-mtls-clientcert``: the whole chain the client sent, leaf first,
    PEM, URL-encoded as above. The ALB verifies nothing in this mode; the app
    does. The header is absent when the client sent no certificate; AWS does
    not document whether a client's own copy is removed then, so prefer
    verify mode where clients may omit a certificate.

``gcp`` (Google Cloud Application Load Balancer, mTLS custom request headers)
    The load balancer sends only the custom headers the operator configures
    on the backend service; the defaults here are
    ``X-Client-Cert-Present:{client_cert_present}`` (``true``/``false``),
    ``X-Client-Cert-Chain-Verified:{client_cert_chain_verified}``
    (``true`` required), ``X-Client-Cert-Leaf:{client_cert_leaf}`` (an RFC 9440
    byte sequence, ``:base64 DER:``, set only for a certificate that passed
    validation) and ``X-Client-Cert-Chain:{client_cert_chain}`` (a
    comma-separated list of such items, intermediates only).

``azure`` (App Service, client certificate mode Required or Optional)
    ``x-arr-clientcert``: the leaf, base64 DER. App Service does not verify
    it at all; the app does, against the bundle, here.

``rfc9440`` (RFC 9440 ``Client-Cert`` and ``Client-Cert-Chain``)
    ``client-cert`` is one structured-field byte sequence (RFC 8941 section
    3.3.5: ``:base64 DER:``) and ``client-cert-chain`` a list of them, the
    intermediates in TLS order, possibly over several header lines. RFC 9440
    section 4 requires the proxy to remove both headers from incoming
    requests. Parameters on the items are refused; a ``client-cert`` with two
    values (a client's copy the proxy appended to) is refused.

Linkerd's ``l5d-client-id`` carries no certificate; see
:class:`LinkerdIdentityAuthenticator`.

Bad input
=========

Every header is checked against ``max_header_length`` (64 KiB by default)
before anything is decoded, and the number of certificates against
``max_chain_length`` before any is decoded, so a 1 MB header or a chain of a
thousand entries costs a length check. Any malformed value (bad
URL-encoding, truncated PEM or base64, a header the proxy should have
overwritten appearing twice, a status header that contradicts the
certificate header) raises :class:`AuthenticationFailed` (401, fixed body);
its ``reason`` names the header and the fault for the log. Successful
decodings are cached (bounded) by proxy address and exact header values; the
verifier decides on every request (it has its own cache, which honours
expiry and trust-bundle rotation).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import unquote

from cryptography import x509

from ._cache import BoundedCache
from .bundles import CERTIFICATE_ERRORS
from .errors import AuthenticationFailed, ConfigurationError, InvalidSpiffeIdError
from .peer import Peer, Proof
from .proxies import TrustedProxies
from .request import RequestView
from .spiffe import SpiffeId
from .x509 import has_non_positive_serial, still_valid_of

__all__ = [
    "MAX_FORWARDED_HEADER_LENGTH",
    "ChainVerifier",
    "ForwardedCertificateAuthenticator",
    "LinkerdIdentityAuthenticator",
    "Preset",
    "VerifiedCertificate",
    "decode_der_base64",
    "decode_der_base64_list",
    "decode_der_concatenation",
    "decode_pem",
    "decode_sf_binary",
    "decode_sf_binary_list",
]

MAX_FORWARDED_HEADER_LENGTH = 64 * 1024
_DEFAULT_MAX_CHAIN = 8
_APACHE_CHAIN_HEADERS = 4


class Preset(str, enum.Enum):
    """The proxies whose forwarded-certificate headers are understood."""

    NGINX = "nginx"
    TRAEFIK = "traefik"
    CADDY = "caddy"
    HAPROXY = "haproxy"
    APACHE = "apache"
    AWS_ALB = "aws-alb"
    AWS_ALB_PASSTHROUGH = "aws-alb-passthrough"
    GCP = "gcp"
    AZURE = "azure"
    RFC9440 = "rfc9440"

    def __str__(self) -> str:
        return self.value


class VerifiedCertificate(Protocol):
    """What a chain verifier proved (:class:`peer_middleware.x509.VerifiedSvid`).

    A result may also carry ``still_valid``, a zero-argument check that is True
    while it holds; without it the verifier is asked again on every request.
    """

    @property
    def spiffe_id(self) -> SpiffeId: ...

    @property
    def sha256(self) -> str: ...

    @property
    def not_after(self) -> datetime: ...


class ChainVerifier(Protocol):
    """Verifies a certificate chain, leaf first (:class:`peer_middleware.x509.X509SvidVerifier`).

    ``verify`` raises :class:`AuthenticationFailed` for a chain it refuses.
    """

    def verify(self, chain: Sequence[bytes]) -> VerifiedCertificate: ...


class _Bad(Exception):
    """A header value that cannot be decoded; the message says why."""


# -- decoders --------------------------------------------------------------------------
# Each returns DER certificates and raises _Bad. Counting happens before decoding, so
# an oversized chain costs one scan of a value already bounded by the length cap.

_B64_ALPHABET = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"
_PEM_WHITESPACE = str.maketrans("", "", " \t\r\n")


def _b64(text: str, what: str) -> bytes:
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise _Bad(f"{what}: non-ASCII characters in base64") from None
    if not data:
        raise _Bad(f"{what}: empty base64")
    if len(data) % 4 or not _B64_ALPHABET.fullmatch(data):
        raise _Bad(f"{what}: not base64 (bad character or truncated)")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise _Bad(f"{what}: not base64 ({exc})") from None


def _check_count(count: int, limit: int) -> None:
    if count > limit:
        raise _Bad(f"{count} certificates, more than the limit of {limit}")


def decode_pem(text: str, *, limit: int = _DEFAULT_MAX_CHAIN) -> list[bytes]:
    """DER certificates from PEM text (line breaks may be spaces, as Apache sends them).

    Only ``CERTIFICATE`` blocks, separated by nothing but whitespace, are
    accepted; anything else (a private key, text between blocks, a block
    without its end line) is refused.
    """
    _check_count(text.count("-----BEGIN"), limit)
    certs: list[bytes] = []
    position = 0
    end = len(text)
    while True:
        while position < end and text[position] in " \t\r\n":
            position += 1
        if position >= end:
            break
        if not text.startswith(_PEM_BEGIN, position):
            raise _Bad(f"PEM: expected {_PEM_BEGIN!r} at offset {position}")
        body_start = position + len(_PEM_BEGIN)
        body_end = text.find(_PEM_END, body_start)
        if body_end == -1:
            raise _Bad("PEM: truncated (no END CERTIFICATE line)")
        body = text[body_start:body_end].translate(_PEM_WHITESPACE)
        certs.append(_b64(body, f"PEM block {len(certs) + 1}"))
        position = body_end + len(_PEM_END)
    if not certs:
        raise _Bad("PEM: no certificate")
    return certs


def _url_decoded(value: str) -> str:
    # Only %XX escapes: "+" stays "+" (base64 uses it; AWS leaves it unescaped).
    if "%" not in value:
        return value
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise _Bad("URL-encoding: escapes are not UTF-8") from None


def decode_der_base64(value: str) -> list[bytes]:
    """One DER certificate, base64 (no line breaks)."""
    return [_b64(value.strip(" \t"), "base64 DER")]


def decode_der_base64_list(value: str, *, limit: int = _DEFAULT_MAX_CHAIN) -> list[bytes]:
    """Comma-separated base64 DER certificates (Traefik), optionally URL-escaped."""
    value = _url_decoded(value)
    items = value.split(",")
    _check_count(len(items), limit)
    return [_b64(item.strip(" \t"), f"certificate {n}") for n, item in enumerate(items, 1)]


def decode_sf_binary(value: str) -> bytes:
    """An RFC 8941 byte sequence, ``:base64:``, as one item without parameters.

    Missing ``=`` padding is tolerated (RFC 8941 section 4.2.7); anything
    outside the base64 alphabet is not.
    """
    item = value.strip(" \t")
    if len(item) < 2 or item[0] != ":" or item[-1] != ":":
        if item.startswith(":") and ":" in item[1:]:
            raise _Bad("structured field: parameters or text after the byte sequence")
        raise _Bad("structured field: not a byte sequence (:base64:)")
    body = item[1:-1]
    if ":" in body:
        raise _Bad("structured field: more than one byte sequence")
    if len(body) % 4 == 1:
        raise _Bad("structured field: truncated base64")
    if len(body) % 4:
        body += "=" * (4 - len(body) % 4)
    return _b64(body, "byte sequence")


def decode_sf_binary_list(value: str, *, limit: int = _DEFAULT_MAX_CHAIN) -> list[bytes]:
    """An RFC 8941 list of byte sequences (``Client-Cert-Chain``); empty gives ``[]``."""
    if not value.strip(" \t"):
        return []
    items = value.split(",")
    _check_count(len(items), limit)
    return [decode_sf_binary(item) for item in items]


def decode_der_concatenation(value: str, *, limit: int = _DEFAULT_MAX_CHAIN) -> list[bytes]:
    """Base64 of DER certificates written back to back (HAProxy ``ssl_c_chain_der``)."""
    data = _b64(value.strip(" \t"), "base64 DER chain")
    certs: list[bytes] = []
    position = 0
    while position < len(data):
        if len(certs) >= limit:
            raise _Bad(f"more than the limit of {limit} certificates")
        if data[position] != 0x30 or position + 2 > len(data):
            raise _Bad(f"DER chain: no certificate at byte {position}")
        first = data[position + 1]
        header = 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0 or count > 3 or position + 2 + count > len(data):
                raise _Bad(f"DER chain: bad length at byte {position}")
            length = int.from_bytes(data[position + 2 : position + 2 + count], "big")
            header += count
        stop = position + header + length
        if stop > len(data):
            raise _Bad(f"DER chain: truncated certificate at byte {position}")
        certs.append(data[position:stop])
        position = stop
    return certs


# -- presets ---------------------------------------------------------------------------

Decoder = Callable[[str, int], list[bytes]]


def _pem_url(value: str, limit: int) -> list[bytes]:
    return decode_pem(_url_decoded(value), limit=limit)


def _pem_plain(value: str, limit: int) -> list[bytes]:
    return decode_pem(value, limit=limit)


def _der_b64(value: str, limit: int) -> list[bytes]:
    return decode_der_base64(value)


def _der_b64_list(value: str, limit: int) -> list[bytes]:
    return decode_der_base64_list(value, limit=limit)


def _sf_binary(value: str, limit: int) -> list[bytes]:
    return [decode_sf_binary(value)]


def _sf_list(value: str, limit: int) -> list[bytes]:
    return decode_sf_binary_list(value, limit=limit)


def _der_concat(value: str, limit: int) -> list[bytes]:
    return decode_der_concatenation(value, limit=limit)


@dataclass(frozen=True, slots=True)
class _Status:
    """A header the proxy sends with (or instead of) the certificate."""

    role: str
    header: str
    ok: frozenset[str]
    #: Values that say "the client sent no certificate".
    none: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Format:
    cert_header: str
    decode_cert: Decoder
    #: True when the certificate header holds the whole chain, leaf first.
    cert_is_chain: bool = False
    chain_headers: tuple[str, ...] = ()
    decode_chain: Decoder | None = None
    #: Certificate header values that mean "no certificate".
    absent: frozenset[str] = frozenset({""})
    status: tuple[_Status, ...] = ()


_NONE = frozenset({""})


def _formats(preset: Preset, names: Mapping[str, str]) -> tuple[_Format, frozenset[str]]:
    """The format of ``preset`` with header names overridden by ``names``; and its roles."""

    def name(role: str, default: str) -> str:
        return names.get(role, default)

    if preset is Preset.NGINX:
        fmt = _Format(
            cert_header=name("cert", "x-ssl-client-cert"),
            decode_cert=_pem_url,
            status=(
                _Status(
                    "verify",
                    name("verify", "x-ssl-client-verify"),
                    frozenset({"SUCCESS"}),
                    frozenset({"NONE"}),
                ),
            ),
        )
        return fmt, frozenset({"cert", "verify"})
    if preset is Preset.TRAEFIK:
        fmt = _Format(
            cert_header="x-forwarded-tls-client-cert", decode_cert=_der_b64_list, cert_is_chain=True
        )
        return fmt, frozenset()
    if preset is Preset.CADDY:
        fmt = _Format(
            cert_header=name("cert", "x-client-cert"),
            decode_cert=_der_b64,
            absent=frozenset({"", "<nil>"}),
        )
        return fmt, frozenset({"cert"})
    if preset is Preset.HAPROXY:
        fmt = _Format(
            cert_header=name("cert", "x-ssl-client-cert"),
            decode_cert=_der_b64,
            chain_headers=(name("chain", "x-ssl-client-chain"),),
            decode_chain=_der_concat,
            status=(
                _Status(
                    "used", name("used", "x-ssl-client-used"), frozenset({"1"}), frozenset({"0"})
                ),
                _Status("verify", name("verify", "x-ssl-client-verify"), frozenset({"0"})),
            ),
        )
        return fmt, frozenset({"cert", "chain", "used", "verify"})
    if preset is Preset.APACHE:
        cert = name("cert", "x-ssl-client-cert")
        chain_prefix = name("chain", f"{cert}-chain")
        fmt = _Format(
            cert_header=cert,
            decode_cert=_pem_plain,
            chain_headers=tuple(f"{chain_prefix}-{n}" for n in range(_APACHE_CHAIN_HEADERS)),
            decode_chain=_pem_plain,
            absent=frozenset({"", "(null)"}),
            status=(
                _Status(
                    "verify",
                    name("verify", "x-ssl-client-verify"),
                    frozenset({"SUCCESS"}),
                    frozenset({"NONE"}),
                ),
            ),
        )
        return fmt, frozenset({"cert", "chain", "verify"})
    if preset is Preset.AWS_ALB:
        return _Format(cert_header="x-amzn-mtls-clientcert-leaf", decode_cert=_pem_url), frozenset()
    if preset is Preset.AWS_ALB_PASSTHROUGH:
        fmt = _Format(
            cert_header="x-amzn-mtls-clientcert", decode_cert=_pem_url, cert_is_chain=True
        )
        return fmt, frozenset()
    if preset is Preset.GCP:
        fmt = _Format(
            cert_header=name("cert", "x-client-cert-leaf"),
            decode_cert=_sf_binary,
            chain_headers=(name("chain", "x-client-cert-chain"),),
            decode_chain=_sf_list,
            status=(
                _Status(
                    "present",
                    name("present", "x-client-cert-present"),
                    frozenset({"true"}),
                    frozenset({"false"}),
                ),
                _Status(
                    "chain_verified",
                    name("chain_verified", "x-client-cert-chain-verified"),
                    frozenset({"true"}),
                ),
            ),
        )
        return fmt, frozenset({"cert", "chain", "present", "chain_verified"})
    if preset is Preset.AZURE:
        return _Format(cert_header="x-arr-clientcert", decode_cert=_der_b64), frozenset()
    # Preset.RFC9440
    fmt = _Format(
        cert_header="client-cert",
        decode_cert=_sf_binary,
        chain_headers=("client-cert-chain",),
        decode_chain=_sf_list,
    )
    return fmt, frozenset()


def _check_intermediates(certs: list[bytes]) -> None:
    """Every certificate after the leaf must be a CA.

    A leaf in the middle of a chain is what a client's copy joined with the
    proxy's looks like (``leaf, CA, leaf, CA``); path building would ignore
    the second leaf and accept the first, so the chain is refused instead.
    """
    for index, der in enumerate(certs[1:], 2):
        if has_non_positive_serial(der):
            raise AuthenticationFailed(f"chain: certificate {index} has a non-positive serial")
        try:
            cert = x509.load_der_x509_certificate(der)
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        except CERTIFICATE_ERRORS:
            raise AuthenticationFailed(f"chain: certificate {index} is not DER") from None
        if constraints is None or not constraints.ca:
            raise AuthenticationFailed(
                f"chain: certificate {index} is not a CA; a chain holds one leaf, first "
                "(two copies of the header joined?)"
            )


def _shown(value: str) -> str:
    return repr(value if len(value) <= 48 else value[:48] + "...")


def _trusted(proxies: TrustedProxies | Iterable[str]) -> TrustedProxies:
    if isinstance(proxies, TrustedProxies):
        return proxies
    return TrustedProxies(proxies)


def _header_name(value: object, what: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or value != value.lower()
        or not re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]+", value)
    ):
        raise ConfigurationError(f"{what} {value!r} must be a lower-case header name")
    return value


class ForwardedCertificateAuthenticator:
    """Identity from a client certificate a trusted proxy forwards in a header.

    ``preset`` names the proxy (a :class:`Preset` or its value, ``"nginx"``,
    ``"haproxy"``, ...); the module documentation says what each sends and
    how to configure it safely. ``trusted_proxies`` are the addresses the
    proxy connects from; a header from any other peer is ignored (noted in the
    decision log). ``verifier`` verifies the decoded chain, leaf first, against
    the trust bundle (an :class:`~peer_middleware.x509.X509SvidVerifier`).

    ``headers`` renames the headers of presets whose names the operator
    chooses, by role: ``"cert"``, ``"chain"`` and the status headers
    (``"verify"`` for nginx, HAProxy and Apache, ``"used"`` for HAProxy,
    ``"present"`` and ``"chain_verified"`` for Google Cloud). For Apache,
    ``"chain"`` is the prefix of the numbered chain headers.

    The request is anonymous (``None``) when the proxy reports no
    certificate; it is refused with 401 when a certificate header is
    malformed, contradicts its status header, exceeds ``max_header_length``
    characters or holds more than ``max_chain_length`` certificates, or when
    the chain does not verify. ::

        from peer_middleware.bundles import StaticX509Bundle
        from peer_middleware.x509 import X509SvidVerifier

        ForwardedCertificateAuthenticator(
            "nginx",
            trusted_proxies=["127.0.0.1"],
            verifier=X509SvidVerifier(StaticX509Bundle({"cluster.local": [ca_pem]})),
        )
    """

    forwarded = True
    bearer = False
    reads_query = False
    reads_tls = False
    memoizable = True
    www_authenticate = None

    def __init__(
        self,
        preset: Preset | str,
        *,
        trusted_proxies: TrustedProxies | Iterable[str],
        verifier: ChainVerifier,
        headers: Mapping[str, str] | None = None,
        max_header_length: int = MAX_FORWARDED_HEADER_LENGTH,
        max_chain_length: int = _DEFAULT_MAX_CHAIN,
        cache_size: int = 1024,
    ) -> None:
        try:
            self.preset = Preset(preset)
        except ValueError:
            known = ", ".join(repr(p.value) for p in Preset)
            raise ConfigurationError(
                f"unknown preset {preset!r}; expected one of {known}"
            ) from None
        self.trusted_proxies = _trusted(trusted_proxies)
        if not callable(getattr(verifier, "verify", None)):
            raise ConfigurationError("verifier must have a verify(chain) method")
        self.verifier = verifier
        names = dict(headers or {})
        for role, header in names.items():
            _header_name(header, f"headers[{role!r}]")
        fmt, roles = _formats(self.preset, names)
        unknown = set(names) - roles
        if unknown:
            allowed = ", ".join(sorted(roles)) or "none"
            raise ConfigurationError(
                f"preset {self.preset.value!r} has fixed header names; cannot rename "
                f"{sorted(unknown)} (renamable: {allowed})"
            )
        self._format = fmt
        for value, what in (
            (max_header_length, "max_header_length"),
            (max_chain_length, "max_chain_length"),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{what} must be a positive integer")
        self.max_header_length = max_header_length
        self.max_chain_length = max_chain_length
        all_headers = (fmt.cert_header, *fmt.chain_headers, *(s.header for s in fmt.status))
        if len(set(all_headers)) != len(all_headers):
            raise ConfigurationError(f"header names must be distinct: {list(all_headers)}")
        self.header_names: tuple[str, ...] = all_headers
        self.name = f"forwarded-{self.preset.value}"
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigurationError("cache_size must be a non-negative integer")
        self._cache = BoundedCache[
            tuple[str, tuple[str | None, ...]], tuple[list[bytes], VerifiedCertificate, Peer]
        ](cache_size)

    def authenticate(self, request: RequestView) -> Peer | None:
        headers = request.headers
        values = tuple(map(headers.get, self.header_names))
        if values.count(None) == len(values):
            return None
        # RequestView.trusted_proxy, inlined: this runs on every request.
        client = request.client
        proxy = client[0] if client is not None and client[0] in self.trusted_proxies else None
        if proxy is None:
            present = [n for n, v in zip(self.header_names, values, strict=True) if v is not None]
            request.note(f"ignored {', '.join(present)} from an untrusted peer")
            return None
        key = (proxy, values)
        hit = self._cache.get(key)
        if hit is None:
            # Only values that passed this check are ever cached, so a hit skips it.
            for name, value in zip(self.header_names, values, strict=True):
                if value is not None and len(value) > self.max_header_length:
                    raise AuthenticationFailed(
                        f"{name}: {len(value)} characters, more than the limit of "
                        f"{self.max_header_length}"
                    )
            chain = self._chain(headers)
            if chain is None:
                return None
        else:
            chain = hit[0]
        # The verifier decides every time (it caches, and knows about expiry and
        # bundle rotation); the cache here saves decoding and keeps one Peer
        # object per caller, which the policy's decision cache relies on.
        verified = self.verifier.verify(chain)
        if hit is not None and hit[1] is verified:
            return hit[2]
        peer = Peer(
            verified.spiffe_id,
            Proof.FORWARDED_CERTIFICATE,
            source=self.name,
            proxy=proxy,
            certificate_sha256=verified.sha256,
            still_valid=still_valid_of(self.verifier, verified),
        )
        self._cache.put(key, (chain, verified, peer))
        return peer

    def _chain(self, headers: Mapping[str, str]) -> list[bytes] | None:
        """The forwarded chain, leaf first; ``None`` when the proxy reports no certificate."""
        fmt = self._format
        raw = headers.get(fmt.cert_header)
        cert = None if raw is None or raw.strip(" \t") in fmt.absent else raw.strip(" \t")
        chains = [
            (name, value)
            for name in fmt.chain_headers
            if (value := headers.get(name)) is not None and value.strip(" \t") not in fmt.absent
        ]
        for status in fmt.status:
            said = headers.get(status.header)
            if said is not None and said.strip(" \t") in status.none:
                if cert is not None or chains:
                    # The proxy says "no certificate" yet one is here: a copy the
                    # proxy should have overwritten.
                    raise AuthenticationFailed(
                        f"{fmt.cert_header}: present, but {status.header} says the client "
                        "sent no certificate"
                    )
                return None
        if cert is None:
            if chains:
                raise AuthenticationFailed(
                    f"{chains[0][0]}: a certificate chain without {fmt.cert_header}"
                )
            for status in fmt.status:
                said = headers.get(status.header)
                if said is not None and said.strip(" \t") in status.ok:
                    raise AuthenticationFailed(
                        f"{status.header} reports a certificate, but {fmt.cert_header} is missing"
                    )
            return None
        for status in fmt.status:
            said = headers.get(status.header)
            if said is None:
                raise AuthenticationFailed(
                    f"{status.header}: missing; the proxy must send it with {fmt.cert_header}"
                )
            if said.strip(" \t") not in status.ok:
                expected = " or ".join(sorted(status.ok))
                raise AuthenticationFailed(
                    f"{status.header}: {_shown(said)}, not {expected}: the proxy did not verify "
                    "the certificate"
                )
        limit = self.max_chain_length
        try:
            certs = fmt.decode_cert(cert, limit)
            if not fmt.cert_is_chain and len(certs) != 1:
                raise _Bad(f"{len(certs)} certificates where the proxy writes one")
        except _Bad as exc:
            raise AuthenticationFailed(f"{fmt.cert_header}: {exc}") from None
        for name, value in chains:
            decode = fmt.decode_chain
            if decode is None:  # never: chain headers always come with a decoder
                continue
            try:
                more = decode(value.strip(" \t"), limit)
            except _Bad as exc:
                raise AuthenticationFailed(f"{name}: {exc}") from None
            if more and more[0] == certs[0]:
                # Some proxies put the leaf at the head of the chain as well.
                more = more[1:]
            certs.extend(more)
            if len(certs) > limit:
                raise AuthenticationFailed(
                    f"{name}: {len(certs)} certificates, more than the limit of {limit}"
                )
        _check_intermediates(certs)
        return certs

    def __repr__(self) -> str:
        return (
            f"ForwardedCertificateAuthenticator({self.preset.value!r}, "
            f"trusted_proxies={self.trusted_proxies!r})"
        )


# -- Linkerd ---------------------------------------------------------------------------

_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _dns_name(value: str, what: str) -> None:
    if not value or len(value) > 253:
        raise ValueError(f"{what} must be 1 to 253 characters")
    for label in value.split("."):
        if not _DNS_LABEL.fullmatch(label):
            raise ValueError(f"{what} {value!r} is not a lower-case DNS name")


class LinkerdIdentityAuthenticator:
    """Identity from Linkerd's ``l5d-client-id`` header, asserted by the inbound proxy.

    Linkerd's inbound proxy sets ``l5d-client-id`` on requests that arrived
    over a meshed mTLS connection to the client's identity,
    ``<service account>.<namespace>.serviceaccount.identity.<identity domain>``
    (for example ``checkout.shop.serviceaccount.identity.linkerd.cluster.local``;
    the identity domain is the control plane's namespace and the mesh's
    identity trust domain), and removes the header from other requests. It
    carries no certificate: the proxy verified it, so the peer's proof is
    :attr:`Proof.PROXY_ASSERTED`, mapped to
    ``spiffe://<trust_domain>/ns/<namespace>/sa/<service account>``.

    .. warning::
       The header is read only from ``trusted_proxies`` (the inbound proxy
       connects to the app from ``127.0.0.1`` in the pod); from any other peer
       it is ignored. The app must listen where only the proxy can reach it,
       or a client can name any identity.

    The value is parsed strictly: lower-case DNS labels, a namespace of one
    label, the configured ``identity_domain`` suffix, nothing else (a repeated
    header, a different domain or a stray character is refused with 401).
    """

    forwarded = True
    bearer = False
    reads_query = False
    reads_tls = False
    memoizable = True
    www_authenticate = None

    def __init__(
        self,
        *,
        trusted_proxies: TrustedProxies | Iterable[str],
        trust_domain: str,
        identity_domain: str = "linkerd.cluster.local",
        header: str = "l5d-client-id",
        cache_size: int = 1024,
    ) -> None:
        self.trusted_proxies = _trusted(trusted_proxies)
        try:
            parsed = SpiffeId.parse(f"spiffe://{trust_domain}")
        except (InvalidSpiffeIdError, TypeError) as exc:
            raise ConfigurationError(f"trust_domain {trust_domain!r}: {exc}") from exc
        if not parsed.is_trust_domain_id:
            raise ConfigurationError(f"trust_domain {trust_domain!r} must be a bare trust domain")
        self.trust_domain = trust_domain
        try:
            _dns_name(identity_domain, "identity_domain")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        self.identity_domain = identity_domain
        self._suffix = f".serviceaccount.identity.{identity_domain}"
        self.header = _header_name(header, "header")
        self.header_names: tuple[str, ...] = (header,)
        self.name = "linkerd"
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigurationError("cache_size must be a non-negative integer")
        self._cache = BoundedCache[tuple[str, str], Peer](cache_size)

    def authenticate(self, request: RequestView) -> Peer | None:
        value = request.headers.get(self.header)
        if value is None:
            return None
        proxy = request.trusted_proxy(self.trusted_proxies)
        if proxy is None:
            request.note(f"ignored {self.header} from an untrusted peer")
            return None
        key = (proxy, value)
        peer = self._cache.get(key)
        if peer is None:
            peer = Peer(self.parse(value), Proof.PROXY_ASSERTED, source=self.name, proxy=proxy)
            self._cache.put(key, peer)
        return peer

    def parse(self, value: str) -> SpiffeId:
        """The SPIFFE ID an ``l5d-client-id`` value names; raises :class:`AuthenticationFailed`."""
        if len(value) > 253:
            raise AuthenticationFailed(f"{self.header}: longer than 253 characters")
        if not value.endswith(self._suffix):
            raise AuthenticationFailed(
                f"{self.header}: {_shown(value)} is not a Linkerd identity in "
                f"{self.identity_domain!r}"
            )
        account, _, namespace = value[: -len(self._suffix)].rpartition(".")
        try:
            if not account:
                raise ValueError("no service account")
            _dns_name(namespace, "namespace")
            if len(namespace) > 63:
                raise ValueError("namespace longer than 63 characters")
            _dns_name(account, "service account")
            return SpiffeId.parse(f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{account}")
        except (ValueError, InvalidSpiffeIdError) as exc:
            raise AuthenticationFailed(f"{self.header}: {_shown(value)}: {exc}") from None

    def __repr__(self) -> str:
        return (
            f"LinkerdIdentityAuthenticator(trust_domain={self.trust_domain!r}, "
            f"trusted_proxies={self.trusted_proxies!r})"
        )
