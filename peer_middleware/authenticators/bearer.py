"""Bearer tokens in a request: JWT-SVIDs and Kubernetes service-account tokens.

::

    from peer_middleware import JwtSvidAuthenticator, KubernetesTokenAuthenticator
    from peer_middleware.keys import OidcDiscovery, SpiffeJwtBundle

    svids = JwtSvidAuthenticator(
        keys=SpiffeJwtBundle({"example.org": "/run/spire/bundle/example.org.jwks"}),
        audience="spiffe://example.org/payments",
    )
    kubernetes = KubernetesTokenAuthenticator(
        keys=OidcDiscovery("https://kubernetes.default.svc.cluster.local", ...),
        issuers=["https://kubernetes.default.svc.cluster.local"],
        audience="payments",
        trust_domain="cluster.local",
    )

A token is taken from ``Authorization: Bearer <token>`` (the scheme in any
case), from ``header`` when configured (the whole value is the token), and
from the query parameter ``query_parameter`` only when that is set. Exactly
one token may be present: two ``Authorization`` lines, or a token in two
places, refuse the request; so does a token longer than ``max_token_length``
characters. What the token proves is then the verifier's question: each
authenticator here is a verifier of :mod:`peer_middleware.jwt` (where the
checks are listed, in order) that also reads the request. A failed check
refuses the request with 401 and ``WWW-Authenticate: Bearer
error="invalid_token"``, a fixed body, and the precise reason in the decision
log (the token itself is never logged).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from urllib.parse import parse_qsl

from peer_middleware.errors import ConfigurationError, InvalidToken
from peer_middleware.jwt import (
    JWT_SVID_ALGORITHMS,
    KUBERNETES_ALGORITHMS,
    JwtSvidVerifier,
    JwtVerifier,
    KubernetesTokenVerifier,
)
from peer_middleware.keys import KeySource
from peer_middleware.peer import Peer
from peer_middleware.request import RequestView

__all__ = [
    "BearerTokenAuthenticator",
    "JwtSvidAuthenticator",
    "KubernetesTokenAuthenticator",
]

_BEARER = re.compile(r"(?:^|,)\s*bearer(?:\s|$)", re.IGNORECASE)


class BearerTokenAuthenticator(JwtVerifier):
    """Reads a bearer token from a request and verifies it;
    :class:`JwtSvidAuthenticator` and :class:`KubernetesTokenAuthenticator`
    say what identity a token proves.

    Configuration is keyword-only and validated here. ``keys``,
    ``audience``, ``issuers``, ``algorithms``, ``leeway``, ``cache_size``,
    ``clock`` and ``name`` configure the verification (see
    :class:`~peer_middleware.jwt.JwtVerifier`); the rest, where the token
    is read:

    ``header``
        another header holding the token (its whole value); ``query_parameter``
        a query parameter holding it (off unless set: URLs end up in logs).
    ``max_token_length``
        the longest token read (characters); a longer one is refused.
    """

    #: Token authenticators are run even after a certificate peer was found.
    bearer = True
    forwarded = False
    reads_tls = False
    www_authenticate = "Bearer"
    kind = "bearer"

    def __init__(
        self,
        *,
        keys: KeySource | Iterable[KeySource],
        audience: str | Iterable[str],
        issuers: str | Iterable[str] | None = None,
        algorithms: Iterable[str] = KUBERNETES_ALGORITHMS,
        leeway: float = 30.0,
        header: str | None = None,
        query_parameter: str | None = None,
        max_token_length: int = 16 * 1024,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
    ) -> None:
        JwtVerifier.__init__(
            self,
            keys=keys,
            audience=audience,
            issuers=issuers,
            algorithms=algorithms,
            leeway=leeway,
            cache_size=cache_size,
            clock=clock,
            name=name,
        )
        self._read_from(header, query_parameter, max_token_length)

    def _read_from(
        self, header: str | None, query_parameter: str | None, max_token_length: int
    ) -> None:
        """Check and keep where tokens are read."""
        names = ["authorization"]
        if header is not None:
            if not isinstance(header, str) or not header or header != header.lower():
                raise ConfigurationError(f"header {header!r} must be a lower-case header name")
            if header == "authorization":
                raise ConfigurationError("header must not be 'authorization' (always read)")
            names.append(header)
        self.header = header
        self.header_names: tuple[str, ...] = tuple(names)
        if query_parameter is not None and (
            not isinstance(query_parameter, str) or not query_parameter
        ):
            raise ConfigurationError("query_parameter must be a non-empty string")
        self.query_parameter = query_parameter
        self.reads_query = query_parameter is not None
        if not isinstance(max_token_length, int) or not 64 <= max_token_length <= 1024 * 1024:
            raise ConfigurationError("max_token_length must be an integer from 64 to 1 MiB")
        self.max_token_length = max_token_length
        # Only Authorization is read: the common case takes a shorter path.
        self._simple = header is None and query_parameter is None
        self._max_value = max_token_length + 7

    # Extraction ------------------------------------------------------------

    def _extract(self, request: RequestView) -> str | None:
        found: list[tuple[str, str]] = []
        value = request.headers.get("authorization")
        if value is not None:
            scheme, _, rest = value.partition(" ")
            if "," in value and _BEARER.search(value):
                # Header lines are joined with ","; a token68 never holds one.
                raise InvalidToken("several Authorization values with a bearer token")
            if scheme.lower() == "bearer":
                found.append(("Authorization", rest.strip(" \t")))
        if self.header is not None:
            other = request.headers.get(self.header)
            if other is not None:
                if "," in other:
                    raise InvalidToken(f"several {self.header} values")
                scheme, _, rest = other.partition(" ")
                found.append((self.header, rest if scheme.lower() == "bearer" else other))
        if self.query_parameter is not None and request.query:
            for key, item in parse_qsl(request.query, keep_blank_values=True):
                if key == self.query_parameter:
                    found.append((f"query parameter {self.query_parameter}", item))
        if not found:
            return None
        if len(found) > 1:
            places = ", ".join(place for place, _ in found)
            raise InvalidToken(f"more than one bearer token ({places})")
        place, token = found[0]
        token = token.strip(" \t")
        if not token:
            raise InvalidToken(f"empty bearer token in {place}")
        if len(token) > self.max_token_length:
            raise InvalidToken(f"bearer token longer than {self.max_token_length} characters")
        return token

    # The request path --------------------------------------------------------

    def authenticate(self, request: RequestView) -> Peer | None:
        value = request.headers.get("authorization")
        if (
            self._simple
            and value is not None
            and value[:7].lower() == "bearer "
            and "," not in value
            and len(value) <= self._max_value
        ):
            token: str | None = value[7:].strip(" \t")
        elif value is None and self._simple:
            return None
        else:
            token = self._extract(request)
        if not token:
            if token is None:
                return None
            raise InvalidToken("empty bearer token in Authorization")
        peer, still_valid = self.verify_while(token)
        request.valid_while(still_valid)
        return peer


class JwtSvidAuthenticator(BearerTokenAuthenticator, JwtSvidVerifier):
    """JWT-SVIDs (SPIFFE JWT-SVID specification): ``sub`` is the peer's SPIFFE ID.

    Verified as by :class:`~peer_middleware.jwt.JwtSvidVerifier`: with
    :class:`~peer_middleware.keys.SpiffeJwtBundle` keys, a token is verified
    only by a key of its ``sub``'s trust domain. ``trust_domains``
    additionally limits the trust domains accepted. ``issuers`` is optional
    (the specification does not require ``iss``). ``algorithms`` defaults to
    :data:`~peer_middleware.jwt.JWT_SVID_ALGORITHMS`, the specification's nine
    (section 2.1); any other, ``EdDSA`` included, is a
    :class:`ConfigurationError`. The token is read as by
    :class:`BearerTokenAuthenticator`.
    """

    kind = "jwt-svid"
    memoizable = True

    def __init__(
        self,
        *,
        keys: KeySource | Iterable[KeySource],
        audience: str | Iterable[str],
        trust_domains: Iterable[str] | None = None,
        issuers: str | Iterable[str] | None = None,
        algorithms: Iterable[str] = JWT_SVID_ALGORITHMS,
        leeway: float = 30.0,
        header: str | None = None,
        query_parameter: str | None = None,
        max_token_length: int = 16 * 1024,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
    ) -> None:
        JwtSvidVerifier.__init__(
            self,
            keys=keys,
            audience=audience,
            trust_domains=trust_domains,
            issuers=issuers,
            algorithms=algorithms,
            leeway=leeway,
            cache_size=cache_size,
            clock=clock,
            name=name,
        )
        self._read_from(header, query_parameter, max_token_length)


class KubernetesTokenAuthenticator(BearerTokenAuthenticator, KubernetesTokenVerifier):
    """Kubernetes service-account tokens (projected, audience-bound, expiring).

    Verified as by :class:`~peer_middleware.jwt.KubernetesTokenVerifier`:
    ``sub`` must be ``system:serviceaccount:<namespace>:<name>`` and agree
    with the ``kubernetes.io`` claim; the peer's SPIFFE ID is
    ``spiffe://<trust_domain>/ns/<namespace>/sa/<name>``, so the rules that
    name certificate identities (``Namespace``, ``ServiceAccount``,
    ``Principal``) serve tokens too. ``issuers`` is required (the API
    server's ``--service-account-issuer``). Legacy secret-based tokens (no
    ``exp``, no audience) are refused. The token is read as by
    :class:`BearerTokenAuthenticator`.
    """

    kind = "kubernetes"
    memoizable = True

    def __init__(
        self,
        *,
        keys: KeySource | Iterable[KeySource],
        audience: str | Iterable[str],
        issuers: str | Iterable[str],
        trust_domain: str,
        algorithms: Iterable[str] = KUBERNETES_ALGORITHMS,
        leeway: float = 30.0,
        header: str | None = None,
        query_parameter: str | None = None,
        max_token_length: int = 16 * 1024,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
    ) -> None:
        KubernetesTokenVerifier.__init__(
            self,
            keys=keys,
            audience=audience,
            issuers=issuers,
            trust_domain=trust_domain,
            algorithms=algorithms,
            leeway=leeway,
            cache_size=cache_size,
            clock=clock,
            name=name,
        )
        self._read_from(header, query_parameter, max_token_length)
