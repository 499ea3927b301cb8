"""Trusted proxy addresses and the detection of rewritten client addresses."""

from __future__ import annotations

import ipaddress

import pytest

from peer_middleware.errors import ConfigurationError
from peer_middleware.proxies import TrustedProxies, looks_rewritten


def _why(text: str) -> str:
    """The standard library's own explanation, which the message repeats."""
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"{text!r} is a valid network")


PROXIES = TrustedProxies(["127.0.0.1", "::1", "10.0.0.0/8", "192.168.1.0/24", "fd00::/8"])


@pytest.mark.parametrize(
    ("host", "trusted"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("9.255.255.255", False),
        ("192.168.1.200", True),
        ("192.168.2.1", False),
        ("::1", True),
        ("::2", False),
        ("0:0:0:0:0:0:0:1", True),
        ("fd12:3456::1", True),
        ("fe00::1", False),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.1.2.3", True),
        ("::ffff:11.1.2.3", False),
        ("::ffff:7f00:1", True),
        ("::1%lo", True),
        ("fd00::1%eth0", True),
        ("fe80::1%eth0", False),
        ("testclient", False),
        ("localhost", False),
        ("", False),
        ("127.0.0.1:8000", False),
        ("[::1]", False),
        (" 127.0.0.1", False),
        ("/tmp/app.sock", False),
        ("10.0.0.0/8", False),
    ],
    ids=[
        "single-v4",
        "neighbour-of-single-v4",
        "cidr-first",
        "cidr-last",
        "after-cidr",
        "before-cidr",
        "second-cidr",
        "outside-second-cidr",
        "single-v6",
        "neighbour-of-single-v6",
        "v6-long-form",
        "v6-cidr",
        "outside-v6-cidr",
        "mapped-loopback",
        "mapped-in-cidr",
        "mapped-outside",
        "mapped-hex-form",
        "scoped-loopback",
        "scoped-in-cidr",
        "scoped-outside",
        "test-client-name",
        "hostname",
        "empty",
        "with-port",
        "bracketed",
        "leading-space",
        "unix-socket",
        "cidr-text-as-host",
    ],
)
def test_membership(host, trusted):
    assert (host in PROXIES) is trusted
    # The answer is cached; asking again must give the same answer.
    assert (host in PROXIES) is trusted


@pytest.mark.parametrize(
    "host",
    [None, 127, ("127.0.0.1", 80), b"127.0.0.1", ["127.0.0.1"], {"127.0.0.1"}],
    ids=["none", "int", "tuple", "bytes", "unhashable-list", "unhashable-set"],
)
def test_non_string_hosts_are_never_trusted(host):
    assert host not in PROXIES
    assert host not in PROXIES


@pytest.mark.parametrize(
    ("configured", "host"),
    [
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("fe80::1%eth0", "fe80::1"),
        ("fe80::1", "fe80::1%eth0"),
        ("fe80::/64", "fe80::1%eth0"),
    ],
    ids=["both-scoped", "configured-scoped", "host-scoped", "cidr-and-scoped-host"],
)
def test_scoped_addresses(configured, host):
    assert host in TrustedProxies([configured])


def test_a_single_string_is_one_address():
    proxies = TrustedProxies("127.0.0.1")
    assert "127.0.0.1" in proxies
    assert "127.0.0.2" not in proxies
    assert [str(n) for n in proxies.networks] == ["127.0.0.1/32"]


def test_generator_and_whitespace():
    proxies = TrustedProxies(text for text in [" 10.0.0.1 ", "::1"])
    assert [str(n) for n in proxies.networks] == ["10.0.0.1/32", "::1/128"]
    assert repr(proxies) == "TrustedProxies(['10.0.0.1/32', '::1/128'])"


@pytest.mark.parametrize(
    ("networks", "message"),
    [
        ([], "at least one trusted proxy address is required"),
        ((), "at least one trusted proxy address is required"),
        (
            ["0.0.0.0/0"],
            "trusted proxy '0.0.0.0/0' covers every address; name the proxies' addresses instead",
        ),
        (
            ["::/0"],
            "trusted proxy '::/0' covers every address; name the proxies' addresses instead",
        ),
        (
            ["127.0.0.1", "0.0.0.0/0"],
            "trusted proxy '0.0.0.0/0' covers every address; name the proxies' addresses instead",
        ),
        (["10.0.0.1/8"], f"trusted proxy '10.0.0.1/8' is not a CIDR: {_why('10.0.0.1/8')}"),
        (["fd00::1/8"], f"trusted proxy 'fd00::1/8' is not a CIDR: {_why('fd00::1/8')}"),
        (["testclient"], f"trusted proxy 'testclient' is not a CIDR: {_why('testclient')}"),
        ([""], f"trusted proxy '' is not a CIDR: {_why('')}"),
        (["10.0.0.0/33"], f"trusted proxy '10.0.0.0/33' is not a CIDR: {_why('10.0.0.0/33')}"),
        (["fe80::1%"], f"trusted proxy 'fe80::1%' is not a CIDR: {_why('fe80::1%')}"),
        ([None], "trusted proxy None is not a string"),
        ([127], "trusted proxy 127 is not a string"),
        (["127.0.0.1", b"::1"], "trusted proxy b'::1' is not a string"),
    ],
    ids=[
        "empty-list",
        "empty-tuple",
        "every-v4",
        "every-v6",
        "every-v4-after-a-good-one",
        "host-bits-v4",
        "host-bits-v6",
        "hostname",
        "empty-string",
        "bad-prefix",
        "empty-scope",
        "none",
        "int",
        "bytes",
    ],
)
def test_configuration_errors(networks, message):
    with pytest.raises(ConfigurationError) as info:
        TrustedProxies(networks)
    assert type(info.value) is ConfigurationError
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("client", "forwarded_for", "rewritten"),
    [
        (("10.0.0.5", 43210), None, False),
        (("10.0.0.5", 0), None, True),
        (("203.0.113.7", 0), "203.0.113.7", True),
        (("10.0.0.5", 0), "203.0.113.7", True),
        (("203.0.113.7", 5555), "203.0.113.7:5555", True),
        (("203.0.113.7", 5555), "198.51.100.1, 203.0.113.7:5555", True),
        (("203.0.113.7", 5555), "203.0.113.7:5556", False),
        (("203.0.113.7", 5555), "203.0.113.7", False),
        (("203.0.113.7", 5555), "203.0.113.8:5555", False),
        (("10.0.0.5", 43210), "203.0.113.7", False),
        (("10.0.0.5", 43210), "203.0.113.7, 198.51.100.1", False),
        (("2001:db8::1", 443), "[2001:db8::1]:443", True),
        (("2001:db8::1", 443), " [2001:db8::1]:443 ", True),
        (("2001:db8::1", 443), "[2001:db8::1]:444", False),
        (("2001:db8::1", 443), "[2001:db8::1]", False),
        (("2001:db8::1", 443), "2001:db8::1", False),
        (("10.0.0.5", 43210), "", False),
        (("10.0.0.5", 43210), " , ,", False),
        (("10.0.0.5", 43210), "[2001:db8::1", False),
        (("10.0.0.5", 43210), "unknown", False),
        # Ports as the servers parse them: int(), so any spelling int() accepts.
        (("127.0.0.1", 5), "127.0.0.1:05", True),
        (("127.0.0.1", 5), "127.0.0.1: 5", True),
        (("127.0.0.1", 5), "127.0.0.1:+5", True),
        (("127.0.0.1", 5), "127.0.0.1:5\t", True),
        (("127.0.0.1", 50), "127.0.0.1:5_0", True),
        (("127.0.0.1", -5), "127.0.0.1:-5", True),
        (("127.0.0.1", 99999), "127.0.0.1:99999", True),
        (("127.0.0.1", 5), "127.0.0.1:0x5", False),
        (("::1", 5), "[::1]:5", True),
        (("::1", 5), "[::1]:05", True),
        (("::1", 5), "[::1] :5", False),
        (("::1", 5), "[0:0::1]:5", True),
        (("fe80::1%eth0", 5), "[fe80::1%eth0]:5", True),
        (("fe80::1", 5), "[fe80::1%eth0]:5", True),
        # IPv4-mapped IPv6 is the IPv4 address, as TrustedProxies compares it.
        (("::ffff:127.0.0.1", 5), "[::ffff:127.0.0.1]:5", True),
        (("127.0.0.1", 5), "[::ffff:127.0.0.1]:5", True),
        (("::ffff:127.0.0.1", 5), "127.0.0.1:5", True),
        (("::ffff:7f00:1", 5), "[::ffff:7f00:1]:5", True),
        # Not addresses: compared as text (never trusted anyway).
        (("testclient", 50000), "testclient:50000", True),
        (("testclient", 50000), "testclient:50001", False),
        # Ports no TCP connection has, whatever the headers say; -1 is the
        # WSGI adapter's unknown port.
        (("127.0.0.1", 65536), None, True),
        (("127.0.0.1", -2), None, True),
        (("127.0.0.1", -1), None, False),
        (("127.0.0.1", 65535), None, False),
        (("127.0.0.1", 1), None, False),
        (("127.0.0.1", "5"), None, True),
        (("127.0.0.1", True), None, True),
        (("127.0.0.1", None), None, True),
    ],
    ids=[
        "no-header",
        "port-0-without-header",
        "port-0-header-matches",
        "port-0-header-unrelated",
        "host-and-port-match",
        "host-and-port-match-second-entry",
        "other-port",
        "entry-without-port",
        "other-host",
        "unrelated-header",
        "unrelated-header-two-entries",
        "ipv6-brackets-match",
        "ipv6-brackets-with-spaces",
        "ipv6-other-port",
        "ipv6-brackets-without-port",
        "ipv6-without-brackets",
        "empty-header",
        "only-separators",
        "unclosed-bracket",
        "obfuscated-entry",
        "leading-zero",
        "space-before-port",
        "plus-sign",
        "tab-after-port",
        "underscore-in-port",
        "negative-port",
        "port-beyond-65535-from-header",
        "hex-port-is-not-an-int",
        "ipv6-port",
        "ipv6-leading-zero",
        "ipv6-space-before-colon",
        "ipv6-other-spelling",
        "ipv6-scoped",
        "ipv6-scope-dropped-as-trusted-proxies-does",
        "ipv4-mapped",
        "ipv4-mapped-entry-ipv4-client",
        "ipv4-entry-ipv4-mapped-client",
        "ipv4-mapped-hex",
        "name-matches",
        "name-other-port",
        "port-65536",
        "port-minus-2",
        "wsgi-unknown-port",
        "highest-port",
        "lowest-port",
        "port-as-text",
        "port-as-bool",
        "port-none",
    ],
)
def test_looks_rewritten(client, forwarded_for, rewritten):
    assert looks_rewritten(client, forwarded_for) is rewritten


@pytest.mark.parametrize(
    ("client", "forwarded", "rewritten"),
    [
        (("127.0.0.1", 0), "for=127.0.0.1", True),
        (("127.0.0.1", 5), 'for="127.0.0.1:5"', True),
        (("127.0.0.1", 5), 'for="127.0.0.1:05"', True),
        (("127.0.0.1", 5), "for=127.0.0.1:5", True),
        (("127.0.0.1", 5), 'FOR="127.0.0.1:5"', True),
        (("127.0.0.1", 5), ' for = "127.0.0.1:5" ', True),
        (("127.0.0.1", 5), 'for="127.0.0.1\\:5"', True),
        (("127.0.0.1", 5), 'for="127.0.0.1:5', True),
        (("::1", 5), 'for="[::1]:5"', True),
        (("::1", 5), 'for="[0:0::1]:5"', True),
        (("::ffff:127.0.0.1", 5), 'for="[::ffff:127.0.0.1]:5"', True),
        (("127.0.0.1", 5), 'for="[::ffff:127.0.0.1]:5"', True),
        (("127.0.0.1", 5), 'proto=https;for="127.0.0.1:5";by=_p', True),
        (("127.0.0.1", 5), 'for=198.51.100.1;proto=http, for="127.0.0.1:5"', True),
        (("_hidden", 0), "for=_hidden", True),
        (("unknown", 0), "for=unknown", True),
        (('"127.0.0.1:5"', 0), 'for="127.0.0.1:5"', True),
        (("127.0.0.1", 50000), "for=127.0.0.1", False),
        (("127.0.0.1", 50000), 'for="127.0.0.1:50001"', False),
        (("127.0.0.1", 50000), 'by="127.0.0.1:50000"', False),
        (("127.0.0.1", 50000), 'host="127.0.0.1:50000"', False),
        (("127.0.0.1", 50000), "for=_hidden", False),
        (("127.0.0.1", 50000), 'for="_hidden:_port"', False),
        (("127.0.0.1", 50000), "for=unknown", False),
        (("::1", 50000), 'for="[::1]"', False),
        (("127.0.0.1", 50000), "", False),
        (("127.0.0.1", 50000), ";,=", False),
        (("127.0.0.1", 50000), 'for="', False),
        (("127.0.0.1", 50000), "for=[::1", False),
    ],
    ids=[
        "port-0",
        "quoted-with-port",
        "quoted-leading-zero",
        "unquoted-with-port",
        "name-case-insensitive",
        "spaces-around",
        "quoted-pair",
        "unterminated-quote",
        "ipv6",
        "ipv6-other-spelling",
        "ipv4-mapped",
        "ipv4-mapped-entry-ipv4-client",
        "among-other-pairs",
        "second-element",
        "obfuscated-node",
        "unknown-node",
        "hypercorn-keeps-the-quotes",
        "no-port",
        "other-port",
        "by-is-not-for",
        "host-is-not-for",
        "obfuscated-with-real-port",
        "obfuscated-port",
        "unknown-with-real-port",
        "ipv6-without-port",
        "empty",
        "only-separators",
        "lone-quote",
        "unclosed-bracket",
    ],
)
def test_looks_rewritten_from_forwarded(client, forwarded, rewritten):
    assert looks_rewritten(client, None, forwarded=forwarded) is rewritten


@pytest.mark.parametrize(
    ("client", "forwarded_for", "forwarded", "evidence"),
    [
        (("127.0.0.1", 5), "127.0.0.1:05", None, "taken from X-Forwarded-For"),
        (("127.0.0.1", 5), None, 'for="127.0.0.1:5"', "taken from Forwarded"),
        (("127.0.0.1", 5), "127.0.0.1:5", 'for="127.0.0.1:5"', "taken from X-Forwarded-For"),
        (("127.0.0.1", 0), "127.0.0.1", None, "taken from X-Forwarded-For"),
        (("127.0.0.1", 0), None, None, "with port 0"),
        (("127.0.0.1", 0), None, "for=127.0.0.1", "taken from Forwarded"),
        (("127.0.0.1", 0), None, "for=127.0.0.2", "with port 0"),
        (("127.0.0.1", 70000), None, None, "with port 70000, which no TCP connection has"),
        (("127.0.0.1", "5"), None, None, "with port '5', which is not a number"),
        (("127.0.0.1", 5), None, None, None),
        (("127.0.0.1", 5), "127.0.0.1", "for=127.0.0.1", None),
    ],
    ids=[
        "x-forwarded-for",
        "forwarded",
        "both-x-forwarded-for-first",
        "x-forwarded-for-port-0",
        "port-0",
        "port-0-forwarded-without-port",
        "port-0-forwarded-other-host",
        "port-beyond-65535",
        "port-not-a-number",
        "none",
        "none-with-headers",
    ],
)
def test_rewrite_evidence(client, forwarded_for, forwarded, evidence):
    from peer_middleware.proxies import rewrite_evidence

    assert rewrite_evidence(client, forwarded_for, forwarded) == evidence


def test_could_be_rewritten_is_cheap_and_covers_every_rewrite():
    from peer_middleware.proxies import could_be_rewritten

    assert not could_be_rewritten(50000, None, None)
    assert not could_be_rewritten(-1, None, None)
    assert could_be_rewritten(0, None, None)
    assert could_be_rewritten(70000, None, None)
    assert could_be_rewritten("5", None, None)
    assert could_be_rewritten(50000, "", None)
    assert could_be_rewritten(50000, None, "")


@pytest.mark.parametrize(
    ("scope", "client"),
    [
        ({"client": ("10.0.0.1", 1)}, ("10.0.0.1", 1)),
        ({"client": None}, None),
        ({}, None),
        ({"client": ("10.0.0.1", 0), "extensions": None}, ("10.0.0.1", 0)),
        ({"client": ("10.0.0.1", 0), "extensions": {"tls": {}}}, ("10.0.0.1", 0)),
        (
            {
                "client": ("10.0.0.1", 0),
                "extensions": {"peer_middleware.connection": {"client": ("127.0.0.1", 7)}},
            },
            ("127.0.0.1", 7),
        ),
        (
            {
                "client": ("10.0.0.1", 0),
                "extensions": {"peer_middleware.connection": {"client": ["127.0.0.1", 7]}},
            },
            ("127.0.0.1", 7),
        ),
        (
            {"client": ("10.0.0.1", 0), "extensions": {"peer_middleware.connection": {}}},
            None,
        ),
        (
            {
                "client": ("10.0.0.1", 0),
                "extensions": {"peer_middleware.connection": {"client": None}},
            },
            None,
        ),
        (
            {
                "client": ("10.0.0.1", 0),
                "extensions": {"peer_middleware.connection": {"client": "127.0.0.1"}},
            },
            None,
        ),
        (
            {
                "client": ("10.0.0.1", 0),
                "extensions": {"peer_middleware.connection": {"client": ("127.0.0.1",)}},
            },
            None,
        ),
        (
            {"client": ("10.0.0.1", 0), "extensions": {"peer_middleware.connection": "x"}},
            None,
        ),
    ],
    ids=[
        "reported",
        "reported-none",
        "missing",
        "extensions-none",
        "other-extensions",
        "recorded",
        "recorded-list",
        "recorded-without-client",
        "recorded-unix-socket",
        "recorded-text",
        "recorded-one-item",
        "recorded-not-a-dict",
    ],
)
def test_connection_client(scope, client):
    from peer_middleware.proxies import CONNECTION_EXTENSION, connection_client

    assert CONNECTION_EXTENSION == "peer_middleware.connection"
    assert connection_client(scope) == client
