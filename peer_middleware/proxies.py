"""Which immediate peers may speak for somebody else.

A forwarded credential (a certificate or identity a proxy puts in a header)
is only as trustworthy as the connection it arrived on: anybody who can reach
the app directly can send ``x-forwarded-client-cert: URI=spiffe://.../admin``.
peer_middleware therefore reads such headers only when the connection's own
peer address is in a :class:`TrustedProxies` set the operator names, and
ignores them otherwise.

.. warning::
   The address checked is the one the server reports. Servers that rewrite
   it from ``X-Forwarded-For`` (uvicorn does by default for connections from
   127.0.0.1) replace the proxy's address with one the client wrote. Run such
   servers with that rewriting off (``uvicorn --forwarded-allow-ips=''`` or
   ``proxy_headers=False``); see :func:`looks_rewritten`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .errors import ConfigurationError

__all__ = ["TrustedProxies", "looks_rewritten"]

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


def looks_rewritten(client: tuple[str, int], forwarded_for: str | None) -> bool:
    """True when ``client`` looks taken from ``X-Forwarded-For``, not the socket.

    Servers that rewrite the client address from ``X-Forwarded-For`` set it
    to one of the header's entries, with port 0 when the entry has none
    (uvicorn's ``ProxyHeadersMiddleware``, hypercorn's ``ProxyFixMiddleware``).
    A real TCP peer never has port 0, and practically never equals an entry
    of the header down to the port, so either sign means the address cannot
    be used to decide whether the peer is a trusted proxy.
    """
    if forwarded_for is None:
        return False
    host, port = client
    if port == 0:
        return True
    for entry in forwarded_for.split(","):
        entry = entry.strip()
        if not entry:
            continue
        if entry.startswith("["):
            end = entry.find("]")
            entry_host, _, entry_port = entry[1:end], None, entry[end + 2 :]
        elif entry.count(":") == 1:
            entry_host, _, entry_port = entry.partition(":")
        else:
            entry_host, entry_port = entry, ""
        if entry_host == host and entry_port == str(port):
            return True
    return False
