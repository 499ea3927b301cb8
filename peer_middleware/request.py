"""The neutral view of a request, and the protocol of what reads it.

Every adapter (ASGI, WSGI, and the framework integrations on them) turns its
request into a :class:`RequestView`; every authenticator is an
:class:`Authenticator` that reads one and finds the caller's identity in it.
Nothing here knows a framework, a server or a cryptographic library.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from .peer import Peer
from .proxies import TrustedProxies

__all__ = ["DECISION_KEY", "PEER_KEY", "Authenticator", "RequestView"]

#: Where the adapters put the :class:`~peer_middleware.Peer` (or ``None``) of
#: an allowed request: ``scope[PEER_KEY]`` (ASGI), ``environ[PEER_KEY]`` (WSGI).
PEER_KEY = "peer_middleware.peer"
#: Where the adapters put the :class:`~peer_middleware.Decision` of an allowed request.
DECISION_KEY = "peer_middleware.decision"


class RequestView:
    """The neutral view of a request that authenticators read.

    ``headers`` holds only the headers some authenticator declared, under
    lower-case names, repeated header lines joined with ``","`` in order.
    ``client`` is the immediate peer ``(host, port)``, or ``None`` when unknown
    or when it cannot be trusted (rewritten from ``X-Forwarded-For``).
    ``query`` is the raw query string (latin-1 text, no ``?``), provided only
    when some authenticator declares ``reads_query = True``; else ``""``.
    ``tls_chain`` is the client certificate chain of this connection, leaf
    first (DER ``bytes`` or PEM text), provided only when some authenticator
    declares ``reads_tls = True`` and the server exposes it; else ``None``.
    """

    __slots__ = ("checks", "client", "headers", "method", "notes", "path", "query", "tls_chain")

    def __init__(
        self,
        method: str,
        path: str,
        client: tuple[str, int] | None,
        headers: dict[str, str],
        query: str = "",
        tls_chain: tuple[bytes | str, ...] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.client = client
        self.headers = headers
        self.query = query
        self.tls_chain = tls_chain
        self.notes: list[str] | None = None
        self.checks: list[Callable[[], bool]] | None = None

    def valid_while(self, check: Callable[[], bool]) -> None:
        """Say how long the identity found in this request stays proven.

        An authenticator whose proof can lapse (a certificate or token that
        expires, trust material that rotates, a key withdrawn) calls this with
        a zero-argument check that returns True while the same credential
        would still prove the same peer. The guard remembers the checks with
        the identity and reuses it only while every one holds.
        """
        if self.checks is None:
            self.checks = []
        self.checks.append(check)

    def note(self, text: str) -> None:
        """Record something the decision log should mention."""
        if self.notes is None:
            self.notes = []
        self.notes.append(text)

    def trusted_proxy(self, proxies: TrustedProxies) -> str | None:
        """The immediate peer's host when it is one of ``proxies``, else ``None``."""
        client = self.client
        if client is not None and client[0] in proxies:
            return client[0]
        return None


@runtime_checkable
class Authenticator(Protocol):
    """Finds the caller's identity in a request.

    ``header_names`` lists the lower-case header names it reads; the
    properties below declare every other thing it reads or is: the guard
    reads them once, when it is built, and probes nothing.
    ``authenticate`` returns a :class:`Peer`, ``None`` when the request
    carries no credential of its kind (or one it must ignore, such as a
    forwarded header from an untrusted peer), and raises
    :class:`AuthenticationFailed` when a credential is present but invalid.
    It must not keep per-request state and must be safe to call from several
    threads.

    An authenticator's class may declare ``memoizable = True``: its answer
    depends only on the client's host (never on its port), the headers it
    declared, the query string (when it declares ``reads_query``) and the TLS
    chain, and it stays the same for as long as every check it passed to
    :meth:`RequestView.valid_while` returns True. When every authenticator of
    a guard declares it, the guard remembers the identity proven by each
    distinct credential (bounded, authenticated callers only) and skips the
    authenticators for a caller it has seen, until a check says otherwise.
    The declaration is read from the class itself, not inherited: a
    subclass that changes what ``authenticate`` checks must declare it
    again, once it keeps the promise. The values of the headers of bearer
    authenticators (``bearer = True``) and the query string are remembered
    only as their SHA-256, never as usable credentials.
    """

    @property
    def name(self) -> str: ...

    @property
    def header_names(self) -> Sequence[str]: ...

    @property
    def forwarded(self) -> bool:
        """True when it reads credentials a proxy forwards: the client address
        must then be checked for rewriting."""
        ...

    @property
    def bearer(self) -> bool:
        """True for a bearer-token authenticator: it runs even when another
        found a certificate, its peer attached as ``peer.token``, and its
        headers are remembered only as digests."""
        ...

    @property
    def reads_query(self) -> bool:
        """True when it reads the query string (adapters pass it only then)."""
        ...

    @property
    def reads_tls(self) -> bool:
        """True when it reads the connection's TLS client chain."""
        ...

    @property
    def www_authenticate(self) -> str | None:
        """The challenge of a 401 caused by a missing credential of its kind."""
        ...

    def authenticate(self, request: RequestView) -> Peer | None: ...
