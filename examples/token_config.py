"""Kubernetes service-account tokens for the examples, configured from the environment.

Tokens are off unless ``PEER_MIDDLEWARE_TOKEN_AUDIENCE`` is set. Then a
:class:`~peer_middleware.KubernetesTokenAuthenticator` (trust domain
``cluster.local``) accepts ``Authorization: Bearer <projected token>`` as an
alternative to the sidecar's certificate, with keys from
``PEER_MIDDLEWARE_JWKS_URL`` or, when that is unset, from the OIDC discovery
document of ``PEER_MIDDLEWARE_TOKEN_ISSUER``. See ``examples/README.md``.
"""

from __future__ import annotations

import os

from peer_middleware import Authenticator, JwksUrl, KubernetesTokenAuthenticator, OidcDiscovery
from peer_middleware.keys import KeySource

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"


def token_authenticators(trust_domain: str = "cluster.local") -> list[Authenticator]:
    """The token authenticators the environment asks for (none by default)."""
    audience = os.environ.get("PEER_MIDDLEWARE_TOKEN_AUDIENCE")
    if not audience:
        return []
    issuer = os.environ.get("PEER_MIDDLEWARE_TOKEN_ISSUER") or DEFAULT_ISSUER
    allow_http = os.environ.get("PEER_MIDDLEWARE_TOKEN_ALLOW_HTTP") == "1"
    fetch = {
        "ca_file": os.environ.get("PEER_MIDDLEWARE_TOKEN_CA_FILE") or None,
        "token_file": os.environ.get("PEER_MIDDLEWARE_TOKEN_FETCH_TOKEN_FILE") or None,
        "allow_http": allow_http,
    }
    jwks_url = os.environ.get("PEER_MIDDLEWARE_JWKS_URL")
    keys: KeySource
    if jwks_url:
        keys = JwksUrl(jwks_url, issuer=issuer, **fetch)  # type: ignore[arg-type]
    else:
        keys = OidcDiscovery(
            issuer,
            discovery_url=os.environ.get("PEER_MIDDLEWARE_OIDC_DISCOVERY_URL") or None,
            **fetch,  # type: ignore[arg-type]
        )
    return [
        KubernetesTokenAuthenticator(
            keys=keys,
            audience=audience.split(","),
            issuers=issuer,
            trust_domain=trust_domain,
        )
    ]
