"""Request conditions: what a rule asks of the request beyond the caller's identity.

A condition looks at :class:`RequestFacts` (the ``Host`` header, the port
the app was reached on, the values of named headers, the connection's peer
address and the original client reported by trusted proxies) and says
whether it holds. Give a rule conditions with ``when=``; all must hold::

    allow("ops", Namespace("ops", trust_domain="cluster.local"),
          when=[Host("admin.example.com"), SourceIp("10.0.0.0/8"), ~Header("x-debug")])

Every condition declares the request attributes it reads (:attr:`Condition.reads`:
``"host"``, ``"port"``, ``"source"``, ``"header:<name>"``); the policy
exposes their union and the guard keys every remembered verdict on exactly
those, so a condition can never be answered from a verdict made for another
request.

**Negations.** ``~condition`` matches a request that *has* the attribute and
fails the condition. In an ALLOW rule a negation never matches a request
lacking the attribute ("not from 10/8" must not include "from an address we
do not know"); in a DENY rule it does, so both fail closed (as the
identity matchers of :mod:`peer_middleware.matchers`).

**Unknown values fail closed.** In a DENY rule, a condition on an attribute
the request has but that cannot be read matches, and so does its negation:
an unknown peer or original-client address (``SourceIp``, ``RemoteIp``:
none reported, one the server took from a forwarding header, too few
``X-Forwarded-For`` hops, an entry that is not an address), an unknown
server port, a ``Host`` that is not one ``host[:port]`` (sent twice, an
empty or zero port, an empty label, userinfo). An ALLOW rule never matches
them. A missing ``Host`` or header is no value, and matches neither.

**Header values** are client-sent: a header condition only narrows who may
call, it proves nothing. A header sent on several lines (or as a
comma-separated list) is judged value by value, each trimmed of surrounding
whitespace, never as the joined string. A value of a header or ``Host`` read
by a condition that holds a control character or a byte above 0x7E
(obs-text) refuses the request with 400; the same in a rule's own values is
a :class:`~peer_middleware.errors.ConfigurationError`.

Conditions are pure and keep no memory.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import BadRequest, ConfigurationError

__all__ = [
    "Condition",
    "EnvoyHeader",
    "EnvoyHost",
    "Header",
    "Host",
    "NotCondition",
    "Port",
    "RemoteIp",
    "RequestFacts",
    "SourceIp",
    "check_value",
]

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
# Visible ASCII, space and tab: no control character, no obs-text.
_CLEAN = re.compile(r"[\t\x20-\x7e]*")
_HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9._-]*[a-z0-9])?|\*|\[[0-9a-f:.]+\]")
# A request's host: dot-separated labels, or an IPv6 address in brackets.
_LABEL = r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?"
_REQUEST_HOST = re.compile(rf"{_LABEL}(\.{_LABEL})*|\[[0-9a-f:.]+\]")
FORWARDED_FOR = "x-forwarded-for"


def check_value(value: str, what: str) -> str:
    """``value`` when it holds no control character or obs-text, else :class:`BadRequest`."""
    if _CLEAN.fullmatch(value) is None:
        raise BadRequest(f"{what} holds a control character or a non-ASCII byte")
    return value


def _config_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{what} {value!r} must be a string")
    if _CLEAN.fullmatch(value) is None:
        raise ConfigurationError(f"{what} {value!r} holds a control character or obs-text")
    return value


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What conditions read from one request.

    ``host`` is the ``Host`` header as sent (``None`` without one), ``port``
    the port the app's server was reached on, ``headers`` the values of the
    headers conditions read (lower-case names, repeated lines joined with
    ``","``), ``source`` the connection's peer address (``None`` when unknown
    or when the server may have taken it from a forwarding header).
    """

    host: str | None = None
    port: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    source: str | None = None


class Condition:
    """Base class of request conditions (see the module docstring).

    ``reads`` names the request attributes the condition reads. ``test``
    says whether it holds; ``deny`` is True in a DENY rule (a negation then
    matches a request lacking the attribute).
    """

    __slots__ = ()

    @property
    def reads(self) -> frozenset[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def present(self, facts: RequestFacts) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def test(self, facts: RequestFacts, deny: bool = False) -> bool:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def __invert__(self) -> Condition:
        return NotCondition(self)

    def __repr__(self) -> str:
        return self.describe()


class NotCondition(Condition):
    """Holds when the request has the attribute and ``condition`` does not hold.

    In a DENY rule it also holds for a request lacking the attribute. A
    condition whose answer depends on ``deny`` (it errs towards matching in a
    DENY rule) is asked as in the other kind of rule, so its negation errs the
    same way.
    """

    __slots__ = ("condition",)

    def __init__(self, condition: Condition) -> None:
        if not isinstance(condition, Condition):
            raise ConfigurationError(f"~{condition!r}: not a condition")
        self.condition = condition

    @property
    def reads(self) -> frozenset[str]:
        return self.condition.reads

    def present(self, facts: RequestFacts) -> bool:
        return self.condition.present(facts)

    def test(self, facts: RequestFacts, deny: bool = False) -> bool:
        if not self.condition.present(facts):
            return deny
        # The condition errs the other way: a DENY's negation must not miss.
        return not self.condition.test(facts, not deny)

    def describe(self) -> str:
        return f"~{self.condition.describe()}"


def _values(args: Iterable[object], what: str) -> tuple[str, ...]:
    values = tuple(args)
    if not values:
        raise ConfigurationError(f"{what} needs at least one value")
    return tuple(_config_text(v, what) for v in values)


class _Globs:
    """Istio-style string patterns: exact, ``prefix*``, ``*suffix``, ``*`` (non-empty)."""

    __slots__ = ("exact", "nonempty", "prefixes", "suffixes")

    def __init__(self, patterns: tuple[str, ...], what: str) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        self.nonempty = False
        for pattern in patterns:
            stars = pattern.count("*")
            if pattern == "*":
                self.nonempty = True
            elif stars == 0:
                exact.add(pattern)
            elif stars == 1 and pattern.endswith("*"):
                prefixes.append(pattern[:-1])
            elif stars == 1 and pattern.startswith("*"):
                suffixes.append(pattern[1:])
            else:
                raise ConfigurationError(
                    f"{what} {pattern!r}: '*' is allowed only as the whole value, "
                    "its first character or its last character"
                )
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)

    def match(self, value: str) -> bool:
        if value in self.exact or (self.nonempty and value):
            return True
        if self.prefixes and value.startswith(self.prefixes):
            return True
        return bool(self.suffixes) and value.endswith(self.suffixes)


class Header(Condition):
    """A request header: present, or one of its values matching a pattern.

    ``Header("x-debug")`` holds when the header is present, even empty;
    ``Header("x-env", "*")`` when one of its values is non-empty;
    ``Header("x-env", "prod", "stage-*", "*-eu")`` when one of its values
    equals ``prod``, starts with ``stage-`` or ends with ``-eu`` (each value
    of a repeated or comma-separated header on its own, trimmed).
    """

    __slots__ = ("_globs", "name", "patterns")

    def __init__(self, name: str, *patterns: str) -> None:
        if not isinstance(name, str) or _HEADER_NAME.fullmatch(name.lower()) is None:
            raise ConfigurationError(f"header name {name!r} is not an HTTP token")
        self.name = name.lower()
        if self.name == "host":
            raise ConfigurationError("use Host(...) for the host, not Header('host', ...)")
        self.patterns = _values(patterns, f"Header({name!r}) value") if patterns else ()
        self._globs = _Globs(self.patterns, f"Header({name!r}) value") if patterns else None

    @property
    def reads(self) -> frozenset[str]:
        return frozenset({f"header:{self.name}"})

    def present(self, facts: RequestFacts) -> bool:
        return self.name in facts.headers

    def test(self, facts: RequestFacts, deny: bool = False) -> bool:
        value = facts.headers.get(self.name)
        if value is None:
            return False
        globs = self._globs
        if globs is None:
            return True
        return any(globs.match(item.strip(" \t")) for item in value.split(","))

    def describe(self) -> str:
        values = "".join(f", {p!r}" for p in self.patterns)
        return f"Header({self.name!r}{values})"


class EnvoyHeader(Header):
    """A header matched on its whole value, as Envoy (so Istio and Consul) match it.

    Repeated lines are one value joined with ``","``; ``EnvoyHeader("x-env",
    "prod")`` does not match ``x-env: evil, prod``, which :class:`Header`
    (value by value) does. In an ALLOW rule the value as the server gives it
    must match; in a DENY rule also the value with its lines re-joined as
    Envoy joins them (a WSGI server joins them with ``", "``).
    """

    __slots__ = ()

    def test(self, facts: RequestFacts, deny: bool = False) -> bool:
        value = facts.headers.get(self.name)
        if value is None:
            return False
        globs = self._globs
        if globs is None:
            return True
        if globs.match(value):
            return True
        return deny and globs.match(",".join(item.strip(" \t") for item in value.split(",")))

    def describe(self) -> str:
        return "Envoy" + super().describe()


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(host, port) of a ``Host`` value, lower-cased without its trailing dot."""
    value = value.strip(" \t").lower()
    port: int | None = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    else:
        host, sep, port_text = value.partition(":")
        if sep:
            if not port_text.isdigit() or ":" in port_text:
                return None
            port = int(port_text)
    if host.endswith("."):
        host = host[:-1]
    if not host or (port is not None and not 0 < port <= 65535):
        return None
    return host, port


def _request_host(value: str) -> tuple[str, int | None] | None:
    """(host, port) of a request's ``Host`` value; ``None`` when it is not one host[:port]."""
    split = _split_host(value)
    if split is None or _REQUEST_HOST.fullmatch(split[0]) is None:
        return None
    return split


class Host(Condition):
    """The ``Host`` header (``:authority``): one of the given hosts.

    Case-insensitive; the request's port and a trailing dot are ignored,
    unless the pattern names a port (``"api.example.com:8443"`` then needs
    exactly that port in the header). ``"*.example.com"`` matches any
    subdomain (not ``example.com`` itself); ``"*"`` any host.
    """

    __slots__ = ("_any", "_exact", "_suffixes", "hosts")

    def __init__(self, *hosts: str) -> None:
        self.hosts = _values(hosts, "Host()")
        exact: set[tuple[str, int | None]] = set()
        suffixes: list[tuple[str, int | None]] = []
        self._any = False
        for raw in self.hosts:
            if raw == "*":
                self._any = True
                continue
            split = _split_host(raw)
            if split is None or _HOST_PATTERN.fullmatch(split[0]) is None:
                raise ConfigurationError(f"Host() pattern {raw!r} is not a host[:port]")
            host, port = split
            if host.startswith("*."):
                suffixes.append((host[1:], port))
            else:
                exact.add((host, port))
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)

    @property
    def reads(self) -> frozenset[str]:
        return frozenset({"host"})

    def present(self, facts: RequestFacts) -> bool:
        return facts.host is not None and _request_host(facts.host) is not None

    def test(self, facts: RequestFacts, deny: bool = False) -> bool:
        if facts.host is None:
            return False
        split = _request_host(facts.host)
        if split is None:
            # Not one host[:port] (a repeated Host, an empty or zero port, an
            # empty label, userinfo...): a DENY rule cannot tell it is not its host.
            return deny
        if self._any:
            return True
        host, port = split
        if (host, None) in self._exact or (port is not None and (host, port) in self._exact):
            return True
        return any(
            host.endswith(suffix) and (want is None or want == port)
            for suffix, want in self._suffixes
        )

    def describe(self) -> str:
        return f"Host({', '.join(repr(h) for h in self.hosts)})"


class EnvoyHost(Host):
    """The ``Host`` header matched as Istio's ``hosts`` (Envoy's matcher).

    Istio compares ``:authority`` case-insensitively to the host, a port
    allowed after an exact host only, never a trailing dot; ``*.example.com``
    is a suffix of the whole value (no port after it). In an ALLOW rule it
    matches only what Istio would; in a DENY rule it is :class:`Host` (which
    also ignores a trailing dot and a port).
    """

    __slots__ = ()

    def test(self, facts: RequestFacts, deny: bool = False) -> bool:
        if deny or facts.host is None:
            return super().test(facts, deny)
        split = _request_host(facts.host)
        if split is None:
            return False
        if self._any:
            return True
        host, port = split
        raw = facts.host.strip(" \t").lower()
        name = raw[: raw.rfind(":")] if port is not None else raw
        if name.endswith("."):
            return False
        if (host, None) in self._exact or (port is not None and (host, port) in self._exact):
            return True
        return any(
            raw.endswith(suffix if want is None else f"{suffix}:{want}")
            for suffix, want in self._suffixes
        )

    def describe(self) -> str:
        return "Envoy" + super().describe()


class Port(Condition):
    """The port the app's server was reached on (its listening port).

    Behind a sidecar (Istio, Linkerd) that is the port the sidecar forwards to,
    the workload's own container port, which is what Istio's ``ports`` names.
    """

    __slots__ = ("ports",)

    def __init__(self, *ports: int) -> None:
        if not ports:
            raise ConfigurationError("Port() needs at least one port")
        for port in ports:
            if type(port) is not int or not 0 < port <= 65535:
                raise ConfigurationError(f"port {port!r} must be an integer from 1 to 65535")
        self.ports = frozenset(ports)

    @property
    def reads(self) -> frozenset[str]:
        return frozenset({"port"})

    def present(self, facts: RequestFacts) -> bool:
        return facts.port is not None

    def test(self, facts: RequestFacts, deny: bool = False) -> bool:
        if facts.port is None:
            return deny  # unknown: a DENY rule cannot tell it is not its port
        return facts.port in self.ports

    def describe(self) -> str:
        return f"Port({', '.join(str(p) for p in sorted(self.ports))})"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(blocks: tuple[str, ...], what: str) -> tuple[Network, ...]:
    if not blocks:
        raise ConfigurationError(f"{what} needs at least one address or CIDR block")
    networks = []
    for block in blocks:
        if not isinstance(block, str):
            raise ConfigurationError(f"{what}: {block!r} is not a string")
        try:
            networks.append(ipaddress.ip_network(block, strict=True))
        except ValueError as exc:
            raise ConfigurationError(f"{what}: {block!r} is not an address or CIDR block") from exc
    return tuple(networks)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if text is None:
        return None
    text = text.strip(" \t")
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _in(address: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: tuple[Network, ...]) -> bool:
    return any(address.version == net.version and address in net for net in nets)


class SourceIp(Condition):
    """The connection's peer address is in one of the blocks (Istio's ``ipBlocks``).

    ``SourceIp("10.0.0.0/8", "192.0.2.7")``. Behind a sidecar that is the
    sidecar's address; use :class:`RemoteIp` for the original client.
    """

    __slots__ = ("blocks", "networks")

    def __init__(self, *blocks: str) -> None:
        self.blocks = tuple(blocks)
        self.networks = _networks(self.blocks, "SourceIp()")

    @property
    def reads(self) -> frozenset[str]:
        return frozenset({"source"})

    def present(self, facts: RequestFacts) -> bool:
        return _address(facts.source) is not None

    def test(self, facts: RequestFacts, deny: bool = False) -> bool:
        address = _address(facts.source)
        if address is None:
            return deny  # unknown: a DENY rule cannot tell it is not in its blocks
        return _in(address, self.networks)

    def describe(self) -> str:
        return f"SourceIp({', '.join(repr(b) for b in self.blocks)})"


class RemoteIp(Condition):
    """The original client's address is in one of the blocks (Istio's ``remoteIpBlocks``).

    The original client is found by counting ``trusted_hops`` proxies from
    the right (Istio's ``numTrustedProxies``, Envoy's ``xff_num_trusted_hops``):
    with 0 it is the connection's peer; with ``n`` it is the ``n``-th
    address from the right of ``X-Forwarded-For``. Addresses further left
    were written by the client and are never used. A request with fewer
    addresses than ``trusted_hops`` has no remote address.

    .. warning:: ``trusted_hops`` must be exactly the number of proxies that
       append to ``X-Forwarded-For`` in front of the app; one too many lets
       the client choose its address.
    """

    __slots__ = ("blocks", "networks", "trusted_hops")

    def __init__(self, *blocks: str, trusted_hops: int = 0) -> None:
        if type(trusted_hops) is not int or not 0 <= trusted_hops <= 64:
            raise ConfigurationError("RemoteIp(trusted_hops=...) must be an integer from 0 to 64")
        self.blocks = tuple(blocks)
        self.networks = _networks(self.blocks, "RemoteIp()")
        self.trusted_hops = trusted_hops

    @property
    def reads(self) -> frozenset[str]:
        if self.trusted_hops == 0:
            return frozenset({"source"})
        return frozenset({"source", f"header:{FORWARDED_FOR}"})

    def remote(self, facts: RequestFacts) -> str | None:
        """The original client's address, as text (``None`` when unknown)."""
        if self.trusted_hops == 0:
            return facts.source
        if facts.source is None:
            return None
        chain = facts.headers.get(FORWARDED_FOR)
        if chain is None:
            return None
        hops = [item.strip(" \t") for item in chain.split(",")]
        if len(hops) < self.trusted_hops:
            return None
        return hops[-self.trusted_hops]

    def present(self, facts: RequestFacts) -> bool:
        return _address(self.remote(facts)) is not None

    def test(self, facts: RequestFacts, deny: bool = False) -> bool:
        address = _address(self.remote(facts))
        if address is None:
            return deny  # unknown: a DENY rule cannot tell it is not in its blocks
        return _in(address, self.networks)

    def describe(self) -> str:
        blocks = ", ".join(repr(b) for b in self.blocks)
        return f"RemoteIp({blocks}, trusted_hops={self.trusted_hops})"
