"""peer_middleware: which service is calling, and may it call this route?

ASGI and WSGI middleware that authenticates the calling service (a SPIFFE ID
from a trusted sidecar's forwarded certificate, and more), and enforces
per-route rules before the handler runs. See the README for a tour.
"""

from __future__ import annotations

from .asgi import DECISION_SCOPE_KEY, PEER_SCOPE_KEY, PeerMiddleware
from .core import Authenticator, Guard, ProblemResponse, Refusal, RequestView, default_responder
from .errors import (
    AccessDenied,
    AuthenticationFailed,
    BadRequest,
    ConfigurationError,
    InvalidSpiffeIdError,
    PeerMiddlewareError,
    RequestRefused,
)
from .peer import Peer, Proof
from .policy import (
    Action,
    AllOf,
    AnyOf,
    Anyone,
    Authenticated,
    Decision,
    Namespace,
    Not,
    Policy,
    Principal,
    ProvenBy,
    Rule,
    ServiceAccount,
    TrustDomain,
    Who,
    allow,
    audit,
    deny,
)
from .proxies import TrustedProxies
from .spiffe import SpiffeId
from .wsgi import DECISION_ENVIRON_KEY, PEER_ENVIRON_KEY, PeerWSGIMiddleware
from .xfcc import XfccAuthenticator, XfccElement, format_xfcc, parse_xfcc

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
    "ConfigurationError",
    "Decision",
    "Guard",
    "InvalidSpiffeIdError",
    "Namespace",
    "Not",
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
    "RequestRefused",
    "RequestView",
    "Rule",
    "ServiceAccount",
    "SpiffeId",
    "TrustDomain",
    "TrustedProxies",
    "Who",
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
