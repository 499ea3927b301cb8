"""Envoy's ``x-forwarded-client-cert`` (XFCC) header.

Grammar (Envoy's HTTP connection manager documentation, "x-forwarded-client-cert"):
the value is a comma-separated list of *elements*, one per proxy hop; each
element is a semicolon-separated list of ``key=value`` pairs. Keys are
case-insensitive: ``By``, ``Hash``, ``Cert``, ``Chain``, ``Subject``, ``URI``,
``DNS``. A value may be double-quoted, and inside quotes ``,``, ``;`` and
``=`` are literal and ``\\"`` is an escaped quote. ``Cert`` and ``Chain`` are
URL-encoded PEM. ``By``, ``URI`` and ``DNS`` may repeat within an element.

When a proxy *appends* (``APPEND_FORWARD``) the element it adds is the last
one; anything before it came from further away, possibly from the client.
Only the rightmost element is ever used for identity.

:func:`parse_xfcc` is strict: an unknown key, an empty element, a stray quote,
an unterminated quoted value, a control character anywhere, quoted or not
(0x00-0x1f but HTAB, and 0x7f: a field value holds none, RFC 9110 section
5.5), or a header over the size limits raises :class:`XfccSyntaxError`, never
a partial result. :func:`format_xfcc` writes the same grammar (used by
:mod:`peer_middleware.testing`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from ._cache import BoundedCache
from .errors import AuthenticationFailed, ConfigurationError, InvalidSpiffeIdError
from .peer import Peer, Proof
from .proxies import TrustedProxies
from .request import RequestView
from .spiffe import SpiffeId
from .x509 import (
    MAX_CERTIFICATE_BYTES,
    VerifiedSvid,
    X509SvidVerifier,
    split_pem_chain,
    still_valid_of,
)

__all__ = [
    "MAX_XFCC_ELEMENTS",
    "MAX_XFCC_LENGTH",
    "XfccAuthenticator",
    "XfccElement",
    "XfccSyntaxError",
    "format_xfcc",
    "parse_xfcc",
]

MAX_XFCC_LENGTH = 256 * 1024
MAX_XFCC_ELEMENTS = 32
MAX_XFCC_PAIRS = 64

KEYS = {
    "by": "By",
    "hash": "Hash",
    "cert": "Cert",
    "chain": "Chain",
    "subject": "Subject",
    "uri": "URI",
    "dns": "DNS",
}
_REPEATABLE = frozenset({"by", "uri", "dns"})
_WHITESPACE = " \t"
# Control characters: C0 but HTAB (optional whitespace, and allowed in a
# quoted-string), and DEL. RFC 9110 section 5.5 (field-value), 5.6.4 (qdtext).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class XfccSyntaxError(AuthenticationFailed):
    """The header does not follow the XFCC grammar (the request gets 401)."""

    def __init__(self, reason: str, *, position: int | None = None) -> None:
        self.position = position
        where = "" if position is None else f" at offset {position}"
        super().__init__(f"malformed x-forwarded-client-cert header: {reason}{where}")


@dataclass(frozen=True, slots=True)
class XfccElement:
    """One element of an XFCC header: what one proxy said of one client.

    Repeatable keys become tuples in order; single keys are ``None`` when
    absent. Values are as sent, quotes removed; ``cert`` and ``chain`` remain
    URL-encoded.
    """

    by: tuple[str, ...] = ()
    hash: str | None = None
    cert: str | None = None
    chain: str | None = None
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


def _element(pairs: list[tuple[str, str]], position: int) -> XfccElement:
    if not pairs:
        raise XfccSyntaxError("empty element", position=position)
    repeated: dict[str, list[str]] = {"by": [], "uri": [], "dns": []}
    single: dict[str, str] = {}
    for key, value in pairs:
        if key in _REPEATABLE:
            repeated[key].append(value)
        elif key in single:
            raise XfccSyntaxError(f"key {KEYS[key]!r} repeated in one element", position=position)
        else:
            single[key] = value
    return XfccElement(
        by=tuple(repeated["by"]),
        hash=single.get("hash"),
        cert=single.get("cert"),
        chain=single.get("chain"),
        subject=single.get("subject"),
        uri=tuple(repeated["uri"]),
        dns=tuple(repeated["dns"]),
    )


def parse_xfcc(value: str) -> tuple[XfccElement, ...]:
    """Parse a whole XFCC header value (several header lines joined by ``,``)."""
    if len(value) > MAX_XFCC_LENGTH:
        raise XfccSyntaxError(f"longer than {MAX_XFCC_LENGTH} characters")
    control = _CONTROL.search(value)
    if control is not None:
        raise XfccSyntaxError(
            f"control character 0x{ord(control.group()):02x}", position=control.start()
        )
    elements: list[XfccElement] = []
    pairs: list[tuple[str, str]] = []
    n = len(value)
    i = 0
    element_start = 0
    while True:
        while i < n and value[i] in _WHITESPACE:
            i += 1
        equals = value.find("=", i)
        if equals == -1:
            raise XfccSyntaxError("expected key=value", position=i)
        key = value[i:equals].rstrip(_WHITESPACE).lower()
        if key not in KEYS:
            shown = value[i:equals][:32]
            raise XfccSyntaxError(f"unknown key {shown!r}", position=i)
        i = equals + 1
        while i < n and value[i] in _WHITESPACE:
            i += 1
        if i < n and value[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise XfccSyntaxError("unterminated quoted value", position=i)
                char = value[i]
                if char == "\\":
                    if i + 1 >= n:
                        raise XfccSyntaxError("unterminated escape", position=i)
                    chars.append(value[i + 1])
                    i += 2
                    continue
                if char == '"':
                    i += 1
                    break
                chars.append(char)
                i += 1
            item = "".join(chars)
            while i < n and value[i] in _WHITESPACE:
                i += 1
            if i < n and value[i] not in ",;":
                raise XfccSyntaxError("unexpected text after a quoted value", position=i)
        else:
            start = i
            while i < n and value[i] not in ",;":
                if value[i] == '"':
                    raise XfccSyntaxError("unexpected '\"' in an unquoted value", position=i)
                i += 1
            item = value[start:i].strip(_WHITESPACE)
        pairs.append((key, item))
        if len(pairs) > MAX_XFCC_PAIRS:
            raise XfccSyntaxError(f"more than {MAX_XFCC_PAIRS} pairs in one element")
        if i >= n:
            elements.append(_element(pairs, element_start))
            break
        separator = value[i]
        i += 1
        if separator == ",":
            elements.append(_element(pairs, element_start))
            if len(elements) >= MAX_XFCC_ELEMENTS:
                raise XfccSyntaxError(f"more than {MAX_XFCC_ELEMENTS} elements")
            pairs = []
            element_start = i
            rest = value[i:].strip(_WHITESPACE)
            if not rest or rest[0] == ",":
                raise XfccSyntaxError("empty element", position=i)
        elif i >= n or not value[i:].strip(_WHITESPACE):
            raise XfccSyntaxError("trailing ';'", position=i)
    return tuple(elements)


def _quote(value: str) -> str:
    if value and not any(c in value for c in ',;="\\ \t'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_xfcc(elements: Iterable[XfccElement | Mapping[str, str | Sequence[str]]]) -> str:
    """Write elements in XFCC syntax (the inverse of :func:`parse_xfcc`).

    Accepts :class:`XfccElement` values or mappings such as
    ``{"By": "spiffe://td/app", "URI": "spiffe://td/caller"}``. A value
    holding a control character raises :class:`ValueError`: no quoting can
    carry one, and :func:`parse_xfcc` refuses it.
    """
    out: list[str] = []
    for element in elements:
        pairs: list[str] = []
        items: Iterable[tuple[str, str | Sequence[str] | None]]
        if isinstance(element, XfccElement):
            items = (
                ("By", element.by),
                ("Hash", element.hash),
                ("Cert", element.cert),
                ("Chain", element.chain),
                ("Subject", element.subject),
                ("URI", element.uri),
                ("DNS", element.dns),
            )
        else:
            items = element.items()
        for key, value in items:
            if value is None:
                continue
            if key.lower() not in KEYS:
                raise ValueError(f"unknown XFCC key {key!r}")
            values = [value] if isinstance(value, str) else list(value)
            for text in values:
                if _CONTROL.search(text) is not None:
                    raise ValueError(
                        f"XFCC value {text[:64]!r} holds a control character, which no "
                        "header may carry"
                    )
            pairs.extend(f"{KEYS[key.lower()]}={_quote(v)}" for v in values)
        out.append(";".join(pairs))
    return ",".join(out)


_HEX = frozenset("0123456789abcdefABCDEF")


class XfccAuthenticator:
    """Identity from Envoy/Istio's ``x-forwarded-client-cert``, asserted by a sidecar.

    .. warning::
       This header is a claim made by whoever sent the request. It is read
       only when the connection comes from one of ``trusted_proxies`` (the
       sidecar's addresses, e.g. ``127.0.0.1``, ``::1`` or Istio's
       ``127.0.0.6``); from any other peer it is ignored, whatever it says.
       Configure the proxy to *replace* the header (Envoy
       ``forward_client_cert_details: SANITIZE_SET``): with ``APPEND_FORWARD``
       the client's own elements stay in front of the proxy's.

    ``forward_client_cert`` names the proxy's mode, as Envoy does:
    ``"sanitize_set"`` (the default) expects exactly one element and refuses a
    header with more; ``"append_forward"`` (Istio's sidecars) uses the
    rightmost element, the one the trusted proxy appended. Envoy writes
    ``URI`` values unquoted, so a certificate whose URI SAN contains ``,URI=``
    (never a valid SPIFFE ID, but a careless CA could sign one) splits its
    element in two; in ``"sanitize_set"`` mode that is refused.

    The element used must carry exactly one ``URI`` that is a valid SPIFFE
    ID, else the request is refused with 401. ``expected_by``, when given, is
    this app's own SPIFFE ID: the element's ``By`` must name it, proving the
    proxy terminated TLS *for this app*.

    Without ``verifier`` the certificate itself is not verified here (the
    proxy did that): the peer's proof is :attr:`Proof.PROXY_ASSERTED`.

    With ``verifier`` (an :class:`~peer_middleware.x509.X509SvidVerifier`), the
    element's ``Cert`` (and ``Chain``, leaf first, when the proxy sends it:
    Envoy ``set_current_client_cert_details: {cert: true, chain: true}``) is
    verified against the trust bundle, its ``Hash`` must be the SHA-256 of
    that certificate and its ``URI``, when present, the certificate's SPIFFE
    ID; the peer's proof is then :attr:`Proof.FORWARDED_CERTIFICATE`. An
    element without ``Cert`` is refused (401) unless
    ``allow_sidecar_asserted=True``, which accepts the sidecar's word for
    such elements (:attr:`Proof.PROXY_ASSERTED`, as without a verifier):
    routes can then tell the two apart with ``CertificateVerified()`` and
    ``SidecarAsserted()``.

    Parsed headers are cached (bounded), so a repeat caller costs one
    dictionary look-up (plus the verifier's own cache look-up, which expires
    with the certificate or when the trust bundle changes).
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
        expected_by: str | None = None,
        header: str = "x-forwarded-client-cert",
        forward_client_cert: Literal["sanitize_set", "append_forward"] = "sanitize_set",
        cache_size: int = 1024,
        verifier: X509SvidVerifier | None = None,
        allow_sidecar_asserted: bool = False,
    ) -> None:
        if verifier is not None and not isinstance(verifier, X509SvidVerifier):
            raise ConfigurationError(f"verifier {verifier!r} is not an X509SvidVerifier")
        if allow_sidecar_asserted and verifier is None:
            raise ConfigurationError(
                "allow_sidecar_asserted=True only makes sense with a verifier: without one, "
                "every identity is sidecar-asserted"
            )
        self.verifier = verifier
        self.allow_sidecar_asserted = bool(allow_sidecar_asserted)
        if forward_client_cert not in ("sanitize_set", "append_forward"):
            raise ConfigurationError(
                f"forward_client_cert {forward_client_cert!r} must be 'sanitize_set' or "
                "'append_forward'"
            )
        self.single_element = forward_client_cert == "sanitize_set"
        self.trusted_proxies = (
            trusted_proxies
            if isinstance(trusted_proxies, TrustedProxies)
            else TrustedProxies(trusted_proxies)
        )
        if expected_by is not None:
            try:
                expected_by = SpiffeId.parse(expected_by).uri
            except InvalidSpiffeIdError as exc:
                raise ConfigurationError(f"expected_by {expected_by!r}: {exc}") from exc
        self.expected_by = expected_by
        if not isinstance(header, str) or not header or header != header.lower():
            raise ConfigurationError(f"header {header!r} must be a lower-case header name")
        self.header = header
        self.header_names: tuple[str, ...] = (header,)
        self.name = "xfcc"
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigurationError("cache_size must be a non-negative integer")
        # (proxy, value) -> (peer, the verified chain and its result, when a Cert was verified)
        self._cache = BoundedCache[
            tuple[str, str], tuple[Peer, tuple[tuple[str, ...], VerifiedSvid] | None]
        ](cache_size)

    def authenticate(self, request: RequestView) -> Peer | None:
        value = request.headers.get(self.header)
        if value is None:
            return None
        # RequestView.trusted_proxy, inlined: this runs on every request.
        client = request.client
        if client is None or client[0] not in self.trusted_proxies:
            request.note(f"ignored {self.header} from an untrusted peer")
            return None
        proxy = client[0]
        key = (proxy, value)
        hit = self._cache.get(key)
        if hit is not None:
            verified = hit[1]
            if verified is None:
                return hit[0]
            # The verifier's cache answers; it expires with the certificate
            # and when the bundle changes, and a re-verified chain gives a
            # new result, so a new Peer.
            if self.verifier is not None and self.verifier.verify(verified[0]) is verified[1]:
                return hit[0]
        entry = self._verify(value, proxy)
        self._cache.put(key, entry)
        return entry[0]

    def _verify(
        self, value: str, proxy: str
    ) -> tuple[Peer, tuple[tuple[str, ...], VerifiedSvid] | None]:
        elements = parse_xfcc(value)
        if self.single_element and len(elements) != 1:
            raise AuthenticationFailed(
                f"{self.header}: {len(elements)} elements, but the proxy replaces the header "
                "(sanitize_set) and writes exactly one"
            )
        element = elements[-1]
        if self.verifier is not None:
            if element.cert is not None or element.chain is not None:
                return self._verify_certificate(element, proxy, self.verifier)
            if not self.allow_sidecar_asserted:
                raise AuthenticationFailed(
                    f"{self.header}: the proxy's element has no Cert to verify, and "
                    "sidecar-asserted identities are not allowed (allow_sidecar_asserted)"
                )
        return self._asserted(element, proxy), None

    def _asserted(self, element: XfccElement, proxy: str) -> Peer:
        if not element.uri:
            raise AuthenticationFailed(f"{self.header}: the proxy's element has no URI")
        if len(element.uri) > 1:
            raise AuthenticationFailed(
                f"{self.header}: the proxy's element has {len(element.uri)} URIs; "
                "an X.509-SVID has exactly one"
            )
        try:
            spiffe_id = SpiffeId.parse(element.uri[0])
        except InvalidSpiffeIdError as exc:
            raise AuthenticationFailed(f"{self.header}: URI is not a SPIFFE ID: {exc}") from exc
        if spiffe_id.is_trust_domain_id:
            raise AuthenticationFailed(f"{self.header}: URI names a trust domain, not a workload")
        if self.expected_by is not None and self.expected_by not in element.by:
            raise AuthenticationFailed(
                f"{self.header}: By does not name this app ({self.expected_by})"
            )
        fingerprint = element.hash
        if fingerprint is not None:
            if len(fingerprint) != 64 or not set(fingerprint) <= _HEX:
                raise AuthenticationFailed(f"{self.header}: Hash is not a SHA-256 hex digest")
            fingerprint = fingerprint.lower()
        return Peer(
            spiffe_id,
            Proof.PROXY_ASSERTED,
            source=self.name,
            proxy=proxy,
            certificate_sha256=fingerprint,
        )

    def _unquote(self, key: str, value: str) -> str:
        try:
            return unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise AuthenticationFailed(
                f"{self.header}: {key} is not URL-encoded UTF-8 text"
            ) from None

    def _verify_certificate(
        self, element: XfccElement, proxy: str, verifier: X509SvidVerifier
    ) -> tuple[Peer, tuple[tuple[str, ...], VerifiedSvid]]:
        """Verify the forwarded ``Cert``/``Chain`` and check ``Hash`` and ``URI`` against it."""
        limit = verifier.max_chain_length
        # URL-encoding at most triples the PEM; refuse oversized values before decoding.
        encoded_limit = 3 * MAX_CERTIFICATE_BYTES * limit
        leaf: str | None = None
        if element.cert is not None:
            if len(element.cert) > 3 * MAX_CERTIFICATE_BYTES:
                raise AuthenticationFailed(
                    f"{self.header}: Cert is larger than {MAX_CERTIFICATE_BYTES} bytes"
                )
            certs = split_pem_chain(self._unquote("Cert", element.cert), max_certificates=1)
            leaf = certs[0]
        if element.chain is not None:
            if len(element.chain) > encoded_limit:
                raise AuthenticationFailed(f"{self.header}: Chain is too large")
            chain = tuple(
                split_pem_chain(self._unquote("Chain", element.chain), max_certificates=limit)
            )
            # Envoy's Chain is the whole chain, leaf first; it must start with Cert.
            if leaf is not None and chain[0].strip() != leaf.strip():
                raise AuthenticationFailed(
                    f"{self.header}: Chain does not start with the certificate in Cert"
                )
        elif leaf is not None:
            chain = (leaf,)
        else:  # pragma: no cover - the caller checks that Cert or Chain is present
            raise AuthenticationFailed(f"{self.header}: no Cert or Chain")
        svid = verifier.verify(chain)
        fingerprint = element.hash
        if fingerprint is not None and fingerprint.lower() != svid.sha256:
            raise AuthenticationFailed(
                f"{self.header}: Hash is not the SHA-256 of the forwarded certificate"
            )
        if element.uri and element.uri != (svid.spiffe_id.uri,):
            raise AuthenticationFailed(
                f"{self.header}: URI does not match the forwarded certificate's SPIFFE ID "
                f"({svid.spiffe_id.uri})"
            )
        if self.expected_by is not None and self.expected_by not in element.by:
            raise AuthenticationFailed(
                f"{self.header}: By does not name this app ({self.expected_by})"
            )
        peer = Peer(
            svid.spiffe_id,
            Proof.FORWARDED_CERTIFICATE,
            source=self.name,
            proxy=proxy,
            certificate_sha256=svid.sha256,
            still_valid=still_valid_of(verifier, svid),
        )
        return peer, (chain, svid)

    def __repr__(self) -> str:
        return f"XfccAuthenticator(trusted_proxies={self.trusted_proxies!r})"
