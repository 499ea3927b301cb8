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
        (("10.0.0.5", 0), None, False),
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
    ],
)
def test_looks_rewritten(client, forwarded_for, rewritten):
    assert looks_rewritten(client, forwarded_for) is rewritten
