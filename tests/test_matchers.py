"""Matchers: who a rule applies to, and the index keys the policy finds them by."""

from __future__ import annotations

import pytest

from peer_middleware.errors import ConfigurationError
from peer_middleware.matchers import (
    AllOf,
    AnyOf,
    Anyone,
    Authenticated,
    Matcher,
    Namespace,
    Not,
    Principal,
    ProvenBy,
    ServiceAccount,
    TrustDomain,
    Who,
    index_keys_of,
)
from peer_middleware.peer import Peer, Proof
from peer_middleware.spiffe import SpiffeId

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
LEGACY = "spiffe://cluster.local/ns/shop/sa/legacy"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
OTHER_CLUSTER_SHOP = "spiffe://other.local/ns/shop/sa/checkout"
DEEP = "spiffe://cluster.local/ns/shop/sa/checkout/extra"
NON_K8S = "spiffe://example.org/service/web"

TD_MSG = (
    "SPIFFE ID trust domain characters are limited to lowercase letters, numbers, "
    "dots, dashes, and underscores"
)


def peer(uri: str, proof: Proof = Proof.PROXY_ASSERTED) -> Peer:
    return Peer(SpiffeId.parse(uri), proof, source="test")


def who(uri: str | None) -> Peer | None:
    return None if uri is None else peer(uri)


@pytest.mark.parametrize(
    ("matcher", "uri", "expected"),
    [
        (Anyone(), None, True),
        (Anyone(), CHECKOUT, True),
        (Authenticated(), None, False),
        (Authenticated(), CHECKOUT, True),
        (Principal(CHECKOUT), CHECKOUT, True),
        (Principal(CHECKOUT), LEGACY, False),
        (Principal(CHECKOUT), DEEP, False),
        (Principal(CHECKOUT), OTHER_CLUSTER_SHOP, False),
        (Principal(CHECKOUT), None, False),
        (Principal("cluster.local/ns/shop/sa/checkout"), CHECKOUT, True),
        (Principal("cluster.local/ns/shop/sa/checkout"), LEGACY, False),
        (Principal(LEGACY, CHECKOUT), CHECKOUT, True),
        (Principal("spiffe://cluster.local/ns/shop/*"), CHECKOUT, True),
        (Principal("spiffe://cluster.local/ns/shop/*"), DEEP, True),
        (Principal("spiffe://cluster.local/ns/shop/*"), ADMIN, False),
        (Principal("spiffe://cluster.local/ns/shop/*"), OTHER_CLUSTER_SHOP, False),
        (Principal("spiffe://cluster.local/ns/shop/*"), None, False),
        (Principal("cluster.local/ns/shop/*"), CHECKOUT, True),
        (Principal("cluster.local/ns/shop/*"), ADMIN, False),
        (Principal("*/sa/checkout"), CHECKOUT, True),
        (Principal("*/sa/checkout"), OTHER_CLUSTER_SHOP, True),
        (Principal("*/sa/checkout"), LEGACY, False),
        (Principal("*/sa/checkout"), DEEP, False),
        (Principal("*"), CHECKOUT, True),
        (Principal("*"), NON_K8S, True),
        (Principal("*"), None, False),
        (Principal(ADMIN, "spiffe://cluster.local/ns/shop/*"), ADMIN, True),
        (Principal(ADMIN, "spiffe://cluster.local/ns/shop/*"), LEGACY, True),
        (Principal(ADMIN, "spiffe://cluster.local/ns/shop/*"), NON_K8S, False),
        (
            ServiceAccount("checkout", namespace="shop", trust_domain="cluster.local"),
            CHECKOUT,
            True,
        ),
        (ServiceAccount("checkout", namespace="shop", trust_domain="cluster.local"), LEGACY, False),
        (
            ServiceAccount("checkout", namespace="shop", trust_domain="cluster.local"),
            OTHER_CLUSTER_SHOP,
            False,
        ),
        (ServiceAccount("checkout", namespace="shop", trust_domain="cluster.local"), DEEP, False),
        (ServiceAccount("checkout", namespace="shop", trust_domain="cluster.local"), None, False),
        (TrustDomain("cluster.local"), CHECKOUT, True),
        (TrustDomain("cluster.local"), OTHER_CLUSTER_SHOP, False),
        (TrustDomain("cluster.local", "other.local"), OTHER_CLUSTER_SHOP, True),
        (TrustDomain("cluster"), CHECKOUT, False),
        (TrustDomain("cluster.local"), None, False),
        (Namespace("shop", trust_domain="cluster.local"), CHECKOUT, True),
        (Namespace("shop", trust_domain="cluster.local"), LEGACY, True),
        (Namespace("shop", trust_domain="cluster.local"), OTHER_CLUSTER_SHOP, False),
        (Namespace("shop", trust_domain="cluster.local"), ADMIN, False),
        (Namespace("shop", "ops", trust_domain="cluster.local"), ADMIN, True),
        (Namespace("shop", trust_domain="cluster.local"), DEEP, False),
        (Namespace("service", trust_domain="example.org"), NON_K8S, False),
        (Namespace("shop", trust_domain="cluster.local"), None, False),
        (Not(Principal(ADMIN)), CHECKOUT, True),
        (Not(Principal(ADMIN)), ADMIN, False),
        (Not(Principal(ADMIN)), None, False),
        (Not(Anyone()), CHECKOUT, False),
        (Not(Anyone()), None, False),
        (Not(Authenticated()), None, False),
        (AnyOf(Principal(ADMIN), Namespace("shop", trust_domain="cluster.local")), ADMIN, True),
        (AnyOf(Principal(ADMIN), Namespace("shop", trust_domain="cluster.local")), LEGACY, True),
        (AnyOf(Principal(ADMIN), Namespace("shop", trust_domain="cluster.local")), NON_K8S, False),
        (AnyOf(Principal(ADMIN), Anyone()), None, True),
        (AllOf(TrustDomain("cluster.local"), Not(Principal(LEGACY))), CHECKOUT, True),
        (AllOf(TrustDomain("cluster.local"), Not(Principal(LEGACY))), LEGACY, False),
        (AllOf(TrustDomain("cluster.local"), Not(Principal(LEGACY))), NON_K8S, False),
        (AllOf(Anyone(), Anyone()), None, True),
    ],
    ids=[
        "anyone-without-identity",
        "anyone-with-identity",
        "authenticated-without-identity",
        "authenticated-with-identity",
        "principal-exact",
        "principal-exact-other",
        "principal-exact-is-not-prefix",
        "principal-exact-other-trust-domain",
        "principal-exact-none",
        "principal-istio-style",
        "principal-istio-style-other",
        "principal-several",
        "principal-prefix",
        "principal-prefix-deeper",
        "principal-prefix-other-namespace",
        "principal-prefix-other-trust-domain",
        "principal-prefix-none",
        "principal-istio-prefix",
        "principal-istio-prefix-other",
        "principal-suffix",
        "principal-suffix-any-trust-domain",
        "principal-suffix-other",
        "principal-suffix-must-end",
        "principal-star",
        "principal-star-non-kubernetes",
        "principal-star-none",
        "principal-exact-and-glob-exact",
        "principal-exact-and-glob-glob",
        "principal-exact-and-glob-neither",
        "service-account",
        "service-account-other",
        "service-account-other-trust-domain",
        "service-account-deeper",
        "service-account-none",
        "trust-domain",
        "trust-domain-other",
        "trust-domain-several",
        "trust-domain-is-not-prefix",
        "trust-domain-none",
        "namespace",
        "namespace-other-sa",
        "namespace-same-name-other-trust-domain",
        "namespace-other",
        "namespace-several",
        "namespace-needs-exact-kubernetes-path",
        "namespace-non-kubernetes",
        "namespace-none",
        "not-matches-others",
        "not-excludes",
        "not-never-matches-none",
        "not-anyone",
        "not-anyone-none",
        "not-authenticated-none",
        "any-of-first",
        "any-of-second",
        "any-of-neither",
        "any-of-anyone-none",
        "all-of-both",
        "all-of-excluded",
        "all-of-other-trust-domain",
        "all-of-anyone-none",
    ],
)
def test_matchers(matcher, uri, expected):
    assert matcher(who(uri)) is expected


@pytest.mark.parametrize(
    ("proofs", "proof", "expected"),
    [
        ((Proof.MTLS,), Proof.MTLS, True),
        ((Proof.MTLS,), Proof.PROXY_ASSERTED, False),
        ((Proof.MTLS, Proof.FORWARDED_CERTIFICATE), Proof.FORWARDED_CERTIFICATE, True),
        ((Proof.MTLS, Proof.FORWARDED_CERTIFICATE), Proof.TOKEN, False),
        ((Proof.PROXY_ASSERTED,), Proof.PROXY_ASSERTED, True),
    ],
    ids=["mtls", "proxy-is-not-mtls", "second-of-two", "token-is-neither", "proxy"],
)
def test_proven_by(proofs, proof, expected):
    assert ProvenBy(*proofs)(peer(CHECKOUT, proof)) is expected
    assert ProvenBy(*proofs)(None) is False


def test_operators_build_combinators():
    a, b = Principal(ADMIN), Namespace("shop", trust_domain="cluster.local")
    either, both, neither = a | b, a & b, ~a
    assert type(either) is AnyOf
    assert either.matchers == (a, b)
    assert type(both) is AllOf
    assert both.matchers == (a, b)
    assert type(neither) is Not
    assert neither.matcher is a
    assert either(peer(LEGACY)) is True
    assert both(peer(LEGACY)) is False
    assert neither(peer(LEGACY)) is True
    assert neither(None) is False


@pytest.mark.parametrize(
    ("matcher", "text"),
    [
        (Anyone(), "Anyone()"),
        (Authenticated(), "Authenticated()"),
        (
            Principal("cluster.local/ns/a/sa/b", "*/sa/c"),
            "Principal('spiffe://cluster.local/ns/a/sa/b', '*/sa/c')",
        ),
        (TrustDomain("b.org", "a.org"), "TrustDomain('a.org', 'b.org')"),
        (Namespace("b", "a", trust_domain="td"), "Namespace('a', 'b', trust_domain='td')"),
        (ProvenBy(Proof.TOKEN, Proof.MTLS), "ProvenBy(MTLS, TOKEN)"),
        (Anyone() | ~Authenticated(), "AnyOf(Anyone(), Not(Authenticated()))"),
        (Anyone() & Authenticated(), "AllOf(Anyone(), Authenticated())"),
    ],
    ids=[
        "anyone",
        "authenticated",
        "principal",
        "trust-domain",
        "namespace",
        "proven-by",
        "any-of",
        "all-of",
    ],
)
def test_describe(matcher, text):
    assert matcher.describe() == text
    assert repr(matcher) == text


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Principal(), "Principal() needs at least one pattern"),
        (lambda: Principal(""), "principal pattern '' must be a non-empty string"),
        (lambda: Principal(None), "principal pattern None must be a non-empty string"),
        (
            lambda: Principal("spiffe://td/a*b"),
            "principal pattern 'spiffe://td/a*b': '*' is allowed only as the whole pattern, "
            "its first character or its last character",
        ),
        (
            lambda: Principal("**"),
            "principal pattern '**': '*' is allowed only as the whole pattern, "
            "its first character or its last character",
        ),
        (
            lambda: Principal("*/ns/*"),
            "principal pattern '*/ns/*': '*' is allowed only as the whole pattern, "
            "its first character or its last character",
        ),
        (lambda: Principal("spiffe://TD/x"), f"principal 'spiffe://TD/x': {TD_MSG}"),
        (
            lambda: Principal("td/x/"),
            "principal 'td/x/': SPIFFE ID path cannot have a trailing slash",
        ),
        (
            lambda: Principal("https://td/x"),
            "principal 'https://td/x' is not a SPIFFE ID (spiffe://...)",
        ),
        (
            lambda: ServiceAccount("a/b", namespace="shop", trust_domain="td"),
            "ServiceAccount name 'a/b' is not a valid segment",
        ),
        (
            lambda: ServiceAccount("sa", namespace="", trust_domain="td"),
            "ServiceAccount namespace '' is not a valid segment",
        ),
        (
            lambda: ServiceAccount("sa", namespace=None, trust_domain="td"),
            "ServiceAccount namespace None is not a valid segment",
        ),
        (
            lambda: ServiceAccount("sa", namespace="shop", trust_domain="TD"),
            f"ServiceAccount: {TD_MSG}",
        ),
        (
            lambda: ServiceAccount("..", namespace="shop", trust_domain="td"),
            "ServiceAccount: SPIFFE ID path cannot contain dot segments",
        ),
        (lambda: TrustDomain(), "TrustDomain() needs at least one name"),
        (lambda: TrustDomain(""), "trust domain '': SPIFFE ID trust domain is missing"),
        (lambda: TrustDomain("Cluster.local"), f"trust domain 'Cluster.local': {TD_MSG}"),
        (
            lambda: TrustDomain("td:443"),
            "trust domain 'td:443': SPIFFE ID trust domain cannot contain a port",
        ),
        (
            lambda: TrustDomain("spiffe://td"),
            "trust domain 'spiffe://td': SPIFFE ID trust domain cannot contain a port",
        ),
        (lambda: TrustDomain(123), "trust domain 123: invalid SPIFFE ID: not a string"),
        (lambda: Namespace(trust_domain="td"), "Namespace() needs at least one name"),
        (
            lambda: Namespace("a/b", trust_domain="td"),
            "namespace 'a/b' is not a valid path segment",
        ),
        (lambda: Namespace("", trust_domain="td"), "namespace '' is not a valid path segment"),
        (lambda: Namespace(1, trust_domain="td"), "namespace 1 is not a valid path segment"),
        (lambda: Namespace("shop", trust_domain="TD"), f"trust domain 'TD': {TD_MSG}"),
        (
            lambda: Namespace("shop", trust_domain=""),
            "trust domain '': SPIFFE ID trust domain is missing",
        ),
        (
            lambda: Namespace("shop", trust_domain=5),
            "trust domain 5: invalid SPIFFE ID: not a string",
        ),
        (lambda: ProvenBy(), "ProvenBy() needs one or more Proof values"),
        (lambda: ProvenBy("mtls"), "ProvenBy() needs one or more Proof values"),
        (lambda: ProvenBy(Proof.MTLS, "token"), "ProvenBy() needs one or more Proof values"),
        (lambda: AnyOf(), "AnyOf() needs at least one matcher"),
        (lambda: AllOf(), "AllOf() needs at least one matcher"),
        (lambda: AnyOf(Anyone(), "x"), "AnyOf(): 'x' is not a matcher"),
        (lambda: AllOf(lambda p: True), "AllOf(): "),
        (lambda: Not("x"), "Not(): 'x' is not a matcher"),
        (lambda: Not(None), "Not(): None is not a matcher"),
    ],
    ids=[
        "principal-none-given",
        "principal-empty",
        "principal-not-a-string",
        "principal-inner-star",
        "principal-double-star",
        "principal-two-stars",
        "principal-invalid-id",
        "principal-istio-style-invalid",
        "principal-other-scheme",
        "service-account-slash",
        "service-account-empty-namespace",
        "service-account-none-namespace",
        "service-account-bad-trust-domain",
        "service-account-dot-dot",
        "trust-domain-none-given",
        "trust-domain-empty",
        "trust-domain-upper-case",
        "trust-domain-port",
        "trust-domain-with-scheme",
        "trust-domain-not-a-string",
        "namespace-none-given",
        "namespace-slash",
        "namespace-empty",
        "namespace-not-a-string",
        "namespace-bad-trust-domain",
        "namespace-empty-trust-domain",
        "namespace-trust-domain-not-a-string",
        "proven-by-none-given",
        "proven-by-string",
        "proven-by-mixed",
        "any-of-empty",
        "all-of-empty",
        "any-of-non-matcher",
        "all-of-plain-function",
        "not-non-matcher",
        "not-none",
    ],
)
def test_matcher_configuration_errors(build, message):
    with pytest.raises(ConfigurationError) as info:
        build()
    assert type(info.value) is ConfigurationError
    if message.endswith(": "):
        # The repr of a function holds an address; check the fixed parts.
        assert str(info.value).startswith(message)
        assert str(info.value).endswith(" is not a matcher")
    else:
        assert str(info.value) == message


def test_who_is_the_former_name_of_matcher():
    assert Who is Matcher
    assert isinstance(Anyone(), Who)


# --------------------------------------------------------------------------
# Index keys
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "keys"),
    [
        (
            "spiffe://cluster.local/ns/shop/sa/checkout",
            (
                ("id", "spiffe://cluster.local/ns/shop/sa/checkout"),
                ("td", "cluster.local"),
                ("ns", "cluster.local/shop"),
            ),
        ),
        (
            "spiffe://td/ns/a/sa/b/c",
            (("id", "spiffe://td/ns/a/sa/b/c"), ("td", "td")),
        ),
        ("spiffe://td", (("id", "spiffe://td"), ("td", "td"))),
    ],
    ids=["kubernetes", "not-kubernetes", "trust-domain-only"],
)
def test_index_keys_of(value, keys):
    assert index_keys_of(SpiffeId.parse(value)) == keys


INDEXED = [
    Principal(CHECKOUT),
    Principal(CHECKOUT, ADMIN),
    ServiceAccount("checkout", namespace="shop", trust_domain="cluster.local"),
    TrustDomain("cluster.local"),
    TrustDomain("other.local", "example.org"),
    Namespace("shop", trust_domain="cluster.local"),
    Namespace("shop", "ops", trust_domain="cluster.local"),
    Namespace("service", trust_domain="example.org"),
    AnyOf(Principal(ADMIN), Namespace("shop", trust_domain="cluster.local")),
    Principal(ADMIN) | TrustDomain("other.local"),
]


@pytest.mark.parametrize("matcher", INDEXED, ids=repr)
@pytest.mark.parametrize("uri", [CHECKOUT, LEGACY, ADMIN, OTHER_CLUSTER_SHOP, DEEP, NON_K8S])
def test_an_indexed_matcher_matches_exactly_the_peers_having_one_of_its_keys(matcher, uri):
    keys = matcher.index_keys()
    assert keys is not None
    has_key = not keys.isdisjoint(index_keys_of(SpiffeId.parse(uri)))
    assert matcher(peer(uri)) is has_key


@pytest.mark.parametrize(
    "matcher",
    [
        Anyone(),
        Authenticated(),
        Principal("spiffe://cluster.local/ns/shop/*"),
        Principal(CHECKOUT, "*/sa/admin"),
        ProvenBy(Proof.MTLS),
        Not(Principal(ADMIN)),
        AllOf(TrustDomain("cluster.local"), Namespace("shop", trust_domain="cluster.local")),
        AnyOf(Principal(ADMIN), Authenticated()),
    ],
    ids=repr,
)
def test_matchers_not_expressible_by_keys_have_none(matcher):
    assert matcher.index_keys() is None
