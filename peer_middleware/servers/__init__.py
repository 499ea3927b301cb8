"""Server integrations: the connection's client certificate and peer address, to the app.

The ASGI TLS extension (`asgiref specs/tls.rst
<https://github.com/django/asgiref/blob/main/specs/tls.rst>`_) defines where a
server puts the client's certificate chain: ``scope["extensions"]["tls"]
["client_cert_chain"]``, PEM strings, the client's own certificate first. Few
servers fill it in; this package holds what each server needs:

``peer_middleware.servers.uvicorn``
    protocol classes for uvicorn (``uvicorn --http
    peer_middleware.servers.uvicorn:H11Protocol ...``) that fill the extension
    for every HTTP and WebSocket scope of a TLS connection and record the
    connection's own peer address (:func:`add_connection_extension`) for
    every connection, and
    :func:`~peer_middleware.servers.uvicorn.mtls_settings` for the matching
    ``ssl_*`` settings.
``peer_middleware.servers.werkzeug``
    a request handler for Werkzeug's development server that adds the
    intermediates (``SSL_CLIENT_CERT_CHAIN_<n>``) next to the
    ``SSL_CLIENT_CERT`` Werkzeug already sets.

gunicorn needs nothing: its WSGI environ carries the TLS socket as
``environ["gunicorn.socket"]``. Hypercorn 0.18 builds its scopes deep inside
its connection handling, with no hook that sees the TLS connection, and gives
the app no certificate; a request it serves carries no client certificate, so
an mTLS authenticator finds no peer and the request is refused unless a rule
lets anyone in.

The functions here are what those integrations share; any other server that
can reach the connection's :class:`ssl.SSLObject` or :class:`ssl.SSLSocket`
can call :func:`tls_extension` once per connection.

The connection's peer address is recorded for the same reason: ASGI servers
let middleware of their own (uvicorn's ``ProxyHeadersMiddleware``, on by
default for connections from 127.0.0.1; hypercorn's ``ProxyFixMiddleware``)
replace ``scope["client"]`` with an address taken from ``X-Forwarded-For`` or
``Forwarded``, which the client writes. The entry
:func:`add_connection_extension` writes
(:data:`~peer_middleware.proxies.CONNECTION_EXTENSION`) is filled from the
socket and left alone by that middleware, and
:class:`~peer_middleware.PeerMiddleware` prefers it to ``scope["client"]``
when it decides whether the peer is a trusted proxy.

What is trusted: the chain reported is exactly what the client sent in the
handshake. Whether the TLS layer verified it depends on the server's
settings (``CERT_OPTIONAL`` / ``CERT_REQUIRED`` and its CA file); verifying it
against the SPIFFE trust bundle, and reading the SPIFFE ID from it, is the
mTLS authenticator's job, never the server's. Python can report the whole
chain only from 3.13 (``get_unverified_chain()``); before that only the
client's own certificate is available, so an SVID signed by an intermediate
CA verifies only when the app's trust bundle holds that intermediate.
"""

from __future__ import annotations

import ssl
from collections.abc import MutableMapping
from os import PathLike
from typing import Any, TypedDict

from cryptography import x509

from peer_middleware.bundles import CERTIFICATE_ERRORS
from peer_middleware.certs import has_non_positive_serial
from peer_middleware.proxies import CONNECTION_EXTENSION

__all__ = [
    "TlsExtension",
    "add_connection_extension",
    "add_tls_extension",
    "mtls_server_context",
    "peer_certificate_chain",
    "tls_extension",
]

# ASGI TLS extension: tls_version is the version number as sent on the wire.
_TLS_VERSIONS = {
    "TLSv1.3": 0x0304,
    "TLSv1.2": 0x0303,
    "TLSv1.1": 0x0302,
    "TLSv1": 0x0301,
    "SSLv3": 0x0300,
}
# OpenSSL cipher name -> IANA cipher suite number, filled from the contexts seen.
_CIPHER_SUITES: dict[str, int] = {}


class TlsExtension(TypedDict):
    """``scope["extensions"]["tls"]`` as the ASGI TLS extension (version 0.2) defines it.

    ``client_cert_chain`` is a tuple (the spec asks for an iterable) so that
    no app can change what another request on the same connection sees.
    ``server_cert`` is ``None``: Python's :mod:`ssl` does not expose the
    certificate it presented. ``client_cert_error`` is ``None`` because a
    Python TLS server either verified the client's certificate or refused the
    handshake.
    """

    server_cert: str | None
    client_cert_chain: tuple[str, ...]
    client_cert_name: str | None
    client_cert_error: str | None
    tls_version: int | None
    cipher_suite: int | None


def peer_certificate_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The client's certificate chain as DER, its own certificate first; ``[]`` without one.

    On Python 3.13 and later this is the whole chain the client sent
    (``get_unverified_chain()``: what the client presented, not a path the
    server built). Earlier versions expose only the client's own certificate.
    """
    leaf = ssl_object.getpeercert(binary_form=True)
    if not leaf:
        return []
    get_chain = getattr(ssl_object, "get_unverified_chain", None)  # Python 3.13+
    if get_chain is None:
        return [leaf]
    chain = [bytes(cert) for cert in (get_chain() or ())]
    # OpenSSL leaves the peer's own certificate out of a server's view of the
    # chain; CPython puts it back, but check rather than rely on that.
    if not chain or chain[0] != leaf:
        chain.insert(0, leaf)
    return chain


def _cipher_suite(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> int | None:
    cipher = ssl_object.cipher()
    if cipher is None:
        return None
    name = cipher[0]
    suite = _CIPHER_SUITES.get(name)
    if suite is None:
        context = ssl_object.context
        if context is None:
            return None
        for description in context.get_ciphers():
            # OpenSSL's id is 0x0300XXXX, where XXXX is the IANA number.
            _CIPHER_SUITES[description["name"]] = description["id"] & 0xFFFF
        suite = _CIPHER_SUITES.get(name)
    return suite


def _subject_name(der: bytes) -> str | None:
    if has_non_positive_serial(der):
        return None  # the authenticator refuses the certificate itself
    try:
        return x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except CERTIFICATE_ERRORS:
        # OpenSSL accepted what cryptography cannot parse: report no name
        # and let the authenticator refuse the certificate itself.
        return None


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> TlsExtension | None:
    """The ASGI TLS extension for one connection; ``None`` when it is not TLS.

    Call it once per connection, after the handshake, and copy the result
    into each request's scope (:func:`add_tls_extension`).
    """
    if ssl_object is None:
        return None
    chain = peer_certificate_chain(ssl_object)
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": tuple(ssl.DER_cert_to_PEM_cert(der) for der in chain),
        "client_cert_name": _subject_name(chain[0]) if chain else None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(version) if version is not None else None,
        "cipher_suite": _cipher_suite(ssl_object),
    }


def add_tls_extension(scope: MutableMapping[str, Any], tls: TlsExtension) -> None:
    """Put a copy of ``tls`` in ``scope["extensions"]["tls"]``.

    A ``tls`` entry the server already provides is left as it is.
    """
    extensions = scope.get("extensions")
    if extensions is None:
        scope["extensions"] = {"tls": tls.copy()}
    elif "tls" not in extensions:
        extensions["tls"] = tls.copy()


def add_connection_extension(
    scope: MutableMapping[str, Any], client: tuple[str, int] | None
) -> None:
    """Record ``client``, the connection's own peer, in ``scope["extensions"]``.

    ``client`` is the ``(host, port)`` the socket reports (``getpeername()``),
    ``None`` when it has none (a Unix socket). It goes in
    ``scope["extensions"]["peer_middleware.connection"]["client"]``
    (:data:`~peer_middleware.proxies.CONNECTION_EXTENSION`), replacing any
    entry already there: the socket is the authority on its own peer. Call it
    for each scope before the server's own middleware runs.
    """
    entry = {"client": client}
    extensions = scope.get("extensions")
    if extensions is None:
        scope["extensions"] = {CONNECTION_EXTENSION: entry}
    else:
        extensions[CONNECTION_EXTENSION] = entry


def mtls_server_context(
    *,
    certfile: str | PathLike[str],
    keyfile: str | PathLike[str] | None = None,
    ca_certs: str | PathLike[str],
    require_client_certificate: bool = True,
) -> ssl.SSLContext:
    """A server :class:`ssl.SSLContext` that asks clients for a certificate.

    For servers that take a context (Werkzeug's ``ssl_context=``).
    ``ca_certs`` is the file of CA certificates the TLS layer accepts client
    certificates from. With ``require_client_certificate=False``
    (``CERT_OPTIONAL``) a client without a certificate still connects and the
    app's policy decides; a certificate the CAs do not vouch for (or one
    outside its validity) fails the handshake either way: Python's :mod:`ssl`
    cannot ask for a certificate without verifying it.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_certs)
    context.load_cert_chain(certfile, keyfile)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    return context
