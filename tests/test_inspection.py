"""Policy.explain, and `peer-middleware explain` and `check` on FastAPI and Flask apps."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from flask import Flask

from peer_middleware import (
    Anyone,
    Namespace,
    Policy,
    Principal,
    XfccAuthenticator,
    allow,
    audit,
    deny,
)
from peer_middleware.cli import main
from peer_middleware.conditions import Header, RequestFacts
from peer_middleware.fastapi import install
from peer_middleware.fastapi import require as fastapi_require
from peer_middleware.flask import PeerAuth
from peer_middleware.flask import require as flask_require
from peer_middleware.inspection import check, dump, peer_for, target_of

TD = "cluster.local"
CART = f"spiffe://{TD}/ns/shop/sa/cart"
LEGACY = f"spiffe://{TD}/ns/shop/sa/legacy"
ADMIN = f"spiffe://{TD}/ns/ops/sa/admin"


def rules() -> list[Any]:
    return [
        allow("healthz", Anyone(), methods="GET", paths="/heathz"),  # a typo
        deny("no-legacy", Principal(LEGACY), paths="/payments/**"),
        allow(
            "ops",
            Namespace("ops", trust_domain=TD),
            methods=["GET", "DELETE"],
            paths="/payments/*",
            when=Header("x-ticket", "*"),
        ),
    ]


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {}

    @app.get(
        "/payments/{payment_id}",
        dependencies=[fastapi_require(Namespace("shop", trust_domain=TD))],
    )
    async def read_payment(payment_id: str) -> dict[str, str]:
        return {"id": payment_id}

    install(
        app,
        policy=Policy(rules()),
        authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1"])],
    )
    return app


def flask_app() -> Flask:
    app = Flask(__name__)
    PeerAuth(
        app, policy=Policy(rules()), authenticators=[XfccAuthenticator(trusted_proxies=["::1"])]
    )

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    @app.get("/payments/<payment_id>")
    @flask_require(Namespace("shop", trust_domain=TD))
    def read_payment(payment_id: str) -> str:
        return payment_id

    return app


APP = fastapi_app()
FLASK_APP = flask_app()


def test_policy_explain_traces_every_rule() -> None:
    policy = Policy(
        [
            *rules(),
            audit("audit-all", Anyone()),
        ]
    )
    explanation = policy.explain(
        "DELETE",
        "/payments//7/../42",
        peer_for(ADMIN),
        facts=RequestFacts(headers={"x-ticket": "T-1"}),
    )
    assert explanation.path == "/payments/42"
    assert explanation.decision.allowed
    assert explanation.decision.rule == "ops"
    assert explanation.decision.audit == ("audit-all",)
    assert [(t.rule, t.matched, t.reason) for t in explanation.trace] == [
        ("healthz", False, "method DELETE is not GET"),
        ("no-legacy", False, f"{ADMIN} does not match Principal('{LEGACY}')"),
        (
            "ops",
            True,
            "Namespace('ops', trust_domain='cluster.local') and Header('x-ticket', '*') matched",
        ),
        ("audit-all", True, "Anyone() matched"),
    ]
    without = policy.explain("DELETE", "/payments/42", peer_for(ADMIN))
    assert not without.decision.allowed
    assert without.trace[2].reason == "condition Header('x-ticket', '*') does not hold"
    bad = policy.explain("GET", "/a/%2e%2e/b\x00", None)
    assert bad.decision.status == 400
    assert bad.trace == ()


@pytest.mark.parametrize("app", [APP, FLASK_APP], ids=["fastapi", "flask"])
def test_explain_follows_the_route_the_app_dispatches_to(app: Any) -> None:
    from peer_middleware.inspection import explain

    target = target_of(app)
    explanation = explain(target, "GET", "/payments//42", peer_for(CART))
    assert explanation.decision.allowed
    assert explanation.trace[-1].matched
    assert explanation.trace[-1].route is not None
    refused = explain(target, "GET", "/payments/42", peer_for(LEGACY))
    assert refused.decision.rule == "no-legacy"


@pytest.mark.parametrize("app", [APP, FLASK_APP], ids=["fastapi", "flask"])
def test_check_reports_what_never_applies(app: Any) -> None:
    findings = [str(f) for f in check(target_of(app))]
    assert findings == [
        "error: rule 'healthz': path /heathz matches no route",
        "error: rule 'ops': method DELETE: no route on its paths serves it",
        "warning: rule 'no-legacy': DENY built on a positive match: a caller it does not name "
        "is not denied; prefer DENY on a negation (everybody but ...)",
    ]


def test_check_shadowed_negations_and_nothing_allowed() -> None:
    policy = Policy(
        [
            deny("closed", Anyone(), paths="/admin/**"),
            allow("admins", Principal(ADMIN), methods="GET", paths="/admin/users"),
            allow("not-cart", ~Principal(CART), paths="/x"),
        ]
    )
    assert [str(f) for f in check(target_of(policy))] == [
        "error: rule 'admins': shadowed by deny rule 'closed': it can never apply",
        "warning: rule 'not-cart': ALLOW built on a negation: allow what is wanted, "
        "or DENY the negation",
    ]
    assert [str(f) for f in check(target_of(Policy([deny("d", ~Principal(CART))])))] == [
        "error: the policy allows nothing"
    ]


def test_cli_check_and_explain(capsys: Any) -> None:
    assert main(["check", "--app", "test_inspection:APP"]) == 1
    out = capsys.readouterr().out
    assert "path /heathz matches no route" in out
    assert out.endswith("2 error(s), 1 warning(s)\n")
    assert (
        main(["explain", "--app", "test_inspection:APP", "--as", CART, "GET", "/payments/1"]) == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[:2] == [
        f"GET /payments/1 as {CART}",
        "decision: allowed (200) by route GET /payments/{payment_id}: allowed by rule "
        "'route GET /payments/{payment_id}' declared on route GET /payments/{payment_id}",
    ]
    argv = ["explain", "--app", "test_inspection:FLASK_APP", "--as", ADMIN, "--json"]
    assert main([*argv, "--header", "X-Ticket: T-1", "GET", "/payments/9"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["allowed"], document["rule"]) == (True, "ops")
    assert main(["explain", "--app", "test_inspection:APP", "--dump", "--json"]) == 0
    dumped = json.loads(capsys.readouterr().out)
    assert [row["rule"] for row in dumped["rules"]] == [
        "healthz",
        "no-legacy",
        "ops",
        "route GET /payments/{payment_id}",
    ]
    assert main(["explain", "--app", "test_inspection:nothing", "GET", "/"]) == 2
    assert "error:" in capsys.readouterr().err


def test_dump_table() -> None:
    assert dump(Policy(rules())).splitlines() == [
        "#  action  rule       methods     paths         who / when",
        "0  allow   healthz    GET         /heathz       Anyone()",
        f"1  deny    no-legacy  *           /payments/**  Principal('{LEGACY}')",
        "2  allow   ops        DELETE,GET  /payments/*   Namespace('ops', "
        "trust_domain='cluster.local') when Header('x-ticket', '*')",
    ]


def test_cli_with_istio_and_consul_files(tmp_path: Path, capsys: Any) -> None:
    istio = tmp_path / "istio.yaml"
    istio.write_text(
        "apiVersion: security.istio.io/v1\n"
        "kind: AuthorizationPolicy\n"
        "metadata: {name: payments, namespace: shop}\n"
        "spec:\n"
        "  rules:\n"
        "  - from:\n"
        "    - source: {principals: [cluster.local/ns/shop/sa/cart]}\n"
        "    to:\n"
        "    - operation: {methods: [GET], paths: [/heathz, '/payments/{*}']}\n"
    )
    app = ["--app", "test_inspection:APP"]
    files = ["--istio", str(istio), "--namespace", "shop", "--label", "app=payments"]
    assert main(["check", *app, *files]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "error: rule 'istio:shop/payments/rules[0]': path /heathz matches no route",
        "1 error(s), 0 warning(s)",
    ]
    assert main(["explain", *files, "--as", CART, "GET", "/payments/7"]) == 0
    assert "by istio:shop/payments/rules[0]" in capsys.readouterr().out
    consul = tmp_path / "api.json"
    consul.write_text(
        json.dumps(
            {
                "Kind": "service-intentions",
                "Name": "api",
                "Sources": [{"Name": "web", "Action": "allow"}],
            }
        )
    )
    argv = ["--consul", str(consul), "--service", "api", "--consul-trust-domain", "c.consul"]
    assert (
        main(["explain", *argv, "--as", "spiffe://c.consul/ns/default/dc/d/svc/web", "GET", "/"])
        == 0
    )
    assert "allowed (200)" in capsys.readouterr().out
    assert main(["check", *argv]) == 0
    with pytest.raises(SystemExit):
        main(["check", "--istio", str(istio)])  # no --namespace


def test_check_reports_a_policy_that_cannot_be_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    (tmp_path / "typo_app.py").write_text(
        "from peer_middleware import Anyone, Policy, allow\n"
        "policy = Policy([allow('pay', Anyone(), paths='/pay*')])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["check", "--app", "typo_app:policy"]) == 1
    finally:
        sys.modules.pop("typo_app", None)
    out = capsys.readouterr().out
    assert out.startswith("error: path pattern '/pay*': segment 'pay*' mixes wildcards")
