"""The README's Flask, Quart and Litestar sections: each code block runs and protects its app."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SHOP = "spiffe://cluster.local/ns/shop/sa/checkout"
OPS = "spiffe://cluster.local/ns/ops/sa/admin"
BODY_401 = b'{"type":"about:blank","title":"Unauthorized","status":401}'
BODY_403 = b'{"type":"about:blank","title":"Forbidden","status":403}'


def block(section: str) -> str:
    """The first ``python`` block under the README heading ``### <section>``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n### {section}\n")
    found = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert found is not None, section
    return found.group(1)


def run(section: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the block as the module ``readme_<section>`` (Litestar reads handlers' modules)."""
    module = ModuleType(f"readme_{section.lower()}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(block(section), f"README.md ### {section}", "exec"), module.__dict__)  # noqa: S102
    return module.app


def headers(principal: str | None) -> dict[str, str]:
    return {"x-forwarded-client-cert": f"URI={principal}"} if principal else {}


EXPECTED = [
    (SHOP, 200, {"id": "7", "caller": SHOP}),
    (OPS, 403, BODY_403),
    (None, 401, BODY_401),
]


@pytest.mark.parametrize(("principal", "status", "body"), EXPECTED)
def test_flask(
    principal: str | None, status: int, body: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("flask")
    response = (
        run("Flask", monkeypatch)
        .test_client()
        .get("/payments/7", headers=headers(principal), environ_base={"REMOTE_ADDR": "127.0.0.1"})
    )
    assert response.status_code == status
    assert (response.get_json() if status == 200 else response.data) == body


@pytest.mark.parametrize(("principal", "status", "body"), EXPECTED)
async def test_quart(
    principal: str | None, status: int, body: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("quart")
    response = await (
        run("Quart", monkeypatch)
        .test_client()
        .get("/payments/7", headers=headers(principal), scope_base={"client": ("127.0.0.1", 5000)})
    )
    assert response.status_code == status
    assert (await response.get_json() if status == 200 else await response.get_data()) == body


@pytest.mark.parametrize(("principal", "status", "body"), EXPECTED)
def test_litestar(
    principal: str | None, status: int, body: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("litestar")
    from litestar.testing import TestClient

    app = run("Litestar", monkeypatch)

    async def from_local_proxy(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            scope["client"] = ("127.0.0.1", 5000)  # Litestar's TestClient says "testclient"
        await app(scope, receive, send)

    with TestClient(from_local_proxy) as client:  # type: ignore[arg-type]
        response = client.get("/payments/7", headers=headers(principal))
    assert response.status_code == status
    assert (response.json() if status == 200 else response.content) == body


def test_the_package_imports_quart_and_litestar_only_from_their_modules() -> None:
    """``import peer_middleware`` works without the [quart] and [litestar] extras."""
    import subprocess

    code = (
        "import sys, peer_middleware, peer_middleware.asgi, peer_middleware.routes\n"
        "assert not {'quart', 'litestar', 'flask'} & set(sys.modules), sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
