"""peer_middleware: which service is calling, and may it call this route?

ASGI and WSGI middleware that authenticates the calling service (a SPIFFE ID
from a trusted sidecar's forwarded certificate, a JWT-SVID or a Kubernetes
service-account token), and enforces
per-route rules before the handler runs. See the README for a tour.
"""

from __future__ import annotations

from .asgi import DECISION_SCOPE_KEY, PEER_SCOPE_KEY, PeerMiddleware
from .authenticators import (
    BearerTokenAuthenticator,
    ForwardedCertificateAuthenticator,
    JwtSvidAuthenticator,
    KubernetesTokenAuthenticator,
    LinkerdIdentityAuthenticator,
    MtlsAuthenticator,
    XfccAuthenticator,
)
from .bundles import SpiffeBundleSet, StaticX509Bundle, X509BundleFile, X509BundleSource
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
from .keys import JwksUrl, KeySource, OidcDiscovery, SpiffeJwtBundle, StaticJwks
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
    Who,
)
from .memory import MemoryLimits
from .peer import Peer, Proof
from .policy import Policy
from .presets import Preset
from .proxies import TrustedProxies
from .request import Authenticator, RequestView
from .responses import ProblemResponse, Refusal, default_responder
from .rules import Action, Decision, Route, Rule, allow, audit, deny
from .spiffe import SpiffeId
from .wsgi import DECISION_ENVIRON_KEY, PEER_ENVIRON_KEY, PeerWSGIMiddleware
from .x509 import VerifiedSvid, X509SvidVerifier
from .xfcc import XfccElement, format_xfcc, parse_xfcc

__version__ = "0.1.0"

__all__ = [
    "DECISION_ENVIRON_KEY",
    "DECISION_SCOPE_KEY",
    "PEER_ENVIRON_KEY",
    "PEER_SCOPE_KEY",
    "AccessDenied",
    "Action",
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
    "KeySource",
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
    "Preset",
    "Principal",
    "ProblemResponse",
    "Proof",
    "ProvenBy",
    "Refusal",
    "RequestPrincipal",
    "RequestRefused",
    "RequestView",
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
    "VerifiedSvid",
    "Who",
    "X509BundleFile",
    "X509BundleSource",
    "X509SvidVerifier",
    "XfccAuthenticator",
    "XfccElement",
    "__version__",
    "allow",
    "audit",
    "default_responder",
    "deny",
    "format_xfcc",
    "parse_xfcc",
]
