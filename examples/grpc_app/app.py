"""The payments service over gRPC (grpcio), with the policy of the HTTP examples.

Service ``payments.v1.Payments`` (messages are JSON, so the example needs no
generated code; a real service uses its ``*_pb2_grpc`` module the same way):

=====================================  ============================================
``/grpc.health.v1.Health/Check``       anyone, no identity needed
``/payments.v1.Payments/CreatePayment``  ``spiffe://cluster.local/ns/shop/sa/checkout``
``/payments.v1.Payments/GetPayment``   any workload of namespace ``shop``
``/payments.v1.Payments/WatchPayment`` any workload of namespace ``shop`` (streams)
``/payments.v1.Payments/DeletePayment``  ``spiffe://cluster.local/ns/ops/sa/admin``
any ``payments.v1.Payments`` method    DENY ``spiffe://cluster.local/ns/shop/sa/legacy-export``
anything else                          ``UNAUTHENTICATED`` / ``PERMISSION_DENIED``
=====================================  ============================================

Run it behind a sidecar that terminates mTLS and sets
``x-forwarded-client-cert`` (Envoy with HTTP/2 to the upstream)::

    python -m examples.grpc_app.app            # 127.0.0.1:50051, plaintext
    python -m examples.grpc_app.app --aio      # the same on grpc.aio

or terminate mTLS in grpcio itself: set ``PEER_MIDDLEWARE_TLS_CERT``,
``PEER_MIDDLEWARE_TLS_KEY`` (the server's certificate and key) and
``PEER_MIDDLEWARE_BUNDLE_FILE`` (the CA certificates of ``cluster.local``):
the server then requires a client certificate and verifies it as an
X.509-SVID. The other variables are those of ``examples/README.md``
(``PEER_MIDDLEWARE_TRUSTED_PROXIES``, ``PEER_MIDDLEWARE_EXPECTED_BY``,
``PEER_MIDDLEWARE_FORWARD_CLIENT_CERT``, ``PEER_MIDDLEWARE_TOKEN_*``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from examples.bundle_config import xfcc_verifier
from examples.token_config import token_authenticators
from peer_middleware import (
    Anyone,
    Authenticator,
    MtlsAuthenticator,
    Namespace,
    Policy,
    Principal,
    X509BundleFile,
    X509SvidVerifier,
    XfccAuthenticator,
    allow,
    deny,
)
from peer_middleware.grpc import AsyncPeerInterceptor, PeerInterceptor, current_peer, require

TRUST_DOMAIN = "cluster.local"
SERVICE = "payments.v1.Payments"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
LEGACY_EXPORT = "spiffe://cluster.local/ns/shop/sa/legacy-export"
#: grpc.health.v1.HealthCheckResponse{status: SERVING}, encoded by hand.
SERVING = b"\x08\x01"


def _caller(context: Any) -> str:
    peer = current_peer(context)
    return peer.principal if peer is not None else ""


class Payments:
    """The servicer: each method declares who may call it."""

    @require(Principal(CHECKOUT), name="create-payment")
    def CreatePayment(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "created_by": _caller(context)}

    @require(Namespace("shop", trust_domain=TRUST_DOMAIN), name="read-payment")
    def GetPayment(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"id": str(request.get("id")), "status": "settled", "caller": _caller(context)}

    @require(Namespace("shop", trust_domain=TRUST_DOMAIN), name="watch-payment")
    def WatchPayment(self, request: dict[str, Any], context: Any) -> Iterator[dict[str, Any]]:
        for status in ("pending", "authorised", "settled"):
            yield {"id": str(request.get("id")), "status": status, "caller": _caller(context)}

    @require(Principal(ADMIN), name="delete-payment")
    def DeletePayment(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"id": str(request.get("id")), "deleted_by": _caller(context)}


def _decode(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode()


def handlers(servicer: Payments) -> tuple[grpc.GenericRpcHandler, ...]:
    """The generic handlers of the service and of the health check."""
    codec = {"request_deserializer": _decode, "response_serializer": _encode}
    payments = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "CreatePayment": grpc.unary_unary_rpc_method_handler(servicer.CreatePayment, **codec),
            "GetPayment": grpc.unary_unary_rpc_method_handler(servicer.GetPayment, **codec),
            "WatchPayment": grpc.unary_stream_rpc_method_handler(servicer.WatchPayment, **codec),
            "DeletePayment": grpc.unary_unary_rpc_method_handler(servicer.DeletePayment, **codec),
        },
    )
    health = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {"Check": grpc.unary_unary_rpc_method_handler(lambda request, context: SERVING)},
    )
    return payments, health


POLICY = Policy(
    [
        allow("healthz", Anyone(), methods="POST", paths="/grpc.health.v1.Health/Check"),
        deny("no-legacy-export", Principal(LEGACY_EXPORT), paths=f"/{SERVICE}/*"),
    ]
)


def _tls() -> tuple[grpc.ServerCredentials | None, list[Authenticator]]:
    """Direct mTLS, when the environment names a certificate, key and bundle."""
    cert, key = (
        os.environ.get("PEER_MIDDLEWARE_TLS_CERT"),
        os.environ.get("PEER_MIDDLEWARE_TLS_KEY"),
    )
    bundle = os.environ.get("PEER_MIDDLEWARE_BUNDLE_FILE")
    if not cert or not key:
        return None, []
    if not bundle:
        raise SystemExit("PEER_MIDDLEWARE_TLS_CERT needs PEER_MIDDLEWARE_BUNDLE_FILE")
    credentials = grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=Path(bundle).read_bytes(),
        require_client_auth=True,
    )
    verifier = X509SvidVerifier(X509BundleFile(bundle, trust_domain=TRUST_DOMAIN))
    return credentials, [MtlsAuthenticator(verifier)]


def configuration() -> tuple[grpc.ServerCredentials | None, dict[str, Any]]:
    """The server's credentials and the interceptor's configuration, from the environment."""
    credentials, mtls = _tls()
    xfcc_mode = os.environ.get("PEER_MIDDLEWARE_FORWARD_CLIENT_CERT")
    authenticators: list[Authenticator] = [
        *mtls,
        XfccAuthenticator(
            trusted_proxies=os.environ.get(
                "PEER_MIDDLEWARE_TRUSTED_PROXIES", "127.0.0.1,::1"
            ).split(","),
            expected_by=os.environ.get("PEER_MIDDLEWARE_EXPECTED_BY") or None,
            forward_client_cert=(
                "append_forward" if xfcc_mode == "append_forward" else "sanitize_set"
            ),
            verifier=None if mtls else xfcc_verifier(TRUST_DOMAIN),
        ),
        *token_authenticators(TRUST_DOMAIN),
    ]
    config = {"policy": POLICY, "authenticators": authenticators, "servicers": [Payments]}
    return credentials, config


def build_server(address: str = "127.0.0.1:50051") -> tuple[grpc.Server, int]:
    """The grpc.server, bound to ``address`` (not started), and its port."""
    credentials, config = configuration()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8), interceptors=[PeerInterceptor(**config)]
    )
    server.add_generic_rpc_handlers(handlers(Payments()))
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    return server, port


def build_aio_server(address: str = "127.0.0.1:50051") -> tuple[aio.Server, int]:
    """The same service on grpc.aio (call from a running event loop; not started)."""
    credentials, config = configuration()
    server = aio.server(interceptors=[AsyncPeerInterceptor(**config)])
    server.add_generic_rpc_handlers(handlers(Payments()))
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    return server, port


async def _serve_aio(address: str) -> None:
    server, _ = build_aio_server(address)
    await server.start()
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--aio", action="store_true", help="serve with grpc.aio")
    args = parser.parse_args(argv)
    if args.aio:
        asyncio.run(_serve_aio(args.address))
        return
    server, _ = build_server(args.address)
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
