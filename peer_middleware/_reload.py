"""Trust material re-read in the background: one mechanism for every source.

A :class:`Reloader` keeps the last good value of something read from a file,
a server or a Workload API stream (an X.509 bundle, a JWKS document) and reads
it again:

* on schedule: every ``interval`` seconds, from a daemon thread; after a
  failure sooner, every ``retry_interval`` seconds, doubling up to ``interval``;
* when asked: :meth:`~Reloader.attempt` reads now in the caller's thread;
  :meth:`~Reloader.signal` wakes the thread, at most once per
  ``min_signal_interval`` (what a request may do, without waiting);
  :meth:`~Reloader.refresh` wakes it and waits, a bounded time.

The owner's ``read`` function says what changed: it returns the new value,
``None`` when nothing did, or raises when the material cannot be read or
parsed. Then the last good value stays in use, the reason is logged (``"…
cannot be read"`` for an :class:`OSError`, ``"… is invalid"`` for anything
else) and kept in :attr:`~Reloader.last_error`. A new value replaces the last
as a whole, with a higher :attr:`Snapshot.generation`; every successful read,
changed or not, renews :attr:`Snapshot.expires` (``max_age`` seconds by the
reloader's clock), which owners that must not serve old material check.

The thread holds only a weak reference to the owner, so an abandoned source is
collected and its thread ends; :meth:`~Reloader.close` stops it and waits at
most five seconds. Nothing here knows a request, a framework or a format.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Outcome", "Reloader", "Snapshot"]

_T = TypeVar("_T")
_O = TypeVar("_O")

#: The longest :meth:`Reloader.close` waits for the thread to finish a read.
_JOIN_TIMEOUT = 5.0
#: Consecutive failures beyond which the retry delay stops doubling.
_MAX_DOUBLINGS = 10


class Outcome(enum.Enum):
    """What one read did."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[_T]):
    """The last good value, replaced as a whole.

    ``generation`` is 0 for the value the owner read itself (:meth:`Reloader.put`)
    and increases with every value a read brings; ``expires`` is the time, by
    the reloader's clock, after which the value is older than ``max_age``.
    """

    value: _T
    generation: int
    expires: float


class Reloader(Generic[_O, _T]):
    """Keeps the last good value of ``read(owner, force)`` and reads it again.

    ``read`` is called with the owner (never held strongly between reads) and
    ``force`` (true when :meth:`attempt` was asked to read even what looks
    unchanged); it must not be a bound method of the owner, which would keep
    the owner alive. ``subject`` names the material in the log (``"trust
    bundle '/etc/bundle.pem'"``) and ``noun`` what is kept (``"bundle"``);
    failures are logged to ``logger`` at ``level``.

    ``interval`` ``None`` starts no thread: reads happen only through
    :meth:`attempt`. Otherwise the thread's first read comes after
    ``first_delay`` seconds (default ``interval``), and the thread starts
    at once, or, with ``start=False``, at :meth:`start` or :meth:`refresh`.
    """

    def __init__(
        self,
        owner: _O,
        read: Callable[[_O, bool], _T | None],
        *,
        subject: str,
        noun: str,
        logger: logging.Logger,
        level: int = logging.WARNING,
        interval: float | None,
        retry_interval: float | None = None,
        first_delay: float | None = None,
        max_age: float = math.inf,
        min_signal_interval: float = 0.0,
        clock: Callable[[], float] = time.time,
        thread_name: str = "peer_middleware reloader",
        start: bool = True,
    ) -> None:
        if getattr(read, "__self__", None) is owner:
            raise TypeError("read must not be a bound method of the owner: it would keep it alive")
        self._owner = weakref.ref(owner)
        self._read = read
        self.subject = subject
        self.noun = noun
        self._logger = logger
        self._level = level
        self.interval = interval
        self.retry_interval: float = (
            retry_interval if retry_interval is not None else (interval or 0.0)
        )
        self.max_age = max_age
        self.min_signal_interval = min_signal_interval
        self.clock = clock
        #: The last good value; ``None`` until one was read.
        self.snapshot: Snapshot[_T] | None = None
        #: The reason of the last failed read (``None`` after a success).
        self.last_error: str | None = None
        #: Failed reads since the last successful one.
        self.failures = 0
        #: When the last good value was read or confirmed (by ``clock``), for metrics.
        self.checked_at: float | None = None
        #: What the last read did (``None`` before the first).
        self.last_outcome: Outcome | None = None
        self._read_lock = threading.Lock()  # one read at a time
        self._signal_lock = threading.Lock()
        self._last_signal = -math.inf
        self._attempts = threading.Condition()
        self._attempt_count = 0
        self._reading = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._first_delay = interval if first_delay is None else first_delay
        self.thread: threading.Thread | None = None
        if interval is not None:
            self.thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
            # The owner's end stops the thread at once, not at its next tick.
            weakref.finalize(owner, self._halt)
            if start:
                self.thread.start()

    # Reading ----------------------------------------------------------------

    def put(self, value: _T) -> None:
        """Take ``value`` as read just now (the owner's own first read), generation 0."""
        now = self.clock()
        self.snapshot = Snapshot(value, 0, now + self.max_age)
        self.checked_at = now

    def attempt(self, *, force: bool = False) -> Outcome | None:
        """Read now, in this thread; ``None`` when the owner is gone. Never raises."""
        owner = self._owner()
        if owner is None:
            return None
        with self._read_lock:
            with self._attempts:
                self._reading = True
            try:
                value = self._read(owner, force)
            except Exception as exc:  # any failure keeps the last good value
                outcome = self._failed(exc)
            else:
                outcome = self._succeeded(value)
            self.last_outcome = outcome
            with self._attempts:
                self._reading = False
                self._attempt_count += 1
                self._attempts.notify_all()
        return outcome

    def _succeeded(self, value: _T | None) -> Outcome:
        now = self.clock()
        previous = self.snapshot
        self.failures = 0
        self.last_error = None
        self.checked_at = now
        if value is not None:
            generation = 1 if previous is None else previous.generation + 1
            self.snapshot = Snapshot(value, generation, now + self.max_age)
            return Outcome.CHANGED
        if previous is not None and self.max_age != math.inf:
            self.snapshot = Snapshot(previous.value, previous.generation, now + self.max_age)
        return Outcome.UNCHANGED

    def _failed(self, exc: Exception) -> Outcome:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        problem = "cannot be read" if isinstance(exc, OSError) else "is invalid"
        if self.snapshot is None:
            kept = f"no {self.noun} yet"
        else:
            kept = f"keeping the last good {self.noun}"
        reason = str(exc) or type(exc).__name__
        self._logger.log(self._level, "%s %s, %s: %s", self.subject, problem, kept, reason)
        return Outcome.FAILED

    # Asking the thread --------------------------------------------------------

    def signal(self) -> None:
        """Wake the thread to read soon, at most once per ``min_signal_interval``; never waits."""
        now = self.clock()
        if now - self._last_signal < self.min_signal_interval:
            return
        with self._signal_lock:
            if now - self._last_signal < self.min_signal_interval:
                return
            self._last_signal = now
        self._wake.set()

    def refresh(self, timeout: float = 10.0) -> bool:
        """Read now (ignoring the signal rate limit) and wait; True when it succeeded."""
        if self.thread is None:
            return self.attempt() in (Outcome.CHANGED, Outcome.UNCHANGED)
        with self._attempts:
            # A read already under way may predate the caller's reason to refresh.
            target = self._attempt_count + (2 if self._reading else 1)
            self._wake.set()
            self.start()
            self._attempts.wait_for(lambda: self._attempt_count >= target, timeout)
            return self._attempt_count >= target and self.failures == 0

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until a first value is available; True when it is."""
        deadline = time.monotonic() + timeout
        with self._attempts:
            while self.snapshot is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._attempts.wait(remaining)
        return True

    # The thread -----------------------------------------------------------------

    def start(self) -> None:
        """Start the thread, unless it runs, ran, or the reloader is closed."""
        thread = self.thread
        if thread is not None and not thread.is_alive() and not self._stop.is_set():
            with contextlib.suppress(RuntimeError):  # already started and finished
                thread.start()

    def close(self) -> None:
        """Stop the thread, waiting a bounded time for a read under way."""
        self._halt()
        thread = self.thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=_JOIN_TIMEOUT)

    def _halt(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        interval = self.interval
        if interval is None:  # pragma: no cover - no thread is made without one
            return
        delay = self._first_delay or 0.0
        while not self._stop.is_set():
            if delay > 0:
                self._wake.wait(delay)
            if self._stop.is_set():
                break
            self._wake.clear()
            outcome = self.attempt()
            if outcome is None:  # the owner was collected
                break
            if outcome is Outcome.FAILED:
                doublings = min(self.failures - 1, _MAX_DOUBLINGS)
                delay = min(self.retry_interval * 2**doublings, interval)
            else:
                delay = interval


def reloader_of(source: object) -> Reloader[Any, Any] | None:
    """The :class:`Reloader` that keeps ``source``'s material, if it has one (for metrics)."""
    reloader = getattr(source, "_reloader", None)
    return reloader if isinstance(reloader, Reloader) else None
