"""Methods, raw request targets and path normalisation."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from peer_middleware.errors import BadRequest
from peer_middleware.paths import (
    MAX_PATH_LENGTH,
    check_method,
    check_raw_target,
    normalise_path,
    quote_path,
)


def refused(exc_info: pytest.ExceptionInfo[BadRequest]) -> str:
    assert type(exc_info.value) is BadRequest
    assert exc_info.value.status == 400
    assert str(exc_info.value) == exc_info.value.reason
    return exc_info.value.reason


# --------------------------------------------------------------------------
# check_method
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "GET",
        "POST",
        "DELETE",
        "PROPFIND",
        "M-SEARCH",
        "get",
        "Get",
        "X_CUSTOM",
        "!#$%&'*+-.^_`|~",
        "A" * 32,
    ],
    ids=[
        "get",
        "post",
        "delete",
        "webdav",
        "dash",
        "lower-case-kept",
        "mixed-case-kept",
        "underscore",
        "every-token-symbol",
        "32-characters",
    ],
)
def test_check_method_accepts_tokens_as_sent(method):
    assert check_method(method) is method


@pytest.mark.parametrize(
    ("method", "reason"),
    [
        ("", "method '' is not an HTTP token"),
        ("GE T", "method 'GE T' is not an HTTP token"),
        ("GET ", "method 'GET ' is not an HTTP token"),
        ("GET\n", "method 'GET\\n' is not an HTTP token"),
        ("GET/", "method 'GET/' is not an HTTP token"),
        ("G(T", "method 'G(T' is not an HTTP token"),
        ("G\u00c9T", "method 'G\u00c9T' is not an HTTP token"),
        ("A" * 33, f"method {'A' * 32!r} is not an HTTP token"),
    ],
    ids=[
        "empty",
        "inner-space",
        "trailing-space",
        "newline",
        "slash",
        "parenthesis",
        "non-ascii",
        "33-characters-truncated-in-reason",
    ],
)
def test_check_method_refuses(method, reason):
    with pytest.raises(BadRequest) as info:
        check_method(method)
    assert refused(info) == reason


# --------------------------------------------------------------------------
# check_raw_target
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "/",
        "/a/b",
        "/a%20b",
        "/caf%C3%A9",
        "/caf%c3%a9",
        "/%E2%82%AC",
        "/a%2eb",
        "/a%252Fb",
        "/a?x=%2F",
        "/a?x=%zz&y=%",
        "/a?x=%00",
        "/a?q=%C0%AF",
        "http://host/a/b",
        "/a/../b",
        "/a;b=c",
        "/" + "a" * (MAX_PATH_LENGTH - 1),
    ],
    ids=[
        "root",
        "plain",
        "encoded-space",
        "utf8-upper-hex",
        "utf8-lower-hex",
        "three-byte-utf8",
        "encoded-dot",
        "double-encoded-slash",
        "encoded-slash-in-query",
        "malformed-escape-in-query",
        "nul-in-query",
        "non-utf8-in-query",
        "absolute-form",
        "literal-dot-dot",
        "semicolon",
        "exactly-max-length",
    ],
)
def test_check_raw_target_accepts(raw):
    assert check_raw_target(raw) is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("/a#b", "request target contains a fragment"),
        ("/a?x#b", "request target contains a fragment"),
        ("/a%", "request path contains a malformed percent escape"),
        ("/a%2", "request path contains a malformed percent escape"),
        ("/a%2/b", "request path contains a malformed percent escape"),
        ("/a%zz", "request path contains a malformed percent escape"),
        ("/a%%41", "request path contains a malformed percent escape"),
        ("/a%2Fb", "request path contains an encoded byte 0x2F"),
        ("/a%2fb", "request path contains an encoded byte 0x2F"),
        ("/a%5Cb", "request path contains an encoded byte 0x5C"),
        ("/a%5cb", "request path contains an encoded byte 0x5C"),
        ("/a%00b", "request path contains an encoded byte 0x00"),
        ("/a%0Ab", "request path contains an encoded byte 0x0A"),
        ("/a%0ab", "request path contains an encoded byte 0x0A"),
        ("/a%0D%0A", "request path contains an encoded byte 0x0D"),
        ("/a%1Fb", "request path contains an encoded byte 0x1F"),
        ("/a%1fb", "request path contains an encoded byte 0x1F"),
        ("/a%7Fb", "request path contains an encoded byte 0x7F"),
        ("/a%7fb", "request path contains an encoded byte 0x7F"),
        ("/a%09b", "request path contains an encoded byte 0x09"),
        ("http://host/a%2Fb", "request path contains an encoded byte 0x2F"),
        ("/a%2Fb?x=1", "request path contains an encoded byte 0x2F"),
        ("/%C0%AF", "request path percent-escapes are not UTF-8"),
        ("/%c0%af", "request path percent-escapes are not UTF-8"),
        ("/%FF", "request path percent-escapes are not UTF-8"),
        ("/%C3", "request path percent-escapes are not UTF-8"),
        ("/%80", "request path percent-escapes are not UTF-8"),
        ("/%ED%A0%80", "request path percent-escapes are not UTF-8"),
        ("/%C3a%A9", "request path percent-escapes are not UTF-8"),
        ("/" + "a" * MAX_PATH_LENGTH, "request target longer than 8192 characters"),
    ],
    ids=[
        "fragment",
        "fragment-after-query",
        "lone-percent",
        "one-hex-digit",
        "one-hex-digit-then-slash",
        "non-hex",
        "double-percent",
        "slash-upper",
        "slash-lower",
        "backslash-upper",
        "backslash-lower",
        "nul",
        "newline-upper",
        "newline-lower",
        "carriage-return",
        "unit-separator-upper",
        "unit-separator-lower",
        "delete-upper",
        "delete-lower",
        "tab",
        "absolute-form",
        "before-query",
        "overlong-slash",
        "overlong-slash-lower",
        "ff",
        "truncated-sequence",
        "lone-continuation-byte",
        "surrogate",
        "character-split-by-literal-text",
        "too-long",
    ],
)
def test_check_raw_target_refuses(raw, reason):
    with pytest.raises(BadRequest) as info:
        check_raw_target(raw)
    assert refused(info) == reason


# --------------------------------------------------------------------------
# normalise_path
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("//", "/"),
        ("///", "/"),
        ("/a", "/a"),
        ("/a/", "/a/"),
        ("//a", "/a"),
        ("/a//b", "/a/b"),
        ("/a///b//", "/a/b/"),
        ("/.", "/"),
        ("/..", "/"),
        ("/../a", "/a"),
        ("/../../a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
        ("/a/b/..", "/a/"),
        ("/a/b/../c", "/a/c"),
        ("/a/b/../../../c", "/c"),
        ("/public/../admin", "/admin"),
        ("/a;x=1", "/a"),
        ("/a;x=1/b", "/a/b"),
        ("/a/b;", "/a/b"),
        ("/a/;x/b", "/a/b"),
        ("/a/;x", "/a/"),
        ("/a/b/..;x/c", "/a/c"),
        ("/a/.;x/b", "/a/b"),
        ("/admin/..;/public", "/public"),
        ("/a/...", "/a/..."),
        ("/a/.b", "/a/.b"),
        ("/a/b.", "/a/b."),
        ("/%2e%2e/a", "/%2e%2e/a"),
        ("/a%2Fb", "/a%2Fb"),
        ("/caf\u00e9/x", "/caf\u00e9/x"),
        ("/a b", "/a b"),
        ("/a:b@c", "/a:b@c"),
    ],
    ids=[
        "empty",
        "root",
        "double-slash",
        "triple-slash",
        "one-segment",
        "trailing-slash-kept",
        "leading-double-slash",
        "inner-double-slash",
        "many-slashes",
        "dot-at-root",
        "dot-dot-at-root",
        "above-root",
        "far-above-root",
        "inner-dot",
        "trailing-dot-keeps-slash",
        "trailing-dot-dot-to-root",
        "trailing-dot-dot-keeps-slash",
        "inner-dot-dot",
        "dot-dots-beyond-root",
        "public-dot-dot-admin",
        "params",
        "params-inner",
        "empty-params",
        "params-only-segment",
        "params-only-last-segment",
        "dot-dot-with-params",
        "dot-with-params",
        "tomcat-style",
        "three-dots-is-a-name",
        "leading-dot-name",
        "trailing-dot-name",
        "encoded-dots-stay-literal",
        "encoded-slash-stays-literal",
        "non-ascii",
        "space",
        "colon-and-at",
    ],
)
def test_normalise_path(path, expected):
    assert normalise_path(path) == expected


@pytest.mark.parametrize(
    "path",
    ["/", "/a", "/a/b/", "/a.b/c-d_e~f", "/a:b@c/!$&'()*+,=", "/payments/123"],
    ids=["root", "one", "trailing-slash", "punctuation", "sub-delims", "typical"],
)
def test_normalise_path_fast_path_returns_same_object(path):
    assert normalise_path(path) is path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("a/b", "request path does not start with '/'"),
        ("*", "request path does not start with '/'"),
        ("http://h/a", "request path does not start with '/'"),
        ("/a\\b", "request path contains a forbidden character '\\\\'"),
        ("/a\\..\\admin", "request path contains a forbidden character '\\\\'"),
        ("/a\x00b", "request path contains a forbidden character '\\x00'"),
        ("/a\nb", "request path contains a forbidden character '\\n'"),
        ("/a\tb", "request path contains a forbidden character '\\t'"),
        ("/a\x7fb", "request path contains a forbidden character '\\x7f'"),
        ("/" + "a" * MAX_PATH_LENGTH, "request path longer than 8192 characters"),
        ("/a" * (MAX_PATH_LENGTH // 2 + 1), "request path longer than 8192 characters"),
        ("/./" + "a" * MAX_PATH_LENGTH, "request path longer than 8192 characters"),
    ],
    ids=[
        "relative",
        "asterisk-form",
        "absolute-form",
        "backslash",
        "backslash-traversal",
        "nul",
        "newline",
        "tab",
        "delete",
        "too-long-one-segment",
        "too-long-many-segments",
        "too-long-needs-work",
    ],
)
def test_normalise_path_refuses(path, reason):
    with pytest.raises(BadRequest) as info:
        normalise_path(path)
    assert refused(info) == reason


def test_normalise_path_accepts_exactly_max_length():
    path = "/" + "a" * (MAX_PATH_LENGTH - 1)
    assert normalise_path(path) == path


TRICKY = [
    "",
    "/",
    "//",
    "/a/./b/../c//d/",
    "/a/;x",
    "/;x",
    "/..;x",
    "/a/..;x/",
    "/a;b/c;d/",
    "/./",
    "/.../..",
    "/a/b/c/../../..",
    "/a/%2e%2e/b",
    "/.a/..a/a..",
    "/a//./../b;c//",
    "/caf\u00e9/../\u00e9",
]


@pytest.mark.parametrize("path", TRICKY, ids=[repr(p) for p in TRICKY])
def test_normalise_path_is_idempotent(path):
    once = normalise_path(path)
    assert normalise_path(once) == once
    assert once.startswith("/")
    assert "//" not in once
    assert ";" not in once
    assert all(segment not in (".", "..") for segment in once.split("/"))


# --------------------------------------------------------------------------
# quote_path
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "quoted"),
    [
        ("/", "/"),
        ("/a/b/", "/a/b/"),
        ("/a b", "/a%20b"),
        ("/a%2Fb", "/a%252Fb"),
        ("/caf\u00e9", "/caf%C3%A9"),
        ("/a?b#c", "/a%3Fb%23c"),
        ("/a:b@c!$&'()*+,;=~", "/a:b@c!$&'()*+,;=~"),
        ('/a"b<c>', "/a%22b%3Cc%3E"),
    ],
    ids=[
        "root",
        "plain",
        "space",
        "literal-percent",
        "non-ascii",
        "query-and-fragment-characters",
        "sub-delims-kept",
        "quote-and-angles",
    ],
)
def test_quote_path(path, quoted):
    assert quote_path(path) == quoted
    assert unquote(quoted) == path


@pytest.mark.parametrize("path", TRICKY, ids=[repr(p) for p in TRICKY])
def test_quote_path_round_trip_of_normalised_paths(path):
    canonical = normalise_path(path)
    quoted = quote_path(canonical)
    assert unquote(quoted) == canonical
    check_raw_target(quoted)
    assert normalise_path(unquote(quoted)) == canonical
