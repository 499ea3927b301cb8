"""Identity from Linkerd's ``l5d-client-id`` header, asserted by the inbound proxy."""

from __future__ import annotations

import re
from collections.abc import Iterable

from peer_middleware._cache import BoundedCache
from peer_middleware.authenticators._common import as_trusted_proxies, header_name, shown
from peer_middleware.errors import AuthenticationFailed, ConfigurationError, InvalidSpiffeIdError
from peer_middleware.peer import Peer, Proof
from peer_middleware.proxies import TrustedProxies
from peer_middleware.request import RequestView
from peer_middleware.spiffe import SpiffeId

__all__ = ["LinkerdIdentityAuthenticator"]

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
        self.trusted_proxies = as_trusted_proxies(trusted_proxies)
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
        self.header = header_name(header, "header")
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
                f"{self.header}: {shown(value)} is not a Linkerd identity in "
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
            raise AuthenticationFailed(f"{self.header}: {shown(value)}: {exc}") from None

    def __repr__(self) -> str:
        return (
            f"LinkerdIdentityAuthenticator(trust_domain={self.trust_domain!r}, "
            f"trusted_proxies={self.trusted_proxies!r})"
        )
