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

What each preset (:mod:`peer_middleware.presets`) reads, how to configure
each proxy safely, and what happens to bad input: ``docs/proxies.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from cryptography import x509

from peer_middleware._cache import BoundedCache
from peer_middleware.authenticators._common import as_trusted_proxies, header_name, shown
from peer_middleware.bundles import CERTIFICATE_ERRORS
from peer_middleware.certs import DEFAULT_CHAIN_LENGTH, has_non_positive_serial
from peer_middleware.errors import (
    AuthenticationFailed,
    CertificateDecodingError,
    ConfigurationError,
)
from peer_middleware.peer import Peer, Proof
from peer_middleware.presets import Preset, preset_format
from peer_middleware.proxies import TrustedProxies
from peer_middleware.request import RequestView
from peer_middleware.spiffe import SpiffeId
from peer_middleware.x509 import still_valid_of

__all__ = [
    "MAX_FORWARDED_HEADER_LENGTH",
    "ChainVerifier",
    "ForwardedCertificateAuthenticator",
    "VerifiedCertificate",
]

MAX_FORWARDED_HEADER_LENGTH = 64 * 1024


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


#: The most characters of headers the authenticator remembers (as the guard does).
MAX_CACHED_CHARACTERS = 16 * 1024


class ForwardedCertificateAuthenticator:
    """Identity from a client certificate a trusted proxy forwards in a header.

    ``preset`` names the proxy (a :class:`~peer_middleware.presets.Preset` or
    its value, ``"nginx"``, ``"haproxy"``, ...); ``docs/proxies.md`` says what
    each sends and how to configure it safely. ``trusted_proxies`` are the
    addresses the proxy connects from; a header from any other peer is ignored
    (noted in the decision log). ``verifier`` verifies the decoded chain, leaf first, against
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
        max_chain_length: int = DEFAULT_CHAIN_LENGTH,
        cache_size: int = 1024,
    ) -> None:
        try:
            self.preset = Preset(preset)
        except ValueError:
            known = ", ".join(repr(p.value) for p in Preset)
            raise ConfigurationError(
                f"unknown preset {preset!r}; expected one of {known}"
            ) from None
        self.trusted_proxies = as_trusted_proxies(trusted_proxies)
        if not callable(getattr(verifier, "verify", None)):
            raise ConfigurationError("verifier must have a verify(chain) method")
        self.verifier = verifier
        names = dict(headers or {})
        for role, header in names.items():
            header_name(header, f"headers[{role!r}]")
        fmt, roles = preset_format(self.preset, names)
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
        # bundle rotation); the cache here saves decoding, and the peer built
        # for a result the verifier hands out again.
        verified = self.verifier.verify(chain)
        request.valid_while(still_valid_of(self.verifier, verified))
        if hit is not None and hit[1] is verified:
            return hit[2]
        peer = Peer(
            verified.spiffe_id,
            Proof.FORWARDED_CERTIFICATE,
            source=self.name,
            proxy=proxy,
            certificate_sha256=verified.sha256,
        )
        if sum(len(v) for v in values if v is not None) <= MAX_CACHED_CHARACTERS:
            # Long headers are decoded every time they come: the memory this
            # cache holds stays small whatever is sent.
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
                    f"{status.header}: {shown(said)}, not {expected}: the proxy did not verify "
                    "the certificate"
                )
        limit = self.max_chain_length
        try:
            certs = fmt.decode_cert(cert, limit)
        except CertificateDecodingError as exc:
            raise CertificateDecodingError(
                f"{fmt.cert_header}: {exc.reason}", fault=exc.fault
            ) from None
        if not fmt.cert_is_chain and len(certs) != 1:
            raise CertificateDecodingError(
                f"{fmt.cert_header}: {len(certs)} certificates where the proxy writes one",
                fault="too-many",
            )
        for name, value in chains:
            decode = fmt.decode_chain
            if decode is None:  # never: chain headers always come with a decoder
                continue
            try:
                more = decode(value.strip(" \t"), limit)
            except CertificateDecodingError as exc:
                raise CertificateDecodingError(f"{name}: {exc.reason}", fault=exc.fault) from None
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
