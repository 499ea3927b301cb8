"""Werkzeug's development server with the client's whole certificate chain in the environ.

Werkzeug (3.x) already puts the client's own certificate in
``environ["SSL_CLIENT_CERT"]`` (PEM) when its ``ssl_context`` asks for client
certificates. :class:`ClientCertRequestHandler` adds the certificates the
client sent above it as ``SSL_CLIENT_CERT_CHAIN_0``, ``_1``, ... (mod_ssl's
names), which Python can report from 3.13 on; on earlier versions it adds
nothing to what Werkzeug sets::

    from werkzeug.serving import run_simple
    from peer_middleware.servers import mtls_server_context
    from peer_middleware.servers.werkzeug import ClientCertRequestHandler

    run_simple(
        "127.0.0.1", 8443, app,
        ssl_context=mtls_server_context(
            certfile="server.pem", keyfile="server-key.pem", ca_certs="bundle.pem"),
        request_handler=ClientCertRequestHandler,
    )

The development server is for development: serve production traffic with
gunicorn or another production server.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from werkzeug.serving import WSGIRequestHandler

from . import peer_certificate_chain

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
else:
    WSGIEnvironment = Any

__all__ = ["ClientCertRequestHandler"]


class ClientCertRequestHandler(WSGIRequestHandler):
    """Sets ``SSL_CLIENT_CERT`` and ``SSL_CLIENT_CERT_CHAIN_<n>`` from the TLS connection.

    Werkzeug builds one handler per connection; the chain is read once per
    connection and reused for every request on it.
    """

    _client_chain: tuple[str, ...] | None = None

    def make_environ(self) -> WSGIEnvironment:
        environ = super().make_environ()
        chain = self._client_chain
        if chain is None:
            connection = self.connection
            ders = (
                peer_certificate_chain(connection) if isinstance(connection, ssl.SSLSocket) else []
            )
            chain = self._client_chain = tuple(ssl.DER_cert_to_PEM_cert(der) for der in ders)
        if chain:
            environ.setdefault("SSL_CLIENT_CERT", chain[0])
            for number, pem in enumerate(chain[1:]):
                environ[f"SSL_CLIENT_CERT_CHAIN_{number}"] = pem
        return environ
