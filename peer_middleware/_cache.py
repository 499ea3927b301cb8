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
