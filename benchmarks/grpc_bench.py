"""The gRPC rows of ``bench.py``: what ``peer_middleware.grpc`` adds to a unary call.

Two measurements, each against a bare servicer in the same run:

* **in process**: the interceptor's whole path for one call (``intercept_service``
  and the wrapped handler) against the bare handler, both called directly with
  a servicer context that answers ``peer()`` and ``auth_context()`` as grpcio
  does (the auth context holds the PEM leaf and chain, as grpcio's does);
* **end to end**: sequential unary calls over one channel to a real grpcio
  server on 127.0.0.1 (``grpc.server`` and ``grpc.aio.server``), with and
  without the interceptor; direct mTLS, the caller's certificate verified by
  ``MtlsAuthenticator``.

The caller is a repeat caller, allowed by the rule ``read-payment``.
Skipped (one row saying so) when grpcio is not installed.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

TARGET_E2E = 1.05  # wrapped time per call / bare, end to end
SERVICE = "payments.v1.Payments"
METHOD = f"/{SERVICE}/GetPayment"
CALLER = "spiffe://cluster.local/ns/shop/sa/checkout"
TIMES = "\N{MULTIPLICATION SIGN}"
Row = tuple[str, ...]


class _Details:
    """grpc.HandlerCallDetails as grpcio hands it to interceptors."""

    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


class _Context:
    """What the handler and the interceptor read of a grpcio servicer context."""

    def __init__(self, peer: str, auth: dict[str, list[bytes]]) -> None:
        self._peer = peer
        self._auth = auth

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "grpc-python"),)

    def auth_context(self) -> dict[str, list[bytes]]:
        # grpcio builds a new dict of new lists on every call.
        return {key: list(values) for key, values in self._auth.items()}

    def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"refused: {code} {details}")


def _best(fns: dict[str, Callable[[], None]], n: int, reps: int) -> dict[str, float]:
    """Best time per call in µs of each function over ``reps`` batches of ``n``
    calls, the functions' batches alternating (a slow moment hits all alike)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / n)
    return {name: value * 1e6 for name, value in best.items()}


def grpc_rows(n: int, reps: int, calls: int) -> list[Row]:
    try:
        import grpc
        from grpc import aio
    except ImportError:
        return [("7 gRPC", "grpcio is not installed; section skipped", *("—",) * 6, "n/a")]
    from peer_middleware import (
        MtlsAuthenticator,
        Namespace,
        Policy,
        Principal,
        StaticX509Bundle,
        X509SvidVerifier,
        XfccAuthenticator,
        deny,
    )
    from peer_middleware.grpc import AsyncPeerInterceptor, PeerInterceptor, require
    from peer_middleware.testing import xfcc_header
    from peer_middleware.testing.pki import TestCA

    ca = TestCA.create("cluster.local")
    intermediate = ca.intermediate()
    svid = intermediate.issue_svid(CALLER)
    server_cert = ca.issue_server_cert()

    def config() -> dict[str, Any]:
        verifier = X509SvidVerifier(StaticX509Bundle({"cluster.local": [ca.certificate]}))
        return {
            "policy": Policy(
                [deny("no-legacy", Principal("spiffe://cluster.local/ns/shop/sa/legacy"))]
            ),
            "authenticators": [MtlsAuthenticator(verifier)],
            "servicers": [Payments],
        }

    def xfcc_config() -> dict[str, Any]:
        return {
            **config(),
            "authenticators": [XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        }

    xfcc_metadata = (("x-forwarded-client-cert", xfcc_header(CALLER)),)

    class Payments:
        @require(Namespace("shop", trust_domain="cluster.local"), name="read-payment")
        def GetPayment(self, request: bytes, context: Any) -> bytes:
            return b"ok"

    class AsyncPayments:
        @require(Namespace("shop", trust_domain="cluster.local"), name="read-payment")
        async def GetPayment(self, request: bytes, context: Any) -> bytes:
            return b"ok"

    rows: list[Row] = []

    # In process ------------------------------------------------------------
    auth = {
        "transport_security_type": [b"ssl"],
        "x509_pem_cert": [svid.cert_pem],
        "x509_pem_cert_chain": [intermediate.certificate.public_bytes(_pem())],
        "x509_subject_alternative_name": [CALLER.encode()],
    }
    context = _Context("ipv4:127.0.0.1:51234", auth)
    details = _Details(METHOD, (("user-agent", "grpc-python"),))
    sync_handler = grpc.unary_unary_rpc_method_handler(Payments().GetPayment)
    interceptor = PeerInterceptor(**{**config(), "servicers": [Payments]})

    def bare() -> None:
        handler = sync_handler
        assert handler.unary_unary(b"x", context) == b"ok"

    def wrapped() -> None:
        handler = interceptor.intercept_service(lambda d: sync_handler, details)
        assert handler.unary_unary(b"x", context) == b"ok"

    wrapped()  # the sanity check, and the first sight of the certificate
    sync = _best({"bare": bare, "wrapped": wrapped}, n, reps)
    rows.append(_inprocess_row("grpc.server", sync["bare"], sync["wrapped"]))

    async_handler = grpc.unary_unary_rpc_method_handler(AsyncPayments().GetPayment)
    async_interceptor = AsyncPeerInterceptor(**{**config(), "servicers": [AsyncPayments]})

    async def continuation(_: Any) -> Any:
        return async_handler

    async def measure_async() -> tuple[float, float]:
        async def bare_async() -> None:
            assert await async_handler.unary_unary(b"x", context) == b"ok"

        async def wrapped_async() -> None:
            handler = await async_interceptor.intercept_service(continuation, details)
            assert await handler.unary_unary(b"x", context) == b"ok"

        await wrapped_async()
        best = {"bare": float("inf"), "wrapped": float("inf")}
        for _ in range(reps):
            for name, fn in (("bare", bare_async), ("wrapped", wrapped_async)):
                start = time.perf_counter()
                for _ in range(n):
                    await fn()
                best[name] = min(best[name], (time.perf_counter() - start) / n)
        return best["bare"] * 1e6, best["wrapped"] * 1e6

    rows.append(_inprocess_row("grpc.aio.server", *asyncio.run(measure_async())))

    # End to end --------------------------------------------------------------
    credentials = grpc.ssl_server_credentials(
        [(server_cert.key_pem, server_cert.chain_pem)],
        root_certificates=ca.pem,
        require_client_auth=True,
    )
    channel_credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.pem, private_key=svid.key_pem, certificate_chain=svid.chain_pem
    )
    options = [("grpc.ssl_target_name_override", "localhost")]

    def auth_context_cost(request: bytes, context: Any) -> bytes:
        """grpcio's own cost of context.auth_context(), timed inside a real call."""
        begin = time.perf_counter()
        for _ in range(n):
            context.auth_context()
        return str((time.perf_counter() - begin) / n * 1e6).encode()

    def sync_server(with_interceptor: bool, mode: str) -> tuple[Any, int]:
        settings = config() if mode == "mtls" else xfcc_config()
        interceptors = [PeerInterceptor(**settings)] if with_interceptor else []
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "GetPayment": grpc.unary_unary_rpc_method_handler(Payments().GetPayment),
                        "AuthContext": grpc.unary_unary_rpc_method_handler(auth_context_cost),
                    },
                )
            ]
        )
        if mode == "mtls":
            port = server.add_secure_port("127.0.0.1:0", credentials)
        else:
            port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return server, port

    def sync_e2e(mode: str) -> tuple[dict[str, float], float]:
        servers = {name: sync_server(name == "wrapped", mode) for name in ("bare", "wrapped")}
        channels = {
            name: (
                grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials, options)
                if mode == "mtls"
                else grpc.insecure_channel(f"127.0.0.1:{port}")
            )
            for name, (_, port) in servers.items()
        }
        metadata = xfcc_metadata if mode == "xfcc" else None
        try:
            stubs = {name: channel.unary_unary(METHOD) for name, channel in channels.items()}
            for stub in stubs.values():
                for _ in range(20):
                    assert stub(b"x", metadata=metadata, timeout=10) == b"ok"
            timed = _best(
                {
                    name: functools.partial(stub, b"x", metadata=metadata, timeout=10)
                    for name, stub in stubs.items()
                },
                calls,
                reps,
            )
            cost = float(
                channels["bare"].unary_unary(f"/{SERVICE}/AuthContext")(
                    b"", metadata=metadata, timeout=60
                )
            )
        finally:
            for channel in channels.values():
                channel.close()
            for server, _ in servers.values():
                server.stop(None).wait(5)
        return timed, cost

    e2e, auth_cost = sync_e2e("mtls")
    rows.append(_e2e_row("grpc.server", e2e["bare"], e2e["wrapped"]))
    rows.append(
        (
            "7 gRPC",
            "grpcio's own context.auth_context() in a real call (the interceptor calls it "
            "once per call when an authenticator reads certificates)",
            "—",
            f"{auth_cost:.2f} µs",
            "—",
            "—",
            "—",
            "",
            "",
        )
    )
    e2e, _ = sync_e2e("xfcc")
    rows.append(_e2e_row("grpc.server", e2e["bare"], e2e["wrapped"], "XFCC from a trusted peer"))

    async def aio_e2e() -> tuple[float, float]:
        async def start(with_interceptor: bool) -> tuple[Any, int]:
            interceptors = (
                [AsyncPeerInterceptor(**{**config(), "servicers": [AsyncPayments]})]
                if with_interceptor
                else []
            )
            server = aio.server(interceptors=interceptors)
            server.add_generic_rpc_handlers(
                [
                    grpc.method_handlers_generic_handler(
                        SERVICE,
                        {
                            "GetPayment": grpc.unary_unary_rpc_method_handler(
                                AsyncPayments().GetPayment
                            )
                        },
                    )
                ]
            )
            port = server.add_secure_port("127.0.0.1:0", credentials)
            await server.start()
            return server, port

        started = {name: await start(name == "wrapped") for name in ("bare", "wrapped")}
        channels = {
            name: aio.secure_channel(f"127.0.0.1:{port}", channel_credentials, options)
            for name, (_, port) in started.items()
        }
        try:
            stubs = {name: channel.unary_unary(METHOD) for name, channel in channels.items()}
            for stub in stubs.values():
                for _ in range(20):
                    assert await stub(b"x", timeout=10) == b"ok"
            best = {"bare": float("inf"), "wrapped": float("inf")}
            for _ in range(reps):
                for name, stub in stubs.items():
                    begin = time.perf_counter()
                    for _ in range(calls):
                        await stub(b"x", timeout=10)
                    best[name] = min(best[name], (time.perf_counter() - begin) / calls)
        finally:
            for channel in channels.values():
                await channel.close()
            for server, _ in started.values():
                await server.stop(None)
        return best["bare"] * 1e6, best["wrapped"] * 1e6

    rows.append(_e2e_row("grpc.aio.server", *asyncio.run(aio_e2e())))
    return rows


def _pem() -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM


def _inprocess_row(server: str, bare: float, wrapped: float) -> Row:
    return (
        "7 gRPC",
        f"in process · {server} · direct mTLS, repeat caller, interceptor + handler",
        "2",
        f"{wrapped:.2f} µs",
        f"bare {bare:.2f} µs",
        f"{wrapped - bare:.2f} µs",
        f"{wrapped / bare:.3f}{TIMES}",
        "",
        "",
    )


def _e2e_row(server: str, bare: float, wrapped: float, how: str = "direct mTLS") -> Row:
    ratio = wrapped / bare
    return (
        "7 gRPC",
        f"end to end · {server} on 127.0.0.1 · {how}, sequential unary calls",
        "2",
        f"{wrapped:.1f} µs/call",
        f"bare {bare:.1f} µs/call",
        f"{wrapped - bare:.1f} µs",
        f"{ratio:.3f}{TIMES}",
        f"≤ {TARGET_E2E:g}{TIMES} bare",
        "PASS" if ratio <= TARGET_E2E else "**FAIL**",
    )


def main() -> None:
    import argparse
    import logging
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description="The gRPC rows of bench.py, alone.")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, help="calls per in-process batch")
    parser.add_argument("-r", type=int, help="batches (the best is kept)")
    parser.add_argument("--calls", type=int, help="calls per end-to-end batch")
    args = parser.parse_args()
    logging.getLogger("peer_middleware").setLevel(logging.WARNING)
    n = args.n or (500 if args.quick else 2_000)
    reps = args.r or (3 if args.quick else 25)
    calls = args.calls or (200 if args.quick else 500)
    print(f"- Command: `python benchmarks/grpc_bench.py {' '.join(sys.argv[1:])}`".rstrip())
    print(f"- load average at start {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| Section | Case | Rules | Measured | Baseline | Added | Ratio | Target | Result |")
    print("|:--|:--|:--|--:|--:|--:|--:|--:|--:|")
    for row in grpc_rows(n, reps, calls):
        print("| " + " | ".join(row) + " |")
    print(f"- load average at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
