"""What the middleware remembers between requests: one place, bounded in bytes.

The guard keeps five memos, all here, all bounded by the bytes their entries
hold (as estimated from the keys and values, dictionary overhead included),
whatever the variety of methods, paths and credentials it is sent:

============  =====================================  ===========================
memo          key -> value                           filled by
============  =====================================  ===========================
paths         path as sent (and raw target) ->       any request: the
              normalised path                        ``anonymous_bytes`` share
plans         (method, normalised path) -> the       any request: the
              policy's rule buckets                  ``anonymous_bytes`` share
routes        (scope kind, method, mount point,      any request: the
              path) -> the route dispatched to       ``anonymous_bytes`` share
identities    credentials -> proven peer             authenticated callers only
verdicts      whole request -> allowed verdict       allowed, authenticated
                                                     callers only
============  =====================================  ===========================

Every memo is a pure function of its key, except identities and verdicts,
whose entries carry the checks (certificate and token expiry, key and bundle
generations) that must all still hold for them to be reused. Switching the
memory off (``MemoryLimits.off()``) changes no decision; it only costs time.

The authenticators' and verifiers' own memos of verified credentials (the
X.509 chain, token and header caches, each a bounded number of entries of
bounded size) are keyed by the exact credential bytes and stay with them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._cache import ByteBoundedCache
from .errors import ConfigurationError

__all__ = ["Memory", "MemoryLimits"]

MiB = 1024 * 1024

# A dict slot, its share of the table's spare room, and the entry's tuple.
_ENTRY_OVERHEAD = 160
# What a remembered value that is not a plain string costs beyond its key:
# a plan (a tuple of shared buckets), a verdict or a proven peer.
_PLAN_COST = 120
_ROUTE_COST = 16
_VERDICT_COST = 400
_IDENTITY_COST = 4096


def estimate(value: object) -> int:
    """Bytes a key built of strings, bytes, numbers and tuples holds."""
    if isinstance(value, (str, bytes)):
        return sys.getsizeof(value)
    if isinstance(value, tuple):
        return sys.getsizeof(value) + sum(map(estimate, value))
    return 32


@dataclass(frozen=True, slots=True)
class MemoryLimits:
    """How much the guard may remember, in bytes.

    ``total_bytes`` bounds everything the guard remembers (default 16 MiB per
    guard, that is per worker process). ``anonymous_bytes`` is the share that
    any client can fill without a credential, with refused requests, any
    method and any path: checked paths, plans and routes (default 2 MiB).
    The rest is for authenticated callers: half for proven identities, half
    for allowed verdicts. ``MemoryLimits.off()`` remembers nothing.
    """

    total_bytes: int = 16 * MiB
    anonymous_bytes: int = 2 * MiB

    def __post_init__(self) -> None:
        for name in ("total_bytes", "anonymous_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(f"MemoryLimits.{name} must be a non-negative integer")
        if self.anonymous_bytes > self.total_bytes:
            raise ConfigurationError("MemoryLimits.anonymous_bytes exceeds total_bytes")

    @classmethod
    def off(cls) -> MemoryLimits:
        """Remember nothing: every request is authenticated and decided afresh."""
        return cls(total_bytes=0, anonymous_bytes=0)

    @property
    def enabled(self) -> bool:
        return self.total_bytes > 0


def _text(value: str) -> int:
    """Bytes a string holds: its header and one to four bytes a character."""
    return 80 + (len(value) if value.isascii() else 4 * len(value))


def _path_cost(key: Any, value: Any) -> int:
    # key: the path, or (path, raw target or None); value: the normalised path.
    if type(key) is str:
        cost = _text(key)
        if value is not key:
            cost += _text(value)
        return _ENTRY_OVERHEAD + cost
    path, raw = key
    cost = 64 + _text(path) + (0 if raw is None else _text(raw))
    if value is not path:
        cost += _text(value)
    return _ENTRY_OVERHEAD + cost


def _plan_cost(key: Any, value: Any) -> int:
    # key: (method, path); value: a tuple of buckets the policy holds anyway.
    return _ENTRY_OVERHEAD + 64 + _text(key[0]) + _text(key[1]) + _PLAN_COST


def _fixed_cost(extra: int) -> Callable[[Any, Any], int]:
    def cost(key: Any, value: Any) -> int:
        return _ENTRY_OVERHEAD + estimate(key) + extra

    return cost


class Memory:
    """The guard's memos, sized from one :class:`MemoryLimits`."""

    __slots__ = ("hits", "identities", "limits", "paths", "plans", "routes", "verdicts")

    def __init__(self, limits: MemoryLimits) -> None:
        if not isinstance(limits, MemoryLimits):
            raise ConfigurationError(f"memory must be a MemoryLimits, not {type(limits).__name__}")
        self.limits = limits
        #: Requests answered with a remembered verdict, counted only while the
        #: guard has observers (approximate under threads: a statistic).
        self.hits = 0
        anonymous = limits.anonymous_bytes
        authenticated = limits.total_bytes - anonymous
        self.paths = ByteBoundedCache[Any, str](anonymous // 2, _path_cost)
        self.plans = ByteBoundedCache[tuple[str, str], Any](anonymous // 4, _plan_cost)
        self.routes = ByteBoundedCache[tuple[object, ...], Any](
            anonymous - anonymous // 2 - anonymous // 4, _fixed_cost(_ROUTE_COST)
        )
        self.identities = ByteBoundedCache[tuple[object, ...], Any](
            authenticated // 2, _fixed_cost(_IDENTITY_COST)
        )
        self.verdicts = ByteBoundedCache[tuple[object, ...], Any](
            authenticated - authenticated // 2, _fixed_cost(_VERDICT_COST)
        )

    @property
    def nbytes(self) -> int:
        """The estimated bytes held, in total."""
        return sum(part.nbytes for part in self.parts().values())

    def parts(self) -> dict[str, ByteBoundedCache[Any, Any]]:
        """Each memo by name, for reports and tests."""
        return {
            "paths": self.paths,
            "plans": self.plans,
            "routes": self.routes,
            "identities": self.identities,
            "verdicts": self.verdicts,
        }

    def clear(self) -> None:
        for part in self.parts().values():
            part.clear()
