"""The README's sections on request conditions, `check`/`explain` and Istio, run as written.

Python blocks are executed; each ``console`` block's command is run through
the CLI's ``main`` and its output compared with the block, line by line.
"""

from __future__ import annotations

import re
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from peer_middleware import Policy
from peer_middleware.cli import main
from peer_middleware.conditions import RequestFacts
from peer_middleware.inspection import peer_for

README = Path(__file__).resolve().parent.parent / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"### {title}\n")
    end = text.find("\n## ", start)
    following = text.find("\n### ", start + 1)
    if following != -1 and (end == -1 or following < end):
        end = following
    return text[start:end]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_conditions_section() -> None:
    code = blocks(section("Conditions on the request"), "python")
    assert len(code) == 1
    namespace: dict[str, Any] = {}
    exec(compile(code[0], "README.md", "exec"), namespace)  # noqa: S102
    policy: Policy = namespace["policy"]
    assert policy.reads == {"host", "header:x-debug", "source", "port", "header:x-forwarded-for"}
    admin = peer_for("spiffe://cluster.local/ns/ops/sa/admin")
    inside = RequestFacts(None, 8443, {"x-forwarded-for": "10.1.2.3"}, "127.0.0.6")
    assert policy.decide("GET", "/admin/users", admin, facts=inside).allowed
    outside = RequestFacts(None, 8443, {"x-forwarded-for": "198.51.100.1"}, "127.0.0.6")
    assert not policy.decide("GET", "/admin/users", admin, facts=outside).allowed
    debug = RequestFacts("API.example.com", 8443, {"x-debug": ""}, "127.0.0.6")
    assert policy.decide("GET", "/partner/x", None, facts=debug).rule == "no-debug-on-api"
    partner = RequestFacts(None, None, {}, "192.0.2.9")
    assert policy.decide("GET", "/partner/x", None, facts=partner).rule == "partners"
    stranger = RequestFacts(None, None, {}, "198.51.100.1")
    assert (
        policy.decide("GET", "/partner/x", None, facts=stranger).rule == "partners-from-their-net"
    )


def test_check_and_explain_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    text = section("`check` and `explain`")
    code = blocks(text, "python")
    assert len(code) == 1
    (tmp_path / "shop.py").write_text(code[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        consoles = blocks(text, "console")
        assert len(consoles) == 3
        for console in consoles:
            command, *expected = console.rstrip("\n").split("\n")
            assert command.startswith("$ peer-middleware ")
            argv = shlex.split(command[2:])[1:]
            status = main(argv)
            assert status == (1 if argv[0] == "check" else 0)
            assert capsys.readouterr().out.rstrip("\n").split("\n") == expected
    finally:
        sys.modules.pop("shop", None)


def test_istio_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = blocks(section("Istio policies"), "python")
    assert len(code) == 1
    (tmp_path / "istio").mkdir()
    (tmp_path / "istio" / "payments.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: payments, namespace: shop}
            spec:
              selector:
                matchLabels: {app: payments}
              rules:
              - from:
                - source:
                    principals: ["cluster.local/ns/shop/sa/checkout"]
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code[0], "README.md", "exec"), namespace)  # noqa: S102
    try:
        checkout = peer_for("spiffe://cluster.local/ns/shop/sa/checkout")
        for policy in (namespace["policy"], namespace["guard"].policy):
            assert policy.decide("GET", "/x", checkout).allowed
            assert not policy.decide("GET", "/x", None).allowed
    finally:
        namespace["files"].close()


def test_consul_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = blocks(section("Consul intentions"), "python")
    assert len(code) == 1
    (tmp_path / "intentions").mkdir()
    (tmp_path / "intentions" / "api.hcl").write_text(
        textwrap.dedent(
            """\
            Kind = "service-intentions"
            Name = "api"
            Sources = [
              {
                Name   = "web"
                Action = "allow"
              }
            ]
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code[0], "README.md", "exec"), namespace)  # noqa: S102
    td = namespace["TD"]
    web = peer_for(f"spiffe://{td}/ns/default/dc/dc1/svc/web")
    assert namespace["web"](web)
    assert namespace["policy"].decide("GET", "/x", web).allowed
    api = peer_for(f"spiffe://{td}/ns/default/dc/dc1/svc/api")
    assert not namespace["policy"].decide("GET", "/x", api).allowed
