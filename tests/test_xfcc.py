"""Envoy's x-forwarded-client-cert: the grammar, and the authenticator built on it."""

from __future__ import annotations

import pytest

from peer_middleware.authenticators import XfccAuthenticator
from peer_middleware.errors import AuthenticationFailed, ConfigurationError
from peer_middleware.peer import Peer, Proof
from peer_middleware.proxies import TrustedProxies
from peer_middleware.request import RequestView
from peer_middleware.spiffe import SpiffeId
from peer_middleware.xfcc import (
    MAX_XFCC_ELEMENTS,
    MAX_XFCC_LENGTH,
    XfccElement,
    XfccSyntaxError,
    format_xfcc,
    parse_xfcc,
)

HASH1 = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"
HASH2 = "9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e"
SUBJECT = "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client"

# --------------------------------------------------------------------------
# parse_xfcc: valid headers
# --------------------------------------------------------------------------

ENVOY_EXAMPLE_1 = (
    f'By=http://frontend.lyft.com;Hash={HASH1};Subject="{SUBJECT}";URI=http://testclient.lyft.com'
)
ENVOY_EXAMPLE_2 = (
    f"By=http://frontend.lyft.com;Hash={HASH1};URI=http://testclient.lyft.com,"
    f"By=http://backend.lyft.com;Hash={HASH2};URI=http://frontend.lyft.com"
)
ENVOY_EXAMPLE_3 = (
    f'By=http://frontend.lyft.com;Hash={HASH1};Subject="{SUBJECT}";'
    "URI=http://testclient.lyft.com;DNS=lyft.com;DNS=www.lyft.com"
)
CERT = "-----BEGIN%20CERTIFICATE-----%0AMIIB%2Fabc%3D%0A-----END%20CERTIFICATE-----%0A"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            ENVOY_EXAMPLE_1,
            (
                XfccElement(
                    by=("http://frontend.lyft.com",),
                    hash=HASH1,
                    subject=SUBJECT,
                    uri=("http://testclient.lyft.com",),
                ),
            ),
        ),
        (
            ENVOY_EXAMPLE_2,
            (
                XfccElement(
                    by=("http://frontend.lyft.com",),
                    hash=HASH1,
                    uri=("http://testclient.lyft.com",),
                ),
                XfccElement(
                    by=("http://backend.lyft.com",),
                    hash=HASH2,
                    uri=("http://frontend.lyft.com",),
                ),
            ),
        ),
        (
            ENVOY_EXAMPLE_3,
            (
                XfccElement(
                    by=("http://frontend.lyft.com",),
                    hash=HASH1,
                    subject=SUBJECT,
                    uri=("http://testclient.lyft.com",),
                    dns=("lyft.com", "www.lyft.com"),
                ),
            ),
        ),
        (
            f'Cert="{CERT}";Chain="{CERT}{CERT}"',
            (XfccElement(cert=CERT, chain=CERT + CERT),),
        ),
        (
            f"Cert={CERT};Chain={CERT}",
            (XfccElement(cert=CERT, chain=CERT),),
        ),
        (
            "by=a;HASH=b;cErT=c;chain=d;SUBJECT=e;uri=f;dns=g",
            (
                XfccElement(
                    by=("a",), hash="b", cert="c", chain="d", subject="e", uri=("f",), dns=("g",)
                ),
            ),
        ),
        (
            r'Subject="a\"b";URI=u',
            (XfccElement(subject='a"b', uri=("u",)),),
        ),
        (
            'Subject="a,b;c=d";URI="x=y"',
            (XfccElement(subject="a,b;c=d", uri=("x=y",)),),
        ),
        (
            r'Subject="\\";URI=u',
            (XfccElement(subject="\\", uri=("u",)),),
        ),
        (
            r'Subject="a\,b"',
            (XfccElement(subject="a,b"),),
        ),
        (
            'Subject="";URI=u',
            (XfccElement(subject="", uri=("u",)),),
        ),
        (
            "By=;URI=u",
            (XfccElement(by=("",), uri=("u",)),),
        ),
        (
            "  By = a ; URI = b  ,  URI=c\t;\tDNS=d ",
            (XfccElement(by=("a",), uri=("b",)), XfccElement(uri=("c",), dns=("d",))),
        ),
        (
            'Subject = "x y" ;URI=u',
            (XfccElement(subject="x y", uri=("u",)),),
        ),
        (
            "URI=a b",
            (XfccElement(uri=("a b",)),),
        ),
        (
            "URI=a=b",
            (XfccElement(uri=("a=b",)),),
        ),
        (
            "By=b1;By=b2;URI=u1;URI=u2;DNS=d1;DNS=d2;DNS=d3",
            (XfccElement(by=("b1", "b2"), uri=("u1", "u2"), dns=("d1", "d2", "d3")),),
        ),
        (
            ",".join(["URI=first", "URI=second"]),
            (XfccElement(uri=("first",)), XfccElement(uri=("second",))),
        ),
        (
            "URI=spiffe://td/a,URI=spiffe://td/b, URI=spiffe://td/c",
            (
                XfccElement(uri=("spiffe://td/a",)),
                XfccElement(uri=("spiffe://td/b",)),
                XfccElement(uri=("spiffe://td/c",)),
            ),
        ),
        (
            "URI=caf\u00e9",
            (XfccElement(uri=("caf\u00e9",)),),
        ),
    ],
    ids=[
        "envoy-example-1",
        "envoy-example-2-two-elements",
        "envoy-example-3-dns",
        "cert-and-chain-quoted",
        "cert-and-chain-unquoted",
        "keys-case-insensitive",
        "escaped-quote",
        "separators-inside-quotes",
        "escaped-backslash",
        "escape-of-ordinary-character",
        "empty-quoted-value",
        "empty-unquoted-value",
        "whitespace-around-everything",
        "whitespace-around-quoted-value",
        "inner-space-unquoted",
        "equals-in-unquoted-value",
        "repeatable-keys",
        "header-lines-joined-by-comma",
        "three-elements",
        "non-ascii",
    ],
)
def test_parse(header, expected):
    assert parse_xfcc(header) == expected


def test_limits_at_the_boundary_are_accepted():
    elements = parse_xfcc(",".join(["URI=u"] * MAX_XFCC_ELEMENTS))
    assert len(elements) == MAX_XFCC_ELEMENTS
    pairs = parse_xfcc(";".join(["DNS=d"] * 64))
    assert pairs == (XfccElement(dns=("d",) * 64),)
    long_value = "URI=" + "u" * (MAX_XFCC_LENGTH - 4)
    assert parse_xfcc(long_value)[0].uri == ("u" * (MAX_XFCC_LENGTH - 4),)


# --------------------------------------------------------------------------
# parse_xfcc: errors
# --------------------------------------------------------------------------

PREFIX = "malformed x-forwarded-client-cert header: "


@pytest.mark.parametrize(
    ("header", "reason", "position"),
    [
        ("", "expected key=value at offset 0", 0),
        ("   ", "expected key=value at offset 3", 3),
        ("URI", "expected key=value at offset 0", 0),
        ("URI=a;DNS", "expected key=value at offset 6", 6),
        ("Foo=bar", "unknown key 'Foo' at offset 0", 0),
        ("URI=a;SAN=b", "unknown key 'SAN' at offset 6", 6),
        ("=a", "unknown key '' at offset 0", 0),
        ("U RI=a", "unknown key 'U RI' at offset 0", 0),
        ("URI=a;;DNS=b", "unknown key ';DNS' at offset 6", 6),
        ("URI=a;,URI=b", "unknown key ',URI' at offset 6", 6),
        ("Hash=a;Hash=b", "key 'Hash' repeated in one element at offset 0", 0),
        ("URI=u,Subject=a;subject=b", "key 'Subject' repeated in one element at offset 6", 6),
        ("Cert=a;CERT=b", "key 'Cert' repeated in one element at offset 0", 0),
        ("Chain=a;Chain=b", "key 'Chain' repeated in one element at offset 0", 0),
        (",URI=a", "unknown key ',URI' at offset 0", 0),
        ("URI=a,,URI=b", "empty element at offset 6", 6),
        ("URI=a, ,URI=b", "empty element at offset 6", 6),
        ("URI=a,", "empty element at offset 6", 6),
        ("URI=a,  ", "empty element at offset 6", 6),
        ("URI=a;", "trailing ';' at offset 6", 6),
        ("URI=a; ", "trailing ';' at offset 6", 6),
        ('URI="abc', "unterminated quoted value at offset 8", 8),
        ('URI="abc\\"', "unterminated quoted value at offset 10", 10),
        ('URI="abc\\', "unterminated escape at offset 8", 8),
        ('URI=a"b', "unexpected '\"' in an unquoted value at offset 5", 5),
        ('URI=ab"', "unexpected '\"' in an unquoted value at offset 6", 6),
        ('URI="a"b', "unexpected text after a quoted value at offset 7", 7),
        ('URI="a" b', "unexpected text after a quoted value at offset 8", 8),
        ('URI="a""b"', "unexpected text after a quoted value at offset 7", 7),
    ],
    ids=[
        "empty",
        "whitespace-only",
        "key-without-value",
        "second-key-without-value",
        "unknown-key",
        "unknown-second-key",
        "empty-key",
        "space-inside-key",
        "empty-pair",
        "semicolon-then-comma",
        "repeated-hash",
        "repeated-subject-any-case",
        "repeated-cert",
        "repeated-chain",
        "leading-comma",
        "empty-element",
        "blank-element",
        "trailing-comma",
        "trailing-comma-and-space",
        "trailing-semicolon",
        "trailing-semicolon-and-space",
        "unterminated-quote",
        "quote-escaped-away",
        "unterminated-escape",
        "stray-quote-in-unquoted-value",
        "quote-at-end-of-unquoted-value",
        "text-after-quoted-value",
        "space-then-text-after-quoted-value",
        "two-quoted-values",
    ],
)
def test_parse_errors(header, reason, position):
    with pytest.raises(XfccSyntaxError) as info:
        parse_xfcc(header)
    assert str(info.value) == PREFIX + reason
    assert info.value.reason == PREFIX + reason
    assert info.value.position == position
    assert info.value.status == 401
    assert isinstance(info.value, AuthenticationFailed)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (",".join(["URI=u"] * (MAX_XFCC_ELEMENTS + 1)), "more than 32 elements"),
        (",".join(["URI=u"] * 1000), "more than 32 elements"),
        (";".join(["DNS=d"] * 65), "more than 64 pairs in one element"),
        ("URI=" + "u" * (MAX_XFCC_LENGTH - 3), f"longer than {MAX_XFCC_LENGTH} characters"),
    ],
    ids=["33-elements", "1000-elements", "65-pairs", "too-long"],
)
def test_parse_limits(header, reason):
    with pytest.raises(XfccSyntaxError) as info:
        parse_xfcc(header)
    assert str(info.value) == PREFIX + reason
    assert info.value.position is None


# Control characters (0x00-0x1f except HTAB, and 0x7f) are refused wherever
# they appear: in a quoted value (Envoy would never write one; a header
# carrying one was not written by the proxy), in an unquoted value, in a key
# or between pairs. HTAB is optional whitespace and may be quoted.
CONTROL_CASES = [
    ('Subject="a\r\nb";URI=spiffe://td/x', 10, 0x0D),
    ('URI="spiffe://td/a\x00b"', 18, 0x00),
    ('URI="spiffe://td/a\nx-forwarded-client-cert: URI=spiffe://td/b"', 18, 0x0A),
    ('URI="spiffe://td/a\\\x00"', 19, 0x00),
    ("URI=spiffe://td/a\x00.evil", 17, 0x00),
    ("URI=spiffe://td/a\r\n", 17, 0x0D),
    ("URI=spiffe://td/a\n", 17, 0x0A),
    ('Subject="\x1b[31mred";URI=u', 9, 0x1B),
    ('Subject="a\x7f";URI=u', 10, 0x7F),
    ('Subject="\x01";URI=u', 9, 0x01),
    ('Subject="\x1f";URI=u', 9, 0x1F),
    ("URI=a;\x0bDNS=b", 6, 0x0B),
    ("URI=a\x0c", 5, 0x0C),
    ("\x00URI=a", 0, 0x00),
    ("UR\nI=a", 2, 0x0A),
    ('URI="a"\r', 7, 0x0D),
    ("URI=a,\nURI=b", 6, 0x0A),
]


@pytest.mark.parametrize(
    ("header", "position", "code"),
    CONTROL_CASES,
    ids=[
        "crlf-in-quoted-subject",
        "nul-in-quoted-uri",
        "lf-header-injection-in-quoted-uri",
        "escaped-nul-in-quoted-uri",
        "nul-in-unquoted-uri",
        "crlf-in-unquoted-uri",
        "lf-at-end",
        "escape-sequence",
        "del",
        "soh",
        "unit-separator",
        "vertical-tab-between-pairs",
        "form-feed-at-end",
        "nul-before-key",
        "lf-inside-key",
        "cr-after-quoted-value",
        "lf-between-elements",
    ],
)
def test_control_characters_are_refused(header, position, code):
    with pytest.raises(XfccSyntaxError) as info:
        parse_xfcc(header)
    assert str(info.value) == PREFIX + f"control character 0x{code:02x} at offset {position}"
    assert info.value.position == position
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Subject="a\tb";URI=u', (XfccElement(subject="a\tb", uri=("u",)),)),
        ("\tURI=u\t;\tDNS=d\t", (XfccElement(uri=("u",), dns=("d",)),)),
        (
            'Subject="caf\u00e9 \u0085";URI=u',
            (XfccElement(subject="caf\u00e9 \u0085", uri=("u",)),),
        ),
    ],
    ids=["tab-quoted", "tab-as-whitespace", "non-ascii-is-not-control"],
)
def test_tab_and_non_ascii_are_not_control_characters(header, expected):
    assert parse_xfcc(header) == expected


@pytest.mark.parametrize("char", ["\x00", "\r", "\n", "\x1b", "\x7f"])
def test_format_refuses_control_characters(char):
    with pytest.raises(ValueError, match=r"^XFCC value .* holds a control character"):
        format_xfcc([{"Subject": f"a{char}b", "URI": "spiffe://td/x"}])


async def test_control_characters_through_the_asgi_middleware_are_refused_with_401(decisions):
    from peer_middleware import PeerMiddleware, Policy, Principal, allow

    reached = []

    async def app(scope, receive, send):
        reached.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = PeerMiddleware(
        app,
        policy=Policy([allow("caller", Principal(CALLER), paths="/payments/**")]),
        authenticators=[authenticator()],
    )
    sent = []
    value = f'By={APP};Subject="a\r\nb";URI={CALLER}'
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "method": "GET",
        "path": "/payments/1",
        "raw_path": b"/payments/1",
        "root_path": "",
        "query_string": b"",
        "headers": [(HEADER.encode(), value.encode("latin-1"))],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await middleware(scope, receive, send)

    assert reached == []
    assert sent[0]["status"] == 401
    assert sent[1]["body"] == b'{"type":"about:blank","title":"Unauthorized","status":401}'
    (record,) = decisions()
    offset = value.index("\r")
    assert record.peer_middleware["reason"] == (
        f"{PREFIX}control character 0x0d at offset {offset}"
    )


# --------------------------------------------------------------------------
# format_xfcc
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elements", "header"),
    [
        (
            [{"By": "spiffe://td/app", "URI": "spiffe://td/caller"}],
            "By=spiffe://td/app;URI=spiffe://td/caller",
        ),
        ([{"uri": ["a", "b"], "dns": ("c",)}], "URI=a;URI=b;DNS=c"),
        ([{"Subject": SUBJECT}], f'Subject="{SUBJECT}"'),
        ([{"Subject": 'a"b\\c'}], r'Subject="a\"b\\c"'),
        ([{"Subject": ""}], 'Subject=""'),
        ([{"Subject": " x"}], 'Subject=" x"'),
        ([{"Subject": "a\tb"}], 'Subject="a\tb"'),
        ([{"Hash": None, "URI": "u"}], "URI=u"),
        ([{"URI": "a"}, {"URI": "b"}], "URI=a,URI=b"),
        (
            [
                XfccElement(
                    by=("b",),
                    hash="h",
                    cert="c",
                    chain="d",
                    subject="s",
                    uri=("u",),
                    dns=("x", "y"),
                )
            ],
            "By=b;Hash=h;Cert=c;Chain=d;Subject=s;URI=u;DNS=x;DNS=y",
        ),
        ([], ""),
    ],
    ids=[
        "mapping",
        "lower-case-keys-and-sequences",
        "subject-with-separators-quoted",
        "quote-and-backslash-escaped",
        "empty-value-quoted",
        "leading-space-quoted",
        "tab-quoted",
        "none-skipped",
        "two-elements",
        "element-in-canonical-key-order",
        "nothing",
    ],
)
def test_format(elements, header):
    assert format_xfcc(elements) == header


def test_format_refuses_unknown_keys():
    with pytest.raises(ValueError, match=r"^unknown XFCC key 'SAN'$"):
        format_xfcc([{"SAN": "x"}])


AWKWARD = [
    "",
    " ",
    '"',
    '""',
    "\\",
    '\\"',
    "a,b",
    "a;b",
    "a=b",
    'a",b;c=d\\',
    " leading and trailing ",
    "\t",
    "caf\u00e9",
    "spiffe://cluster.local/ns/shop/sa/checkout",
    CERT,
    SUBJECT,
]


@pytest.mark.parametrize("value", AWKWARD, ids=[repr(v) for v in AWKWARD])
def test_format_then_parse_round_trip(value):
    element = XfccElement(
        by=(value, "by2"),
        hash=value,
        cert=value,
        chain=value,
        subject=value,
        uri=(value,),
        dns=(value, value),
    )
    other = XfccElement(uri=("spiffe://td/x",))
    assert parse_xfcc(format_xfcc([element, other, element])) == (element, other, element)


# --------------------------------------------------------------------------
# XfccAuthenticator
# --------------------------------------------------------------------------

HEADER = "x-forwarded-client-cert"
APP = "spiffe://cluster.local/ns/shop/sa/payments"
CALLER = "spiffe://cluster.local/ns/shop/sa/checkout"
GOOD = f"By={APP};Hash={HASH1};URI={CALLER}"


def request(value, client=("127.0.0.1", 40000)):
    headers = {} if value is None else {HEADER: value}
    return RequestView("GET", "/payments", client, headers)


def authenticator(**kwargs):
    kwargs.setdefault("trusted_proxies", ["127.0.0.1", "::1", "10.0.0.0/8"])
    return XfccAuthenticator(**kwargs)


def test_no_header_means_no_peer_and_no_note():
    view = request(None)
    assert authenticator().authenticate(view) is None
    assert view.notes is None


@pytest.mark.parametrize(
    "client",
    [
        ("203.0.113.9", 40000),
        ("127.0.0.2", 1),
        ("::ffff:203.0.113.9", 1),
        ("testclient", 50000),
        None,
    ],
    ids=["untrusted-v4", "neighbour-of-proxy", "untrusted-mapped", "test-client-name", "unknown"],
)
def test_header_from_untrusted_peer_is_ignored(client):
    view = request(GOOD, client)
    assert authenticator().authenticate(view) is None
    assert view.notes == ["ignored x-forwarded-client-cert from an untrusted peer"]


@pytest.mark.parametrize(
    "value",
    ["garbage", "URI=", f"URI={CALLER};URI={CALLER}"],
    ids=["malformed", "empty-uri", "two-uris"],
)
def test_untrusted_peer_is_ignored_before_the_header_is_read(value):
    view = request(value, ("203.0.113.9", 40000))
    assert authenticator().authenticate(view) is None
    assert view.notes == ["ignored x-forwarded-client-cert from an untrusted peer"]


@pytest.mark.parametrize(
    "client",
    [("127.0.0.1", 40000), ("::1", 40000), ("::ffff:127.0.0.1", 40000), ("10.1.2.3", 1)],
    ids=["ipv4", "ipv6", "ipv4-mapped", "cidr"],
)
def test_trusted_proxy_yields_peer(client):
    view = request(GOOD, client)
    peer = authenticator().authenticate(view)
    assert peer == Peer(
        SpiffeId.parse(CALLER),
        Proof.PROXY_ASSERTED,
        source="xfcc",
        proxy=client[0],
        certificate_sha256=HASH1,
    )
    assert peer.proof is Proof.PROXY_ASSERTED
    assert peer.source == "xfcc"
    assert peer.proxy == client[0]
    assert peer.certificate_sha256 == HASH1
    assert peer.principal == CALLER
    assert (peer.namespace, peer.service_account) == ("shop", "checkout")
    assert view.notes is None


FORGED = f"By={APP};URI=spiffe://cluster.local/ns/kube-system/sa/admin"


def test_append_forward_uses_the_rightmost_element():
    auth = authenticator(forward_client_cert="append_forward")
    peer = auth.authenticate(request(f"{FORGED},{GOOD}"))
    assert peer is not None
    assert peer.principal == CALLER
    peer = auth.authenticate(request(f"{FORGED},{FORGED},{GOOD}"))
    assert peer is not None
    assert peer.principal == CALLER
    assert auth.authenticate(request(GOOD)).principal == CALLER


def test_append_forward_forged_element_before_a_broken_one_does_not_help():
    auth = authenticator(forward_client_cert="append_forward")
    with pytest.raises(AuthenticationFailed) as info:
        auth.authenticate(request(f"{FORGED},By={APP}"))
    assert str(info.value) == "x-forwarded-client-cert: the proxy's element has no URI"


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (f"{FORGED},{GOOD}", 2),
        (f"{GOOD},{GOOD}", 2),
        (f"{FORGED},{FORGED},{GOOD}", 3),
        # A URI SAN holding ",URI=" splits Envoy's unquoted output in two.
        (f"By={APP};URI=spiffe://cluster.local/ns/shop/sa/x,URI={CALLER}", 2),
    ],
    ids=["forged-first", "repeated", "three", "split-uri"],
)
def test_sanitize_set_refuses_more_than_one_element(value, count):
    for auth in (authenticator(), authenticator(forward_client_cert="sanitize_set")):
        with pytest.raises(AuthenticationFailed) as info:
            auth.authenticate(request(value))
        assert str(info.value) == (
            f"x-forwarded-client-cert: {count} elements, but the proxy replaces the header "
            "(sanitize_set) and writes exactly one"
        )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"By={APP};Hash={HASH1}", "x-forwarded-client-cert: the proxy's element has no URI"),
        (
            f"URI={CALLER};URI=spiffe://cluster.local/ns/shop/sa/other",
            "x-forwarded-client-cert: the proxy's element has 2 URIs; "
            "an X.509-SVID has exactly one",
        ),
        (
            "URI=http://testclient.lyft.com",
            "x-forwarded-client-cert: URI is not a SPIFFE ID: "
            "SPIFFE ID scheme must be 'spiffe://' in lower case",
        ),
        (
            "URI=",
            "x-forwarded-client-cert: URI is not a SPIFFE ID: SPIFFE ID cannot be empty",
        ),
        (
            "URI=spiffe://cluster.local/ns/shop/sa/checkout/",
            "x-forwarded-client-cert: URI is not a SPIFFE ID: "
            "SPIFFE ID path cannot have a trailing slash",
        ),
        (
            "URI=spiffe://Cluster.local/x",
            "x-forwarded-client-cert: URI is not a SPIFFE ID: SPIFFE ID trust domain characters "
            "are limited to lowercase letters, numbers, dots, dashes, and underscores",
        ),
        (
            "URI=spiffe://cluster.local",
            "x-forwarded-client-cert: URI names a trust domain, not a workload",
        ),
        (
            f"URI={CALLER};Hash=abc",
            "x-forwarded-client-cert: Hash is not a SHA-256 hex digest",
        ),
        (
            f"URI={CALLER};Hash={HASH1[:-1]}g",
            "x-forwarded-client-cert: Hash is not a SHA-256 hex digest",
        ),
        (
            f"URI={CALLER};Hash={HASH1}0",
            "x-forwarded-client-cert: Hash is not a SHA-256 hex digest",
        ),
        (
            f"URI={CALLER};Hash=",
            "x-forwarded-client-cert: Hash is not a SHA-256 hex digest",
        ),
        ("URI=a;", PREFIX + "trailing ';' at offset 6"),
    ],
    ids=[
        "no-uri",
        "two-uris",
        "not-spiffe",
        "empty-uri",
        "invalid-spiffe",
        "upper-case-trust-domain",
        "trust-domain-only",
        "short-hash",
        "non-hex-hash",
        "long-hash",
        "empty-hash",
        "malformed-header",
    ],
)
def test_invalid_credentials_are_refused(value, message):
    with pytest.raises(AuthenticationFailed) as info:
        authenticator().authenticate(request(value))
    assert str(info.value) == message
    assert info.value.status == 401


def test_hash_is_lower_cased():
    peer = authenticator().authenticate(request(f"URI={CALLER};Hash={HASH1.upper()}"))
    assert peer is not None
    assert peer.certificate_sha256 == HASH1


def test_no_hash_means_no_fingerprint():
    peer = authenticator().authenticate(request(f"URI={CALLER}"))
    assert peer is not None
    assert peer.certificate_sha256 is None


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (f"By={APP};URI={CALLER}", True),
        (f"By=spiffe://cluster.local/ns/shop/sa/other;By={APP};URI={CALLER}", True),
        (f"URI={CALLER}", False),
        (f"By=spiffe://cluster.local/ns/shop/sa/other;URI={CALLER}", False),
        (f"By={APP}/x;URI={CALLER}", False),
        (f"By={APP.upper()};URI={CALLER}", False),
    ],
    ids=[
        "by-matches",
        "one-of-two-by-matches",
        "no-by",
        "other-by",
        "by-longer",
        "by-other-case",
    ],
)
def test_expected_by(value, accepted):
    auth = authenticator(expected_by=APP)
    if accepted:
        peer = auth.authenticate(request(value))
        assert peer is not None
        assert peer.principal == CALLER
    else:
        with pytest.raises(AuthenticationFailed) as info:
            auth.authenticate(request(value))
        assert str(info.value) == f"x-forwarded-client-cert: By does not name this app ({APP})"


def test_expected_by_applies_to_the_rightmost_element_only():
    auth = authenticator(expected_by=APP, forward_client_cert="append_forward")
    with pytest.raises(AuthenticationFailed) as info:
        auth.authenticate(request(f"By={APP};URI={CALLER},URI={CALLER}"))
    assert str(info.value) == f"x-forwarded-client-cert: By does not name this app ({APP})"


def test_cache_returns_the_same_peer():
    auth = authenticator()
    first = auth.authenticate(request(GOOD))
    second = auth.authenticate(request(GOOD))
    assert first is not None
    assert second is first
    other_proxy = auth.authenticate(request(GOOD, ("::1", 1)))
    assert other_proxy is not first
    assert other_proxy.proxy == "::1"


def test_cache_size_zero_builds_a_new_peer_each_time():
    auth = authenticator(cache_size=0)
    first = auth.authenticate(request(GOOD))
    second = auth.authenticate(request(GOOD))
    assert first == second
    assert first is not second


def test_failures_are_not_cached_as_success():
    auth = authenticator()
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            auth.authenticate(request("URI=spiffe://cluster.local"))


def test_custom_header_name():
    auth = authenticator(header="x-client-cert")
    assert auth.header_names == ("x-client-cert",)
    view = RequestView("GET", "/", ("127.0.0.1", 1), {"x-client-cert": GOOD})
    peer = auth.authenticate(view)
    assert peer is not None
    assert peer.principal == CALLER
    assert auth.authenticate(request(GOOD)) is None


def test_attributes():
    proxies = TrustedProxies(["127.0.0.1"])
    auth = XfccAuthenticator(trusted_proxies=proxies, expected_by=APP)
    assert auth.trusted_proxies is proxies
    assert auth.expected_by == APP
    assert auth.header_names == (HEADER,)
    assert auth.name == "xfcc"
    assert auth.forwarded is True
    assert auth.www_authenticate is None
    assert repr(auth) == "XfccAuthenticator(trusted_proxies=TrustedProxies(['127.0.0.1/32']))"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"expected_by": "spiffe://cluster.local/"},
            "expected_by 'spiffe://cluster.local/': SPIFFE ID path cannot have a trailing slash",
        ),
        (
            {"expected_by": "cluster.local/ns/a/sa/b"},
            "expected_by 'cluster.local/ns/a/sa/b': "
            "SPIFFE ID scheme must be 'spiffe://' in lower case",
        ),
        ({"expected_by": ""}, "expected_by '': SPIFFE ID cannot be empty"),
        ({"expected_by": 5}, "expected_by 5: invalid SPIFFE ID: not a string"),
        (
            {"header": "X-Forwarded-Client-Cert"},
            "header 'X-Forwarded-Client-Cert' must be a lower-case header name",
        ),
        ({"header": ""}, "header '' must be a lower-case header name"),
        ({"header": None}, "header None must be a lower-case header name"),
        ({"trusted_proxies": []}, "at least one trusted proxy address is required"),
        (
            {"trusted_proxies": ["0.0.0.0/0"]},
            "trusted proxy '0.0.0.0/0' covers every address; name the proxies' addresses instead",
        ),
        (
            {"trusted_proxies": ["::/0"]},
            "trusted proxy '::/0' covers every address; name the proxies' addresses instead",
        ),
        ({"cache_size": -1}, "cache_size must be a non-negative integer"),
        ({"cache_size": "10"}, "cache_size must be a non-negative integer"),
        (
            {"forward_client_cert": "SANITIZE_SET"},
            "forward_client_cert 'SANITIZE_SET' must be 'sanitize_set' or 'append_forward'",
        ),
        (
            {"forward_client_cert": "forward_only"},
            "forward_client_cert 'forward_only' must be 'sanitize_set' or 'append_forward'",
        ),
    ],
    ids=[
        "expected-by-invalid",
        "expected-by-without-scheme",
        "expected-by-empty",
        "expected-by-not-a-string",
        "header-upper-case",
        "header-empty",
        "header-none",
        "no-trusted-proxies",
        "every-v4-address",
        "every-v6-address",
        "negative-cache",
        "string-cache",
        "mode-upper-case",
        "mode-unknown",
    ],
)
def test_configuration_errors(kwargs, message):
    with pytest.raises(ConfigurationError) as info:
        authenticator(**kwargs)
    assert type(info.value) is ConfigurationError
    assert str(info.value) == message
