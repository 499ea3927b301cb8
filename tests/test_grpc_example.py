"""examples/grpc_app against the payments policy table, on grpc.server and grpc.aio,
and the README's gRPC section, run as written."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from peer_middleware.testing import xfcc_header
from peer_middleware.testing.pki import TestCA

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
READER = "spiffe://cluster.local/ns/shop/sa/reader"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
LEGACY = "spiffe://cluster.local/ns/shop/sa/legacy-export"
OUTSIDER = "spiffe://other.example/ns/shop/sa/checkout"
OUTSIDER_ADMIN = "spiffe://other.example/ns/ops/sa/admin"
SERVICE = "payments.v1.Payments"
ENV_VARS = (
    "PEER_MIDDLEWARE_TRUSTED_PROXIES",
    "PEER_MIDDLEWARE_EXPECTED_BY",
    "PEER_MIDDLEWARE_FORWARD_CLIENT_CERT",
    "PEER_MIDDLEWARE_BUNDLE_FILE",
    "PEER_MIDDLEWARE_TLS_CERT",
    "PEER_MIDDLEWARE_TLS_KEY",
    "PEER_MIDDLEWARE_TOKEN_AUDIENCE",
)
OK = "OK"
DENIED = "PERMISSION_DENIED"
UNAUTHENTICATED = "UNAUTHENTICATED"

TABLE = [
    ("Check", None, OK, None),
    ("Check", LEGACY, OK, None),
    ("CreatePayment", CHECKOUT, OK, "created_by"),
    ("CreatePayment", READER, DENIED, None),
    ("CreatePayment", ADMIN, DENIED, None),
    ("CreatePayment", LEGACY, DENIED, None),
    ("CreatePayment", OUTSIDER, DENIED, None),
    ("CreatePayment", None, UNAUTHENTICATED, None),
    ("GetPayment", CHECKOUT, OK, "caller"),
    ("GetPayment", READER, OK, "caller"),
    ("GetPayment", LEGACY, DENIED, None),
    ("GetPayment", ADMIN, DENIED, None),
    ("GetPayment", OUTSIDER, DENIED, None),
    ("GetPayment", None, UNAUTHENTICATED, None),
    ("WatchPayment", READER, OK, "caller"),
    ("WatchPayment", LEGACY, DENIED, None),
    ("WatchPayment", ADMIN, DENIED, None),
    ("DeletePayment", ADMIN, OK, "deleted_by"),
    ("DeletePayment", CHECKOUT, DENIED, None),
    ("DeletePayment", LEGACY, DENIED, None),
    ("DeletePayment", OUTSIDER_ADMIN, DENIED, None),
    ("DeletePayment", None, UNAUTHENTICATED, None),
    # A method the service does not have: grpcio's own answer.
    ("ListPayments", CHECKOUT, "UNIMPLEMENTED", None),
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _path(method: str) -> str:
    return "/grpc.health.v1.Health/Check" if method == "Check" else f"/{SERVICE}/{method}"


def run_table(channel: grpc.Channel, metadata_of: Any = None) -> list[tuple[Any, ...]]:
    """Every row's (method, caller, status, field) as this server answers it."""
    results = []
    for method, caller, _, field in TABLE:
        metadata = metadata_of(caller) if metadata_of else None
        if metadata is None and caller is not None:
            metadata = [("x-forwarded-client-cert", xfcc_header(caller))]
        request = json.dumps({"id": "42"}).encode()
        try:
            if method == "WatchPayment":
                answers = [
                    json.loads(a)
                    for a in channel.unary_stream(_path(method))(
                        request, metadata=metadata, timeout=10
                    )
                ]
                assert [a["status"] for a in answers] == ["pending", "authorised", "settled"]
                answer = answers[-1]
            else:
                raw = channel.unary_unary(_path(method))(request, metadata=metadata, timeout=10)
                answer = {} if method == "Check" else json.loads(raw)
                if method == "Check":
                    assert raw == b"\x08\x01"
            status = OK
            if field is not None:
                assert answer[field] == caller
        except grpc.RpcError as error:
            status = error.code().name
        results.append((method, caller, status, field))
    return results


def expected() -> list[tuple[Any, ...]]:
    return [(m, c, s, f) for m, c, s, f in TABLE]


def test_example_sync_server_behind_a_sidecar() -> None:
    app = importlib.reload(importlib.import_module("examples.grpc_app.app"))
    server, port = app.build_server("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert run_table(channel) == expected()
    finally:
        server.stop(None).wait(5)


def test_example_aio_server_behind_a_sidecar() -> None:
    app = importlib.reload(importlib.import_module("examples.grpc_app.app"))

    async def main() -> list[tuple[Any, ...]]:
        server, port = app.build_aio_server("127.0.0.1:0")
        await server.start()
        try:
            # The sync client in a thread: the table helper is shared.
            def table() -> list[tuple[Any, ...]]:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    return run_table(channel)

            return await asyncio.to_thread(table)
        finally:
            await server.stop(None)

    assert asyncio.run(main()) == expected()


def test_example_direct_mtls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = TestCA.create("cluster.local")
    other = TestCA.create("other.example")
    server_cert = ca.issue_server_cert()
    cert, key = server_cert.write(tmp_path, "server")
    bundle = tmp_path / "bundle.pem"
    # The TLS layer accepts both roots; the SPIFFE bundle of cluster.local is `ca`.
    bundle.write_bytes(ca.pem)
    tls_roots = tmp_path / "tls-roots.pem"
    tls_roots.write_bytes(ca.pem + other.pem)
    monkeypatch.setenv("PEER_MIDDLEWARE_TLS_CERT", str(cert))
    monkeypatch.setenv("PEER_MIDDLEWARE_TLS_KEY", str(key))
    monkeypatch.setenv("PEER_MIDDLEWARE_BUNDLE_FILE", str(bundle))
    app = importlib.reload(importlib.import_module("examples.grpc_app.app"))
    server, port = app.build_server("127.0.0.1:0")
    server.start()
    svids = {
        uri: (other if uri.startswith("spiffe://other.example") else ca).issue_svid(uri)
        for uri in (CHECKOUT, READER, ADMIN, LEGACY)
    }
    try:
        for caller, method, status in [
            (CHECKOUT, "CreatePayment", OK),
            (READER, "GetPayment", OK),
            (READER, "CreatePayment", DENIED),
            (ADMIN, "DeletePayment", OK),
            (LEGACY, "GetPayment", DENIED),
        ]:
            svid = svids[caller]
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca.pem, private_key=svid.key_pem, certificate_chain=svid.chain_pem
            )
            with grpc.secure_channel(
                f"127.0.0.1:{port}",
                credentials,
                options=[("grpc.ssl_target_name_override", "localhost")],
            ) as channel:
                try:
                    answer = json.loads(channel.unary_unary(_path(method))(b"{}", timeout=10))
                    got = OK
                    assert caller in answer.values()
                except grpc.RpcError as error:
                    got = error.code().name
            assert (caller, method, got) == (caller, method, status)
    finally:
        server.stop(None).wait(5)


def readme_blocks() -> list[str]:
    """The python blocks of the README's gRPC section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n### gRPC services")
    ends = [text.find(mark, start + 1) for mark in ("\n## ", "\n### ")]
    end = min(e for e in ends if e != -1)
    section = text[start:end]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_readme_grpc_section_runs() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 2
    namespace: dict[str, Any] = {"__name__": "readme_grpc"}
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    finally:
        server = namespace.get("server")
        if server is not None:
            server.stop(None).wait(5)
