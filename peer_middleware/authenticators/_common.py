"""Configuration checks and log helpers shared by the authenticators."""

from __future__ import annotations

import re
from collections.abc import Iterable

from peer_middleware.errors import ConfigurationError
from peer_middleware.proxies import TrustedProxies

_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


def as_trusted_proxies(proxies: TrustedProxies | Iterable[str]) -> TrustedProxies:
    """``proxies`` as a :class:`TrustedProxies` (which refuses networks covering everyone)."""
    if isinstance(proxies, TrustedProxies):
        return proxies
    return TrustedProxies(proxies)


def header_name(value: object, what: str) -> str:
    """``value`` if it is a lower-case header name (an RFC 9110 token); else ConfigurationError."""
    if (
        not isinstance(value, str)
        or not value
        or value != value.lower()
        or not _HEADER_NAME.fullmatch(value)
    ):
        raise ConfigurationError(f"{what} {value!r} must be a lower-case header name")
    return value


def shown(value: str) -> str:
    """A header value as the log shows it: quoted, and cut after 48 characters."""
    return repr(value if len(value) <= 48 else value[:48] + "...")
