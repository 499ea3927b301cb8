"""peer_middleware.grpc: real grpcio servers (sync and asyncio) on 127.0.0.1.

The test service is defined here with generic method handlers and bytes
(no protobuf codegen): ``/test.v1.Echo/Who`` (unary), ``WhoStream`` (server
streaming), ``Collect`` (client streaming), ``Chat`` (bidirectional) and
``Admin`` (unary). Every handler answers the caller's principal as it sees it
through ``current_peer(context)`` and through the context variable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import pytest
from grpc import aio
from hypothesis import given
from hypothesis import strategies as st

from peer_middleware import (
    Authenticated,
    JwtSvidAuthenticator,
    MtlsAuthenticator,
    Namespace,
    Policy,
    Principal,
    StaticJwks,
    StaticX509Bundle,
    X509SvidVerifier,
    XfccAuthenticator,
    allow,
    deny,
)
from peer_middleware.grpc import (
    MAX_METADATA_VALUE,
    AsyncPeerInterceptor,
    PeerInterceptor,
    current_peer,
    current_peer_var,
    parse_peer,
    require,
)
from peer_middleware.peer import Peer
from peer_middleware.testing import xfcc_header
from peer_middleware.testing.pki import Svid, TestCA
from peer_middleware.testing.tokens import TokenMinter

SERVICE = "test.v1.Echo"
CART = "spiffe://cluster.local/ns/shop/sa/cart"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
LEGACY = "spiffe://cluster.local/ns/shop/sa/legacy"
AUDIENCE = "spiffe://cluster.local/ns/shop/sa/echo"
TIMEOUT = 10.0
OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

pytestmark = pytest.mark.e2e


def _answer(context: Any) -> bytes:
    peer = current_peer(context)
    variable = current_peer_var.get()
    assert variable is peer
    return json.dumps(
        {
            "principal": peer.principal if peer else None,
            "proof": peer.proof.value if peer else None,
        }
    ).encode()


class Echo:
    """The test servicer; per-method declarations, as an application writes them."""

    @require(Principal(CART, CHECKOUT), name="who-callers")
    def Who(self, request: bytes, context: Any) -> bytes:
        return _answer(context)

    @require(Principal(CHECKOUT))
    def WhoStream(self, request: bytes, context: Any) -> Iterator[bytes]:
        for _ in range(3):
            yield _answer(context)

    @require(Principal(CART, CHECKOUT))
    def Collect(self, requests: Iterator[bytes], context: Any) -> bytes:
        count = sum(1 for _ in requests)
        return _answer(context) + f" {count}".encode()

    @require(Principal(CART, CHECKOUT))
    def Chat(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for _ in requests:
            yield _answer(context)

    def Admin(self, request: bytes, context: Any) -> bytes:
        # No declaration: the central policy alone (an allow for ADMIN).
        return _answer(context)


class AsyncEcho:
    @require(Principal(CART, CHECKOUT))
    async def Who(self, request: bytes, context: Any) -> bytes:
        await asyncio.sleep(0)
        return _answer(context)

    @require(Principal(CHECKOUT))
    async def WhoStream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(3):
            yield _answer(context)

    @require(Principal(CART, CHECKOUT))
    async def Collect(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        count = 0
        async for _ in requests:
            count += 1
        return _answer(context) + f" {count}".encode()

    @require(Principal(CART, CHECKOUT))
    async def Chat(self, requests: AsyncIterator[bytes], context: Any) -> None:
        # A coroutine that writes, the other style of asyncio streaming handler.
        async for _ in requests:
            await context.write(_answer(context))

    def Admin(self, request: bytes, context: Any) -> bytes:
        # A plain function on the asyncio server (grpcio runs it in a thread).
        return _answer(context)


def handlers(servicer: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Who": grpc.unary_unary_rpc_method_handler(servicer.Who),
            "WhoStream": grpc.unary_stream_rpc_method_handler(servicer.WhoStream),
            "Collect": grpc.stream_unary_rpc_method_handler(servicer.Collect),
            "Chat": grpc.stream_stream_rpc_method_handler(servicer.Chat),
            "Admin": grpc.unary_unary_rpc_method_handler(servicer.Admin),
        },
    )


POLICY_RULES = [
    deny("no-legacy", Principal(LEGACY), paths=f"/{SERVICE}/*"),
    allow("admin", Principal(ADMIN), methods="POST", paths=f"/{SERVICE}/Admin"),
]


# --------------------------------------------------------------------------
# PKI
# --------------------------------------------------------------------------


class Pki:
    def __init__(self) -> None:
        self.ca = TestCA.create("cluster.local")
        self.intermediate = self.ca.intermediate()
        # In the server's TLS trust store but not in the SPIFFE bundle.
        self.foreign = TestCA.create("cluster.local", common_name="foreign CA")
        self.server = self.ca.issue_server_cert()
        self.svids: dict[str, Svid] = {}

    def svid(self, spiffe_id: str) -> Svid:
        if spiffe_id not in self.svids:
            self.svids[spiffe_id] = self.intermediate.issue_svid(spiffe_id)
        return self.svids[spiffe_id]

    def verifier(self, **kwargs: Any) -> X509SvidVerifier:
        return X509SvidVerifier(
            StaticX509Bundle({"cluster.local": [self.ca.certificate]}), **kwargs
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.server.key_pem, self.server.chain_pem)],
            root_certificates=self.ca.pem + self.foreign.pem,
            require_client_auth=True,
        )

    def channel_credentials(self, svid: Svid) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.pem,
            private_key=svid.key_pem,
            certificate_chain=svid.chain_pem,
        )


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


CHANNEL_OPTIONS = [("grpc.ssl_target_name_override", "localhost")]


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------


def start_sync(interceptor: grpc.ServerInterceptor, servicer: Any, bind: Any) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[interceptor],
        options=[("grpc.max_metadata_size", 1024 * 1024)],
    )
    server.add_generic_rpc_handlers((handlers(servicer),))
    bind(server)
    server.start()
    return server


@pytest.fixture(scope="module")
def mtls_server(pki: Pki) -> Iterator[int]:
    interceptor = PeerInterceptor(
        policy=Policy(POLICY_RULES),
        authenticators=[MtlsAuthenticator(pki.verifier())],
        servicers=[Echo],
    )
    ports: list[int] = []
    server = start_sync(
        interceptor,
        Echo(),
        lambda s: ports.append(s.add_secure_port("127.0.0.1:0", pki.server_credentials())),
    )
    yield ports[0]
    server.stop(None).wait(5)


def call(
    channel: grpc.Channel, method: str, *, metadata: Any = None, kind: str = "unary"
) -> tuple[grpc.StatusCode, Any]:
    """(status, answer) of one call; the answer is decoded JSON (a list for streams)."""
    path = f"/{SERVICE}/{method}"
    try:
        if kind == "unary":
            answer: Any = channel.unary_unary(path)(b"x", metadata=metadata, timeout=TIMEOUT)
            return OK, json.loads(answer)
        if kind == "server-stream":
            stream = channel.unary_stream(path)(b"x", metadata=metadata, timeout=TIMEOUT)
            return OK, [json.loads(item) for item in stream]
        if kind == "client-stream":
            answer = channel.stream_unary(path)(
                iter([b"a", b"b"]), metadata=metadata, timeout=TIMEOUT
            )
            body, _, count = answer.rpartition(b" ")
            return OK, {**json.loads(body), "count": int(count)}
        stream = channel.stream_stream(path)(iter([b"a", b"b"]), metadata=metadata, timeout=TIMEOUT)
        return OK, [json.loads(item) for item in stream]
    except grpc.RpcError as error:
        return error.code(), error.details()


def mtls_channel(pki: Pki, port: int, svid: Svid) -> grpc.Channel:
    return grpc.secure_channel(
        f"127.0.0.1:{port}", pki.channel_credentials(svid), options=CHANNEL_OPTIONS
    )


# --------------------------------------------------------------------------
# Direct mTLS, sync server
# --------------------------------------------------------------------------

KINDS = [
    ("Who", "unary"),
    ("WhoStream", "server-stream"),
    ("Collect", "client-stream"),
    ("Chat", "bidi"),
]


@pytest.mark.parametrize(("method", "kind"), KINDS)
def test_mtls_valid_svid_passes_every_kind(
    pki: Pki, mtls_server: int, method: str, kind: str
) -> None:
    with mtls_channel(pki, mtls_server, pki.svid(CHECKOUT)) as channel:
        status, answer = call(channel, method, kind=kind)
    assert status is OK, answer
    items = answer if isinstance(answer, list) else [answer]
    assert items
    for item in items:
        assert item["principal"] == CHECKOUT
        assert item["proof"] == "mtls"


@pytest.mark.parametrize(
    ("caller", "method", "kind", "expected"),
    [
        pytest.param(CART, "Who", "unary", OK, id="declared-on-method"),
        pytest.param(CART, "WhoStream", "server-stream", PERMISSION_DENIED, id="no-leak-from-Who"),
        pytest.param(CART, "Admin", "unary", PERMISSION_DENIED, id="undeclared-method"),
        pytest.param(ADMIN, "Admin", "unary", OK, id="central-allow"),
        pytest.param(ADMIN, "Who", "unary", PERMISSION_DENIED, id="central-allow-is-per-path"),
        pytest.param(LEGACY, "Who", "unary", PERMISSION_DENIED, id="central-deny"),
        pytest.param(CART, "Chat", "bidi", OK, id="bidi"),
    ],
)
def test_mtls_rules_judge_the_method_invoked(
    pki: Pki, mtls_server: int, caller: str, method: str, kind: str, expected: grpc.StatusCode
) -> None:
    with mtls_channel(pki, mtls_server, pki.svid(caller)) as channel:
        status, answer = call(channel, method, kind=kind)
    assert status is expected, answer
    if expected is OK:
        items = answer if isinstance(answer, list) else [answer]
        assert all(item["principal"] == caller for item in items)
    else:
        assert answer == "permission denied"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda pki: pki.foreign.issue_svid(CART), id="CA-trusted-by-TLS-not-by-the-bundle"
        ),
        pytest.param(
            lambda pki: pki.intermediate.issue_svid(CART, extra_uris=[CHECKOUT]),
            id="two-URI-SANs",
        ),
        pytest.param(lambda pki: pki.intermediate.issue_svid(None), id="no-URI-SAN"),
        pytest.param(
            lambda pki: pki.intermediate.issue_svid("https://cluster.local/cart"),
            id="not-a-SPIFFE-ID",
        ),
    ],
)
def test_mtls_invalid_svid_is_unauthenticated(pki: Pki, mtls_server: int, make: Any) -> None:
    with mtls_channel(pki, mtls_server, make(pki)) as channel:
        status, details = call(channel, "Who")
    assert status is UNAUTHENTICATED
    assert details == "unauthenticated"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda pki: TestCA.create("cluster.local").issue_svid(CART), id="untrusted-CA"
        ),
        pytest.param(
            lambda pki: pki.intermediate.issue_svid(
                CART,
                not_before=datetime.now(timezone.utc) - timedelta(days=2),
                not_after=datetime.now(timezone.utc) - timedelta(days=1),
            ),
            id="expired",
        ),
    ],
)
def test_mtls_handshake_refuses_what_tls_cannot_verify(
    pki: Pki, mtls_server: int, make: Any
) -> None:
    # grpcio's TLS layer ends the handshake: no call is served.
    with mtls_channel(pki, mtls_server, make(pki)) as channel:
        status, _ = call(channel, "Who")
    assert status is UNAVAILABLE


def test_mtls_expired_by_the_verifier_clock_is_unauthenticated(pki: Pki) -> None:
    # A certificate TLS still accepts but the verifier's clock says has
    # expired: refused by the verifier (the proof that its verdict is used).
    later = datetime.now(timezone.utc) + timedelta(days=400)
    interceptor = PeerInterceptor(
        policy=Policy([allow("all", Authenticated())]),
        authenticators=[MtlsAuthenticator(pki.verifier(clock=lambda: later))],
    )
    ports: list[int] = []
    server = start_sync(
        interceptor,
        Echo(),
        lambda s: ports.append(s.add_secure_port("127.0.0.1:0", pki.server_credentials())),
    )
    try:
        with mtls_channel(pki, ports[0], pki.svid(CART)) as channel:
            status, _ = call(channel, "Admin")
    finally:
        server.stop(None).wait(5)
    assert status is UNAUTHENTICATED


def test_mtls_refusal_reason_is_logged_not_sent(
    pki: Pki, mtls_server: int, caplog: pytest.LogCaptureFixture
) -> None:
    svid = pki.intermediate.issue_svid(CART, extra_uris=[CHECKOUT])
    with (
        caplog.at_level(logging.INFO, logger="peer_middleware"),
        mtls_channel(pki, mtls_server, svid) as channel,
    ):
        status, details = call(channel, "Who")
    assert (status, details) == (UNAUTHENTICATED, "unauthenticated")
    records = [r for r in caplog.records if r.name == "peer_middleware"]
    assert any("URI" in r.getMessage() and "/test.v1.Echo/Who" in r.getMessage() for r in records)


# --------------------------------------------------------------------------
# XFCC through a trusted peer, bearer tokens, bad input (plaintext server)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minter() -> TokenMinter:
    return TokenMinter(issuer="https://issuer.example")


@pytest.fixture(scope="module")
def plain_server(
    tmp_path_factory: pytest.TempPathFactory, minter: TokenMinter
) -> Iterator[dict[str, Any]]:
    """One server on 127.0.0.1, [::1] and a Unix socket; the sidecar is 127.0.0.1 / ::1."""
    interceptor = PeerInterceptor(
        policy=Policy(POLICY_RULES),
        authenticators=[
            XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"]),
            JwtSvidAuthenticator(keys=StaticJwks(minter.jwks()), audience=AUDIENCE),
        ],
        servicers=[Echo],
    )
    socket_path = tmp_path_factory.mktemp("grpc") / "echo.sock"
    bound: dict[str, Any] = {"unix": f"unix:{socket_path}"}

    def bind(server: grpc.Server) -> None:
        bound["ipv4"] = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        bound["ipv6"] = f"[::1]:{server.add_insecure_port('[::1]:0')}"
        server.add_insecure_port(bound["unix"])

    server = start_sync(interceptor, Echo(), bind)
    yield bound
    server.stop(None).wait(5)


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_xfcc_from_a_trusted_peer_is_read(plain_server: dict[str, Any], family: str) -> None:
    metadata = [("x-forwarded-client-cert", xfcc_header(CART))]
    with grpc.insecure_channel(plain_server[family]) as channel:
        for method, kind in KINDS:
            status, answer = call(channel, method, metadata=metadata, kind=kind)
            if method == "WhoStream":
                assert status is PERMISSION_DENIED
                continue
            assert status is OK, answer
            items = answer if isinstance(answer, list) else [answer]
            assert all(i == {**i, "principal": CART, "proof": "proxy-asserted"} for i in items)


def test_xfcc_from_an_unknown_peer_is_ignored(plain_server: dict[str, Any]) -> None:
    # A Unix socket peer ("unix:") is never a trusted proxy.
    metadata = [("x-forwarded-client-cert", xfcc_header(CART))]
    with grpc.insecure_channel(plain_server["unix"]) as channel:
        status, details = call(channel, "Who", metadata=metadata)
    assert (status, details) == (UNAUTHENTICATED, "unauthenticated")


def test_xfcc_from_an_untrusted_peer_is_ignored(minter: TokenMinter) -> None:
    interceptor = PeerInterceptor(
        policy=Policy([allow("all", Authenticated())]),
        authenticators=[XfccAuthenticator(trusted_proxies=["10.0.0.1"])],
    )
    ports: list[int] = []
    server = start_sync(
        interceptor, Echo(), lambda s: ports.append(s.add_insecure_port("127.0.0.1:0"))
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
            status, _ = call(
                channel, "Admin", metadata=[("x-forwarded-client-cert", xfcc_header(ADMIN))]
            )
    finally:
        server.stop(None).wait(5)
    assert status is UNAUTHENTICATED


def test_bearer_token_in_authorization(plain_server: dict[str, Any], minter: TokenMinter) -> None:
    token = minter.jwt_svid(CART, AUDIENCE)
    with grpc.insecure_channel(plain_server["ipv4"]) as channel:
        status, answer = call(channel, "Who", metadata=[("authorization", f"Bearer {token}")])
        assert status is OK, answer
        assert answer == {"principal": CART, "proof": "token"}
        other = minter.jwt_svid(CART, "spiffe://cluster.local/ns/shop/sa/other")
        status, details = call(channel, "Who", metadata=[("authorization", f"Bearer {other}")])
        assert (status, details) == (UNAUTHENTICATED, "unauthenticated")


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param(
            lambda m: [("x-forwarded-client-cert-bin", xfcc_header(CART).encode())],
            UNAUTHENTICATED,
            id="xfcc-bin-key-not-read",
        ),
        pytest.param(
            lambda m: [("authorization-bin", f"Bearer {m.jwt_svid(CART, AUDIENCE)}".encode())],
            UNAUTHENTICATED,
            id="authorization-bin-key-not-read",
        ),
        pytest.param(
            lambda m: [("x-forwarded-client-cert", "URI=" + "a" * (MAX_METADATA_VALUE + 1))],
            INVALID_ARGUMENT,
            id="oversized-xfcc",
        ),
        pytest.param(
            lambda m: [("authorization", "Bearer " + "a" * (MAX_METADATA_VALUE + 1))],
            INVALID_ARGUMENT,
            id="oversized-authorization",
        ),
        pytest.param(
            lambda m: [
                ("authorization", f"Bearer {m.jwt_svid(CART, AUDIENCE)}"),
                ("authorization", f"Bearer {m.jwt_svid(CHECKOUT, AUDIENCE)}"),
            ],
            UNAUTHENTICATED,
            id="duplicate-authorization",
        ),
        pytest.param(
            lambda m: [("authorization", f"Bearer {m.jwt_svid(CART, AUDIENCE)}")] * 2,
            UNAUTHENTICATED,
            id="same-authorization-twice",
        ),
        pytest.param(
            lambda m: [("x-forwarded-client-cert", 'By=x;URI="unterminated')],
            UNAUTHENTICATED,
            id="garbage-xfcc",
        ),
        pytest.param(
            lambda m: [("x-forwarded-client-cert", "URI=spiffe://cluster.local/../admin")],
            UNAUTHENTICATED,
            id="xfcc-invalid-spiffe-id",
        ),
        pytest.param(
            lambda m: [
                ("x-forwarded-client-cert", xfcc_header(CART)),
                ("x-forwarded-client-cert", xfcc_header(ADMIN)),
            ],
            UNAUTHENTICATED,
            id="duplicate-xfcc",
        ),
        pytest.param(lambda m: [], UNAUTHENTICATED, id="no-credential"),
    ],
)
def test_bad_metadata_gets_a_status_never_a_served_call(
    plain_server: dict[str, Any], minter: TokenMinter, metadata: Any, expected: grpc.StatusCode
) -> None:
    with grpc.insecure_channel(plain_server["ipv4"]) as channel:
        status, details = call(channel, "Who", metadata=metadata(minter))
    assert status is expected
    assert details in ("unauthenticated", "invalid request")


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:51234", ("127.0.0.1", 51234)),
        ("ipv6:[::1]:51234", ("::1", 51234)),
        ("ipv6:%5B::1%5D:51234", ("::1", 51234)),
        ("ipv6:%5B::ffff:127.0.0.1%5D:1", ("::ffff:127.0.0.1", 1)),
        ("unix:", None),
        ("unix:/run/envoy.sock", None),
        ("unix-abstract:envoy", None),
        ("vsock:3:80", None),
        ("ipv4:127.0.0.1", None),
        ("ipv4:127.0.0.1:0", None),
        ("ipv4:127.0.0.1:65536", None),
        ("ipv4:127.0.0.1:-1", None),
        ("ipv4:127.0.0.01:80", None),
        ("ipv4:127.0.0.1.1:80", None),
        ("ipv4:localhost:80", None),
        ("ipv4:127.0.0.1:\uff180", None),
        ("ipv6:::1:80", None),
        ("ipv6:[::1]80", None),
        ("ipv6:[not-an-address]:80", None),
        ("ipv4:127.0.0.1:80 ", None),
        ("127.0.0.1:80", None),
        ("", None),
        (None, None),
        (b"ipv4:127.0.0.1:80", None),
        ("ipv4:" + "1" * 300, None),
    ],
)
def test_parse_peer(peer: Any, expected: tuple[str, int] | None) -> None:
    assert parse_peer(peer) == expected


class _Broken:
    """An authenticator that fails in an unexpected way."""

    name = "broken"
    header_names = ("x-broken",)
    forwarded = False
    bearer = False
    reads_query = False
    reads_tls = False
    www_authenticate = None

    def authenticate(self, request: Any) -> Peer | None:
        raise RuntimeError("bug")


class _AnyMethod(grpc.GenericRpcHandler):
    """Serves every method name, as a catch-all proxy servicer might."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return grpc.unary_unary_rpc_method_handler(lambda request, context: b"served")


def test_internal_errors_and_odd_method_names_never_reach_the_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    interceptor = PeerInterceptor(
        policy=Policy([allow("all", Authenticated())]), authenticators=[_Broken()]
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[interceptor])
    server.add_generic_rpc_handlers((_AnyMethod(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            results = {}
            for path in ("/a.B/C", "/a.B/../C", "/a.B/C/D", "//C", "/a.B/%2e%2e"):
                try:
                    channel.unary_unary(path)(b"", metadata=[("x-broken", "1")], timeout=TIMEOUT)
                except grpc.RpcError as error:
                    results[path] = error.code()
    finally:
        server.stop(None).wait(5)
    assert results == {
        "/a.B/C": PERMISSION_DENIED,
        "/a.B/../C": INVALID_ARGUMENT,
        "/a.B/C/D": INVALID_ARGUMENT,
        "//C": INVALID_ARGUMENT,
        "/a.B/%2e%2e": INVALID_ARGUMENT,
    }
    assert any(r.exc_info for r in caplog.records if r.name == "peer_middleware")


def test_plaintext_server_with_mtls_warns_once_and_refuses(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    interceptor = PeerInterceptor(
        policy=Policy([allow("all", Authenticated())]),
        authenticators=[MtlsAuthenticator(pki.verifier())],
    )
    ports: list[int] = []
    server = start_sync(
        interceptor, Echo(), lambda s: ports.append(s.add_insecure_port("127.0.0.1:0"))
    )
    try:
        with (
            caplog.at_level(logging.WARNING, logger="peer_middleware"),
            grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as channel,
        ):
            statuses = [call(channel, "Admin")[0] for _ in range(3)]
    finally:
        server.stop(None).wait(5)
    assert statuses == [UNAUTHENTICATED] * 3
    warnings = [r for r in caplog.records if "without TLS" in r.getMessage()]
    assert len(warnings) == 1


def test_require_validates_at_import_time() -> None:
    from peer_middleware.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        require("spiffe://cluster.local/ns/shop/sa/cart")  # type: ignore[arg-type]


def test_current_peer_outside_a_call_is_none() -> None:
    assert current_peer() is None
    assert current_peer(object()) is None


# --------------------------------------------------------------------------
# The asyncio server
# --------------------------------------------------------------------------


async def acall(
    channel: aio.Channel, method: str, *, metadata: Any = None, kind: str = "unary"
) -> tuple[grpc.StatusCode, Any]:
    path = f"/{SERVICE}/{method}"
    try:
        if kind == "unary":
            answer: Any = await channel.unary_unary(path)(b"x", metadata=metadata, timeout=TIMEOUT)
            return OK, json.loads(answer)
        if kind == "server-stream":
            stream = channel.unary_stream(path)(b"x", metadata=metadata, timeout=TIMEOUT)
            return OK, [json.loads(item) async for item in stream]
        if kind == "client-stream":
            answer = await channel.stream_unary(path)(
                iter([b"a", b"b"]), metadata=metadata, timeout=TIMEOUT
            )
            body, _, count = answer.rpartition(b" ")
            return OK, {**json.loads(body), "count": int(count)}
        stream = channel.stream_stream(path)(iter([b"a", b"b"]), metadata=metadata, timeout=TIMEOUT)
        return OK, [json.loads(item) async for item in stream]
    except grpc.RpcError as error:
        return error.code(), error.details()


async def test_aio_server_mtls_and_rules(pki: Pki) -> None:
    interceptor = AsyncPeerInterceptor(
        policy=Policy(POLICY_RULES),
        authenticators=[MtlsAuthenticator(pki.verifier())],
        servicers=[AsyncEcho],
    )
    server = aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((handlers(AsyncEcho()),))
    port = server.add_secure_port("127.0.0.1:0", pki.server_credentials())
    await server.start()
    try:

        async def run(svid: Svid, method: str, kind: str = "unary") -> tuple[Any, Any]:
            async with aio.secure_channel(
                f"127.0.0.1:{port}", pki.channel_credentials(svid), options=CHANNEL_OPTIONS
            ) as channel:
                return await acall(channel, method, kind=kind)

        checkout = pki.svid(CHECKOUT)
        for method, kind in KINDS:
            status, answer = await run(checkout, method, kind)
            assert status is OK, (method, answer)
            items = answer if isinstance(answer, list) else [answer]
            assert items
            assert all(i["principal"] == CHECKOUT and i["proof"] == "mtls" for i in items)
        assert (await run(pki.svid(CART), "Who"))[0] is OK
        assert (await run(pki.svid(CART), "WhoStream", "server-stream"))[0] is PERMISSION_DENIED
        assert (await run(pki.svid(CART), "Admin"))[0] is PERMISSION_DENIED
        assert (await run(pki.svid(ADMIN), "Admin")) == (
            OK,
            {"principal": ADMIN, "proof": "mtls"},
        )
        assert (await run(pki.svid(LEGACY), "Who"))[0] is PERMISSION_DENIED
        two = pki.intermediate.issue_svid(CART, extra_uris=[CHECKOUT])
        assert await run(two, "Who") == (UNAUTHENTICATED, "unauthenticated")
        assert (await run(pki.foreign.issue_svid(CART), "Who"))[0] is UNAUTHENTICATED
        assert (await run(TestCA.create().issue_svid(CART), "Who"))[0] is UNAVAILABLE
        expired = pki.intermediate.issue_svid(
            CART,
            not_before=datetime.now(timezone.utc) - timedelta(days=2),
            not_after=datetime.now(timezone.utc) - timedelta(days=1),
        )
        assert (await run(expired, "Who"))[0] is UNAVAILABLE
    finally:
        await server.stop(None)


async def test_aio_server_xfcc_and_bad_input(minter: TokenMinter) -> None:
    interceptor = AsyncPeerInterceptor(
        policy=Policy(POLICY_RULES),
        authenticators=[
            XfccAuthenticator(trusted_proxies=["127.0.0.1"]),
            JwtSvidAuthenticator(keys=StaticJwks(minter.jwks()), audience=AUDIENCE),
        ],
        servicers=[AsyncEcho],
    )
    server = aio.server(
        interceptors=[interceptor], options=[("grpc.max_metadata_size", 1024 * 1024)]
    )
    server.add_generic_rpc_handlers((handlers(AsyncEcho()),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            xfcc = [("x-forwarded-client-cert", xfcc_header(CART))]
            for method, kind in KINDS:
                status, answer = await acall(channel, method, metadata=xfcc, kind=kind)
                expected = PERMISSION_DENIED if method == "WhoStream" else OK
                assert status is expected, (method, answer)
            token = minter.jwt_svid(CHECKOUT, AUDIENCE)
            assert await acall(channel, "Who", metadata=[("authorization", f"Bearer {token}")]) == (
                OK,
                {"principal": CHECKOUT, "proof": "token"},
            )
            bad = [
                [("authorization", f"Bearer {token}")] * 2,
                [("x-forwarded-client-cert", "garbage;;;=")],
                [("x-forwarded-client-cert-bin", xfcc_header(CART).encode())],
            ]
            for metadata in bad:
                assert (await acall(channel, "Who", metadata=metadata))[0] is UNAUTHENTICATED
            huge = [("x-forwarded-client-cert", "U" * (MAX_METADATA_VALUE + 1))]
            assert await acall(channel, "Who", metadata=huge) == (
                INVALID_ARGUMENT,
                "invalid request",
            )
    finally:
        await server.stop(None)


# --------------------------------------------------------------------------
# Declarations on a servicer class and on plain handler functions
# --------------------------------------------------------------------------


@require(Namespace("shop", trust_domain="cluster.local"), name="shop-only")
class ShopOnly:
    @require(Principal(CART))
    def Who(self, request: bytes, context: Any) -> bytes:
        return _answer(context)

    def Admin(self, request: bytes, context: Any) -> bytes:
        return _answer(context)


@require(Principal(CHECKOUT))
def plain_who(request: bytes, context: Any) -> bytes:
    return _answer(context)


def test_class_and_function_declarations() -> None:
    interceptor = PeerInterceptor(
        policy=Policy([]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        servicers=[ShopOnly(), plain_who],
    )
    shop = ShopOnly()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[interceptor])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Who": grpc.unary_unary_rpc_method_handler(shop.Who),
                    "Admin": grpc.unary_unary_rpc_method_handler(shop.Admin),
                    "Chat": grpc.unary_unary_rpc_method_handler(plain_who),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:

            def status(caller: str, method: str) -> grpc.StatusCode:
                metadata = [("x-forwarded-client-cert", xfcc_header(caller))]
                return call(channel, method, metadata=metadata)[0]

            results = {
                (caller, method): status(caller, method).name
                for caller in (CART, CHECKOUT, ADMIN)
                for method in ("Who", "Admin", "Chat")
            }
    finally:
        server.stop(None).wait(5)
    assert results == {
        # Who: the class's and the method's declarations, both.
        (CART, "Who"): "OK",
        (CHECKOUT, "Who"): "PERMISSION_DENIED",
        (ADMIN, "Who"): "PERMISSION_DENIED",
        # Admin: the class's alone.
        (CART, "Admin"): "OK",
        (CHECKOUT, "Admin"): "OK",
        (ADMIN, "Admin"): "PERMISSION_DENIED",
        # A plain function.
        (CART, "Chat"): "PERMISSION_DENIED",
        (CHECKOUT, "Chat"): "OK",
        (ADMIN, "Chat"): "PERMISSION_DENIED",
    }


def test_cancelled_streams_leave_nothing_behind(pki: Pki, mtls_server: int) -> None:
    import gc

    from peer_middleware import grpc as pm_grpc

    with mtls_channel(pki, mtls_server, pki.svid(CHECKOUT)) as channel:
        for _ in range(3):
            stream = channel.unary_stream(f"/{SERVICE}/WhoStream")(b"x", timeout=TIMEOUT)
            assert json.loads(next(stream))["principal"] == CHECKOUT
            stream.cancel()
        assert call(channel, "Who")[0] is OK
    for _ in range(50):
        gc.collect()
        if not pm_grpc._PEERS:
            break
        import time

        time.sleep(0.05)
    assert not pm_grpc._PEERS
    assert current_peer_var.get() is None


@given(st.text(max_size=80) | st.from_regex(r"ipv[46]:[\[%0-9A-Fa-f:.\]]{0,40}:[0-9]{0,6}"))
def test_parse_peer_never_raises_and_returns_addresses_only(peer: str) -> None:
    result = parse_peer(peer)
    if result is not None:
        host, port = result
        assert ipaddress.ip_address(host)
        assert 0 < port <= 65535
