"""Identity from the client certificate of this very connection (direct mTLS)."""

from __future__ import annotations

from peer_middleware.errors import ConfigurationError
from peer_middleware.peer import Peer, Proof
from peer_middleware.request import RequestView
from peer_middleware.x509 import X509SvidVerifier, still_valid_of

__all__ = ["MtlsAuthenticator"]


class MtlsAuthenticator:
    """Identity from the client certificate of this very connection (direct mTLS).

    The server terminates TLS and hands the client's chain to the app (ASGI
    ``scope["extensions"]["tls"]["client_cert_chain"]``; WSGI
    ``SSL_CLIENT_CERT`` and ``SSL_CLIENT_CERT_CHAIN_n``, or gunicorn's
    socket); ``verifier`` checks it against the trust bundle. The peer's proof
    is :attr:`Proof.MTLS`. A request without a client certificate yields no
    peer (the policy decides); an invalid one is refused with 401.

    The server must *request* a client certificate (``ssl.CERT_OPTIONAL`` or
    ``CERT_REQUIRED``); what it accepted is verified again here, against the
    SPIFFE bundle of the leaf's trust domain.

    It remembers nothing itself: the verifier remembers verified chains (its
    own ``cache_size``), the guard the peers. ``cache_size`` is accepted for
    compatibility and unused.
    """

    forwarded = False
    memoizable = True
    reads_query = False
    reads_tls = True
    bearer = False
    www_authenticate = None
    header_names: tuple[str, ...] = ()

    def __init__(self, verifier: X509SvidVerifier, *, cache_size: int = 1024) -> None:
        if not isinstance(verifier, X509SvidVerifier):
            raise ConfigurationError(f"{verifier!r} is not an X509SvidVerifier")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigurationError("cache_size must be a non-negative integer")
        self.verifier = verifier
        self.name = "mtls"

    def authenticate(self, request: RequestView) -> Peer | None:
        chain = request.tls_chain
        if not chain:
            return None
        # The verifier remembers what it verified (keyed by the chain's exact
        # bytes, until it expires or the bundle rotates); the guard remembers
        # the peer.
        svid = self.verifier.verify(chain)
        request.valid_while(still_valid_of(self.verifier, svid))
        return Peer(svid.spiffe_id, Proof.MTLS, source=self.name, certificate_sha256=svid.sha256)

    def __repr__(self) -> str:
        return f"MtlsAuthenticator({self.verifier!r})"
