"""SPIFFE IDs against the SPIFFE-ID specification (standards/SPIFFE-ID.md)."""

from __future__ import annotations

import pytest

from peer_middleware.errors import (
    InvalidSpiffeIdError,
    SpiffeIdDotSegment,
    SpiffeIdEmpty,
    SpiffeIdEmptySegment,
    SpiffeIdFragment,
    SpiffeIdInvalidPathCharacter,
    SpiffeIdInvalidScheme,
    SpiffeIdInvalidTrustDomainCharacter,
    SpiffeIdMissingTrustDomain,
    SpiffeIdPort,
    SpiffeIdQuery,
    SpiffeIdTooLong,
    SpiffeIdTrailingSlash,
    SpiffeIdUserInfo,
)
from peer_middleware.spiffe import SpiffeId, validate_trust_domain

# "spiffe://" + 255-byte trust domain, then a path that brings the ID to 2048 bytes.
MAX_TD = "a" * 251 + ".com"
LONGEST_PATH = "/" + "p" * (2048 - len("spiffe://") - len(MAX_TD) - 1)
LONGEST_ID = "spiffe://" + MAX_TD + LONGEST_PATH
ALL_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"
ALL_TD_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.-_"


def test_limits_are_exactly_at_the_boundary():
    assert len(MAX_TD) == 255
    assert len(LONGEST_ID) == 2048


@pytest.mark.parametrize(
    ("value", "trust_domain", "path"),
    [
        ("spiffe://example.org", "example.org", ""),
        ("spiffe://example.org/service", "example.org", "/service"),
        ("spiffe://example.org/a/b/c", "example.org", "/a/b/c"),
        ("spiffe://cluster.local/ns/shop/sa/checkout", "cluster.local", "/ns/shop/sa/checkout"),
        (f"spiffe://{ALL_TD_CHARS}/{ALL_PATH_CHARS}", ALL_TD_CHARS, f"/{ALL_PATH_CHARS}"),
        ("spiffe://td/.hidden/a..b/...", "td", "/.hidden/a..b/..."),
        ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
        ("spiffe://a", "a", ""),
        (f"spiffe://{MAX_TD}", MAX_TD, ""),
        (LONGEST_ID, MAX_TD, LONGEST_PATH),
    ],
    ids=[
        "trust-domain-only",
        "one-segment",
        "three-segments",
        "kubernetes",
        "every-allowed-character",
        "dots-inside-segments",
        "ip-like-trust-domain",
        "one-letter-trust-domain",
        "trust-domain-255-bytes",
        "id-2048-bytes",
    ],
)
def test_valid_ids(value, trust_domain, path):
    sid = SpiffeId.parse(value)
    assert sid.trust_domain == trust_domain
    assert sid.path == path
    assert sid.uri == value
    assert str(sid) == value
    assert sid.is_trust_domain_id is (path == "")


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("", SpiffeIdEmpty, "SPIFFE ID cannot be empty"),
        (
            "SPIFFE://example.org/a",
            SpiffeIdInvalidScheme,
            "SPIFFE ID scheme must be 'spiffe://' in lower case",
        ),
        (
            "https://example.org/a",
            SpiffeIdInvalidScheme,
            "SPIFFE ID scheme must be 'spiffe://' in lower case",
        ),
        (
            "spiffe:/example.org/a",
            SpiffeIdInvalidScheme,
            "SPIFFE ID scheme must be 'spiffe://' in lower case",
        ),
        (
            "example.org/a",
            SpiffeIdInvalidScheme,
            "SPIFFE ID scheme must be 'spiffe://' in lower case",
        ),
        (
            " spiffe://example.org",
            SpiffeIdInvalidScheme,
            "SPIFFE ID scheme must be 'spiffe://' in lower case",
        ),
        ("spiffe://", SpiffeIdMissingTrustDomain, "SPIFFE ID trust domain is missing"),
        ("spiffe:///path", SpiffeIdMissingTrustDomain, "SPIFFE ID trust domain is missing"),
        (
            "spiffe://Example.org/a",
            SpiffeIdInvalidTrustDomainCharacter,
            "SPIFFE ID trust domain characters are limited to lowercase letters, numbers, "
            "dots, dashes, and underscores",
        ),
        (
            "spiffe://exa%6Dple.org",
            SpiffeIdInvalidTrustDomainCharacter,
            "SPIFFE ID trust domain characters are limited to lowercase letters, numbers, "
            "dots, dashes, and underscores",
        ),
        (
            "spiffe://exa$mple.org/a",
            SpiffeIdInvalidTrustDomainCharacter,
            "SPIFFE ID trust domain characters are limited to lowercase letters, numbers, "
            "dots, dashes, and underscores",
        ),
        (
            "spiffe://exämple.org",
            SpiffeIdInvalidTrustDomainCharacter,
            "SPIFFE ID trust domain characters are limited to lowercase letters, numbers, "
            "dots, dashes, and underscores",
        ),
        (
            "spiffe://example.org:8080/a",
            SpiffeIdPort,
            "SPIFFE ID trust domain cannot contain a port",
        ),
        ("spiffe://example.org:/a", SpiffeIdPort, "SPIFFE ID trust domain cannot contain a port"),
        ("spiffe://[::1]/a", SpiffeIdPort, "SPIFFE ID trust domain cannot contain a port"),
        ("spiffe://user@example.org/a", SpiffeIdUserInfo, "SPIFFE ID cannot contain user info"),
        (
            "spiffe://user:pass@example.org/a",
            SpiffeIdUserInfo,
            "SPIFFE ID cannot contain user info",
        ),
        ("spiffe://example.org/a?x=1", SpiffeIdQuery, "SPIFFE ID cannot contain a query"),
        ("spiffe://example.org?x=1", SpiffeIdQuery, "SPIFFE ID cannot contain a query"),
        ("spiffe://example.org/a#frag", SpiffeIdFragment, "SPIFFE ID cannot contain a fragment"),
        ("spiffe://example.org/a?q#frag", SpiffeIdFragment, "SPIFFE ID cannot contain a fragment"),
        (
            "spiffe://example.org//a",
            SpiffeIdEmptySegment,
            "SPIFFE ID path cannot contain empty segments",
        ),
        (
            "spiffe://example.org/a//b",
            SpiffeIdEmptySegment,
            "SPIFFE ID path cannot contain empty segments",
        ),
        (
            "spiffe://example.org/",
            SpiffeIdTrailingSlash,
            "SPIFFE ID path cannot have a trailing slash",
        ),
        (
            "spiffe://example.org/a/",
            SpiffeIdTrailingSlash,
            "SPIFFE ID path cannot have a trailing slash",
        ),
        (
            "spiffe://example.org/.",
            SpiffeIdDotSegment,
            "SPIFFE ID path cannot contain dot segments",
        ),
        (
            "spiffe://example.org/a/../b",
            SpiffeIdDotSegment,
            "SPIFFE ID path cannot contain dot segments",
        ),
        (
            "spiffe://example.org/a/./b",
            SpiffeIdDotSegment,
            "SPIFFE ID path cannot contain dot segments",
        ),
        (
            "spiffe://example.org/a%2Fb",
            SpiffeIdInvalidPathCharacter,
            "SPIFFE ID path segment characters are limited to letters, numbers, dots, "
            "dashes, and underscores",
        ),
        (
            "spiffe://example.org/a%41",
            SpiffeIdInvalidPathCharacter,
            "SPIFFE ID path segment characters are limited to letters, numbers, dots, "
            "dashes, and underscores",
        ),
        (
            "spiffe://example.org/a b",
            SpiffeIdInvalidPathCharacter,
            "SPIFFE ID path segment characters are limited to letters, numbers, dots, "
            "dashes, and underscores",
        ),
        (
            "spiffe://example.org/a:b",
            SpiffeIdInvalidPathCharacter,
            "SPIFFE ID path segment characters are limited to letters, numbers, dots, "
            "dashes, and underscores",
        ),
        (
            "spiffe://example.org/caf\u00e9",
            SpiffeIdInvalidPathCharacter,
            "SPIFFE ID path segment characters are limited to letters, numbers, dots, "
            "dashes, and underscores",
        ),
        (
            "spiffe://example.org/a\nb",
            SpiffeIdInvalidPathCharacter,
            "SPIFFE ID path segment characters are limited to letters, numbers, dots, "
            "dashes, and underscores",
        ),
        (LONGEST_ID + "p", SpiffeIdTooLong, "SPIFFE ID is too long: longer than 2048 bytes"),
        (
            LONGEST_ID[:-1] + "\u00e9",
            SpiffeIdTooLong,
            "SPIFFE ID is too long: longer than 2048 bytes",
        ),
    ],
    ids=[
        "empty",
        "upper-case-scheme",
        "https-scheme",
        "one-slash-scheme",
        "missing-scheme",
        "leading-space",
        "scheme-only",
        "empty-trust-domain-with-path",
        "upper-case-trust-domain",
        "percent-encoded-trust-domain",
        "dollar-in-trust-domain",
        "non-ascii-trust-domain",
        "port",
        "empty-port",
        "ip-literal-colons-read-as-port",
        "user-info",
        "user-info-with-password",
        "query",
        "query-without-path",
        "fragment",
        "fragment-after-query",
        "empty-first-segment",
        "empty-middle-segment",
        "root-slash-only",
        "trailing-slash",
        "dot-segment",
        "dot-dot-segment",
        "dot-segment-in-middle",
        "percent-encoded-slash",
        "percent-encoded-letter",
        "space",
        "colon",
        "non-ascii-path",
        "newline",
        "2049-bytes",
        "2049-bytes-counted-in-utf8",
    ],
)
def test_invalid_ids(value, error, message):
    with pytest.raises(InvalidSpiffeIdError) as info:
        SpiffeId.parse(value)
    assert type(info.value) is error
    assert str(info.value) == message
    assert info.value.value == value
    assert info.value.rule == error.rule


def test_trust_domain_over_255_bytes_is_too_long():
    value = "spiffe://" + MAX_TD + "x/a"
    with pytest.raises(InvalidSpiffeIdError) as info:
        SpiffeId.parse(value)
    assert type(info.value) is SpiffeIdTooLong
    assert info.value.value == value
    assert info.value.detail == "trust domain is longer than 255 bytes"


@pytest.mark.parametrize(
    "value",
    [None, b"spiffe://example.org/a", 42, ["spiffe://example.org/a"]],
    ids=["none", "bytes", "int", "list"],
)
def test_non_string_input(value):
    with pytest.raises(InvalidSpiffeIdError) as info:
        SpiffeId.parse(value)
    assert type(info.value) is InvalidSpiffeIdError
    assert str(info.value) == "invalid SPIFFE ID: not a string"
    assert info.value.value == repr(value)


@pytest.mark.parametrize(
    ("value", "namespace", "service_account"),
    [
        ("spiffe://cluster.local/ns/shop/sa/checkout", "shop", "checkout"),
        ("spiffe://td/ns/a/sa/b/c", None, None),
        ("spiffe://td/ns/a", None, None),
        ("spiffe://td/ns/a/sa", None, None),
        ("spiffe://td/x/ns/a/sa/b", None, None),
        ("spiffe://td/ns/a/SA/b", None, None),
        ("spiffe://td/NS/a/sa/b", None, None),
        ("spiffe://td", None, None),
    ],
    ids=[
        "exact-kubernetes-form",
        "extra-segment",
        "namespace-only",
        "no-service-account-name",
        "prefix-segment",
        "upper-case-sa",
        "upper-case-ns",
        "trust-domain-only",
    ],
)
def test_namespace_and_service_account(value, namespace, service_account):
    sid = SpiffeId.parse(value)
    assert sid.namespace == namespace
    assert sid.service_account == service_account


def test_equality_and_hash():
    a = SpiffeId.parse("spiffe://td/a/b")
    b = SpiffeId.from_parts("td", "/a/b")
    other = SpiffeId.parse("spiffe://td/a/c")
    other_td = SpiffeId.parse("spiffe://te/a/b")
    assert a == b
    assert hash(a) == hash(b)
    assert a != other
    assert a != other_td
    assert a != "spiffe://td/a/b"
    assert len({a, b, other, other_td}) == 3
    assert {a: 1}[b] == 1


def test_ids_are_immutable():
    sid = SpiffeId.parse("spiffe://td/a")
    with pytest.raises(AttributeError):
        sid.path = "/b"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("trust_domain", "path", "expected"),
    [
        ("td", "", "spiffe://td"),
        ("td", "/a/b", "spiffe://td/a/b"),
        ("td", "a/b", "spiffe://td/a/b"),
    ],
    ids=["no-path", "absolute-path", "relative-path-gets-slash"],
)
def test_from_parts(trust_domain, path, expected):
    assert SpiffeId.from_parts(trust_domain, path).uri == expected


@pytest.mark.parametrize(
    ("trust_domain", "path", "error"),
    [
        ("TD", "/a", SpiffeIdInvalidTrustDomainCharacter),
        ("td", "/a/", SpiffeIdTrailingSlash),
        ("td", "/a/../b", SpiffeIdDotSegment),
        ("td", "/a?b", SpiffeIdQuery),
        ("", "/a", SpiffeIdMissingTrustDomain),
        ("td:1", "", SpiffeIdPort),
    ],
    ids=["upper-case", "trailing-slash", "dot-dot", "query", "no-trust-domain", "port"],
)
def test_from_parts_validates(trust_domain, path, error):
    with pytest.raises(InvalidSpiffeIdError) as info:
        SpiffeId.from_parts(trust_domain, path)
    assert type(info.value) is error


def test_for_service_account():
    sid = SpiffeId.for_service_account("cluster.local", "shop", "checkout")
    assert sid.uri == "spiffe://cluster.local/ns/shop/sa/checkout"
    assert (sid.namespace, sid.service_account) == ("shop", "checkout")
    assert sid == SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/checkout")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("cluster.local", "a b", "x"), SpiffeIdInvalidPathCharacter),
        (("cluster.local", "shop", ""), SpiffeIdTrailingSlash),
        (("cluster.local", "..", "x"), SpiffeIdDotSegment),
        (("Cluster.local", "shop", "x"), SpiffeIdInvalidTrustDomainCharacter),
    ],
    ids=["space-in-namespace", "empty-name", "dot-dot-namespace", "upper-case-trust-domain"],
)
def test_for_service_account_validates(args, error):
    with pytest.raises(InvalidSpiffeIdError) as info:
        SpiffeId.for_service_account(*args)
    assert type(info.value) is error


@pytest.mark.parametrize(
    ("namespace", "name"),
    [("a/b", "x"), ("shop", "x/y"), ("a/sa/b", "c")],
    ids=["slash-in-namespace", "slash-in-name", "namespace-smuggles-sa"],
)
def test_for_service_account_refuses_multi_segment_parts(namespace, name):
    with pytest.raises(SpiffeIdInvalidPathCharacter) as info:
        SpiffeId.for_service_account("cluster.local", namespace, name)
    assert str(info.value) == (
        "SPIFFE ID path segment characters are limited to letters, numbers, dots, "
        "dashes, and underscores: namespace and name must be one segment"
    )


@pytest.mark.parametrize(
    ("value", "trust_domain", "expected"),
    [
        ("spiffe://td/a", "td", True),
        ("spiffe://td/a", "td2", False),
        ("spiffe://td2/a", "td", False),
    ],
    ids=["same", "other", "prefix-is-not-membership"],
)
def test_member_of(value, trust_domain, expected):
    assert SpiffeId.parse(value).member_of(trust_domain) is expected


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("", SpiffeIdMissingTrustDomain, "SPIFFE ID trust domain is missing"),
        ("a@b", SpiffeIdUserInfo, "SPIFFE ID cannot contain user info"),
        ("a:1", SpiffeIdPort, "SPIFFE ID trust domain cannot contain a port"),
        (
            "A",
            SpiffeIdInvalidTrustDomainCharacter,
            "SPIFFE ID trust domain characters are limited to lowercase letters, numbers, "
            "dots, dashes, and underscores",
        ),
        (
            "a/b",
            SpiffeIdInvalidTrustDomainCharacter,
            "SPIFFE ID trust domain characters are limited to lowercase letters, numbers, "
            "dots, dashes, and underscores",
        ),
        (None, InvalidSpiffeIdError, "invalid SPIFFE ID: not a string"),
        (42, InvalidSpiffeIdError, "invalid SPIFFE ID: not a string"),
        (b"td", InvalidSpiffeIdError, "invalid SPIFFE ID: not a string"),
    ],
    ids=["empty", "user-info", "port", "upper-case", "slash", "none", "int", "bytes"],
)
def test_validate_trust_domain_refuses(name, error, message):
    with pytest.raises(InvalidSpiffeIdError) as info:
        validate_trust_domain(name)
    assert type(info.value) is error
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("name", "detail"),
    [(MAX_TD + "x", "trust domain is longer than 255 bytes")],
    ids=["256-bytes"],
)
def test_validate_trust_domain_length(name, detail):
    assert validate_trust_domain(MAX_TD) == MAX_TD
    with pytest.raises(SpiffeIdTooLong) as info:
        validate_trust_domain(name)
    assert info.value.detail == detail
