"""The authenticated caller: who it is and how that was proven."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .spiffe import SpiffeId

__all__ = ["Peer", "Proof", "never_still_valid"]

_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


class Proof(enum.Enum):
    """How a peer's identity was established, strongest first."""

    #: A client certificate on this very connection, verified in the app.
    MTLS = "mtls"
    #: A client certificate forwarded by a trusted proxy and verified in the
    #: app against the trust bundle.
    FORWARDED_CERTIFICATE = "forwarded-certificate"
    #: An identity asserted by a trusted proxy or sidecar (for example the
    #: ``URI`` of Envoy's ``x-forwarded-client-cert``); the certificate itself
    #: was checked by the proxy, not here.
    PROXY_ASSERTED = "proxy-asserted"
    #: A bearer token verified in the app.
    TOKEN = "token"  # noqa: S105 - a label, not a secret

    @property
    def certificate_grade(self) -> bool:
        """True when a certificate was verified in the app itself."""
        return self in (Proof.MTLS, Proof.FORWARDED_CERTIFICATE)


def never_still_valid() -> bool:
    """A ``still_valid`` check that always fails: the proof is checked again on every request."""
    return False


@dataclass(frozen=True, slots=True)
class Peer:
    """An authenticated caller.

    ``spiffe_id`` is who it is; ``proof`` how that was established;
    ``source`` names the authenticator that produced it (``"xfcc"``, ...);
    ``proxy`` is the address of the trusted proxy that vouched for it, if
    any; ``certificate_sha256`` the lower-case hex SHA-256 of the client
    certificate when one is known (for a token peer: the thumbprint of the
    certificate the token is bound to, RFC 8705); ``claims`` the verified
    token claims. ``token`` is the peer proven by a bearer token presented
    together with a certificate on the same request (``None`` otherwise).

    A peer is a plain value: how long its proof holds is told to the request
    view (:meth:`~peer_middleware.request.RequestView.valid_while`), and
    remembered by the guard with the peer, never carried by it.

    Peers never carry raw certificates or tokens, so they are safe to log.
    """

    spiffe_id: SpiffeId
    proof: Proof
    source: str
    proxy: str | None = None
    certificate_sha256: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: _NO_CLAIMS, compare=False, repr=False)
    token: Peer | None = None

    @property
    def principal(self) -> str:
        """The SPIFFE ID as a string (``spiffe://...``)."""
        return self.spiffe_id.uri

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.trust_domain

    @property
    def namespace(self) -> str | None:
        """Kubernetes namespace, when the ID follows ``/ns/<ns>/sa/<sa>``."""
        return self.spiffe_id.namespace

    @property
    def service_account(self) -> str | None:
        """Kubernetes service account, when the ID follows ``/ns/<ns>/sa/<sa>``."""
        return self.spiffe_id.service_account

    @property
    def issuer(self) -> str | None:
        """The verified ``iss`` claim of a token peer, else ``None``."""
        value = self.claims.get("iss")
        return value if isinstance(value, str) else None

    @property
    def subject(self) -> str | None:
        """The verified ``sub`` claim of a token peer, else ``None``."""
        value = self.claims.get("sub")
        return value if isinstance(value, str) else None

    def __str__(self) -> str:
        return self.spiffe_id.uri
