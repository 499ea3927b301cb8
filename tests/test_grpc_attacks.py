"""peer_middleware.grpc under attack: calls crafted to get past the rules, on real grpcio servers.

Each test is one attack that once worked (or a class of attempts that must
keep failing), against servers on 127.0.0.1; the service and the PKI are
those of ``tests/test_grpc.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc import aio

from peer_middleware import (
    Anyone,
    Authenticated,
    Policy,
    Principal,
    XfccAuthenticator,
    allow,
    deny,
)
from peer_middleware.conditions import Header, Host, Port, SourceIp
from peer_middleware.errors import ConfigurationError
from peer_middleware.grpc import MAX_METADATA_VALUE, AsyncPeerInterceptor, PeerInterceptor
from peer_middleware.testing import xfcc_header
from tests.test_grpc import (
    ADMIN,
    CART,
    CHECKOUT,
    INVALID_ARGUMENT,
    OK,
    PERMISSION_DENIED,
    SERVICE,
    TIMEOUT,
    Echo,
    call,
    handlers,
    start_sync,
)

pytestmark = pytest.mark.e2e


def _xfcc(caller: str, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("x-forwarded-client-cert", xfcc_header(caller)), *extra]


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start a sync server on 127.0.0.1 for an interceptor; stopped after the test."""
    servers: list[grpc.Server] = []

    def start(interceptor: Any, servicer: Any = None) -> str:
        ports: list[int] = []
        server = start_sync(
            interceptor,
            servicer if servicer is not None else Echo(),
            lambda s: ports.append(s.add_insecure_port("127.0.0.1:0")),
        )
        servers.append(server)
        return f"127.0.0.1:{ports[0]}"

    yield start
    for server in servers:
        server.stop(None).wait(5)


# --------------------------------------------------------------------------
# Rules whose conditions read metadata
# --------------------------------------------------------------------------


def test_deny_rule_on_a_header_condition_refuses_the_call(serve: Any) -> None:
    # The attack: the servicer acts on a metadata key (x-debug) that a DENY
    # rule forbids; the interceptor showed the guard only the authenticators'
    # keys, so the deny never matched and the call was served.
    interceptor = PeerInterceptor(
        policy=Policy(
            [
                deny("no-debug", Anyone(), when=Header("x-debug")),
                allow("shop", Authenticated(), when=Header("x-tenant", "shop")),
            ]
        ),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    with grpc.insecure_channel(serve(interceptor)) as channel:
        tenant = ("x-tenant", "shop")
        assert call(channel, "Admin", metadata=_xfcc(CART, tenant))[0] is OK
        assert call(channel, "Admin", metadata=_xfcc(CART, tenant, ("x-debug", "1"))) == (
            PERMISSION_DENIED,
            "permission denied",
        )
        # The ALLOW rule's header condition is read too (it never matched before).
        assert call(channel, "Admin", metadata=_xfcc(CART, ("x-tenant", "bank")))[0] is (
            PERMISSION_DENIED
        )


def test_a_reloaded_policy_reads_its_own_header_conditions(serve: Any) -> None:
    # The attack: the interceptor read the metadata keys once, when built; a
    # policy swapped in later with a header-conditioned DENY was never applied.
    interceptor = PeerInterceptor(
        policy=Policy([allow("all", Authenticated())]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    with grpc.insecure_channel(serve(interceptor)) as channel:
        debug = _xfcc(CART, ("x-debug", "1"))
        assert call(channel, "Admin", metadata=debug)[0] is OK
        interceptor.guard.replace_policy(
            Policy(
                [
                    deny("no-debug", Anyone(), when=Header("x-debug")),
                    allow("all", Authenticated()),
                ]
            )
        )
        assert call(channel, "Admin", metadata=debug)[0] is PERMISSION_DENIED
        assert call(channel, "Admin", metadata=_xfcc(CART))[0] is OK


@pytest.mark.parametrize(
    "condition",
    [
        pytest.param(Host("internal.example"), id="host"),
        pytest.param(Port(8443), id="port"),
    ],
)
def test_conditions_a_grpc_call_cannot_answer_are_a_configuration_error(condition: Any) -> None:
    # The attack: a DENY rule on the Host (the :authority) or the port the
    # server was reached on never matched a gRPC call (the interceptor has
    # neither), so the calls it forbids were served.
    policy = Policy([deny("internal", Anyone(), when=condition), allow("all", Authenticated())])
    with pytest.raises(ConfigurationError):
        PeerInterceptor(
            policy=policy, authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])]
        )


def test_host_metadata_is_never_taken_for_the_authority(serve: Any) -> None:
    # A Host condition swapped in by a reload: a call is refused, whatever
    # "host" metadata key the client sends (grpcio hands it over as metadata,
    # beside the real :authority).
    interceptor = PeerInterceptor(
        policy=Policy([allow("all", Authenticated())]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    with grpc.insecure_channel(serve(interceptor)) as channel:
        interceptor.guard.replace_policy(
            Policy([allow("internal", Authenticated(), when=Host("internal.example"))])
        )
        forged = _xfcc(CART, ("host", "internal.example"))
        assert call(channel, "Admin", metadata=forged)[0] is PERMISSION_DENIED


def test_source_ip_conditions_still_judge_the_socket_peer(serve: Any) -> None:
    # SourceIp reads the connection's own address: an X-Forwarded-For the
    # client sends never moves it.
    interceptor = PeerInterceptor(
        policy=Policy(
            [
                deny("outside", Anyone(), when=~SourceIp("127.0.0.0/8")),
                allow("all", Authenticated(), when=SourceIp("127.0.0.0/8")),
            ]
        ),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    with grpc.insecure_channel(serve(interceptor)) as channel:
        assert call(channel, "Admin", metadata=_xfcc(CART))[0] is OK
        forged = _xfcc(CART, ("x-forwarded-for", "10.1.2.3"))
        assert call(channel, "Admin", metadata=forged)[0] is OK


# --------------------------------------------------------------------------
# The asyncio interceptor handed to a grpc.server
# --------------------------------------------------------------------------


def test_async_interceptor_on_a_sync_server_keeps_serving_and_checks() -> None:
    # The attack (on availability): grpc.server does not check its
    # interceptors' type; AsyncPeerInterceptor returned a coroutine, the
    # server's serving thread died on it and no later call was ever answered.
    interceptor = AsyncPeerInterceptor(
        policy=Policy(
            [allow("admin", Principal(ADMIN), methods="POST", paths=f"/{SERVICE}/Admin")]
        ),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        servicers=[Echo],
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[interceptor])
    server.add_generic_rpc_handlers((handlers(Echo()),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert call(channel, "Admin", metadata=_xfcc(CART))[0] is PERMISSION_DENIED
            status, answer = call(channel, "Admin", metadata=_xfcc(ADMIN))
            assert (status, answer["principal"]) == (OK, ADMIN)
            assert call(channel, "Who", metadata=_xfcc(CART))[0] is OK
            assert call(channel, "WhoStream", metadata=_xfcc(CART), kind="server-stream")[0] is (
                PERMISSION_DENIED
            )
    finally:
        server.stop(None).wait(5)


async def test_async_interceptor_with_sync_and_async_interceptors_around_it() -> None:
    # Other interceptors before and after it on grpc.aio.server: the check still runs.
    class Passthrough(aio.ServerInterceptor):
        async def intercept_service(self, continuation: Any, details: Any) -> Any:
            return await continuation(details)

    interceptor = AsyncPeerInterceptor(
        policy=Policy([]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        servicers=[Echo],
    )
    server = aio.server(interceptors=[Passthrough(), interceptor, Passthrough()])
    server.add_generic_rpc_handlers((handlers(Echo()),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            async def status(caller: str, method: str) -> grpc.StatusCode:
                try:
                    await channel.unary_unary(f"/{SERVICE}/{method}")(
                        b"x", metadata=_xfcc(caller), timeout=TIMEOUT
                    )
                except grpc.RpcError as error:
                    return error.code()
                return OK

            assert await status(CART, "Who") is OK
            assert await status(ADMIN, "Who") is PERMISSION_DENIED
            assert await status(CHECKOUT, "Admin") is PERMISSION_DENIED
    finally:
        await server.stop(None)


# --------------------------------------------------------------------------
# Method names, handlers the rules were not declared on
# --------------------------------------------------------------------------


class _CatchAll(grpc.GenericRpcHandler):
    """Serves every method name it is asked for, case-insensitively, as a proxy servicer might."""

    def __init__(self) -> None:
        self.served: list[str] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method

        def behavior(request: bytes, context: Any) -> bytes:
            self.served.append(method)
            return b"served"

        return grpc.unary_unary_rpc_method_handler(behavior)


def test_method_name_tricks_never_reach_a_forbidden_method(serve: Any) -> None:
    # Declared rules allow CART on Echo.Who only; the central policy allows
    # ADMIN on Admin and denies everyone on /internal.v1.Ops/*. Names grpcio
    # does not dispatch to a declared method fall back to the central policy.
    interceptor = PeerInterceptor(
        policy=Policy(
            [
                deny("ops", Anyone(), paths="/internal.v1.Ops/*"),
                allow("admin", Principal(ADMIN), paths=f"/{SERVICE}/Admin"),
            ]
        ),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        servicers=[Echo],
    )
    catch_all = _CatchAll()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[interceptor])
    server.add_generic_rpc_handlers((handlers(Echo()), catch_all))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    results: dict[tuple[str, str], str] = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            for caller, path in [
                (CART, f"/{SERVICE}/Who"),
                (CART, f"/{SERVICE}/who"),
                (CART, f"/{SERVICE.upper()}/Who"),
                (CART, f"/{SERVICE}/Who/"),
                (CART, f"/{SERVICE}/Who%2F"),
                (CART, f"/{SERVICE}/Wh%6f"),
                (CART, f"/{SERVICE}/\uff37ho"),
                (CART, f"/{SERVICE}/Admin"),
                (ADMIN, f"/{SERVICE}/admin"),
                (ADMIN, "/internal.v1.Ops/Drop"),
                (ADMIN, "/internal.v1.ops/Drop"),
                (ADMIN, "/internal.v1.Ops/Drop;x"),
                (ADMIN, "/internal.v1.Ops//Drop"),
                (ADMIN, "/internal.v1.Ops/./Drop"),
                (CART, "/grpc.health.v1.Health/Check"),
                (CART, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            ]:
                try:
                    channel.unary_unary(path)(b"x", metadata=_xfcc(caller), timeout=TIMEOUT)
                    results[(caller, path)] = "OK"
                except grpc.RpcError as error:
                    results[(caller, path)] = error.code().name
    finally:
        server.stop(None).wait(5)
    served = {key for key, status in results.items() if status == "OK"}
    assert served == {(CART, f"/{SERVICE}/Who")}, results
    assert catch_all.served == []
    assert "UNIMPLEMENTED" not in results.values()  # the catch-all answers every name


def test_handlers_added_as_registered_methods_are_checked(serve: Any) -> None:
    # grpcio >= 1.62's generated code registers methods with
    # add_registered_method_handlers: they pass through the interceptor too.
    interceptor = PeerInterceptor(
        policy=Policy([]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        servicers=[Echo],
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[interceptor])
    echo = Echo()
    server.add_registered_method_handlers(
        SERVICE,
        {
            "Who": grpc.unary_unary_rpc_method_handler(echo.Who),
            "Admin": grpc.unary_unary_rpc_method_handler(echo.Admin),
        },
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert call(channel, "Who", metadata=_xfcc(CART))[0] is OK
            assert call(channel, "Who", metadata=_xfcc(ADMIN))[0] is PERMISSION_DENIED
            assert call(channel, "Admin", metadata=_xfcc(CART))[0] is PERMISSION_DENIED
    finally:
        server.stop(None).wait(5)


def test_handler_whose_streaming_flags_disagree_with_its_fields(serve: Any) -> None:
    # A handler object of the application's own, with two behaviours set:
    # grpcio serves the one its streaming flags name. The interceptor judged
    # (and served) the first non-empty field instead, a method the client did
    # not call.
    served: list[str] = []

    @_require_anyone
    def permissive(request: bytes, context: Any) -> bytes:
        served.append("permissive")
        return b"permissive"

    def strict(request_iterator: Any, context: Any) -> Iterator[bytes]:
        served.append("strict")
        for _ in request_iterator:
            yield b"strict"

    class Handler(grpc.RpcMethodHandler):  # type: ignore[misc]
        request_streaming = True
        response_streaming = True
        request_deserializer = None
        response_serializer = None
        unary_unary = staticmethod(permissive)
        unary_stream = None
        stream_unary = None
        stream_stream = staticmethod(strict)

    class Generic(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> Any:
            return Handler() if details.method == "/odd.v1.Odd/Call" else None

    interceptor = PeerInterceptor(
        policy=Policy([]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        servicers=[permissive],
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[interceptor])
    server.add_generic_rpc_handlers((Generic(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.stream_stream("/odd.v1.Odd/Call")(
                iter([b"a"]), metadata=_xfcc(CART), timeout=TIMEOUT
            )
            try:
                answers = list(stream)
                status = OK
            except grpc.RpcError as error:
                answers, status = [], error.code()
    finally:
        server.stop(None).wait(5)
    # The method grpcio dispatches to (strict) declares nothing: refused.
    assert (status, answers, served) == (PERMISSION_DENIED, [], [])


def _require_anyone(function: Any) -> Any:
    from peer_middleware.grpc import require

    return require(Anyone())(function)


# --------------------------------------------------------------------------
# The caller's identity between calls (contextvar, thread pool, tasks)
# --------------------------------------------------------------------------


async def test_aio_tasks_never_see_another_calls_peer() -> None:
    # Many concurrent calls from two callers on one asyncio server: each
    # handler sees its own caller, through the context and the variable.
    from peer_middleware.grpc import current_peer, current_peer_var

    seen: list[tuple[str | None, str | None, str]] = []

    class Slow:
        async def Who(self, request: bytes, context: Any) -> bytes:
            await asyncio.sleep(0.01)
            peer = current_peer(context)
            variable = current_peer_var.get()
            seen.append(
                (
                    peer.principal if peer else None,
                    variable.principal if variable else None,
                    request.decode(),
                )
            )
            return b""

    interceptor = AsyncPeerInterceptor(
        policy=Policy([allow("all", Authenticated())]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    server = aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(Slow().Who)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            method = channel.unary_unary(f"/{SERVICE}/Who")
            callers = [CART, CHECKOUT] * 20
            await asyncio.gather(
                *(
                    method(caller.encode(), metadata=_xfcc(caller), timeout=TIMEOUT)
                    for caller in callers
                )
            )
    finally:
        await server.stop(None)
    assert len(seen) == 40
    assert all(peer == variable == sent for peer, variable, sent in seen)


# --------------------------------------------------------------------------
# Oversized metadata, sync streaming handlers on the asyncio server
# --------------------------------------------------------------------------


def test_repeated_metadata_is_bounded_as_a_whole(serve: Any) -> None:
    # The attack: each value under MAX_METADATA_VALUE, the joined one far over
    # it (the server allows 1 MiB of metadata); handed whole to the rules'
    # header conditions and the authenticators.
    interceptor = PeerInterceptor(
        policy=Policy([allow("shop", Authenticated(), when=Header("x-tenant", "shop"))]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    with grpc.insecure_channel(serve(interceptor)) as channel:
        piece = ("x-tenant", "s" * (MAX_METADATA_VALUE // 4))
        assert call(channel, "Admin", metadata=_xfcc(CART, ("x-tenant", "shop"), piece))[0] is OK
        status, details = call(channel, "Admin", metadata=_xfcc(CART, *[piece] * 6))
    assert (status, details) == (INVALID_ARGUMENT, "invalid request")


async def test_aio_server_sync_streaming_handlers_are_checked_first() -> None:
    # Sync generator handlers on grpc.aio.server run in its thread pool
    # (the check there goes through the sync context's abort).
    started: list[str] = []

    class SyncStreams:
        @_require_principal(CHECKOUT)
        def WhoStream(self, request: bytes, context: Any) -> Iterator[bytes]:
            started.append("WhoStream")
            for _ in range(2):
                yield current_peer_principal(context)

        @_require_principal(CHECKOUT)
        def Chat(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
            started.append("Chat")
            for _ in requests:
                yield current_peer_principal(context)

    servicer = SyncStreams()
    interceptor = AsyncPeerInterceptor(
        policy=Policy([]),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        servicers=[servicer],
    )
    server = aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "WhoStream": grpc.unary_stream_rpc_method_handler(servicer.WhoStream),
                    "Chat": grpc.stream_stream_rpc_method_handler(servicer.Chat),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            async def run(caller: str, method: str) -> tuple[grpc.StatusCode, list[bytes]]:
                path = f"/{SERVICE}/{method}"
                if method == "Chat":
                    stream = channel.stream_stream(path)(
                        iter([b"a", b"b"]), metadata=_xfcc(caller), timeout=TIMEOUT
                    )
                else:
                    stream = channel.unary_stream(path)(
                        b"x", metadata=_xfcc(caller), timeout=TIMEOUT
                    )
                try:
                    return OK, [item async for item in stream]
                except grpc.RpcError as error:
                    return error.code(), []

            for method in ("WhoStream", "Chat"):
                # grpcio's asyncio server sometimes ends a sync bidi stream
                # aborted from its thread pool with INTERNAL ("Internal error
                # from Core") instead, interceptor or not: refused either way.
                refused = (PERMISSION_DENIED, grpc.StatusCode.INTERNAL)
                status, answers = await run(CART, method)
                assert status in (refused if method == "Chat" else refused[:1])
                assert answers == []
                assert started == []
                assert await run(CHECKOUT, method) == (OK, [CHECKOUT.encode()] * 2)
                started.clear()
    finally:
        await server.stop(None)


def current_peer_principal(context: Any) -> bytes:
    from peer_middleware.grpc import current_peer, current_peer_var

    peer = current_peer(context)
    assert peer is not None
    assert current_peer_var.get() is peer
    return peer.principal.encode()


def _require_principal(principal: str) -> Any:
    from peer_middleware.grpc import require

    return require(Principal(principal))


# --------------------------------------------------------------------------
# Peer addresses
# --------------------------------------------------------------------------


def test_dual_stack_listener_reports_ipv4_peers_as_ipv4() -> None:
    # On a [::] listener an IPv4 client's socket address is IPv4-mapped IPv6;
    # grpcio reports it as "ipv4:127.0.0.1:port", so trusted_proxies name
    # the IPv4 address, and a proxy named by its IPv6 form only is not trusted.
    def status(trusted: str) -> grpc.StatusCode:
        interceptor = PeerInterceptor(
            policy=Policy([allow("all", Authenticated())]),
            authenticators=[XfccAuthenticator(trusted_proxies=[trusted])],
        )
        ports: list[int] = []
        server = start_sync(
            interceptor, Echo(), lambda s: ports.append(s.add_insecure_port("[::]:0"))
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
                return call(channel, "Admin", metadata=_xfcc(CART))[0]
        finally:
            server.stop(None).wait(5)

    assert status("127.0.0.1") is OK
    assert status("::1") is not OK
