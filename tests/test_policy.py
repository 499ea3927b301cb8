"""Rules, path patterns and the compiled policy (the matchers are in test_matchers.py)."""

from __future__ import annotations

import pytest

from peer_middleware import matchers, rules
from peer_middleware import policy as policy_module
from peer_middleware.errors import ConfigurationError
from peer_middleware.matchers import Anyone, Authenticated, Namespace, Principal, TrustDomain
from peer_middleware.peer import Peer, Proof
from peer_middleware.policy import Policy
from peer_middleware.rules import Action, Decision, Rule, allow, audit, deny
from peer_middleware.spiffe import SpiffeId

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
LEGACY = "spiffe://cluster.local/ns/shop/sa/legacy"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
OTHER_CLUSTER_SHOP = "spiffe://other.local/ns/shop/sa/checkout"
NON_K8S = "spiffe://example.org/service/web"


def peer(uri: str, proof: Proof = Proof.PROXY_ASSERTED) -> Peer:
    return Peer(SpiffeId.parse(uri), proof, source="test")


def who(uri: str | None) -> Peer | None:
    return None if uri is None else peer(uri)


# --------------------------------------------------------------------------
# Rules and policies: configuration errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: allow("", Anyone()), "rule name '' must be a non-empty string"),
        (lambda: allow("  ", Anyone()), "rule name '  ' must be a non-empty string"),
        (lambda: allow(None, Anyone()), "rule name None must be a non-empty string"),
        (lambda: allow("r", "x"), "rule 'r': who='x' is not a matcher"),
        (lambda: deny("r", None), "rule 'r': who=None is not a matcher"),
        (
            lambda: allow("r", Anyone(), methods=["get"]),
            "rule 'r': method 'get' must be an upper-case HTTP token",
        ),
        (
            lambda: allow("r", Anyone(), methods="Post"),
            "rule 'r': method 'Post' must be an upper-case HTTP token",
        ),
        (
            lambda: allow("r", Anyone(), methods=["GET", ""]),
            "rule 'r': method '' must be an upper-case HTTP token",
        ),
        (
            lambda: allow("r", Anyone(), methods=["GET POST"]),
            "rule 'r': method 'GET POST' must be an upper-case HTTP token",
        ),
        (
            lambda: allow("r", Anyone(), methods=[1]),
            "rule 'r': method 1 must be an upper-case HTTP token",
        ),
        (
            lambda: allow("r", Anyone(), methods=[]),
            "rule 'r' methods is empty: the rule would never match",
        ),
        (
            lambda: allow("r", Anyone(), methods=5),
            "rule 'r' methods must be a string or an iterable of strings",
        ),
        (
            lambda: allow("r", Anyone(), paths=[]),
            "rule 'r' paths is empty: the rule would never match",
        ),
        (
            lambda: allow("r", Anyone(), paths=()),
            "rule 'r' paths is empty: the rule would never match",
        ),
        (
            lambda: audit("r", Anyone(), paths=None),
            "rule 'r' has no paths",
        ),
        (
            lambda: allow("r", Anyone(), paths="payments"),
            "path pattern 'payments' must be a string starting with '/'",
        ),
        (
            lambda: allow("r", Anyone(), paths=""),
            "path pattern '' must be a string starting with '/'",
        ),
        (
            lambda: allow("r", Anyone(), paths=[None]),
            "path pattern None must be a string starting with '/'",
        ),
        (
            lambda: allow("r", Anyone(), paths="/a/**/b/**"),
            "path pattern '/a/**/b/**' has more than one multi-segment wildcard",
        ),
        (
            lambda: allow("r", Anyone(), paths="/a/**/{p:path}"),
            "path pattern '/a/**/{p:path}' has more than one multi-segment wildcard",
        ),
        (
            lambda: allow("r", Anyone(), paths="/pay*"),
            "path pattern '/pay*': segment 'pay*' mixes wildcards or templates with text, "
            "or has a character no normalised path contains",
        ),
        (
            lambda: allow("r", Anyone(), paths="/a/***"),
            "path pattern '/a/***': segment '***' mixes wildcards or templates with text, "
            "or has a character no normalised path contains",
        ),
        (
            lambda: allow("r", Anyone(), paths="/p/{id}.json"),
            "path pattern '/p/{id}.json': segment '{id}.json' mixes wildcards or templates "
            "with text, or has a character no normalised path contains",
        ),
        (
            lambda: allow("r", Anyone(), paths="/p/x<id>"),
            "path pattern '/p/x<id>': segment 'x<id>' mixes wildcards or templates "
            "with text, or has a character no normalised path contains",
        ),
        (
            lambda: allow("r", Anyone(), paths="/p/{}"),
            "path pattern '/p/{}': segment '{}' mixes wildcards or templates "
            "with text, or has a character no normalised path contains",
        ),
        (
            lambda: allow("r", Anyone(), paths="/a;x"),
            "path pattern '/a;x': segment 'a;x' mixes wildcards or templates "
            "with text, or has a character no normalised path contains",
        ),
        (
            lambda: allow("r", Anyone(), paths="/a\\b"),
            "path pattern '/a\\\\b': segment 'a\\\\b' mixes wildcards or templates "
            "with text, or has a character no normalised path contains",
        ),
        (
            lambda: allow("r", Anyone(), paths="/a/./b"),
            "path pattern '/a/./b' has a dot segment",
        ),
        (
            lambda: allow("r", Anyone(), paths="/a/.."),
            "path pattern '/a/..' has a dot segment",
        ),
        (lambda: allow("r", Anyone(), paths="//a"), "path pattern '//a' has an empty segment"),
        (lambda: allow("r", Anyone(), paths="/a//b"), "path pattern '/a//b' has an empty segment"),
        (
            lambda: Policy([allow("x", Anyone()), deny("x", Anyone())]),
            "two rules are named 'x'",
        ),
        (
            lambda: Policy([allow("x", Anyone())], mode="audit"),
            "policy mode 'audit' must be 'enforce' or 'shadow'",
        ),
        (
            lambda: Policy([allow("x", Anyone())], mode="Enforce"),
            "policy mode 'Enforce' must be 'enforce' or 'shadow'",
        ),
        (lambda: Policy(["x"]), "'x' is not a Rule"),
        (
            lambda: Policy([allow("x", Anyone())]).extended([deny("x", Anyone())]),
            "two rules are named 'x'",
        ),
        (
            lambda: Rule("r", "allow", Anyone(), None, ()),
            "rule 'r': action must be an Action",
        ),
    ],
    ids=[
        "empty-name",
        "blank-name",
        "none-name",
        "who-string",
        "who-none",
        "lower-case-method",
        "mixed-case-method",
        "empty-method",
        "two-methods-in-one-string",
        "method-not-a-string",
        "empty-methods",
        "methods-not-iterable",
        "empty-paths-list",
        "empty-paths-tuple",
        "paths-none",
        "path-without-slash",
        "empty-path",
        "path-not-a-string",
        "two-double-stars",
        "double-star-and-path-template",
        "partial-segment-wildcard",
        "triple-star",
        "template-with-suffix",
        "template-with-prefix",
        "empty-template",
        "semicolon",
        "backslash",
        "dot-segment",
        "dot-dot-segment",
        "leading-empty-segment",
        "inner-empty-segment",
        "duplicate-rule-names",
        "bad-mode",
        "mode-case",
        "not-a-rule",
        "duplicate-via-extended",
        "action-not-an-action",
    ],
)
def test_configuration_errors(build, message):
    with pytest.raises(ConfigurationError) as info:
        build()
    assert type(info.value) is ConfigurationError
    assert str(info.value) == message


def test_rule_fields():
    rule = allow("r", Anyone(), methods=["POST", "GET"], paths=["/a", "/b/**"], shadow=True)
    assert rule.action is Action.ALLOW
    assert rule.methods == frozenset({"GET", "POST"})
    assert [p.text for p in rule.paths] == ["/a", "/b/**"]
    assert rule.shadow is True
    assert rule.describe() == "allow 'r': GET,POST /a,/b/** Anyone() (shadow)"
    assert deny("d", Authenticated()).describe() == "deny 'd': * /** Authenticated()"
    assert audit("a", Anyone(), methods="GET").action is Action.AUDIT


# --------------------------------------------------------------------------
# Path patterns
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/payments", "/payments", True),
        ("/payments", "/payments/", False),
        ("/payments", "/Payments", False),
        ("/payments", "/payments/1", False),
        ("/payments", "/paymentsX", False),
        ("/payments/", "/payments/", True),
        ("/payments/", "/payments", False),
        ("/", "/", True),
        ("/", "/a", False),
        ("/payments/*", "/payments/1", True),
        ("/payments/*", "/payments/1/2", False),
        ("/payments/*", "/payments", False),
        ("/payments/*", "/payments/", False),
        ("/payments/*/refunds", "/payments/1/refunds", True),
        ("/payments/*/refunds", "/payments/1/2/refunds", False),
        ("/payments/**", "/payments", True),
        ("/payments/**", "/payments/", True),
        ("/payments/**", "/payments/1", True),
        ("/payments/**", "/payments/1/2/3", True),
        ("/payments/**", "/paymentsX", False),
        ("/payments/**", "/paymentsX/1", False),
        ("/payments/**", "/payment", False),
        ("/payments/**", "/", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all/", True),
        ("/a/**/z", "/a/z", True),
        ("/a/**/z", "/a/b/c/z", True),
        ("/a/**/z", "/a/b/z/c", False),
        ("/a/**/z", "/a/z/", False),
        ("/payments/{id}", "/payments/42", True),
        ("/payments/{id}", "/payments/42/x", False),
        ("/payments/{id}", "/payments", False),
        ("/payments/{id}", "/payments/", False),
        ("/payments/{id:int}", "/payments/42", True),
        ("/payments/<id>", "/payments/42", True),
        ("/payments/<id>", "/payments/", False),
        ("/payments/<int:id>", "/payments/42", True),
        ("/payments/<int:id>", "/payments/42/x", False),
        ("/payments/<int:id>", "/payments/", False),
        ("/files/{p:path}", "/files/a", True),
        ("/files/{p:path}", "/files/a/b/c", True),
        ("/files/{p:path}", "/files", False),
        ("/files/{p:path}", "/files/", True),  # Starlette serves it with p == ""
        ("/files/<path:p>", "/files/a/b", True),
        ("/files/<path:p>", "/files", False),
        ("/files/<path:p>", "/files/", False),
        ("/files/{p:path}/meta", "/files/a/b/meta", True),
        ("/files/{p:path}/meta", "/files/meta", False),
    ],
    ids=[
        "exact",
        "exact-not-trailing-slash",
        "exact-case-sensitive",
        "exact-not-deeper",
        "exact-not-prefix",
        "trailing-slash",
        "trailing-slash-not-without",
        "root",
        "root-only",
        "star",
        "star-one-segment-only",
        "star-needs-a-segment",
        "star-not-empty-segment",
        "star-in-middle",
        "star-in-middle-one-segment",
        "double-star-itself",
        "double-star-trailing-slash",
        "double-star-child",
        "double-star-deep",
        "double-star-segment-boundary",
        "double-star-segment-boundary-deeper",
        "double-star-shorter",
        "double-star-root",
        "root-double-star-root",
        "root-double-star-anything",
        "inner-double-star-zero",
        "inner-double-star-many",
        "inner-double-star-must-end",
        "inner-double-star-trailing-slash",
        "brace-template",
        "brace-template-one-segment",
        "brace-template-needs-segment",
        "brace-template-not-empty-segment",
        "brace-template-converter",
        "angle-template",
        "angle-template-not-empty-segment",
        "angle-converter",
        "angle-converter-one-segment",
        "angle-converter-not-empty-segment",
        "brace-path",
        "brace-path-deep",
        "brace-path-needs-one",
        "brace-path-empty-rest-as-starlette",
        "angle-path",
        "angle-path-needs-one",
        "angle-path-not-empty-segment",
        "brace-path-in-middle",
        "brace-path-in-middle-needs-one",
    ],
)
def test_path_patterns(pattern, path, matches):
    policy = Policy([allow("r", Anyone(), paths=pattern)])
    decision = policy.decide("GET", path, None)
    assert decision.allowed is matches
    assert decision.rule == ("r" if matches else None)


# --------------------------------------------------------------------------
# Semantics
# --------------------------------------------------------------------------

ALLOWED_BY = "allowed by rule {!r}"
DENIED_BY = "denied by rule {!r}"
NO_IDENTITY = "no allow rule matched and the request has no identity"
NO_RULE = "no allow rule matched this caller"


def expect(decision: Decision, allowed: bool, status: int, rule: str | None) -> None:
    assert decision.allowed is allowed
    assert decision.status == status
    assert decision.rule == rule
    if rule is None:
        assert decision.reason == (NO_IDENTITY if status == 401 else NO_RULE)
    else:
        assert decision.reason == (ALLOWED_BY if allowed else DENIED_BY).format(rule)
    assert decision.dry_run is False
    assert decision.enforced_status == (200 if allowed else status)


@pytest.mark.parametrize(
    "rules",
    [
        [
            allow("ok", Namespace("shop", trust_domain="cluster.local")),
            deny("no-legacy", Principal(LEGACY)),
        ],
        [
            deny("no-legacy", Principal(LEGACY)),
            allow("ok", Namespace("shop", trust_domain="cluster.local")),
        ],
        [allow("ok", Anyone()), deny("no-legacy", Principal(LEGACY), paths="/payments/**")],
        [
            allow("ok", Anyone(), methods="GET", paths="/payments/1"),
            deny("no-legacy", Principal("*/sa/legacy")),
        ],
    ],
    ids=["allow-first", "deny-first", "deny-on-prefix", "specific-allow-broad-deny"],
)
def test_deny_wins_over_allow_regardless_of_order(rules):
    policy = Policy(rules)
    expect(policy.decide("GET", "/payments/1", peer(LEGACY)), False, 403, "no-legacy")
    expect(policy.decide("GET", "/payments/1", peer(CHECKOUT)), True, 200, "ok")


@pytest.mark.parametrize(
    ("uri", "status"),
    [(None, 401), (CHECKOUT, 403), (NON_K8S, 403)],
    ids=["no-identity-401", "identity-403", "non-kubernetes-identity-403"],
)
def test_default_refusal(uri, status):
    policy = Policy([allow("admin", Principal(ADMIN))])
    expect(policy.decide("GET", "/", who(uri)), False, status, None)
    expect(Policy([]).decide("GET", "/", who(uri)), False, status, None)


def test_deny_of_unauthenticated_is_403():
    policy = Policy([deny("closed", Anyone(), paths="/closed"), allow("open", Anyone())])
    expect(policy.decide("GET", "/closed", None), False, 403, "closed")
    expect(policy.decide("GET", "/open", None), True, 200, "open")


def test_not_never_admits_a_request_without_identity():
    policy = Policy([allow("not-admin", ~Principal(ADMIN))])
    expect(policy.decide("GET", "/", None), False, 401, None)
    expect(policy.decide("GET", "/", peer(CHECKOUT)), True, 200, "not-admin")
    expect(policy.decide("GET", "/", peer(ADMIN)), False, 403, None)


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            [
                allow("ns", Namespace("shop", trust_domain="cluster.local")),
                allow("exact", Principal(CHECKOUT)),
                allow("any", Authenticated()),
            ],
            "ns",
        ),
        (
            [
                allow("any", Authenticated()),
                allow("ns", Namespace("shop", trust_domain="cluster.local")),
                allow("exact", Principal(CHECKOUT)),
            ],
            "any",
        ),
        (
            [
                allow("exact", Principal(CHECKOUT)),
                allow("any", Authenticated()),
                allow("ns", Namespace("shop", trust_domain="cluster.local")),
            ],
            "exact",
        ),
        (
            [
                allow("td", TrustDomain("cluster.local"), paths="/**"),
                allow("exact", Principal(CHECKOUT), paths="/payments/1"),
            ],
            "td",
        ),
        (
            [
                allow("exact", Principal(CHECKOUT), paths="/payments/1"),
                allow("td", TrustDomain("cluster.local"), paths="/**"),
            ],
            "exact",
        ),
        (
            [
                allow("glob", Principal("*/sa/checkout"), paths="/payments/*"),
                allow("exact", Principal(CHECKOUT), paths="/payments/1"),
            ],
            "glob",
        ),
        (
            [
                allow("other", Principal(ADMIN), paths="/**"),
                allow("wide", Anyone(), paths="/payments/**"),
                allow("exact", Principal(CHECKOUT), paths="/payments/{id}"),
            ],
            "wide",
        ),
        (
            [
                allow("get", Principal(CHECKOUT), methods="GET", paths="/payments/1"),
                allow("any-method", Principal(CHECKOUT), paths="/payments/1"),
            ],
            "get",
        ),
        (
            [
                allow("any-method", Principal(CHECKOUT), paths="/payments/1"),
                allow("get", Principal(CHECKOUT), methods="GET", paths="/payments/1"),
            ],
            "any-method",
        ),
        (
            [
                allow("either", Principal(ADMIN) | TrustDomain("cluster.local")),
                allow("exact", Principal(CHECKOUT)),
            ],
            "either",
        ),
    ],
    ids=[
        "indexed-namespace-first",
        "scanned-first",
        "indexed-exact-first",
        "broad-path-first",
        "narrow-path-first",
        "glob-first",
        "middle-rule-of-three",
        "method-specific-first",
        "any-method-first",
        "any-of-first",
    ],
)
def test_first_matching_rule_in_declaration_order_names_the_decision(rules, expected):
    policy = Policy(rules)
    expect(policy.decide("GET", "/payments/1", peer(CHECKOUT)), True, 200, expected)


def test_first_matching_deny_in_declaration_order_names_the_decision():
    policy = Policy(
        [
            allow("everyone", Anyone()),
            deny("scan", Authenticated(), paths="/payments/**"),
            deny("indexed", Principal(CHECKOUT), paths="/payments/1"),
        ]
    )
    expect(policy.decide("GET", "/payments/1", peer(CHECKOUT)), False, 403, "scan")
    policy = Policy(
        [
            deny("indexed", Principal(CHECKOUT), paths="/payments/1"),
            deny("scan", Authenticated(), paths="/payments/**"),
        ]
    )
    expect(policy.decide("GET", "/payments/1", peer(CHECKOUT)), False, 403, "indexed")


@pytest.mark.parametrize(
    ("method", "uri", "allowed", "status", "rule"),
    [
        ("GET", CHECKOUT, True, 200, "read"),
        ("HEAD", CHECKOUT, True, 200, "read"),
        ("POST", CHECKOUT, True, 200, "write"),
        ("DELETE", CHECKOUT, False, 403, None),
        ("get", CHECKOUT, False, 403, None),
        ("GET", LEGACY, True, 200, "read"),
        ("POST", LEGACY, False, 403, "no-legacy-writes"),
        ("PUT", LEGACY, False, 403, "no-legacy-writes"),
        ("GET", ADMIN, True, 200, "admin"),
        ("DELETE", ADMIN, True, 200, "admin"),
        ("post", ADMIN, True, 200, "admin"),
        ("GET", None, True, 200, "health"),
        ("POST", None, False, 401, None),
        ("GET", NON_K8S, True, 200, "health"),
    ],
    ids=[
        "get-read",
        "head-read",
        "post-write",
        "delete-not-allowed",
        "lower-case-method-matches-nothing",
        "legacy-read",
        "legacy-post-denied",
        "legacy-put-denied",
        "admin-get",
        "admin-delete",
        "admin-any-method-even-lower-case",
        "no-identity-any-method-rule",
        "no-identity-post",
        "stranger-any-method-rule",
    ],
)
def test_any_method_and_method_specific_rules(method, uri, allowed, status, rule):
    policy = Policy(
        [
            allow("read", Namespace("shop", trust_domain="cluster.local"), methods=["GET", "HEAD"]),
            allow("write", Principal(CHECKOUT), methods=["POST", "PUT"]),
            deny("no-legacy-writes", Principal(LEGACY), methods=["POST", "PUT", "PATCH"]),
            allow("admin", Principal(ADMIN)),
            allow("health", Anyone(), methods="GET"),
        ]
    )
    expect(policy.decide(method, "/payments", who(uri)), allowed, status, rule)


def test_shadow_rules_do_not_change_the_outcome():
    policy = Policy(
        [
            deny("would-deny", Principal(CHECKOUT), shadow=True),
            allow("would-allow", Principal(LEGACY), shadow=True),
            allow("ok", Principal(CHECKOUT)),
        ]
    )
    decision = policy.decide("GET", "/x", peer(CHECKOUT))
    expect(decision, True, 200, "ok")
    assert decision.shadow == ("deny:would-deny",)
    assert decision.audit == ()
    decision = policy.decide("GET", "/x", peer(LEGACY))
    expect(decision, False, 403, None)
    assert decision.shadow == ("allow:would-allow",)
    decision = policy.decide("GET", "/x", peer(ADMIN))
    expect(decision, False, 403, None)
    assert decision.shadow == ()


def test_audit_rules_are_reported_and_change_nothing():
    policy = Policy(
        [
            audit("watch-legacy", Principal(LEGACY)),
            audit("watch-writes", Authenticated(), methods="POST", paths="/payments/**"),
            allow("ok", Namespace("shop", trust_domain="cluster.local")),
        ]
    )
    decision = policy.decide("POST", "/payments/1", peer(LEGACY))
    expect(decision, True, 200, "ok")
    assert sorted(decision.audit) == ["watch-legacy", "watch-writes"]
    assert decision.shadow == ()
    decision = policy.decide("GET", "/payments/1", peer(CHECKOUT))
    expect(decision, True, 200, "ok")
    assert decision.audit == ()
    decision = policy.decide("POST", "/payments/1", peer(ADMIN))
    expect(decision, False, 403, None)
    assert decision.audit == ("watch-writes",)
    decision = policy.decide("GET", "/payments/1", None)
    expect(decision, False, 401, None)
    assert decision.audit == ()


def test_audit_and_shadow_names_follow_declaration_order():
    policy = Policy(
        [
            audit("first", Anyone()),
            audit("second", Anyone(), paths="/payments/**"),
            deny("third", Anyone(), shadow=True),
            deny("fourth", Anyone(), paths="/payments/*", shadow=True),
            allow("ok", Anyone()),
        ]
    )
    decision = policy.decide("GET", "/payments/1", None)
    assert decision.audit == ("first", "second")
    assert decision.shadow == ("deny:third", "deny:fourth")
    assert [r.name for r in policy.matching_rules("GET", "/payments/1", None)] == [
        "first",
        "second",
        "third",
        "fourth",
        "ok",
    ]


def test_audit_and_shadow_rule_with_overlapping_paths_are_reported_once():
    policy = Policy(
        [
            audit("watch", Anyone(), paths=["/admin", "/admin/**"]),
            deny("would-deny", Anyone(), paths=["/admin/*", "/admin/**"], shadow=True),
            allow("ok", Anyone()),
        ]
    )
    decision = policy.decide("GET", "/admin", None)
    assert decision.audit == ("watch",)
    decision = policy.decide("GET", "/admin/users", None)
    assert decision.audit == ("watch",)
    assert decision.shadow == ("deny:would-deny",)


@pytest.mark.parametrize(
    ("uri", "path", "status", "rule", "dry_run"),
    [
        (CHECKOUT, "/payments", 200, "ok", False),
        (LEGACY, "/payments", 403, "no-legacy", True),
        (ADMIN, "/payments", 403, None, True),
        (None, "/payments", 401, None, True),
    ],
    ids=["allowed", "denied-by-rule", "no-rule", "no-identity"],
)
def test_shadow_mode_lets_everything_through_and_keeps_the_would_be_refusal(
    uri, path, status, rule, dry_run
):
    policy = Policy(
        [
            deny("no-legacy", Principal(LEGACY)),
            allow("ok", Namespace("shop", trust_domain="cluster.local")),
        ],
        mode="shadow",
    )
    decision = policy.decide("GET", path, who(uri))
    assert decision.allowed is True
    assert decision.dry_run is dry_run
    assert decision.status == status
    assert decision.rule == rule
    assert decision.enforced_status == 200
    if rule is None:
        assert decision.reason == (NO_IDENTITY if status == 401 else NO_RULE)
    elif dry_run:
        assert decision.reason == DENIED_BY.format(rule)
    else:
        assert decision.reason == ALLOWED_BY.format(rule)


def test_many_principal_rules_on_one_path_pick_the_right_one():
    uris = [f"spiffe://cluster.local/ns/team{i}/sa/svc{i}" for i in range(300)]
    rules = [allow(f"svc{i}", Principal(uri), paths="/api/**") for i, uri in enumerate(uris)]
    rules.insert(150, deny("no-svc7", Principal(uris[7]), paths="/api/secret"))
    rules.append(allow("ns-team3", Namespace("team3", trust_domain="cluster.local")))
    policy = Policy(rules)
    for i, uri in enumerate(uris):
        expect(policy.decide("GET", "/api/x", peer(uri)), True, 200, f"svc{i}")
    expect(policy.decide("GET", "/api/secret", peer(uris[7])), False, 403, "no-svc7")
    expect(policy.decide("GET", "/api/secret", peer(uris[8])), True, 200, "svc8")
    expect(policy.decide("GET", "/other", peer(uris[3])), True, 200, "ns-team3")
    expect(policy.decide("GET", "/other", peer(uris[4])), False, 403, None)
    stranger = "spiffe://cluster.local/ns/team1/sa/svc2"
    expect(policy.decide("GET", "/api/x", peer(stranger)), False, 403, None)


def test_principal_with_exact_and_glob_patterns_in_a_policy():
    policy = Policy(
        [
            allow("mixed", Principal(ADMIN, "spiffe://cluster.local/ns/shop/*")),
            allow("other", Principal(NON_K8S)),
        ]
    )
    expect(policy.decide("GET", "/", peer(ADMIN)), True, 200, "mixed")
    expect(policy.decide("GET", "/", peer(LEGACY)), True, 200, "mixed")
    expect(policy.decide("GET", "/", peer(NON_K8S)), True, 200, "other")
    expect(policy.decide("GET", "/", peer(OTHER_CLUSTER_SHOP)), False, 403, None)


def test_namespace_rule_does_not_admit_another_trust_domain():
    policy = Policy(
        [
            allow("shop-a", Namespace("shop", trust_domain="cluster.local")),
            allow("exact-b", Principal("spiffe://other.local/ns/ops/sa/x")),
        ]
    )
    expect(policy.decide("GET", "/", peer(CHECKOUT)), True, 200, "shop-a")
    expect(policy.decide("GET", "/", peer(OTHER_CLUSTER_SHOP)), False, 403, None)


def test_decisions_are_stable_for_repeat_callers():
    policy = Policy([allow("ok", Principal(CHECKOUT)), deny("no", Principal(LEGACY))])
    checkout, legacy = peer(CHECKOUT), peer(LEGACY)
    for _ in range(3):
        expect(policy.decide("GET", "/", checkout), True, 200, "ok")
        expect(policy.decide("GET", "/", legacy), False, 403, "no")
        expect(policy.decide("GET", "/", peer(LEGACY)), False, 403, "no")
        expect(policy.decide("GET", "/", None), False, 401, None)


# --------------------------------------------------------------------------
# matching_rules and extended
# --------------------------------------------------------------------------


def test_matching_rules_lists_every_match_in_order():
    rules = [
        audit("watch", Anyone(), paths=["/payments", "/payments/**"]),
        allow("ns", Namespace("shop", trust_domain="cluster.local"), methods="GET"),
        deny("legacy", Principal(LEGACY)),
        allow("admin", Principal(ADMIN)),
        allow("shadowed", Authenticated(), paths="/payments/*", shadow=True),
        allow("post-only", Authenticated(), methods="POST"),
        allow("elsewhere", Anyone(), paths="/other"),
    ]
    policy = Policy(rules)
    names = [r.name for r in policy.matching_rules("GET", "/payments/1", peer(LEGACY))]
    assert names == ["watch", "ns", "legacy", "shadowed"]
    names = [r.name for r in policy.matching_rules("POST", "/payments/1", peer(ADMIN))]
    assert names == ["watch", "admin", "shadowed", "post-only"]
    names = [r.name for r in policy.matching_rules("GET", "/payments", None)]
    assert names == ["watch"]
    assert policy.matching_rules("GET", "/nowhere", None) == []
    matched = policy.matching_rules("GET", "/other", None)
    assert matched == [rules[6]]
    assert matched[0] is rules[6]


def test_extended_appends_rules_and_keeps_the_mode():
    base = Policy([allow("a", Principal(CHECKOUT))], mode="shadow")
    bigger = base.extended([deny("b", Principal(CHECKOUT), paths="/x"), allow("c", Anyone())])
    assert bigger is not base
    assert bigger.mode == "shadow"
    assert [r.name for r in bigger.rules] == ["a", "b", "c"]
    assert len(bigger) == 3
    assert len(base) == 1
    assert repr(bigger) == "Policy(3 rules, mode='shadow')"
    decision = bigger.decide("GET", "/x", peer(CHECKOUT))
    assert (decision.allowed, decision.dry_run, decision.rule) == (True, True, "b")
    decision = base.decide("GET", "/x", peer(CHECKOUT))
    assert (decision.allowed, decision.dry_run, decision.rule) == (True, False, "a")
    enforce = Policy([allow("a", Anyone())]).extended([])
    assert enforce.mode == "enforce"
    assert [r.name for r in enforce.rules] == ["a"]


def test_policy_accepts_a_single_rule_and_generators():
    rule = allow("only", Anyone())
    assert Policy(rule).rules == (rule,)
    assert Policy(r for r in [rule]).rules == (rule,)
    assert Policy([rule]).mode == "enforce"


@pytest.mark.parametrize(
    ("module", "not_reexported"),
    [(matchers, {"index_keys_of"}), (rules, {"PathPattern"})],
    ids=["matchers", "rules"],
)
def test_policy_module_still_exports_the_matchers_and_rules(module, not_reexported):
    # ``from peer_middleware.policy import Principal, allow`` predates the split.
    for name in set(module.__all__) - not_reexported:
        assert name in policy_module.__all__
        assert getattr(policy_module, name) is getattr(module, name)
