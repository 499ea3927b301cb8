"""peer_middleware: which service is calling, and may it call this route?

ASGI and WSGI middleware that authenticates the calling service (a SPIFFE ID
from a trusted sidecar's forwarded certificate, a JWT-SVID or a Kubernetes
service-account token), and enforces
per-route rules before the handler runs. See the README for a tour.
"""

from __future__ import annotations

from .asgi import PeerMiddleware
from .authenticators import (
    BearerTokenAuthenticator,
    ForwardedCertificateAuthenticator,
    JwtSvidAuthenticator,
    KubernetesTokenAuthenticator,
    LinkerdIdentityAuthenticator,
    MtlsAuthenticator,
    XfccAuthenticator,
)
from .bundles import SpiffeBundleSet, StaticX509Bundle, X509BundleFile
from .errors import (
    AccessDenied,
    AuthenticationFailed,
    BadRequest,
    ConfigurationError,
    InvalidSpiffeIdError,
    InvalidToken,
    KeysUnavailable,
    PeerMiddlewareError,
    RequestRefused,
)
from .guard import Guard
from .keys import JwksUrl, OidcDiscovery, SpiffeJwtBundle, StaticJwks
from .matchers import (
    AllOf,
    AnyOf,
    Anyone,
    Authenticated,
    CertificateBound,
    CertificateVerified,
    Claim,
    HasToken,
    Issuer,
    Matcher,
    Namespace,
    Not,
    Principal,
    ProvenBy,
    RequestPrincipal,
    ServiceAccount,
    SidecarAsserted,
    TrustDomain,
)
from .memory import MemoryLimits
from .peer import Peer, Proof
from .policy import Policy
from .proxies import TrustedProxies
from .request import DECISION_KEY, PEER_KEY, Authenticator
from .responses import ProblemResponse, Refusal
from .rules import Decision, Route, Rule, allow, audit, deny
from .spiffe import SpiffeId
from .wsgi import PeerWSGIMiddleware
from .x509 import X509SvidVerifier

__version__ = "0.1.0"

__all__ = [
    "DECISION_KEY",
    "PEER_KEY",
    "AccessDenied",
    "AllOf",
    "AnyOf",
    "Anyone",
    "Authenticated",
    "AuthenticationFailed",
    "Authenticator",
    "BadRequest",
    "BearerTokenAuthenticator",
    "CertificateBound",
    "CertificateVerified",
    "Claim",
    "ConfigurationError",
    "Decision",
    "ForwardedCertificateAuthenticator",
    "Guard",
    "HasToken",
    "InvalidSpiffeIdError",
    "InvalidToken",
    "Issuer",
    "JwksUrl",
    "JwtSvidAuthenticator",
    "KeysUnavailable",
    "KubernetesTokenAuthenticator",
    "LinkerdIdentityAuthenticator",
    "Matcher",
    "MemoryLimits",
    "MtlsAuthenticator",
    "Namespace",
    "Not",
    "OidcDiscovery",
    "Peer",
    "PeerMiddleware",
    "PeerMiddlewareError",
    "PeerWSGIMiddleware",
    "Policy",
    "Principal",
    "ProblemResponse",
    "Proof",
    "ProvenBy",
    "Refusal",
    "RequestPrincipal",
    "RequestRefused",
    "Route",
    "Rule",
    "ServiceAccount",
    "SidecarAsserted",
    "SpiffeBundleSet",
    "SpiffeId",
    "SpiffeJwtBundle",
    "StaticJwks",
    "StaticX509Bundle",
    "TrustDomain",
    "TrustedProxies",
    "X509BundleFile",
    "X509SvidVerifier",
    "XfccAuthenticator",
    "__version__",
    "allow",
    "audit",
    "deny",
]
