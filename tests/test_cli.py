"""The ``peer-middleware`` command: ``dev-certs``, and what ``demo`` needs to start."""

from __future__ import annotations

import importlib.util
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peer_middleware.bundles import X509BundleFile
from peer_middleware.cli import main
from peer_middleware.x509 import X509SvidVerifier

CART = "spiffe://dev.local/ns/shop/sa/cart"
ADMIN = "spiffe://dev.local/ns/ops/sa/admin"


def test_dev_certs_writes_a_usable_pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "certs"
    argv = ["dev-certs", "--trust-domain", "dev.local", "--out", str(out)]
    argv += [
        "--svid",
        CART,
        "--svid",
        ADMIN,
        "--server-name",
        "localhost",
        "--server-name",
        "app.test",
    ]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "bundle.json",
        "bundle.pem",
        "ns-ops-sa-admin-key.pem",
        "ns-ops-sa-admin.pem",
        "ns-shop-sa-cart-key.pem",
        "ns-shop-sa-cart.pem",
        "server-key.pem",
        "server.pem",
    ]
    for key in out.glob("*-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    printed = capsys.readouterr().out
    assert (
        f"wrote {out / 'bundle.json'}  (trust bundle for dev.local, SPIFFE bundle JSON)" in printed
    )
    assert f"wrote {out / 'ns-shop-sa-cart.pem'}  (X.509-SVID {CART})" in printed
    # Both bundle forms verify the minted SVIDs.
    for bundle in (
        X509BundleFile(out / "bundle.pem", trust_domain="dev.local", reload_interval=None),
        X509BundleFile(out / "bundle.json", trust_domain="dev.local", reload_interval=None),
    ):
        verifier = X509SvidVerifier(bundle)
        for name, uri in (("ns-shop-sa-cart", CART), ("ns-ops-sa-admin", ADMIN)):
            chain = [(out / f"{name}.pem").read_text()]
            assert verifier.verify(chain).spiffe_id.uri == uri
    assert not list(out.glob("ca*"))  # the CA key is never written


def test_dev_certs_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["dev-certs"]) == 0
    assert (tmp_path / "dev-certs" / "ns-default-sa-default.pem").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--trust-domain", "Bad"], "--trust-domain 'Bad': ", id="bad-trust-domain"),
        pytest.param(
            ["--svid", "spiffe://other.local/w"], "is not in trust domain", id="other-domain"
        ),
        pytest.param(
            ["--svid", "spiffe://cluster.local"], "names the trust domain", id="bare-domain"
        ),
        pytest.param(["--svid", "https://x"], "--svid 'https://x': ", id="not-spiffe"),
        pytest.param(
            ["--svid", "spiffe://cluster.local/a", "--svid", "spiffe://cluster.local/a"],
            "would overwrite",
            id="duplicate",
        ),
        pytest.param(
            ["--svid", "spiffe://cluster.local/server"], "would overwrite", id="clobbers-server"
        ),
        pytest.param(["--server-name", "a b"], "is not a host name", id="bad-server-name"),
    ],
)
def test_dev_certs_refuses_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["dev-certs", "--out", str(tmp_path / "x"), *args])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_the_command_is_installed_as_a_module(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "peer_middleware.cli", "dev-certs", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert "bundle.pem" in result.stdout


def test_the_demo_app_ships_in_the_package(tmp_path: Path) -> None:
    # Outside the checkout (isolated mode, another working directory), where
    # the repository's examples/ cannot be imported: as from an installed wheel.
    script = (
        "import importlib.util\n"
        "from peer_middleware._demo import _load_app\n"
        "from peer_middleware.cli import DEMO_APP\n"
        "assert importlib.util.find_spec('examples') is None\n"
        "app = _load_app(DEMO_APP)\n"
        "print(DEMO_APP, type(app).__name__, *sorted(app.openapi()['paths']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "peer_middleware._demo_app:app",
        "FastAPI",
        "/healthz",
        "/payments",
        "/payments/{payment_id}",
    ]


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        pytest.param([], "httpx", id="default-app"),
        pytest.param(["--app", "mine:app"], "uvicorn", id="own-app"),
    ],
)
def test_demo_without_its_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    missing: str,
) -> None:
    find_spec = importlib.util.find_spec

    def without(name: str, package: str | None = None) -> Any:
        return None if name == missing else find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without)
    with pytest.raises(SystemExit) as caught:
        main(["demo", *args])
    assert caught.value.code == 2
    assert capsys.readouterr().err == (
        f"peer-middleware demo needs the demo extra (missing: {missing}):\n"
        "    pip install 'peer-middleware[demo]'\n"
    )


def test_demo_without_fastapi_serves_an_app_of_ones_own(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import peer_middleware._demo

    find_spec = importlib.util.find_spec
    served: list[str] = []

    def without_fastapi(name: str, package: str | None = None) -> Any:
        return None if name == "fastapi" else find_spec(name, package)

    def run_demo(*, app_spec: str, envoy_binary: str | None = None) -> int:
        served.append(app_spec)
        return 0

    monkeypatch.setattr(importlib.util, "find_spec", without_fastapi)
    monkeypatch.setattr(peer_middleware._demo, "run_demo", run_demo)
    assert main(["demo", "--app", "mine:app"]) == 0
    assert served == ["mine:app"]
    with pytest.raises(SystemExit):
        main(["demo"])
    assert "(missing: fastapi)" in capsys.readouterr().err
