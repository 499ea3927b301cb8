"""Decision metrics: the observer hook, Prometheus (unit and a real scrape), and OpenTelemetry."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from peer_middleware import (
    Anyone,
    Namespace,
    Policy,
    X509BundleFile,
    XfccAuthenticator,
    allow,
    audit,
)
from peer_middleware.guard import Guard, Verdict
from peer_middleware.metrics import PrometheusMetrics
from peer_middleware.observe import Observed
from peer_middleware.testing import xfcc_header
from peer_middleware.testing.pki import TestCA

PROXY = ("127.0.0.1", 50000)
SHOP = "spiffe://cluster.local/ns/shop/sa/cart"
OTHER = "spiffe://cluster.local/ns/other/sa/x"

POLICY = Policy(
    [
        allow("metrics", Anyone(), methods="GET", paths="/metrics"),
        allow("shop", Namespace("shop", trust_domain="cluster.local"), paths="/orders/**"),
        audit("watch-orders", Anyone(), paths="/orders/**"),
        allow("try-other", Namespace("other", trust_domain="cluster.local"), shadow=True),
    ]
)


def make_guard(*observers: object) -> Guard:
    return Guard(
        policy=POLICY,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        observers=observers,  # type: ignore[arg-type]
    )


def xfcc(principal: str) -> dict[str, str]:
    return {"x-forwarded-client-cert": xfcc_header(principal)}


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def traffic(guard: Guard) -> None:
    for _ in range(3):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc(SHOP)).allowed
    assert not guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc(OTHER)).allowed
    assert not guard.check("GET", "/orders/1", "/orders/1", PROXY, {}).allowed
    bad = {"x-forwarded-client-cert": "URI=not-a-spiffe-id"}
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, bad).decision.status == 401
    assert guard.check("GET", "/a/%2f", "/a/%2f", PROXY, {}).decision.status == 400
    assert guard.check("GET", "/metrics", "/metrics", PROXY, {}).allowed


def test_decisions_are_counted_by_outcome_status_rule_and_proof() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    guard = make_guard(metrics)
    traffic(guard)
    found = samples(registry)

    def decisions(outcome: str, status: str, rule: str, proof: str) -> float:
        labels = (("outcome", outcome), ("proof", proof), ("rule", rule), ("status", status))
        return found.get(("peer_middleware_decisions_total", labels), 0.0)

    assert decisions("allowed", "200", "shop", "proxy-asserted") == 3
    assert decisions("refused", "403", "(none)", "proxy-asserted") == 1
    assert decisions("refused", "401", "(none)", "none") == 2
    assert decisions("refused", "400", "(none)", "none") == 1
    assert decisions("allowed", "200", "metrics", "none") == 1

    def one(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0.0)

    assert one("peer_middleware_refusals_total", reason="no_matching_rule") == 1
    assert one("peer_middleware_refusals_total", reason="no_identity") == 1
    assert one("peer_middleware_refusals_total", reason="bad_request") == 1
    assert one("peer_middleware_authentication_failures_total", reason="authentication_failed") == 1
    assert one("peer_middleware_audit_matches_total", rule="watch-orders") >= 3
    assert one("peer_middleware_shadow_results_total", rule="try-other", effect="allow") == 1
    # One decision in eight is timed: the first of these eight.
    assert one("peer_middleware_decision_seconds_count") == 1
    assert one("peer_middleware_decision_seconds_bucket", le="+Inf") == 1
    assert one("peer_middleware_memory_hits_total") >= 1
    assert one("peer_middleware_memory_entries", part="verdicts") >= 1
    assert one("peer_middleware_memory_bytes", part="paths") > 0
    # No label carries a principal, a path or a credential.
    text = generate_latest(registry).decode()
    for secret in (SHOP, OTHER, "/orders/1", "not-a-spiffe-id"):
        assert secret not in text


def test_label_sets_are_bounded() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry, max_series=2)
    guard = make_guard(metrics)
    traffic(guard)
    found = samples(registry)
    series = [key for key in found if key[0] == "peer_middleware_decisions_total"]
    assert len(series) <= 2 + 3  # two kept, the rest under (overflow) per outcome and status
    assert any(("rule", "(overflow)") in labels for _, labels in series)


def test_no_observer_no_work_and_a_failing_observer_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="peer_middleware")

    class Broken:
        calls = 0

        def observe(self, verdict: Observed, nanoseconds: int | None) -> None:
            Broken.calls += 1
            raise RuntimeError("boom")

    broken = Broken()
    guard = make_guard(broken)
    for _ in range(3):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc(SHOP)).allowed
    assert Broken.calls == 3
    failures = [r for r in caplog.records if "observer" in r.getMessage()]
    assert len(failures) == 1
    assert make_guard().memory.hits == 0


def test_every_verdict_reaches_the_observer_once_with_its_time() -> None:
    seen: list[tuple[Verdict, int | None]] = []

    class Recorder:
        def observe(self, verdict: Observed, nanoseconds: int | None) -> None:
            assert isinstance(verdict, Verdict)
            seen.append((verdict, nanoseconds))

    guard = make_guard(Recorder())
    traffic(guard)
    assert len(seen) == 8
    timed = [ns for _, ns in seen]
    assert timed[0] is not None
    assert 0 <= timed[0] < 10**9
    assert timed[1:] == [None] * 7  # one decision in eight is timed
    assert [v.failure for v, _ in seen if v.failure] == ["authentication_failed", "bad_request"]
    with pytest.raises(ValueError, match="observe"):
        guard.observe(object())  # type: ignore[arg-type]


def test_trust_material_gauges(tmp_path: Path) -> None:
    ca = TestCA.create("cluster.local")
    path = tmp_path / "bundle.pem"
    path.write_bytes(ca.pem)
    bundle = X509BundleFile(path, trust_domain="cluster.local", reload_interval=None)
    try:
        registry = CollectorRegistry()
        metrics = PrometheusMetrics(registry=registry)
        metrics.watch_trust("bundle", bundle)
        found = samples(registry)
        labels = (("source", "bundle"),)
        assert found[("peer_middleware_trust_material_generation", labels)] == 0
        assert found[("peer_middleware_trust_material_last_refresh_ok", labels)] == 1
        assert 0 <= found[("peer_middleware_trust_material_age_seconds", labels)] < 60
        path.write_bytes(b"not a bundle")
        bundle.reload(force=True)
        found = samples(registry)
        assert found[("peer_middleware_trust_material_last_refresh_ok", labels)] == 0
        path.write_bytes(TestCA.create("cluster.local").pem)
        bundle.reload(force=True)
        found = samples(registry)
        assert found[("peer_middleware_trust_material_generation", labels)] == 1
        assert found[("peer_middleware_trust_material_last_refresh_ok", labels)] == 1
    finally:
        bundle.close()


@pytest.mark.e2e
def test_a_real_scrape_under_uvicorn() -> None:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from peer_middleware import PeerMiddleware
    from peer_middleware.testing.processes import UvicornThread

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: str) -> dict[str, str]:
        return {"id": order_id}

    @app.get("/metrics")
    async def scrape() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode())

    guard = Guard(
        policy=POLICY,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        observers=[metrics],
    )
    app.add_middleware(PeerMiddleware, guard=guard)
    with UvicornThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/orders/1", headers=xfcc(SHOP)).status_code == 200
        assert client.get("/orders/1", headers=xfcc(OTHER)).status_code == 403
        assert client.get("/orders/1").status_code == 401
        response = client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert (
        'peer_middleware_decisions_total{outcome="allowed",proof="proxy-asserted",'
        'rule="shop",status="200"} 1.0'
    ) in text
    assert 'peer_middleware_refusals_total{reason="no_matching_rule"} 1.0' in text
    assert 'peer_middleware_refusals_total{reason="no_identity"} 1.0' in text
    assert "peer_middleware_decision_seconds_bucket" in text
    assert 'peer_middleware_memory_entries{part="paths"}' in text


def test_opentelemetry_metrics_through_the_sdk_reader() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from peer_middleware.otel import OpenTelemetryMetrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = OpenTelemetryMetrics(meter_provider=provider, durations=True)
    guard = make_guard(metrics)
    traffic(guard)
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[tuple[dict[str, object], object]]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # type: ignore[union-attr]
                    points.setdefault(metric.name, []).append((dict(point.attributes or {}), value))
    assert (
        {"outcome": "allowed", "status": 200, "rule": "shop", "proof": "proxy-asserted"},
        3,
    ) in points["peer_middleware.decisions"]
    assert ({"reason": "no_identity"}, 1) in points["peer_middleware.refusals"]
    assert ({"reason": "authentication_failed"}, 1) in points[
        "peer_middleware.authentication_failures"
    ]
    assert points["peer_middleware.decision.duration"] == [({}, 1)]  # one in eight timed
    assert {a["part"]: v for a, v in points["peer_middleware.memory.entries"]}["paths"] >= 1
    provider.shutdown()


def test_decision_span_attributes() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from peer_middleware.otel import DecisionSpans

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    guard = make_guard(DecisionSpans())
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc(SHOP)).allowed  # no span
    with tracer.start_as_current_span("request"):
        assert guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc(SHOP)).allowed
    with tracer.start_as_current_span("refused"):
        guard.check("GET", "/orders/1", "/orders/1", PROXY, {})
    allowed, refused = exporter.get_finished_spans()
    assert dict(allowed.attributes or {}) == {
        "peer_middleware.decision.outcome": "allowed",
        "peer_middleware.decision.status": 200,
        "peer_middleware.decision.rule": "shop",
        "peer_middleware.decision.reason_class": "allowed",
        "peer_middleware.peer.principal": SHOP,
        "peer_middleware.peer.proof": "proxy-asserted",
    }
    assert dict(refused.attributes or {}) == {
        "peer_middleware.decision.outcome": "refused",
        "peer_middleware.decision.status": 401,
        "peer_middleware.decision.rule": "",
        "peer_middleware.decision.reason_class": "no_identity",
    }
    provider.shutdown()


def test_flask_serves_metrics_under_a_rule_of_its_own() -> None:
    from flask import Flask
    from prometheus_client import CONTENT_TYPE_LATEST

    from peer_middleware.flask import PeerAuth

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    app = Flask("shop")

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> str:
        return str(order_id)

    @app.get("/metrics")
    def scrape() -> tuple[bytes, int, dict[str, str]]:
        return generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    PeerAuth(
        app,
        policy=POLICY,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        observers=[metrics],
    )
    client = app.test_client()
    environ = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000"}
    assert client.get("/orders/1", headers=xfcc(SHOP), environ_base=environ).status_code == 200
    assert client.get("/orders/1", environ_base=environ).status_code == 401
    text = client.get("/metrics", environ_base=environ).get_data(as_text=True)
    assert 'outcome="allowed",proof="proxy-asserted",rule="shop",status="200"} 1.0' in text
    assert 'peer_middleware_refusals_total{reason="no_identity"} 1.0' in text
    assert 'peer_middleware_memory_entries{part="paths"}' in text


def test_dry_run_shadow_and_audit_results() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    policy = Policy(
        [
            allow("shop", Namespace("shop", trust_domain="cluster.local"), paths="/orders/**"),
            audit("watch", Anyone(), paths="/orders/**"),
        ],
        mode="shadow",
    )
    guard = Guard(
        policy=policy,
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
        observers=[metrics],
    )
    assert guard.check("GET", "/orders/1", "/orders/1", PROXY, xfcc(OTHER)).allowed
    found = samples(registry)
    labels = (("outcome", "dry_run"), ("proof", "proxy-asserted"), ("rule", "(none)"))
    assert found[("peer_middleware_decisions_total", (*labels, ("status", "403")))] == 1
    assert found[("peer_middleware_refusals_total", (("reason", "no_matching_rule"),))] == 1
    assert found[("peer_middleware_audit_matches_total", (("rule", "watch"),))] == 1


def test_configuration_errors() -> None:
    from peer_middleware.errors import ConfigurationError
    from peer_middleware.observe import rule_header

    with pytest.raises(ConfigurationError, match="namespace"):
        PrometheusMetrics(register=False, namespace="no-dashes")
    with pytest.raises(ConfigurationError, match="max_series"):
        PrometheusMetrics(register=False, max_series=0)
    with pytest.raises(ConfigurationError, match="bind needs a Guard"):
        PrometheusMetrics(register=False).bind(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="non-empty name"):
        PrometheusMetrics(register=False).watch_trust("", object())
    with pytest.raises(ConfigurationError, match="not a header name"):
        rule_header(header="x rule")


def test_key_sources_are_watched_too() -> None:
    from peer_middleware import StaticJwks

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    metrics.watch_trust("static", StaticJwks({"keys": []}))
    found = samples(registry)
    # A static source has no refreshes to report, and no generation.
    assert not [key for key in found if key[1] == (("source", "static"),)]


def test_key_set_gauges(tmp_path: Path) -> None:
    import json

    from peer_middleware import SpiffeJwtBundle
    from peer_middleware.testing.tokens import TokenMinter

    path = tmp_path / "example.org.json"
    path.write_text(json.dumps(TokenMinter().spiffe_bundle()))
    keys = SpiffeJwtBundle({"example.org": path}, poll_interval=3600)
    try:
        registry = CollectorRegistry()
        metrics = PrometheusMetrics(registry=registry)
        metrics.watch_trust("jwt", keys)
        labels = (("source", "jwt"),)
        found = samples(registry)
        assert found[("peer_middleware_trust_material_generation", labels)] == 0
        assert found[("peer_middleware_trust_material_last_refresh_ok", labels)] == 1
        path.write_text("{broken")
        assert not keys.refresh(timeout=10)
        found = samples(registry)
        assert found[("peer_middleware_trust_material_last_refresh_ok", labels)] == 0
        assert found[("peer_middleware_trust_material_age_seconds", labels)] >= 0
    finally:
        keys.close()
