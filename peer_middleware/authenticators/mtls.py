"""Identity from the client certificate of this very connection (direct mTLS)."""

from __future__ import annotations

from peer_middleware._cache import BoundedCache
from peer_middleware.errors import ConfigurationError
from peer_middleware.peer import Peer, Proof
from peer_middleware.request import RequestView
from peer_middleware.x509 import VerifiedSvid, X509SvidVerifier, still_valid_of

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
        self.verifier = verifier
        self.name = "mtls"
        # id(VerifiedSvid) -> (svid, peer): a repeat caller gets the same Peer object.
        self._peers = BoundedCache[int, tuple[VerifiedSvid, Peer]](cache_size)

    def authenticate(self, request: RequestView) -> Peer | None:
        chain = request.tls_chain
        if not chain:
            return None
        svid = self.verifier.verify(chain)
        hit = self._peers.get(id(svid))
        if hit is not None and hit[0] is svid:
            return hit[1]
        peer = Peer(
            svid.spiffe_id,
            Proof.MTLS,
            source=self.name,
            certificate_sha256=svid.sha256,
            still_valid=still_valid_of(self.verifier, svid),
        )
        self._peers.put(id(svid), (svid, peer))
        return peer

    def __repr__(self) -> str:
        return f"MtlsAuthenticator({self.verifier!r})"
