"""uvicorn protocol classes: the connection's own peer and TLS client certificate, to the app.

uvicorn (0.54) terminates TLS itself but puts nothing about the client's
certificate in the scope. These classes do: once per connection, right after
the handshake, they read the chain from the connection's
:class:`ssl.SSLObject`, and every HTTP request and WebSocket on that
connection gets it as ``scope["extensions"]["tls"]`` (see
:class:`~peer_middleware.servers.TlsExtension`), which
:class:`~peer_middleware.PeerMiddleware` reads. Plain-HTTP connections get
no TLS extension (the spec forbids it there).

On every connection, TLS or not, they also record the address of the
connection's own peer, read from the socket, in
``scope["extensions"]["peer_middleware.connection"]``
(:func:`~peer_middleware.servers.add_connection_extension`). uvicorn's
``ProxyHeadersMiddleware`` (``--proxy-headers``, on by default, trusting
127.0.0.1; every peer with ``--forwarded-allow-ips='*'``) replaces
``scope["client"]`` with an address taken from ``X-Forwarded-For``, which the
client writes; it leaves this entry alone, and
:class:`~peer_middleware.PeerMiddleware` uses the entry to decide whether the
peer is a trusted proxy. With these classes, forwarded credentials are read
from the trusted proxy whatever ``--forwarded-allow-ips`` says, and never
from anybody else. This is the recommended way to serve an app that reads
forwarded credentials with uvicorn, mTLS or not::

    uvicorn app:app --http peer_middleware.servers.uvicorn:H11Protocol

From the command line, name a class with ``--http`` and ask for client
certificates with ``--ssl-cert-reqs`` (1 optional, 2 required) and
``--ssl-ca-certs`` (the CAs the TLS layer accepts)::

    uvicorn app:app --host 0.0.0.0 --port 8443 \\
        --http peer_middleware.servers.uvicorn:H11Protocol \\
        --ssl-certfile server.pem --ssl-keyfile server-key.pem \\
        --ssl-ca-certs bundle.pem --ssl-cert-reqs 2

From Python, :func:`mtls_settings` gives the same settings::

    uvicorn.run(app, host="0.0.0.0", port=8443, **mtls_settings(
        certfile="server.pem", keyfile="server-key.pem", ca_certs="bundle.pem"))

``H11Protocol`` needs nothing beyond uvicorn; ``HttpToolsProtocol`` needs
``httptools``. WebSockets are covered too: on a TLS connection the WebSocket
class chosen with ``--ws`` is extended the same way when the connection is
upgraded, so ``--ws`` needs no change. Any other uvicorn protocol class that
keeps the ASGI app in ``self.app`` (as all of uvicorn's do) can be extended
with :func:`tls_protocol`.

The TLS layer decides which certificates complete the handshake; it does not
read SPIFFE IDs. The app's mTLS authenticator verifies the chain against the
trust bundle whatever the TLS layer accepted.

Other uvicorn middleware that reads ``scope["client"]`` (access logs, the
app's own ``request.client``) still sees the rewritten address.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from os import PathLike
from typing import Any, TypeVar

from uvicorn.protocols.http.h11_impl import H11Protocol as _H11Protocol
from uvicorn.protocols.utils import get_remote_addr

from peer_middleware.errors import ConfigurationError

from . import TlsExtension, add_connection_extension, add_tls_extension, tls_extension

# HttpToolsProtocol is left out: it is built on first access (httptools is optional).
__all__ = ["H11Protocol", "mtls_settings", "tls_protocol"]

_Scope = MutableMapping[str, Any]
_App = Callable[[_Scope, Any, Any], Awaitable[None]]
_P = TypeVar("_P", bound=asyncio.BaseProtocol)

_CONNECTION_SCOPE_TYPES = frozenset({"http", "websocket"})


class _ConnectionApp:
    """The connection's ASGI app, adding what the connection says to each scope.

    The connection's own peer always; its TLS extension on a TLS connection.
    """

    __slots__ = ("app", "client", "tls")

    def __init__(self, app: _App, client: tuple[str, int] | None, tls: TlsExtension | None) -> None:
        self.app = app
        self.client = client
        self.tls = tls

    async def __call__(self, scope: _Scope, receive: Any, send: Any) -> None:
        if scope["type"] in _CONNECTION_SCOPE_TYPES:
            add_connection_extension(scope, self.client)
            if self.tls is not None:
                add_tls_extension(scope, self.tls)
        await self.app(scope, receive, send)


@functools.cache
def tls_protocol(base: type[_P]) -> type[_P]:
    """A subclass of the uvicorn protocol class ``base`` that says what the connection is.

    Every HTTP and WebSocket scope gets the connection's own peer address
    (:func:`~peer_middleware.servers.add_connection_extension`) and, on a
    TLS connection, the ASGI TLS extension. ``base`` must keep the ASGI app
    in ``self.app`` and get the transport in ``connection_made`` (all of
    uvicorn's HTTP and WebSocket classes do); the app it holds then already
    includes uvicorn's proxy-header middleware, which runs after the entry is
    written. The result is cached: the same ``base`` always gives the same
    class.
    """
    if getattr(base, "_peer_middleware_tls", False):
        return base

    class TlsProtocol(base):  # type: ignore[valid-type, misc]
        _peer_middleware_tls = True
        app: Any
        ws_protocol_class: Any

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            # Computed once for the connection. The peer is read from the
            # socket as uvicorn reads it for scope["client"], before any
            # middleware can replace that.
            tls = tls_extension(transport.get_extra_info("ssl_object"))
            client = get_remote_addr(transport)  # type: ignore[arg-type]
            self.app = _ConnectionApp(self.app, client, tls)
            ws_protocol_class = getattr(self, "ws_protocol_class", None)
            if ws_protocol_class is not None:
                # An upgraded connection is handed to this class, which gets
                # the same transport in its own connection_made.
                self.ws_protocol_class = tls_protocol(ws_protocol_class)

    TlsProtocol.__name__ = base.__name__
    TlsProtocol.__qualname__ = base.__qualname__
    TlsProtocol.__doc__ = (
        f"uvicorn's {base.__name__}, recording the connection's peer and TLS extension in scopes."
    )
    return TlsProtocol


#: uvicorn's h11 protocol with the connection's peer and the ASGI TLS extension
#: (``--http peer_middleware.servers.uvicorn:H11Protocol``).
H11Protocol = tls_protocol(_H11Protocol)


def __getattr__(name: str) -> Any:
    # httptools is optional: HttpToolsProtocol is built when first asked for.
    if name == "HttpToolsProtocol":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return tls_protocol(HttpToolsProtocol)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mtls_settings(
    *,
    certfile: str | PathLike[str],
    keyfile: str | PathLike[str] | None = None,
    ca_certs: str | PathLike[str],
    require_client_certificate: bool = True,
    http: str = "h11",
) -> dict[str, Any]:
    """uvicorn settings for a TLS server that asks for client certificates.

    Pass them to ``uvicorn.run()`` or ``uvicorn.Config()``. ``ca_certs`` is
    the file of CA certificates the TLS layer accepts client certificates
    from (the trust bundle). With ``require_client_certificate=False``
    (``CERT_OPTIONAL``) a client without a certificate still connects, and
    the app's policy decides what it may reach; a client with a certificate
    the CAs do not vouch for fails the handshake either way. ``http`` is
    ``"h11"`` or ``"httptools"``.
    """
    protocols = {
        "h11": f"{__name__}:H11Protocol",
        "httptools": f"{__name__}:HttpToolsProtocol",
    }
    if http not in protocols:
        raise ConfigurationError(f"http must be 'h11' or 'httptools', not {http!r}")
    return {
        "ssl_certfile": certfile,
        "ssl_keyfile": keyfile,
        "ssl_ca_certs": ca_certs,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL,
        "http": protocols[http],
    }
