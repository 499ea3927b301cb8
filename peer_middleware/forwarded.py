"""Former home of the forwarded-credential authenticators, presets and decoders (kept for imports).

:class:`ForwardedCertificateAuthenticator` is in
:mod:`peer_middleware.authenticators.forwarded`,
:class:`LinkerdIdentityAuthenticator` in
:mod:`peer_middleware.authenticators.linkerd`, :class:`Preset` in
:mod:`peer_middleware.presets` and the decoders in :mod:`peer_middleware.certs`.
What each preset reads, and how to configure each proxy safely:
``docs/proxies.md``.
"""

from __future__ import annotations

from peer_middleware.authenticators.forwarded import (
    MAX_FORWARDED_HEADER_LENGTH,
    ChainVerifier,
    ForwardedCertificateAuthenticator,
    VerifiedCertificate,
)
from peer_middleware.authenticators.linkerd import LinkerdIdentityAuthenticator
from peer_middleware.certs import (
    decode_der_base64,
    decode_der_base64_list,
    decode_der_concatenation,
    decode_pem,
    decode_sf_binary,
    decode_sf_binary_list,
)
from peer_middleware.presets import Preset

__all__ = [
    "MAX_FORWARDED_HEADER_LENGTH",
    "ChainVerifier",
    "ForwardedCertificateAuthenticator",
    "LinkerdIdentityAuthenticator",
    "Preset",
    "VerifiedCertificate",
    "decode_der_base64",
    "decode_der_base64_list",
    "decode_der_concatenation",
    "decode_pem",
    "decode_sf_binary",
    "decode_sf_binary_list",
]
