"""A small bounded cache for verified credentials."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """A least-recently-inserted cache of at most ``size`` entries.

    Reads take no lock (a dict read is atomic in CPython); writes do. Entries
    are evicted oldest first, so a flood of distinct credentials can push
    out old entries but never grow the cache. ``size`` 0 disables caching.
    """

    __slots__ = ("_data", "_lock", "get", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        #: Look up a key; ``None`` when absent (the dict's own bound method).
        self.get: Callable[[K], V | None] = self._data.get

    def put(self, key: K, value: V) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class GenerationalCache(Generic[K, V]):
    """A bounded memo for pure results (normalised paths, decisions).

    Two generations of at most ``size`` entries each: new entries go to the
    young one; when it is full it becomes the old one and the previous old
    one is dropped; a hit in the old generation is copied back. So memory is
    bounded by ``2 * size`` entries, hot entries survive a flood of one-off
    keys, and every operation is O(1) (no scan, no lock; a lost write under a
    race only costs a recomputation). Hot paths may read ``young`` directly
    (a plain dict) and fall back to :meth:`get`.
    """

    __slots__ = ("_old", "size", "young")

    def __init__(self, size: int) -> None:
        self.size = size
        self.young: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        value = self.young.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        young = self.young
        if len(young) >= self.size:
            self._old = young
            self.young = young = {}
        young[key] = value

    def __len__(self) -> int:
        return len(self.young) + len(self._old)


class ByteBoundedCache(Generic[K, V]):
    """A memo bounded by the bytes its entries hold, not by their number.

    Like :class:`GenerationalCache`, two generations (new entries go to the
    young one; a full young generation becomes the old one and the previous
    old one is dropped; a hit in the old generation is copied back), but a
    generation is full when the estimated bytes of its entries reach half of
    ``budget``. ``cost(key, value)`` estimates an entry's bytes; an entry
    costing more than half the budget is never kept. So the memory held is at
    most ``budget`` (as estimated) whatever the keys, and every operation is
    O(1). ``budget`` 0 keeps nothing. Hot paths may read ``young`` directly
    (a plain dict) and fall back to :meth:`get`.

    No lock is taken: under threads a write that races another may go
    uncounted, which the next change of generation forgets; so the estimate
    can be exceeded by the few entries whose writes raced, never more.
    """

    __slots__ = ("_cost", "_half", "_old", "_old_bytes", "_young_bytes", "budget", "young")

    def __init__(self, budget: int, cost: Callable[[K, V], int]) -> None:
        self.budget = budget
        self._half = budget // 2
        self._cost = cost
        self.young: dict[K, V] = {}
        self._old: dict[K, V] = {}
        self._young_bytes = 0
        self._old_bytes = 0

    def get(self, key: K) -> V | None:
        value = self.young.get(key)
        if value is None:
            value = self._old.get(key)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        cost = self._cost(key, value)
        if cost > self._half:
            return
        total = self._young_bytes + cost
        if total > self._half:
            self._old = self.young
            self._old_bytes = self._young_bytes
            self.young = {}
            total = cost
        self._young_bytes = total
        self.young[key] = value

    @property
    def nbytes(self) -> int:
        """The estimated bytes held by both generations."""
        return self._young_bytes + self._old_bytes

    def clear(self) -> None:
        self.young = {}
        self._old = {}
        self._young_bytes = self._old_bytes = 0

    def __len__(self) -> int:
        return len(self.young) + len(self._old)
