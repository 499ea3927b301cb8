"""Warnings for the mistakes operators make, each once per cause; reasons one glance away."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import httpx
import pytest

from peer_middleware import (
    Anyone,
    MtlsAuthenticator,
    PeerMiddleware,
    Policy,
    Principal,
    StaticX509Bundle,
    X509SvidVerifier,
    XfccAuthenticator,
    allow,
)
from peer_middleware.guard import Guard
from peer_middleware.observe import JsonFormatter, rule_header
from peer_middleware.testing import xfcc_header
from peer_middleware.testing.pki import TestCA

CART = "spiffe://cluster.local/ns/shop/sa/cart"
POLICY = Policy(
    [
        allow("healthz", Anyone(), methods="GET", paths="/healthz"),
        allow("cart", Principal(CART), paths="/orders/**"),
    ]
)
XFCC = {"x-forwarded-client-cert": xfcc_header(CART)}


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    caplog.set_level(logging.INFO, logger="peer_middleware")

    def found() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "peer_middleware" and r.levelno == logging.WARNING
        ]

    return found


def xfcc_guard() -> Guard:
    return Guard(policy=POLICY, authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])])


def test_identity_header_from_an_untrusted_peer_is_warned_once_per_address(
    warnings: Callable[[], list[str]],
) -> None:
    guard = xfcc_guard()
    for _ in range(3):
        verdict = guard.check("GET", "/orders/1", "/orders/1", ("10.1.2.3", 40000), XFCC)
        assert verdict.decision.status == 401
    (message,) = warnings()
    assert "x-forwarded-client-cert arrived from 10.1.2.3" in message
    assert "trusted_proxies" in message
    guard.check("GET", "/orders/1", "/orders/1", ("10.1.2.4", 40000), XFCC)
    guard.check("GET", "/orders/1", "/orders/1", ("10.1.2.4", 40001), XFCC)
    assert len(warnings()) == 2
    assert "10.1.2.4" in warnings()[1]


def test_untrusted_peer_warnings_are_bounded_under_attack(
    warnings: Callable[[], list[str]],
) -> None:
    guard = xfcc_guard()
    for n in range(200):
        guard.check("GET", "/orders/1", "/orders/1", (f"10.9.{n // 250}.{n % 250}", 1), XFCC)
    assert len(warnings()) == 10  # at most ten a minute, whatever the addresses


def test_a_trusted_proxy_that_sends_no_identity_header_is_warned_once(
    warnings: Callable[[], list[str]],
) -> None:
    guard = xfcc_guard()
    for _ in range(50):
        guard.check("GET", "/healthz", "/healthz", ("127.0.0.1", 40000), {})
    (message,) = warnings()
    assert "the trusted proxy 127.0.0.1 sent none of x-forwarded-client-cert" in message
    assert "SANITIZE_SET" in message


def test_a_trusted_proxy_that_sent_an_identity_is_not_warned_about(
    warnings: Callable[[], list[str]],
) -> None:
    guard = xfcc_guard()
    assert guard.check("GET", "/orders/1", "/orders/1", ("127.0.0.1", 40000), XFCC).allowed
    for _ in range(50):
        guard.check("GET", "/healthz", "/healthz", ("127.0.0.1", 40000), {})
    assert warnings() == []


def test_the_rewritten_address_warning_names_the_settings_once(
    warnings: Callable[[], list[str]],
) -> None:
    guard = xfcc_guard()
    headers = {**XFCC, "x-forwarded-for": "127.0.0.1"}
    for path in ("/orders/1", "/orders/2", "/orders/1"):
        guard.check("GET", path, path, ("127.0.0.1", 0), headers)
    (message,) = warnings()
    assert "--forwarded-allow-ips=''" in message
    assert "proxy_headers=False" in message
    assert "peer_middleware.servers.uvicorn:H11Protocol" in message


async def test_https_without_the_tls_extension_is_warned_once(
    warnings: Callable[[], list[str]],
) -> None:
    ca = TestCA.create("cluster.local")
    verifier = X509SvidVerifier(StaticX509Bundle({"cluster.local": [ca.certificate]}))

    async def app(scope: object, receive: object, send: Callable[..., object]) -> None:
        raise AssertionError("not reached")

    middleware = PeerMiddleware(app, policy=POLICY, authenticators=[MtlsAuthenticator(verifier)])
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/orders/1")).status_code == 401
    assert warnings() == []  # plain http: no certificate is expected
    async with httpx.AsyncClient(transport=transport, base_url="https://app") as client:
        for _ in range(3):
            assert (await client.get("/orders/1")).status_code == 401
    (message,) = warnings()
    assert "without the ASGI TLS extension" in message
    assert "--http peer_middleware.servers.uvicorn:H11Protocol" in message
    assert "mtls_settings" in message


def test_the_first_refusal_says_where_reasons_go_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="peer_middleware")
    guard = xfcc_guard()
    for _ in range(5):
        guard.check("GET", "/orders/1", "/orders/1", ("127.0.0.1", 40000), {})
    hints = [r.getMessage() for r in caplog.records if "is not enabled" in r.getMessage()]
    assert len(hints) == 1
    assert "logging.getLogger('peer_middleware').setLevel(logging.INFO)" in hints[0]


def test_json_formatter_writes_the_decision_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="peer_middleware")
    guard = xfcc_guard()
    guard.check("GET", "/orders/1", "/orders/1", ("127.0.0.1", 40000), {})
    record = next(r for r in caplog.records if hasattr(r, "peer_middleware"))
    data = json.loads(JsonFormatter().format(record))
    assert data["level"] == "INFO"
    assert data["logger"] == "peer_middleware"
    assert data["outcome"] == "refused"
    assert data["status"] == 401
    assert data["path"] == "/orders/1"
    assert data["rule"] is None


def test_the_rule_header_is_opt_in() -> None:
    plain = xfcc_guard()
    refused = plain.check("GET", "/orders/1", "/orders/1", ("127.0.0.1", 1), {})
    assert refused.response is not None
    assert "x-peer-middleware-rule" not in dict(refused.response.headers)
    named = Guard(
        policy=POLICY,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        responder=rule_header(),
    )
    refused = named.check("GET", "/orders/1", "/orders/1", ("127.0.0.1", 1), {})
    assert refused.response is not None
    assert dict(refused.response.headers)["x-peer-middleware-rule"] == "(none)"
    assert (
        refused.response.body
        == plain.check("GET", "/orders/1", "/orders/1", ("127.0.0.1", 1), {}).response.body
    )  # type: ignore[union-attr]


CENTRAL = Policy(
    [
        allow("healthz", Anyone(), methods="GET", paths="/healthz"),
        allow("orders", Principal(CART), paths="/orders/*"),
        allow("typo", Principal(CART), paths="/ordres/**"),
        allow("everything", Principal(CART), methods="OPTIONS"),
    ]
)


def test_fastapi_rules_that_match_no_route_are_warned_once(
    warnings: Callable[[], list[str]],
) -> None:
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    from peer_middleware.fastapi import install

    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        return {"id": order_id}

    @app.get("/healthz")
    async def healthz() -> str:
        return "ok"

    install(app, policy=CENTRAL, authenticators=[XfccAuthenticator(trusted_proxies=["::1"])])
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
    (message,) = [m for m in warnings() if "match no route" in m]
    assert "1 rule(s) of the policy match no route of the app" in message
    assert "'typo' (/ordres/**)" in message


def test_flask_rules_that_match_no_route_are_warned_once(
    warnings: Callable[[], list[str]],
) -> None:
    from flask import Flask

    from peer_middleware.flask import PeerAuth

    app = Flask("shop")

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> str:
        return str(order_id)

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    PeerAuth(app, policy=CENTRAL, authenticators=[XfccAuthenticator(trusted_proxies=["::1"])])
    client = app.test_client()
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    (message,) = [m for m in warnings() if "match no route" in m]
    assert "of the Flask app 'shop'" in message
    assert "'typo' (/ordres/**)" in message
    assert "'orders'" not in message


def test_unmatched_rules_compare_templates_segment_by_segment() -> None:
    from peer_middleware.observe import unmatched_rules

    rules = [
        allow("prefix", Anyone(), paths="/payments/**"),
        allow("typo", Anyone(), paths="/paymnets/*"),
        allow("one", Anyone(), paths="/items/*"),
        allow("all", Anyone()),
        allow("absent", Anyone(), paths="/healthz"),
        allow("static", Anyone(), paths="/static/css/site.css"),
        allow("slash", Anyone(), paths="/items/"),
    ]
    routes = ["/payments/{payment_id}", "/items/<int:item_id>", "/static/<path:filename>"]
    assert [r.name for r in unmatched_rules(rules, routes)] == ["typo", "absent", "slash"]


def test_the_unmatched_rules_warning_names_ten_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from peer_middleware.observe import warn_unmatched_rules

    rules = [allow(f"r{i}", Anyone(), paths=f"/gone{i}/**") for i in range(25)]
    with caplog.at_level(logging.WARNING, logger="peer_middleware"):
        assert len(warn_unmatched_rules(rules, ["/orders/{id}"], "the app")) == 25
    (message,) = [r.getMessage() for r in caplog.records if "match no route" in r.getMessage()]
    assert message.startswith("25 rule(s) of the policy match no route of the app")
    assert "'r9' (/gone9/**)" in message
    assert "'r10'" not in message
    assert "and 15 more (peer-middleware check lists them)" in message
