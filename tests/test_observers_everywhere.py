"""Every integration takes ``observers=``: each decision reaches them once.

The same observer in the generic ASGI and WSGI middlewares, Quart, Litestar,
Django (``PEER_MIDDLEWARE["OBSERVERS"]``) and both gRPC interceptors: an
allowed request and a refused one reach it, with their rule and status. A
``guard=`` given together with ``observers=`` is a configuration error, as
with the rest of the configuration.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from peer_middleware import (
    ConfigurationError,
    Guard,
    Namespace,
    PeerMiddleware,
    PeerWSGIMiddleware,
    Policy,
    XfccAuthenticator,
    allow,
)
from peer_middleware.guard import Verdict

TD = "cluster.local"
SHOP = "spiffe://cluster.local/ns/shop/sa/cart"
OPS = "spiffe://cluster.local/ns/ops/sa/admin"
POLICY = Policy([allow("shop-reads", Namespace("shop", trust_domain=TD), methods="GET")])


def authenticators() -> list[XfccAuthenticator]:
    return [XfccAuthenticator(trusted_proxies=["127.0.0.1"])]


class Recorder:
    """An observer keeping (status, rule) of each decision it is told of."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str | None]] = []

    def observe(self, verdict: Verdict, nanoseconds: int | None) -> None:
        self.seen.append((verdict.decision.status, verdict.decision.rule))


#: What an allowed request from SHOP and a refused one from OPS leave behind.
EXPECTED = [(200, "shop-reads"), (403, None)]


def xfcc(principal: str) -> dict[str, str]:
    return {"x-forwarded-client-cert": f"URI={principal}"}


async def ok_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok", "more_body": False})


def ok_wsgi(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


def statuses(app: Any, path: str = "/payments/7") -> list[int]:
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        return [client.get(path, headers=xfcc(who)).status_code for who in (SHOP, OPS)]


def test_asgi_middleware() -> None:
    recorder = Recorder()
    app = PeerMiddleware(
        ok_asgi, policy=POLICY, authenticators=authenticators(), observers=[recorder]
    )
    assert statuses(app) == [200, 403]
    assert recorder.seen == EXPECTED


def test_wsgi_middleware() -> None:
    from werkzeug.test import Client

    recorder = Recorder()
    app = PeerWSGIMiddleware(
        ok_wsgi, policy=POLICY, authenticators=authenticators(), observers=[recorder]
    )
    client = Client(app)
    got = [
        client.get(
            "/payments/7", headers=xfcc(who), environ_base={"REMOTE_ADDR": "127.0.0.1"}
        ).status_code
        for who in (SHOP, OPS)
    ]
    assert got == [200, 403]
    assert recorder.seen == EXPECTED


def test_quart() -> None:
    pytest.importorskip("quart")
    from quart import Quart

    from peer_middleware.quart import PeerAuth

    recorder = Recorder()
    app = Quart(__name__)

    @app.get("/payments/<payment_id>")
    async def read(payment_id: str) -> str:
        return "ok"

    PeerAuth(app, policy=POLICY, authenticators=authenticators(), observers=[recorder])

    async def run() -> list[int]:
        client = app.test_client()
        got = []
        for who in (SHOP, OPS):
            response = await client.get(
                "/payments/7", headers=xfcc(who), scope_base={"client": ("127.0.0.1", 50000)}
            )
            got.append(response.status_code)
        return got

    import asyncio

    assert asyncio.run(run()) == [200, 403]
    assert recorder.seen == EXPECTED


def test_litestar() -> None:
    pytest.importorskip("litestar")
    from litestar import Litestar, get
    from litestar.params import FromPath

    from peer_middleware.litestar import install

    @get(
        "/payments/{payment_id:str}",
        sync_to_thread=False,
        # This module's annotations are strings (PEP 563); the name is local.
        signature_namespace={"FromPath": FromPath},
    )
    def read(payment_id: FromPath[str]) -> str:
        return "ok"

    recorder = Recorder()
    app = Litestar([read])
    install(app, policy=POLICY, authenticators=authenticators(), observers=[recorder])

    async def at_proxy(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            scope["client"] = ("127.0.0.1", 50000)
        await app(scope, receive, send)

    assert statuses(at_proxy) == [200, 403]
    assert recorder.seen == EXPECTED


#: Django's settings name observers by dotted path too.
DJANGO_RECORDER = Recorder()


def django_status(transport: str, principal: str) -> int:
    from django.core.handlers.asgi import ASGIHandler
    from django.test import Client

    if transport == "wsgi":
        response = Client().get(
            "/payments/7", headers=xfcc(principal), REMOTE_ADDR="127.0.0.1", REMOTE_PORT="50000"
        )
        return int(response.status_code)
    client = TestClient(ASGIHandler(), client=("127.0.0.1", 50000))
    return client.get("/payments/7", headers=xfcc(principal)).status_code


def test_django_observers_by_object_and_by_dotted_path() -> None:
    pytest.importorskip("django")
    from tests.django_setup import configure, project

    configure()
    from django.http import HttpRequest, HttpResponse
    from django.urls import path

    def read(request: HttpRequest, pk: str) -> HttpResponse:
        return HttpResponse("ok")

    for transport in ("wsgi", "asgi"):
        recorder = Recorder()
        DJANGO_RECORDER.seen.clear()
        config = {
            "POLICY": POLICY,
            "AUTHENTICATORS": authenticators(),
            "OBSERVERS": [recorder, f"{__name__}.DJANGO_RECORDER"],
        }
        with project([path("payments/<str:pk>", read)], config):
            got = [django_status(transport, who) for who in (SHOP, OPS)]
        assert got == [200, 403], transport
        assert recorder.seen == EXPECTED, transport
        assert DJANGO_RECORDER.seen == EXPECTED, transport


@pytest.mark.parametrize("observers", ["not a list", [object()]])
def test_django_bad_observers_raise_at_start_up(observers: Any) -> None:
    pytest.importorskip("django")
    from tests.django_setup import configure, project

    configure()
    from django.http import HttpRequest, HttpResponse
    from django.urls import path

    from peer_middleware.django import DjangoConfigurationError, PeerMiddleware

    def read(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never served
        return HttpResponse("ok")

    config = {"POLICY": POLICY, "OBSERVERS": observers}
    with project([path("x", read)], config), pytest.raises(DjangoConfigurationError):
        PeerMiddleware(lambda request: HttpResponse("ok"))


def test_grpc_interceptors() -> None:
    pytest.importorskip("grpc")
    from peer_middleware.grpc import AsyncPeerInterceptor, PeerInterceptor

    for interceptor in (PeerInterceptor, AsyncPeerInterceptor):
        recorder = Recorder()
        built = interceptor(policy=POLICY, authenticators=authenticators(), observers=[recorder])
        assert recorder in built.guard._observers


def test_guard_and_observers_together_are_refused() -> None:
    guard = Guard(policy=POLICY, authenticators=authenticators())
    with pytest.raises(ConfigurationError, match="not both"):
        PeerMiddleware(ok_asgi, guard=guard, observers=[Recorder()])
    with pytest.raises(ConfigurationError, match="not both"):
        PeerWSGIMiddleware(ok_wsgi, guard=guard, observers=[Recorder()])


def test_something_that_does_not_observe_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="observe"):
        PeerMiddleware(ok_asgi, policy=POLICY, observers=[object()])  # type: ignore[list-item]
