"""Direct mTLS through real servers on 127.0.0.1: the app gets the client's certificate.

Every test makes a real TLS handshake with a client certificate minted when
the module runs. Each server is started once for the module, with
``CERT_OPTIONAL`` and a CA file holding both the trusted CA and a rogue CA
that claims the same trust domain, and serves one app:

* ``/echo/...`` reports what the server handed the app: the ASGI TLS
  extension, or the WSGI ``SSL_CLIENT_CERT*`` variables and the certificate
  of ``gunicorn.socket``;
* ``/payments/...`` is the same echo behind ``PeerMiddleware`` /
  ``PeerWSGIMiddleware`` with an mTLS authenticator that trusts only the
  trusted CA.

Why the TLS layer is this permissive: Python's :mod:`ssl` cannot ask for a
client certificate without verifying it, so a server that trusted only the
real CA would end the handshake of the rogue-CA client before the app saw
it. Accepting both CAs at the TLS layer lets the rogue, CA-leaf and two-URI
certificates through, so that the app-side verifier is what refuses them
(and a test shows the TLS layer refusing the rogue CA when it trusts only
the real one). The TLS layer also checks validity against the real clock, so
a certificate that has already expired never reaches the app; the verifier
is therefore given a clock two days ahead, at which the "expired" client's
one-day certificate has expired while the valid client's ten-day one has not.
A certificate expired by the real clock is refused by the handshake (tested
per server too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from peer_middleware import Namespace, PeerMiddleware, PeerWSGIMiddleware, Policy, allow
from peer_middleware.servers import mtls_server_context, tls_extension
from peer_middleware.testing.pki import Svid, TestCA
from peer_middleware.testing.processes import (
    ManagedProcess,
    UvicornThread,
    free_port,
    wait_for_port,
)

pytestmark = pytest.mark.e2e

TRUST_DOMAIN = "cluster.local"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
OTHER = "spiffe://cluster.local/ns/shop/sa/other"
OPS = "spiffe://cluster.local/ns/ops/sa/admin"
FULL_CHAIN = sys.version_info >= (3, 13)  # get_unverified_chain(): the intermediates too
CLOCK_AHEAD = timedelta(days=2)
# Environment for the gunicorn worker, which builds its app from files.
ENV_BUNDLE = "PEER_MIDDLEWARE_TEST_BUNDLE"
TESTS = Path(__file__).resolve().parent


# --- the PKI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    svid: Svid | None
    cert: Path | None = None
    key: Path | None = None

    def context(self, server_ca: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(server_ca))
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key)
        return context

    @property
    def chain_pem(self) -> list[str]:
        """The PEM chain the app should see: leaf, plus intermediates on Python 3.13+."""
        assert self.svid is not None
        certs = [self.svid.certificate, *(self.svid.chain if FULL_CHAIN else ())]
        return [ssl.DER_cert_to_PEM_cert(_der(cert)) for cert in certs]


def _der(cert: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return bytes(cert.public_bytes(Encoding.DER))


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: TestCA
    server_cert: Path
    server_key: Path
    server_ca_file: Path  # what clients trust the server by
    trusted_ca_file: Path  # the real CA only
    tls_ca_file: Path  # the real CA and the rogue CA: what the servers' TLS layer accepts
    clients: dict[str, Client]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    now = datetime.now(timezone.utc)
    ca = TestCA.create(TRUST_DOMAIN)
    rogue = TestCA.create(TRUST_DOMAIN, common_name="rogue CA claiming cluster.local")
    intermediate = ca.intermediate()
    # The server's certificate comes from a CA of its own. A client whose
    # trust store held the SVID root would have OpenSSL append that root to
    # the chain it sends (it completes a chain it has no intermediates for),
    # and the chain the app sees would depend on that.
    server_ca = TestCA.create("web.test", common_name="peer-middleware test server CA")
    server_cert, server_key = server_ca.issue_server_cert().write(directory, "server")
    server_ca_file = directory / "server-ca.pem"
    server_ca_file.write_bytes(server_ca.pem)
    trusted = directory / "trusted-ca.pem"
    trusted.write_bytes(ca.pem)
    both = directory / "tls-ca.pem"
    both.write_bytes(ca.pem + rogue.pem)
    svids = {
        "valid": ca.issue_svid(CART, not_after=now + timedelta(days=10)),
        "via-intermediate": intermediate.issue_svid(CART, not_after=now + timedelta(days=5)),
        "untrusted-ca": rogue.issue_svid(CART, not_after=now + timedelta(days=10)),
        # Valid now (the TLS layer accepts it), expired at the verifier's clock.
        "expired": ca.issue_svid(CART, not_after=now + timedelta(days=1)),
        "expired-now": ca.issue_svid(
            CART, not_before=now - timedelta(days=3), not_after=now - timedelta(days=1)
        ),
        "ca-cert": ca.issue_svid(CART, is_ca=True, not_after=now + timedelta(days=10)),
        "two-uris": ca.issue_svid(CART, extra_uris=[OTHER], not_after=now + timedelta(days=10)),
        "other-namespace": ca.issue_svid(OPS, not_after=now + timedelta(days=10)),
    }
    clients = {"none": Client(None)}
    for name, svid in svids.items():
        cert, key = svid.write(directory, name)
        clients[name] = Client(svid, cert, key)
    return Pki(directory, ca, server_cert, server_key, server_ca_file, trusted, both, clients)


# --- the apps -----------------------------------------------------------------------------


def _clock() -> datetime:
    return datetime.now(timezone.utc) + CLOCK_AHEAD


def _authenticators(bundle_pem: bytes) -> list[Any] | None:
    """The mTLS authenticator trusting ``bundle_pem``, or ``None`` before it exists."""
    try:
        from peer_middleware.authenticators import MtlsAuthenticator
        from peer_middleware.bundles import StaticX509Bundle
        from peer_middleware.x509 import X509SvidVerifier
    except ImportError:
        return None
    from cryptography import x509

    roots = x509.load_pem_x509_certificates(bundle_pem)
    verifier = X509SvidVerifier(StaticX509Bundle({TRUST_DOMAIN: roots}), clock=_clock)
    return [MtlsAuthenticator(verifier)]


POLICY = Policy(
    [
        allow(
            "shop-reads",
            Namespace("shop", trust_domain=TRUST_DOMAIN),
            methods="GET",
            paths="/payments/*",
        )
    ]
)


def _peer_fields(peer: Any) -> dict[str, str | None]:
    return {
        "principal": peer.principal if peer is not None else None,
        "proof": peer.proof.value if peer is not None else None,
    }


async def asgi_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    tls = scope.get("extensions", {}).get("tls")
    connection = scope.get("extensions", {}).get("peer_middleware.connection")
    body = json.dumps(
        {
            "tls": None
            if tls is None
            else {**tls, "client_cert_chain": list(tls["client_cert_chain"])},
            "connection": None if connection is None else {"client": list(connection["client"])},
            **_peer_fields(scope.get("peer_middleware.peer")),
        }
    )
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": body})
        await send({"type": "websocket.close", "code": 1000})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def _not_built_asgi() -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 501, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def asgi_app(bundle_pem: bytes) -> Any:
    """``/payments/*`` through PeerMiddleware (when the mTLS authenticator exists), else echo."""
    authenticators = _authenticators(bundle_pem)
    guarded = (
        PeerMiddleware(asgi_echo, policy=POLICY, authenticators=authenticators)
        if authenticators is not None
        else _not_built_asgi()
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan" and scope["path"].startswith("/payments/"):
            await guarded(scope, receive, send)
        else:
            await asgi_echo(scope, receive, send)

    return app


def wsgi_echo(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    sock = environ.get("gunicorn.socket")
    socket_cert = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    chain = []
    while f"SSL_CLIENT_CERT_CHAIN_{len(chain)}" in environ:
        chain.append(environ[f"SSL_CLIENT_CERT_CHAIN_{len(chain)}"])
    body = json.dumps(
        {
            "ssl_client_cert": environ.get("SSL_CLIENT_CERT"),
            "ssl_client_cert_chain": chain,
            "socket_cert": None if socket_cert is None else ssl.DER_cert_to_PEM_cert(socket_cert),
            **_peer_fields(environ.get("peer_middleware.peer")),
        }
    ).encode()
    start_response("200 OK", [("content-type", "application/json")])
    return [body]


def wsgi_app(bundle_pem: bytes) -> Any:
    authenticators = _authenticators(bundle_pem)

    def not_built(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("501 Not Implemented", [])
        return [b""]

    guarded = (
        PeerWSGIMiddleware(wsgi_echo, policy=POLICY, authenticators=authenticators)
        if authenticators is not None
        else not_built
    )

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").startswith("/payments/"):
            return guarded(environ, start_response)
        return wsgi_echo(environ, start_response)

    return app


def gunicorn_app() -> Any:
    """The app the gunicorn worker serves (``test_servers_tls:gunicorn_app()``)."""
    return wsgi_app(Path(os.environ[ENV_BUNDLE]).read_bytes())


# --- the servers --------------------------------------------------------------------------


@contextlib.contextmanager
def uvicorn_server(app: Any, pki: Pki, http: str, **settings: Any) -> Iterator[int]:
    with UvicornThread(
        app,
        http=f"peer_middleware.servers.uvicorn:{http}",
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
        ssl_ca_certs=str(pki.tls_ca_file),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        **settings,
    ) as server:
        yield server.port


@contextlib.contextmanager
def hypercorn_server(app: Any, pki: Pki) -> Iterator[int]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = Config()
        # Hypercorn takes ownership of a duplicate of the bound socket.
        config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.certfile = str(pki.server_cert)
    config.keyfile = str(pki.server_key)
    config.ca_certs = str(pki.tls_ca_file)
    config.verify_mode = ssl.CERT_OPTIONAL
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 2
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(serve(app, config, shutdown_trigger=stop.wait, mode="asgi"))
        except BaseException as error:  # reported after the thread ends
            errors.append(error)

    thread = threading.Thread(target=run, name=f"hypercorn-{port}", daemon=True)
    thread.start()
    try:
        wait_for_port("127.0.0.1", port, alive=thread.is_alive)
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        if not thread.is_alive():
            loop.close()
    assert not thread.is_alive(), "hypercorn did not stop within 10 s"
    assert not errors, errors


@contextlib.contextmanager
def werkzeug_server(app: Any, pki: Pki) -> Iterator[int]:
    from werkzeug.serving import make_server

    from peer_middleware.servers.werkzeug import ClientCertRequestHandler

    context = mtls_server_context(
        certfile=pki.server_cert,
        keyfile=pki.server_key,
        ca_certs=pki.tls_ca_file,
        require_client_certificate=False,
    )
    server = make_server(
        "127.0.0.1", 0, app, ssl_context=context, request_handler=ClientCertRequestHandler
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server.port
    finally:
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(10)
        thread.join(10)
        server.server_close()
    assert not thread.is_alive(), "the werkzeug server did not stop within 10 s"


@contextlib.contextmanager
def gunicorn_server(pki: Pki, log_dir: Path) -> Iterator[int]:
    pytest.importorskip("gunicorn")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent.parent), str(Path(__file__).parent)]
        ),
        ENV_BUNDLE: str(pki.trusted_ca_file),
    }
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--certfile",
        str(pki.server_cert),
        "--keyfile",
        str(pki.server_key),
        "--ca-certs",
        str(pki.tls_ca_file),
        "--cert-reqs",
        str(int(ssl.CERT_OPTIONAL)),
        "test_servers_tls:gunicorn_app()",
    ]
    with ManagedProcess(args, log_dir=log_dir, name="gunicorn", env=env) as process:
        try:
            wait_for_port("127.0.0.1", port, timeout=20, alive=process.is_running)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\n{process.log_text()}") from error
        yield port


SERVERS = ["uvicorn-h11", "uvicorn-httptools", "hypercorn", "werkzeug", "gunicorn"]
ASGI_SERVERS = {"uvicorn-h11", "uvicorn-httptools", "hypercorn"}


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    name: str = request.param
    bundle = pki.trusted_ca_file.read_bytes()
    if name == "uvicorn-httptools":
        pytest.importorskip("httptools")
    if name == "hypercorn":
        pytest.importorskip("hypercorn")
    if name.startswith("uvicorn"):
        http = "H11Protocol" if name == "uvicorn-h11" else "HttpToolsProtocol"
        manager = uvicorn_server(asgi_app(bundle), pki, http)
    elif name == "hypercorn":
        manager = hypercorn_server(asgi_app(bundle), pki)
    elif name == "werkzeug":
        manager = werkzeug_server(wsgi_app(bundle), pki)
    else:
        manager = gunicorn_server(pki, tmp_path_factory.mktemp("gunicorn"))
    with manager as port:
        yield name, port


def get(pki: Pki, port: int, client: str, path: str) -> httpx.Response:
    context = pki.clients[client].context(pki.server_ca_file)
    with httpx.Client(verify=context, timeout=10) as http:
        return http.get(f"https://127.0.0.1:{port}{path}")


# --- what the app receives ----------------------------------------------------------------


@pytest.mark.parametrize("client", ["valid", "via-intermediate", "two-uris", "ca-cert"])
def test_app_receives_the_client_chain(server: tuple[str, int], pki: Pki, client: str) -> None:
    name, port = server
    response = get(pki, port, client, "/echo/x")
    assert response.status_code == 200
    data = response.json()
    expected = pki.clients[client].chain_pem
    if name == "hypercorn":
        # Hypercorn 0.18 gives the app nothing about the TLS connection.
        assert data["tls"] is None
        assert data["connection"] is None
    elif name in ASGI_SERVERS:
        # The protocol classes record the connection's own peer too.
        assert data["connection"]["client"][0] == "127.0.0.1"
        tls = data["tls"]
        assert tls["client_cert_chain"] == expected
        leaf = pki.clients[client].svid
        assert leaf is not None
        assert tls["client_cert_name"] == leaf.certificate.subject.rfc4514_string()
        assert tls["client_cert_error"] is None
        assert tls["server_cert"] is None
        assert tls["tls_version"] in (0x0303, 0x0304)
        assert isinstance(tls["cipher_suite"], int)
        assert 0 < tls["cipher_suite"] <= 0xFFFF
    elif name == "werkzeug":
        assert data["ssl_client_cert"] == expected[0]
        assert data["ssl_client_cert_chain"] == expected[1:]
    else:  # gunicorn: the TLS socket itself is in the environ
        assert data["socket_cert"] == expected[0]
        assert data["ssl_client_cert"] is None


def test_without_a_client_certificate(server: tuple[str, int], pki: Pki) -> None:
    name, port = server
    response = get(pki, port, "none", "/echo/x")
    assert response.status_code == 200
    data = response.json()
    if name in ASGI_SERVERS - {"hypercorn"}:
        tls = data["tls"]
        assert tls["client_cert_chain"] == []
        assert tls["client_cert_name"] is None
        assert tls["tls_version"] in (0x0303, 0x0304)
    elif name in ASGI_SERVERS:
        assert data["tls"] is None
    else:
        assert data["ssl_client_cert"] is None
        assert data["socket_cert"] is None


def test_the_tls_layer_refuses_a_certificate_expired_now(server: tuple[str, int], pki: Pki) -> None:
    _, port = server
    with pytest.raises(httpx.TransportError):
        get(pki, port, "expired-now", "/echo/x")


# --- uvicorn specifics --------------------------------------------------------------------


def _websocket(port: int, context: ssl.SSLContext, path: str) -> tuple[int, str | None]:
    """Open a WebSocket over TLS; the first text message, or the refusal's status."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import (
        AcceptConnection,
        CloseConnection,
        RejectConnection,
        Request,
        TextMessage,
    )

    connection = WSConnection(ConnectionType.CLIENT)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(connection.send(Request(host="127.0.0.1", target=path)))
        text = ""
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            connection.receive_data(data)
            for event in connection.events():
                if isinstance(event, RejectConnection):
                    return event.status_code, None
                if isinstance(event, TextMessage):
                    text += event.data
                    if event.message_finished:
                        sock.sendall(connection.send(CloseConnection(code=1000)))
                        return 101, text
                if not isinstance(event, AcceptConnection):
                    raise AssertionError(f"unexpected event {event!r}")


def _ws_implementations() -> list[Any]:
    # uvicorn's legacy "websockets" implementation is deprecated by uvicorn
    # itself (its warning fails a run with -W error); the classes extend it
    # the same way.
    return [
        pytest.param("wsproto"),
        pytest.param(
            "websockets-sansio",
            marks=pytest.mark.skipif(
                not _importable("websockets"), reason="websockets is not installed"
            ),
        ),
    ]


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("ws", _ws_implementations())
def test_uvicorn_websocket_gets_the_chain(pki: Pki, ws: str) -> None:
    pytest.importorskip("wsproto")
    bundle = pki.trusted_ca_file.read_bytes()
    with uvicorn_server(asgi_app(bundle), pki, "H11Protocol", ws=ws) as port:
        client = pki.clients["valid"]
        status, text = _websocket(port, client.context(pki.server_ca_file), "/echo/ws")
    assert status == 101
    assert text is not None
    assert json.loads(text)["tls"]["client_cert_chain"] == client.chain_pem
    assert json.loads(text)["connection"]["client"][0] == "127.0.0.1"


def test_uvicorn_plain_http_has_no_tls_extension(pki: Pki) -> None:
    with (
        UvicornThread(asgi_echo, http="peer_middleware.servers.uvicorn:H11Protocol") as server,
        httpx.Client(timeout=10) as http,
    ):
        response = http.get(f"{server.url}/echo/x")
    assert response.json()["tls"] is None
    # The connection's own peer is recorded on plain HTTP as well.
    assert response.json()["connection"]["client"][0] == "127.0.0.1"


def test_uvicorn_tls_layer_refuses_an_untrusted_ca_when_it_trusts_one_ca(pki: Pki) -> None:
    from peer_middleware.servers.uvicorn import mtls_settings

    settings = mtls_settings(
        certfile=pki.server_cert, keyfile=pki.server_key, ca_certs=pki.trusted_ca_file
    )
    assert settings["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    with UvicornThread(asgi_echo, **settings) as server:
        assert get(pki, server.port, "valid", "/echo/x").status_code == 200
        for client in ("untrusted-ca", "none"):
            with pytest.raises(httpx.TransportError):
                get(pki, server.port, client, "/echo/x")


def test_mtls_settings_validates_the_protocol(pki: Pki) -> None:
    from peer_middleware import ConfigurationError
    from peer_middleware.servers.uvicorn import mtls_settings

    settings = mtls_settings(
        certfile="s.pem", ca_certs="ca.pem", require_client_certificate=False, http="httptools"
    )
    assert settings["ssl_cert_reqs"] == ssl.CERT_OPTIONAL
    assert settings["http"] == "peer_middleware.servers.uvicorn:HttpToolsProtocol"
    with pytest.raises(ConfigurationError, match="http must be"):
        mtls_settings(certfile="s.pem", ca_certs="ca.pem", http="zttp")


def test_uvicorn_protocol_classes_resolve_like_uvicorn_does() -> None:
    from uvicorn.importer import import_from_string
    from uvicorn.protocols.http.h11_impl import H11Protocol

    import peer_middleware.servers.uvicorn as module

    cls = import_from_string("peer_middleware.servers.uvicorn:H11Protocol")
    assert issubclass(cls, H11Protocol)
    assert module.tls_protocol(H11Protocol) is cls
    assert module.tls_protocol(cls) is cls
    with pytest.raises(AttributeError):
        _ = module.NoSuchProtocol


def test_tls_extension_is_none_without_tls() -> None:
    assert tls_extension(None) is None


# --- end to end: PeerMiddleware / PeerWSGIMiddleware with the mTLS authenticator -------------


def _require_authenticator() -> None:
    pytest.importorskip("peer_middleware.x509")


PROBLEM = {401: "Unauthorized", 403: "Forbidden"}


def _refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": PROBLEM[status], "status": status}


def test_mtls_valid_svid_passes(server: tuple[str, int], pki: Pki) -> None:
    _require_authenticator()
    name, port = server
    response = get(pki, port, "valid", "/payments/1")
    if name == "hypercorn":
        # No certificate reaches the app, so there is no peer: refused, never let through.
        _refused(response, 401)
        return
    assert response.status_code == 200
    assert response.json()["principal"] == CART
    assert response.json()["proof"] == "mtls"


# Each refused before the handler runs: by the app-side verifier (401), or by
# the policy for a verified peer it does not allow (403). The reason is read
# from the decision log where the app runs in this process.
REFUSALS = [
    pytest.param(
        "untrusted-ca", 401, "does not verify against the trust bundle", id="untrusted-ca"
    ),
    pytest.param("expired", 401, "leaf certificate expired", id="expired"),
    pytest.param("ca-cert", 401, "leaf certificate is a CA", id="ca-cert"),
    pytest.param("two-uris", 401, "has 2 URI SANs", id="two-uris"),
    pytest.param("none", 401, "has no identity", id="no-certificate"),
    pytest.param("other-namespace", 403, "no allow rule matched this caller", id="other-namespace"),
]


@pytest.mark.parametrize(("client", "status", "reason"), REFUSALS)
def test_mtls_refusals(
    server: tuple[str, int],
    pki: Pki,
    client: str,
    status: int,
    reason: str,
    decisions: Callable[[], list[logging.LogRecord]],
) -> None:
    _require_authenticator()
    name, port = server
    response = get(pki, port, client, "/payments/1")
    if name == "hypercorn":
        _refused(response, 401)
        reason = "has no identity"
    else:
        _refused(response, status)
    if name != "gunicorn":  # gunicorn's app logs in its own process
        reasons = [record.peer_middleware["reason"] for record in decisions()]
        assert len(reasons) == 1
        assert reason in reasons[0]


def test_mtls_intermediate_needs_the_whole_chain(server: tuple[str, int], pki: Pki) -> None:
    """An SVID signed by an intermediate verifies only when the app gets the intermediate.

    The bundle holds the root alone. Python 3.13+ reports the chain the
    client sent (the uvicorn classes put it in the TLS extension, the
    Werkzeug handler in ``SSL_CLIENT_CERT_CHAIN_0``); earlier versions report
    the leaf only (gunicorn's socket is read the same way).
    """
    _require_authenticator()
    name, port = server
    response = get(pki, port, "via-intermediate", "/payments/1")
    if FULL_CHAIN and name in {"uvicorn-h11", "uvicorn-httptools", "werkzeug", "gunicorn"}:
        assert response.status_code == 200
        assert response.json()["principal"] == CART
    else:
        _refused(response, 401)


@pytest.mark.parametrize(("client", "status"), [("valid", 101), ("untrusted-ca", 401)])
def test_mtls_uvicorn_websocket(pki: Pki, client: str, status: int) -> None:
    _require_authenticator()
    pytest.importorskip("wsproto")
    bundle = pki.trusted_ca_file.read_bytes()
    with uvicorn_server(asgi_app(bundle), pki, "H11Protocol", ws="wsproto") as port:
        context = pki.clients[client].context(pki.server_ca_file)
        got, text = _websocket(port, context, "/payments/ws")
    assert got == status
    if status == 101:
        assert text is not None
        assert json.loads(text)["principal"] == CART
