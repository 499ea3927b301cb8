"""WSGI middleware (Flask, Django, Falcon, Pyramid, any WSGI app).

::

    app.wsgi_app = PeerWSGIMiddleware(
        app.wsgi_app,
        policy=policy,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])],
    )

The client address is ``REMOTE_ADDR``, or the original one when Werkzeug's
``ProxyFix`` has rewritten it. Allowed requests reach the app with the
normalised path in ``PATH_INFO``
(and in ``REQUEST_URI``/``RAW_URI`` when present), the
:class:`~peer_middleware.Peer` (or ``None``) in
``environ["peer_middleware.peer"]`` and the decision in
``environ["peer_middleware.decision"]``. Refused requests get the
responder's fixed response and never reach the app.

.. note::
   WSGI turns every header name into ``HTTP_<NAME>`` with ``-`` replaced by
   ``_``, so ``X-Forwarded-Client-Cert`` and ``X_Forwarded_Client_Cert``
   arrive as the same key. Use a server or proxy that drops header names with
   underscores (gunicorn does by default, nginx does unless
   ``underscores_in_headers on``), and make the trusted proxy overwrite the
   header it forwards.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import BadRequest
from .guard import Guard, Verdict, guard_from
from .memory import MemoryLimits
from .observe import Observer
from .paths import quote_path
from .policy import Policy
from .request import DECISION_KEY, PEER_KEY, Authenticator
from .responses import Responder
from .routes import RouteTable
from .rules import Rule
from .servers import peer_certificate_chain

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
else:
    StartResponse = WSGIApplication = WSGIEnvironment = Any

__all__ = ["DECISION_ENVIRON_KEY", "PEER_ENVIRON_KEY", "PeerWSGIMiddleware"]

PEER_ENVIRON_KEY = PEER_KEY
DECISION_ENVIRON_KEY = DECISION_KEY

_STATUS_LINES = {400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden"}


def read_environ(
    environ: WSGIEnvironment, keys: tuple[tuple[str, str], ...]
) -> tuple[dict[str, str], str | None, tuple[str, int] | None]:
    """What the guard reads of a WSGI request: the headers of ``keys`` (each
    name with its environ key), the target as sent (without its query) when
    the server gives it, and the connection's peer.

    The peer is the one werkzeug's ProxyFix kept as the original when it
    replaced ``REMOTE_ADDR`` from ``X-Forwarded-For``; its port is -1 when
    the server gives none that is a number.
    """
    headers: dict[str, str] = {}
    for name, key in keys:
        value = environ.get(key)
        if value is not None:
            headers[name] = value
    raw_uri = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if raw_uri is not None:
        raw_uri = raw_uri.partition("?")[0]
    client = None
    remote = environ.get("REMOTE_ADDR")
    original = environ.get("werkzeug.proxy_fix.orig")
    if original is not None:
        # Werkzeug's ProxyFix replaced REMOTE_ADDR with a value from
        # X-Forwarded-For; the connection's own peer is kept here.
        remote = original.get("REMOTE_ADDR")
    if remote:
        try:
            client = (remote, int(environ.get("REMOTE_PORT") or -1))
        except ValueError:
            client = (remote, -1)
    return headers, raw_uri, client


def _environ_keys(names: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """Each header name with the environ key a WSGI server puts it under."""
    return tuple((name, _environ_key(name)) for name in names)


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _wsgi_to_text(value: str) -> str:
    # PEP 3333 carries bytes as latin-1 text; paths are UTF-8 on the wire.
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise BadRequest("request path is not valid UTF-8") from None


def _text_to_wsgi(value: str) -> str:
    if value.isascii():
        return value
    return value.encode("utf-8").decode("latin-1")


_MAX_TLS_CHAIN = 1024


def _tls_chain(environ: WSGIEnvironment) -> tuple[bytes | str, ...] | None:
    """The client certificate chain of this connection, leaf first, if the server exposes it.

    ``SSL_CLIENT_CERT`` is the leaf in PEM (Werkzeug's development server with
    an SSL context, mod_wsgi with ``SSLOptions +ExportCertData``);
    ``SSL_CLIENT_CERT_CHAIN_0``, ``_1``, ... are the intermediates (Apache
    mod_ssl). gunicorn exposes only its socket: the chain the client sent,
    DER, on Python 3.13+, the leaf alone before (see
    :func:`peer_middleware.servers.peer_certificate_chain`).
    """
    leaf = environ.get("SSL_CLIENT_CERT")
    if leaf:
        if not isinstance(leaf, (str, bytes)):
            return None
        chain: list[bytes | str] = [leaf]
        index = 0
        while index < _MAX_TLS_CHAIN:
            extra = environ.get(f"SSL_CLIENT_CERT_CHAIN_{index}")
            if not extra:
                break
            chain.append(extra)
            index += 1
        return tuple(chain)
    sock: Any = environ.get("gunicorn.socket")
    if getattr(sock, "getpeercert", None) is None:
        return None
    try:
        presented = peer_certificate_chain(sock)
    except (OSError, ValueError, TypeError):
        return None
    return tuple(presented) or None


def _server_port(environ: WSGIEnvironment) -> int | None:
    """The port the server was reached on (``SERVER_PORT``), when known.

    Unknown on a unix socket of gunicorn's, whose ``SERVER_PORT`` is the port
    of the request's ``Host`` header: the client's choice.
    """
    sock: Any = environ.get("gunicorn.socket")
    unix = getattr(socket, "AF_UNIX", None)
    if unix is not None and getattr(sock, "family", None) == unix:
        return None
    port = environ.get("SERVER_PORT")
    if isinstance(port, str) and port.isdigit() and len(port) <= 5:
        return int(port)
    return None


class PeerWSGIMiddleware:
    """Authenticate the calling service and enforce ``policy`` on every request.

    Give either the configuration (``policy``, ``authenticators``,
    ``responder``, ``www_authenticate``, ``memory``, ``observers``) or a ``guard`` built from
    it. ``routes`` is an optional callable returning the app's
    :class:`~peer_middleware.routes.RouteTable`, and ``route_rules`` one
    returning extra central rules; both are called once, before the first
    request is served (the Flask integration uses ``routes`` for the rules
    declared on views, which are registered after the app is wrapped): rules
    declared on a route apply to the route the app dispatches to. Everything
    else is validated here.
    """

    def __init__(
        self,
        app: WSGIApplication,
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
        self._route_rules = route_rules
        self._routes = routes
        self._finalised = route_rules is None and routes is None
        self._lock = threading.Lock()
        names = self.guard.header_names
        self._reading = (names, _environ_keys(names))

    def finalise(self) -> None:
        """Apply the route rules now (done before the first request)."""
        with self._lock:
            if self._finalised:
                return
            if self._route_rules is not None:
                self.guard.extend(self._route_rules())
            if self._routes is not None:
                self.guard.use_routes(self._routes())
            self._finalised = True

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not self._finalised:
            self.finalise()
        guard = self.guard
        method = environ.get("REQUEST_METHOD", "GET")
        names = guard.header_names
        reading = self._reading
        if reading[0] is not names:
            # The guard's policy was replaced (or routes added): it may read
            # other headers. The names and their keys are one value, so a
            # thread never pairs one policy's names with another's keys.
            reading = self._reading = (names, _environ_keys(names))
        headers, raw_uri, client = read_environ(environ, reading[1])
        path_info = environ.get("PATH_INFO", "")
        try:
            path = _wsgi_to_text(path_info)
            script_name = _wsgi_to_text(environ.get("SCRIPT_NAME", ""))
        except BadRequest as error:
            return self._refuse(guard.reject(error, method, path_info), start_response)
        query_string = environ.get("QUERY_STRING", "") if guard.reads_query else ""
        tls_chain = _tls_chain(environ) if guard.reads_tls else None
        verdict = guard.check(
            method,
            path,
            raw_uri,
            client,
            headers,
            "",
            query_string,
            tls_chain,
            request=environ,
            port=_server_port(environ) if guard.reads_port else None,
            read=reading[0],
        )
        if not verdict.decision.allowed:
            return self._refuse(verdict, start_response)
        if verdict.path != path:
            new_path = _text_to_wsgi(verdict.path)
            environ["PATH_INFO"] = new_path
            query = environ.get("QUERY_STRING")
            uri = quote_path(script_name + verdict.path)
            if query:
                uri += "?" + query
            for key in ("REQUEST_URI", "RAW_URI"):
                if key in environ:
                    environ[key] = uri
        environ[PEER_ENVIRON_KEY] = verdict.peer
        environ[DECISION_ENVIRON_KEY] = verdict.decision
        return self.app(environ, start_response)

    @staticmethod
    def _refuse(verdict: Verdict, start_response: StartResponse) -> Iterable[bytes]:
        response = verdict.response
        assert response is not None  # every refused verdict carries its response
        headers = [*response.headers, ("content-length", str(len(response.body)))]
        status = _STATUS_LINES.get(response.status, f"{response.status} Refused")
        start_response(status, headers)
        return [response.body]
