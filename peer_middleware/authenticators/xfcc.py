"""Identity from Envoy/Istio's ``x-forwarded-client-cert``, asserted or forwarded by a sidecar.

The header's grammar is :mod:`peer_middleware.xfcc`; this module decides who
may send it and what an element proves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal
from urllib.parse import unquote

from peer_middleware._cache import BoundedCache
from peer_middleware.authenticators._common import as_trusted_proxies
from peer_middleware.errors import AuthenticationFailed, ConfigurationError, InvalidSpiffeIdError
from peer_middleware.peer import Peer, Proof
from peer_middleware.proxies import TrustedProxies
from peer_middleware.request import RequestView
from peer_middleware.spiffe import SpiffeId
from peer_middleware.x509 import (
    MAX_CERTIFICATE_BYTES,
    VerifiedSvid,
    X509SvidVerifier,
    split_pem_chain,
    still_valid_of,
)
from peer_middleware.xfcc import XfccElement, parse_xfcc

__all__ = ["XfccAuthenticator"]

_HEX = frozenset("0123456789abcdefABCDEF")


#: The longest header value the authenticator remembers (as the guard does).
MAX_CACHED_CHARACTERS = 16 * 1024


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
        self.trusted_proxies = as_trusted_proxies(trusted_proxies)
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
                request.valid_while(still_valid_of(self.verifier, verified[1]))
                return hit[0]
        entry = self._verify(value, proxy)
        if entry[1] is not None and self.verifier is not None:
            # A certificate verified here: the identity holds while it does.
            request.valid_while(still_valid_of(self.verifier, entry[1][1]))
        if len(value) <= MAX_CACHED_CHARACTERS:
            # A long header (many elements, a chain) is verified every time it
            # comes: the memory this cache holds stays small whatever is sent.
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
        )
        return peer, (chain, svid)

    def __repr__(self) -> str:
        return f"XfccAuthenticator(trusted_proxies={self.trusted_proxies!r})"
