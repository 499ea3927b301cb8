"""Warnings about the operator's configuration: once per cause, never a flood.

A misconfiguration (a wrong ``trusted_proxies``, a missing server
integration) shows on every request, and so would its warning. :class:`Once`
lets each distinct cause through once, remembers at most ``max_causes`` of
them (a client that varies the cause, such as its address, cannot grow it),
and lets at most ``per_minute`` warnings through a minute whatever the
causes, so an attack cannot turn the warnings into a flood either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

__all__ = ["Once"]


class Once:
    """Decides whether a warning about ``cause`` is due: once per cause, rate-limited."""

    __slots__ = ("_clock", "_lock", "_seen", "_window", "max_causes", "per_minute")

    def __init__(
        self,
        *,
        max_causes: int = 64,
        per_minute: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_causes = max_causes
        self.per_minute = per_minute
        self._clock = clock
        self._seen: set[Hashable] = set()
        self._window: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, cause: Hashable) -> bool:
        """True the first time ``cause`` is seen, within the bounds; else False."""
        if cause in self._seen:
            return False
        with self._lock:
            if cause in self._seen or len(self._seen) >= self.max_causes:
                return False
            now = self._clock()
            window = [t for t in self._window if now - t < 60.0]
            if len(window) >= self.per_minute:
                # Not marked as seen: it may be warned about once the minute passed.
                self._window = window
                return False
            window.append(now)
            self._window = window
            self._seen.add(cause)
            return True

    def seen(self, cause: Hashable) -> bool:
        """True when ``cause`` was already warned about."""
        return cause in self._seen


#: The process-wide gate for the configuration warnings of every guard and
#: authenticator (causes include the object they concern).
WARNINGS = Once()


def safe_host(host: object) -> str:
    """A client address as a log shows it: printable, at most 100 characters."""
    if not isinstance(host, str) or not host.isprintable() or len(host) > 100:
        return repr(host)[:100]
    return host
