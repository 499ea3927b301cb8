"""Pure ASGI middleware (Starlette, FastAPI, Quart, Litestar, any ASGI 3 app).

::

    app = PeerMiddleware(
        app,
        policy=policy,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])],
    )

For ``http`` and ``websocket`` scopes the request is authenticated and
authorized before the app is called. Allowed requests reach the app with the
normalised path written back into ``scope["path"]`` and ``scope["raw_path"]``
(so the router sees what the rules saw), the :class:`~peer_middleware.Peer`
(or ``None``) in ``scope["peer_middleware.peer"]`` and the
:class:`~peer_middleware.Decision` in ``scope["peer_middleware.decision"]``.
As Starlette's ``AuthenticationMiddleware`` does, ``scope["user"]`` holds a
:class:`PeerUser` (``request.user.is_authenticated``, ``display_name`` the
SPIFFE ID) and ``scope["auth"]`` a :class:`PeerCredentials`
(``request.auth.scopes`` is ``["authenticated"]`` with a peer, and
``request.auth.proof`` how it was proven), unless something in front of the
middleware already set them.
Refused HTTP requests get the responder's fixed response; refused websockets
get an HTTP denial response where the server supports the
``websocket.http.response`` extension, otherwise a close (code 1008) before
the handshake completes, which servers turn into a 403. ``lifespan`` scopes
pass straight through; any other scope type (one a future server may
invent) is refused with an exception, as the ASGI specification asks of an
app that does not support it, and never reaches the app unauthenticated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from itertools import islice
from typing import Any

from .guard import Guard, Verdict, guard_from, logger
from .memory import MemoryLimits
from .observe import Observer
from .paths import quote_path
from .peer import Peer, Proof
from .policy import Policy
from .proxies import connection_client
from .request import DECISION_KEY, PEER_KEY, Authenticator
from .responses import Responder
from .routes import RouteTable
from .rules import Rule

__all__ = ["DECISION_SCOPE_KEY", "PEER_SCOPE_KEY", "PeerCredentials", "PeerMiddleware", "PeerUser"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PEER_SCOPE_KEY = PEER_KEY
DECISION_SCOPE_KEY = DECISION_KEY
_MAX_TLS_CHAIN = 1024


class PeerUser:
    """``scope["user"]``: the calling service, shaped like Starlette's ``BaseUser``.

    ``is_authenticated`` is True with a peer; ``display_name`` and
    ``identity`` are its SPIFFE ID (empty without one, as Starlette's
    ``UnauthenticatedUser``); ``peer`` is the :class:`~peer_middleware.Peer`.
    """

    __slots__ = ("peer",)

    def __init__(self, peer: Peer | None) -> None:
        self.peer = peer

    @property
    def is_authenticated(self) -> bool:
        return self.peer is not None

    @property
    def display_name(self) -> str:
        return self.peer.principal if self.peer is not None else ""

    @property
    def identity(self) -> str:
        return self.display_name

    def __repr__(self) -> str:
        return f"PeerUser({self.display_name!r})"


class PeerCredentials:
    """``scope["auth"]``: shaped like Starlette's ``AuthCredentials``.

    ``scopes`` is ``["authenticated"]`` with a peer (what Starlette's
    ``@requires("authenticated")`` checks) and empty without; ``proof`` says
    how the peer was proven (certificate, sidecar, token), ``peer`` is the
    peer itself (its ``token`` the verified bearer token, when one came too).
    """

    __slots__ = ("peer", "scopes")

    def __init__(self, peer: Peer | None) -> None:
        self.peer = peer
        # A tuple: one object serves every request of a remembered verdict.
        self.scopes: tuple[str, ...] = ("authenticated",) if peer is not None else ()

    @property
    def proof(self) -> Proof | None:
        return self.peer.proof if self.peer is not None else None

    def __repr__(self) -> str:
        return f"PeerCredentials({self.scopes!r}, proof={self.proof})"


def _tls_chain(scope: Scope) -> tuple[bytes | str, ...] | None:
    """The client certificate chain from the ASGI TLS extension, leaf first.

    ``scope["extensions"]["tls"]["client_cert_chain"]`` is a list of PEM
    strings (ASGI TLS extension); absent or empty when the client sent no
    certificate or the server does not expose it.
    """
    extensions = scope.get("extensions")
    if not isinstance(extensions, dict):
        return None
    tls = extensions.get("tls")
    if not isinstance(tls, dict):
        return None
    chain = tls.get("client_cert_chain")
    if not chain:
        return None
    if isinstance(chain, tuple):
        return chain
    if isinstance(chain, (str, bytes)):
        return (chain,)
    # A list from any sane server; anything longer than the cap is refused by
    # the verifier from its length alone, so a few extra entries suffice.
    return tuple(islice(chain, _MAX_TLS_CHAIN))


def _server_port(scope: Scope) -> int | None:
    """The port the server was reached on (``scope["server"]``), when known."""
    server = scope.get("server")
    if isinstance(server, (tuple, list)) and len(server) == 2 and type(server[1]) is int:
        return server[1]
    return None


def _warn_without_tls(scope: Scope) -> bool:
    """Warn, and return True, when an https request came without the ASGI TLS extension.

    An authenticator reads the client certificate, yet the server does not
    hand it to the app: every request arrives without a peer.
    """
    extensions = scope.get("extensions")
    if scope.get("scheme") not in ("https", "wss") or (
        isinstance(extensions, dict) and "tls" in extensions
    ):
        return False
    logger.warning(
        "an https request arrived without the ASGI TLS extension, so the client "
        "certificate an MtlsAuthenticator needs never reaches the app and every request "
        "is refused or anonymous. Serve with the library's protocol class: uvicorn "
        "--http peer_middleware.servers.uvicorn:H11Protocol (or HttpToolsProtocol), or "
        "uvicorn.run(app, **mtls_settings(...)) from peer_middleware.servers.uvicorn. "
        "(Warned once.)"
    )
    return True


def read_scope(
    scope: Scope, wanted: dict[bytes, str]
) -> tuple[dict[str, str], str | None, tuple[str, int] | None]:
    """What the guard reads of an ASGI request: the headers ``wanted`` names
    (raw lower-case name to the guard's name; repeated lines joined with
    ","), the target as sent (``raw_path``) and the connection's peer.

    ASGI servers send header names in lower case (ASGI spec, HTTP connection
    scope); a name in any other case is not matched, as Starlette's own
    Headers would not match it either. The peer a server integration recorded
    from the socket (:data:`~peer_middleware.proxies.CONNECTION_EXTENSION`)
    wins over ``scope["client"]``, which may have been rewritten from a
    request header; anything but a ``[host, port]`` pair is an unknown peer.
    """
    headers: dict[str, str] = {}
    if wanted:
        for name, value in scope.get("headers", ()):
            key = wanted.get(name)
            if key is not None:
                text = value.decode("latin-1")
                previous = headers.get(key)
                headers[key] = text if previous is None else previous + "," + text
    raw = scope.get("raw_path")
    raw_target = raw.decode("latin-1") if raw is not None else None
    client = connection_client(scope) if scope.get("extensions") else scope.get("client")
    if client is not None and type(client) is not tuple:
        client = tuple(client)
    if client is not None and len(client) != 2:
        client = None
    return headers, raw_target, client


def _wanted(names: frozenset[str]) -> dict[bytes, str]:
    """Each header name as an ASGI server sends it, to the name the guard reads."""
    return {name.encode("latin-1"): name for name in names}


class PeerMiddleware:
    """Authenticate the calling service and enforce ``policy`` on every request.

    Give either the configuration (``policy``, ``authenticators``,
    ``responder``, ``www_authenticate``, ``memory``, ``observers``) or a ``guard`` built from
    it. ``routes`` is an optional callable returning the app's
    :class:`~peer_middleware.routes.RouteTable`, called once when the
    middleware is built (the FastAPI integration uses it for rules declared
    on routes): those rules apply to the route the app's router dispatches to.
    ``route_rules`` is an optional callable returning extra central rules.
    Configuration errors raise here.
    """

    __slots__ = ("_reading", "_tls_warned", "app", "guard")

    def __init__(
        self,
        app: ASGIApp,
        *,
        policy: Policy | None = None,
        authenticators: Iterable[Authenticator] = (),
        responder: Responder | None = None,
        www_authenticate: str | None = None,
        route_rules: Callable[[], Iterable[Rule]] | None = None,
        routes: Callable[[], RouteTable] | None = None,
        memory: MemoryLimits | None = None,
        guard: Guard | None = None,
        observers: Iterable[Observer] = (),
    ) -> None:
        self.app = app
        self.guard = guard_from(
            policy, authenticators, responder, www_authenticate, memory, guard, observers
        )
        if route_rules is not None:
            self.guard.extend(route_rules())
        if routes is not None:
            self.guard.use_routes(routes())
        names = self.guard.header_names
        self._reading = (names, _wanted(names))
        self._tls_warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            if scope_type == "lifespan":
                await self.app(scope, receive, send)
                return
            logger.error("refused an ASGI scope of unknown type %r", str(scope_type)[:64])
            raise ValueError(f"peer_middleware does not support ASGI scope type {scope_type!r}")
        method = scope.get("method", "GET") if scope_type == "http" else "GET"
        names = self.guard.header_names
        reading = self._reading
        if reading[0] is not names:
            # The guard's policy was replaced: it may read other headers. The
            # names and their lookup are one value, never paired across policies.
            reading = self._reading = (names, _wanted(names))
        headers, raw_target, client = read_scope(scope, reading[1])
        path: str = scope.get("path", "")
        root_path = scope.get("root_path", "")
        guard = self.guard
        tls_chain = _tls_chain(scope) if guard.reads_tls else None
        if tls_chain is None and guard.reads_tls and not self._tls_warned:
            self._tls_warned = _warn_without_tls(scope)
        verdict = guard.check(
            method,
            path,
            raw_target,
            client,
            headers,
            root_path,
            scope.get("query_string", b"").decode("latin-1") if guard.reads_query else "",
            tls_chain,
            request=scope,
            port=_server_port(scope) if guard.reads_port else None,
            read=reading[0],
        )
        if not verdict.decision.allowed:
            await self._refuse(scope_type, scope, send, verdict)
            return
        if verdict.path != path:
            scope["path"] = verdict.path
            scope["raw_path"] = quote_path(verdict.path).encode("ascii")
        peer = verdict.peer
        scope[PEER_SCOPE_KEY] = peer
        scope[DECISION_SCOPE_KEY] = verdict.decision
        if "user" not in scope:
            adapted = verdict.adapted
            if adapted is None:
                # Made once per verdict; a remembered verdict brings them again.
                adapted = verdict.adapted = (PeerUser(peer), PeerCredentials(peer))
            scope["user"], scope["auth"] = adapted  # type: ignore[misc]
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope_type: str, scope: Scope, send: Send, verdict: Verdict) -> None:
        response = verdict.response
        assert response is not None  # every refused verdict carries its response
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        headers.append((b"content-length", str(len(response.body)).encode("ascii")))
        if scope_type == "http":
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": response.body, "more_body": False})
            return
        extensions = scope.get("extensions") or {}
        if "websocket.http.response" in extensions:
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": response.status,
                    "headers": headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": response.body})
            return
        await send({"type": "websocket.close", "code": 1008, "reason": ""})
