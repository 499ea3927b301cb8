"""Which immediate peers may speak for somebody else.

A forwarded credential (a certificate or identity a proxy puts in a header)
is only as trustworthy as the connection it arrived on: anybody who can reach
the app directly can send ``x-forwarded-client-cert: URI=spiffe://.../admin``.
peer_middleware therefore reads such headers only when the connection's own
peer address is in a :class:`TrustedProxies` set the operator names, and
ignores them otherwise.

.. warning::
   The address checked is the one the server reports. Servers that rewrite
   it from ``X-Forwarded-For`` or ``Forwarded`` (uvicorn does by default for
   connections from 127.0.0.1, and for every connection with
   ``--forwarded-allow-ips='*'``; hypercorn's ``ProxyFixMiddleware``)
   replace the proxy's address with one the client wrote. Either serve with
   the protocol classes of :mod:`peer_middleware.servers.uvicorn`, which
   record the connection's own address in ``scope["extensions"]`` where the
   ASGI middleware reads it (:data:`CONNECTION_EXTENSION`), or turn that
   rewriting off (``uvicorn --forwarded-allow-ips=''`` or
   ``proxy_headers=False``; hypercorn without ``ProxyFixMiddleware``).
   Otherwise :func:`rewrite_evidence` recognises the addresses such servers
   produce, and forwarded credentials are ignored for them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .errors import ConfigurationError

__all__ = [
    "CONNECTION_EXTENSION",
    "TrustedProxies",
    "connection_client",
    "could_be_rewritten",
    "looks_rewritten",
    "rewrite_evidence",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_LIMIT = 4096


class TrustedProxies:
    """A fixed set of networks (IPv4 and IPv6 CIDRs or single addresses).

    ``TrustedProxies(["127.0.0.1", "::1", "10.0.0.0/8"])``. Networks that
    cover every address (``0.0.0.0/0``, ``::/0``) are refused: they would let
    any client forge a forwarded credential. IPv4-mapped IPv6 peers
    (``::ffff:127.0.0.1``) are compared as IPv4. Peer addresses that are not
    IP addresses (a Unix socket, a test client's name) are never trusted.
    """

    __slots__ = ("_cache", "networks")

    def __init__(self, networks: Iterable[str]) -> None:
        if isinstance(networks, str):
            networks = [networks]
        parsed: list[IPNetwork] = []
        for text in networks:
            if not isinstance(text, str):
                raise ConfigurationError(f"trusted proxy {text!r} is not a string")
            try:
                network = ipaddress.ip_network(text.strip(), strict=True)
            except ValueError as exc:
                raise ConfigurationError(f"trusted proxy {text!r} is not a CIDR: {exc}") from exc
            if network.prefixlen == 0:
                raise ConfigurationError(
                    f"trusted proxy {text!r} covers every address; name the proxies' "
                    "addresses instead"
                )
            parsed.append(network)
        if not parsed:
            raise ConfigurationError("at least one trusted proxy address is required")
        self.networks: tuple[IPNetwork, ...] = tuple(parsed)
        self._cache: dict[str, bool] = {}

    def __contains__(self, host: object) -> bool:
        try:
            cached: bool | None = self._cache.get(host)  # type: ignore[call-overload]
        except TypeError:  # unhashable, so not an address
            return False
        if cached is not None:
            return cached
        result = self._check(host)
        if isinstance(host, str):
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[host] = result
        return result

    def _check(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address):
            if address.scope_id is not None:
                address = ipaddress.IPv6Address(host.split("%", 1)[0])
            if address.ipv4_mapped is not None:
                mapped = address.ipv4_mapped
                return any(mapped in network for network in self.networks)
        return any(address in network for network in self.networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(n) for n in self.networks]!r})"


# --------------------------------------------------------------------------
# The connection's own address, as a server integration records it.
# --------------------------------------------------------------------------

#: The ``scope["extensions"]`` entry where a server integration records the
#: address of the connection's own peer: ``{"client": (host, port)}``, or
#: ``{"client": None}`` when the peer has no IP address (a Unix socket). The
#: protocol classes of :mod:`peer_middleware.servers.uvicorn` fill it for
#: every HTTP and WebSocket scope; the servers' proxy-header middleware, which
#: rewrites ``scope["client"]``, leaves it alone.
CONNECTION_EXTENSION = "peer_middleware.connection"


def connection_client(scope: Mapping[str, Any]) -> Any:
    """The peer address of an ASGI ``scope``: the recorded one when there is one.

    A :data:`CONNECTION_EXTENSION` entry wins over ``scope["client"]``: it
    was read from the socket before anything could rewrite the scope. An
    entry without a ``(host, port)`` pair gives ``None`` (an unknown peer,
    never trusted), not ``scope["client"]``. Without the entry,
    ``scope["client"]`` is returned as it is.
    """
    extensions = scope.get("extensions")
    if extensions:
        entry = extensions.get(CONNECTION_EXTENSION) if isinstance(extensions, Mapping) else None
        if entry is not None:
            client = entry.get("client") if isinstance(entry, Mapping) else None
            if isinstance(client, (tuple, list)) and len(client) == 2:
                return tuple(client)
            return None
    return scope.get("client")


# --------------------------------------------------------------------------
# Addresses a server took from X-Forwarded-For or Forwarded.
# --------------------------------------------------------------------------


def _host_key(host: object) -> object:
    """``host`` as it is compared: an IP address as an address, anything else as it is.

    As :class:`TrustedProxies` sees it: an IPv4-mapped IPv6 address is the
    IPv4 address, and an IPv6 zone is dropped. Text that is no IP address
    (never trusted anyway) is compared as text.
    """
    if not isinstance(host, str):
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(host.split("%", 1)[0])
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def _host_port(node: str) -> tuple[str, int]:
    """One forwarded node as the servers read it: ``(host, port)``, port 0 when none.

    The rules of uvicorn's ``ProxyHeadersMiddleware`` (0.55,
    ``_parse_host_port``): ``[v6]:port``, ``[v6]``, ``v4:port`` or a bare
    host, the port being whatever ``int()`` makes of the text after the
    colon (so ``05``, `` 5``, ``+5`` and ``5_0`` are ports too), and a node
    whose port ``int()`` refuses being a host without one. hypercorn's
    ``ProxyFixMiddleware`` takes the whole node as the host, with port 0.
    """
    if node.startswith("["):
        end = node.find("]")
        if end == -1:
            return node, 0
        host, rest = node[1:end], node[end + 1 :]
        if not rest:
            return host, 0
        if not rest.startswith(":"):
            return node, 0
        try:
            return host, int(rest[1:])
        except ValueError:
            return host, 0
    if node.count(":") == 1:
        host, _, port = node.partition(":")
        try:
            return host, int(port)
        except ValueError:
            return node, 0
    return node, 0


def _forwarded_for_nodes(value: str) -> Iterator[str]:
    """The entries of an ``X-Forwarded-For`` value (several lines joined by ``,``)."""
    for entry in value.split(","):
        yield entry.strip()


def _forwarded_nodes(value: str) -> Iterator[str]:
    """Every ``for=`` node of a ``Forwarded`` value (RFC 7239 section 4), unquoted.

    Read leniently, so that whatever node a server took is among them:
    elements split at every ``,`` and pairs at every ``;`` (no address holds
    either), the parameter name in any case and with spaces around ``=``, a
    quoted value with or without its closing quote and with its quoted-pairs
    resolved (RFC 9110 section 5.6.4). Obfuscated nodes (``_hidden``) and
    ``unknown`` come out as they are.
    """
    for element in value.split(","):
        for pair in element.split(";"):
            name, equals, node = pair.partition("=")
            if not equals or name.strip().lower() != "for":
                continue
            node = node.strip()
            if node.startswith('"'):
                node = node[1:-1] if len(node) > 1 and node.endswith('"') else node[1:]
                node = _unescape(node)
            yield node.strip()


def _unescape(text: str) -> str:
    """``text`` with each quoted-pair (a backslash and the character after it) resolved."""
    if "\\" not in text:
        return text
    out: list[str] = []
    escaped = False
    for char in text:
        if escaped or char != "\\":
            out.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def _port_evidence(port: object) -> str | None:
    """Why ``port`` cannot be a TCP peer's port; ``None`` when it can be.

    -1 passes: it is what the WSGI adapter reports when the server gives no
    ``REMOTE_PORT``.
    """
    if type(port) is not int:
        return f"with port {port!r}, which is not a number"
    if port == 0:
        return "with port 0"
    if port > 65535 or port < -1:
        return f"with port {port}, which no TCP connection has"
    return None


def could_be_rewritten(port: object, forwarded_for: str | None, forwarded: str | None) -> bool:
    """Whether :func:`rewrite_evidence` could find anything: a cheap first test.

    False only when ``port`` is one a TCP peer can have and neither header
    is present: the address is then the connection's own whatever its port,
    so a memory of verdicts may know it by its host alone.
    """
    return forwarded_for is not None or forwarded is not None or _port_evidence(port) is not None


def rewrite_evidence(
    client: tuple[Any, Any], forwarded_for: str | None, forwarded: str | None = None
) -> str | None:
    """Why ``client`` cannot be the connection's own peer; ``None`` when it can be.

    ``client`` is the ``(host, port)`` the server reports; ``forwarded_for``
    and ``forwarded`` are the request's ``X-Forwarded-For`` and ``Forwarded``
    values (``None`` when absent). The address was rewritten when

    * an ``X-Forwarded-For`` entry or a ``Forwarded`` ``for=`` node, read as
      the servers read it, is that host and port: addresses compared as
      addresses (``[0::1]`` is ``::1``, ``::ffff:127.0.0.1`` is
      ``127.0.0.1``) and ports as integers (``05`` is 5), a node without a
      port having port 0 as the servers give it; or
    * the port is one no TCP peer has, whatever the headers say (a server may
      have read a header the guard is not shown): 0 (what uvicorn reports for
      a node without a port, and hypercorn for every node), beyond 65535,
      below -1, or no integer at all.

    The answer is a phrase for the log: ``"taken from X-Forwarded-For"``,
    ``"taken from Forwarded"``, ``"with port 0"``, ...

    A server that takes the address from another header (``X-Real-IP``, or
    the port from ``X-Forwarded-Port``) is not recognised: record the
    connection's own address (:data:`CONNECTION_EXTENSION`) or turn the
    server's rewriting off.
    """
    host, port = client
    if forwarded_for is not None or forwarded is not None:
        key = _host_key(host)
        for name, value, nodes in (
            ("X-Forwarded-For", forwarded_for, _forwarded_for_nodes),
            ("Forwarded", forwarded, _forwarded_nodes),
        ):
            if value is None:
                continue
            for node in nodes(value):
                node_host, node_port = _host_port(node)
                if node_port == port and _host_key(node_host) == key:
                    return f"taken from {name}"
    return _port_evidence(port)


def looks_rewritten(
    client: tuple[Any, Any], forwarded_for: str | None, forwarded: str | None = None
) -> bool:
    """True when :func:`rewrite_evidence` finds ``client`` is not the connection's own peer."""
    return rewrite_evidence(client, forwarded_for, forwarded) is not None
