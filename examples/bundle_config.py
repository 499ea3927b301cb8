"""Verify the sidecar's forwarded certificate in the examples, configured from the environment.

Off unless ``PEER_MIDDLEWARE_BUNDLE_FILE`` is set. Then the
:class:`~peer_middleware.XfccAuthenticator` gets an
:class:`~peer_middleware.X509SvidVerifier` over that file (PEM CA
certificates of the app's trust domain, or SPIFFE bundle JSON), re-read
when it changes: Envoy's ``Cert=`` must chain to a CA in the file, and an
element without ``Cert=`` is refused. See ``examples/README.md``.
"""

from __future__ import annotations

import os

from peer_middleware import X509BundleFile, X509SvidVerifier


def xfcc_verifier(trust_domain: str = "cluster.local") -> X509SvidVerifier | None:
    """The verifier the environment asks for (none by default)."""
    path = os.environ.get("PEER_MIDDLEWARE_BUNDLE_FILE")
    if not path:
        return None
    return X509SvidVerifier(X509BundleFile(path, trust_domain=trust_domain))
