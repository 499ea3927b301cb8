"""Authenticators: each reads a request view and names the caller, or refuses it.

One module per credential, none importing another; each sits on the verify
layer (certificate and token verifiers, trust material) and the parse layer
below it, and returns a :class:`~peer_middleware.peer.Peer` that says how
the identity was proven:

* :class:`MtlsAuthenticator` (:mod:`.mtls`): the client certificate of this
  very connection, verified here.
* :class:`XfccAuthenticator` (:mod:`.xfcc`): Envoy's
  ``x-forwarded-client-cert``, asserted by a trusted sidecar or verified here.
* :class:`ForwardedCertificateAuthenticator` (:mod:`.forwarded`): a client
  certificate a trusted TLS-terminating proxy forwards in a header, verified
  here.
* :class:`LinkerdIdentityAuthenticator` (:mod:`.linkerd`): Linkerd's
  ``l5d-client-id``, asserted by a trusted inbound proxy.
* :class:`JwtSvidAuthenticator` and :class:`KubernetesTokenAuthenticator`
  (:mod:`.bearer`, on :class:`BearerTokenAuthenticator`): a bearer token,
  verified here (:mod:`peer_middleware.jwt`).

Every authenticator declares what it reads (see
:class:`~peer_middleware.request.Authenticator`).
"""

from __future__ import annotations

from .bearer import BearerTokenAuthenticator, JwtSvidAuthenticator, KubernetesTokenAuthenticator
from .forwarded import ForwardedCertificateAuthenticator
from .linkerd import LinkerdIdentityAuthenticator
from .mtls import MtlsAuthenticator
from .xfcc import XfccAuthenticator

__all__ = [
    "BearerTokenAuthenticator",
    "ForwardedCertificateAuthenticator",
    "JwtSvidAuthenticator",
    "KubernetesTokenAuthenticator",
    "LinkerdIdentityAuthenticator",
    "MtlsAuthenticator",
    "XfccAuthenticator",
]
