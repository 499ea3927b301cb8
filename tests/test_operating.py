"""The README's "Operating it" section, run as written: metrics, OpenTelemetry, logging configs."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from peer_middleware.testing import xfcc_header

ROOT = Path(__file__).resolve().parent.parent
CART = "spiffe://cluster.local/ns/shop/sa/cart"
XFCC = {"x-forwarded-client-cert": xfcc_header(CART)}


def section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Operating it")
    return text[start : text.index("\n## ", start + 1)]


def blocks(language: str) -> list[str]:
    # Blocks may be indented under a list item.
    found = re.findall(rf"^( *)```{language}\n(.*?)^\1```", section(), flags=re.DOTALL | re.M)
    return [re.sub(rf"^{indent}", "", body, flags=re.M) for indent, body in found]


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The logging configuration as it was, after a test that configures logging."""
    names = ("peer_middleware", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {}
    for name in names:
        log = logging.getLogger(name)
        saved[name] = (list(log.handlers), log.level, log.propagate, log.disabled)
    try:
        yield
    finally:
        for name, (handlers, level, propagate, disabled) in saved.items():
            log = logging.getLogger(name)
            log.handlers[:] = handlers
            log.setLevel(level)
            log.propagate = propagate
            log.disabled = disabled


def run_python(index: int) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"readme_operating_{index}"}
    exec(compile(blocks("python")[index], "README.md", "exec"), namespace)  # noqa: S102
    return namespace


def test_the_metrics_example_serves_a_scrape() -> None:
    from starlette.testclient import TestClient

    namespace = run_python(0)
    app = namespace["app"]
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        assert client.get("/orders/1", headers=XFCC).status_code == 404  # allowed, no such route
        assert client.get("/orders/1").status_code == 401
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'rule="shop",status="200"} 1.0' in text
    assert 'peer_middleware_refusals_total{reason="no_identity"} 1.0' in text
    # Every metric of the README's sample scrape is in a real one.
    (sample,) = blocks("text")
    for line in sample.splitlines():
        assert line.split("{")[0].split(" ")[0] in text


def test_the_opentelemetry_example_reports() -> None:
    namespace = {**run_python(0), "__name__": "readme_operating_otel"}
    exec(compile(blocks("python")[1], "README.md", "exec"), namespace)  # noqa: S102
    guard = namespace["guard"]
    assert guard.check("GET", "/orders/1", "/orders/1", ("127.0.0.1", 1), XFCC).allowed
    data = namespace["reader"].get_metrics_data()
    names = {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert "peer_middleware.decisions" in names


@pytest.mark.e2e
@pytest.mark.usefixtures("restored_logging")
def test_the_uvicorn_log_config_writes_json_decisions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peer_middleware.testing.processes import UvicornThread

    (config,) = blocks("json")
    path = tmp_path / "logging.json"
    path.write_text(config)
    app = run_python(0)["app"]
    with (
        UvicornThread(app, log_config=str(path)) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        assert client.get("/orders/1").status_code == 401
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    (decision,) = [line for line in lines if line.get("outcome") == "refused"]
    assert decision["status"] == 401
    assert decision["path"] == "/orders/1"
    assert decision["logger"] == "peer_middleware"


@pytest.mark.usefixtures("restored_logging")
def test_the_gunicorn_log_config(capsys: pytest.CaptureFixture[str]) -> None:
    import logging.config

    from peer_middleware import Anyone, Guard, Policy, allow

    config = run_python(2)["logconfig_dict"]
    logging.config.dictConfig(config)
    guard = Guard(policy=Policy([allow("open", Anyone(), paths="/open")]))
    guard.check("GET", "/closed", "/closed", ("127.0.0.1", 1), {})
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["outcome"] == "refused"


@pytest.mark.usefixtures("restored_logging")
def test_the_flask_logging_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    from flask import Flask

    from peer_middleware import Anyone, Policy, allow
    from peer_middleware.flask import PeerAuth

    run_python(3)
    app = Flask(__name__)
    PeerAuth(app, policy=Policy([allow("open", Anyone(), paths="/open")]))
    assert app.test_client().get("/closed").status_code == 401
    err = capsys.readouterr().err
    assert "refused GET '/closed' status=401" in err
    assert "is not enabled" not in err  # the records are on: no hint needed
