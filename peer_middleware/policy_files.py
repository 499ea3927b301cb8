"""Policies read from files, re-read when they change and swapped into a guard as a whole.

The one mechanism behind :class:`~peer_middleware.istio.IstioPolicyFiles` and
:class:`~peer_middleware.consul.ConsulPolicyFiles`: a loader that compiles the
files into a :class:`~peer_middleware.policy.Policy` (raising for anything it
cannot evaluate), the package's reloader (:mod:`peer_middleware._reload`) to
call it again when a file changed, and :meth:`Guard.replace_policy` to swap
the result in. A set of files that fails to load keeps the last good policy;
the reason is logged at ERROR on the ``peer_middleware`` logger.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ._reload import Outcome, Reloader
from .policy import Policy

if TYPE_CHECKING:
    from .guard import Guard

__all__ = ["PolicyFiles"]

logger = logging.getLogger("peer_middleware")

Paths = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]


def _stamp(paths: Paths) -> tuple[tuple[str, int, int], ...]:
    """What changes when any file named, or any file of a folder named, changes."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        files.extend(sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path])
    stamp = []
    for path in files:
        try:
            info = path.stat()
            stamp.append((str(path), info.st_mtime_ns, info.st_size))
        except OSError:
            stamp.append((str(path), -1, -1))
    return tuple(stamp)


class PolicyFiles:
    """A policy loaded from ``paths`` by ``load``, kept current in a guard.

    ``bind(guard)`` gives the guard the policy now (its route rules kept) and
    re-reads the files every ``interval`` seconds from a daemon thread
    (``None``: only when :meth:`reload` is called). ``subject`` names the
    files in the log.
    """

    def __init__(
        self,
        paths: Paths,
        load: Callable[[], Policy],
        *,
        subject: str,
        interval: float | None = 5.0,
    ) -> None:
        self._paths = paths
        self._load = load
        self._stamp = _stamp(paths)
        #: The policy in use (the last good one).
        self.policy = load()
        self._guard: Guard | None = None
        self._reloader: Reloader[PolicyFiles, Policy] = Reloader(
            self,
            _reread,
            subject=subject,
            noun="policy",
            logger=logger,
            level=logging.ERROR,
            interval=interval,
            start=False,
        )
        self._reloader.put(self.policy)

    def bind(self, guard: Guard) -> None:
        """Use this policy in ``guard`` (before it serves) and keep it current."""
        self._guard = guard
        guard.replace_policy(self.policy)
        if self._reloader.thread is not None:
            self._reloader.start()

    def reload(self) -> bool:
        """Read the files now; True when a new policy is in use."""
        return self._reloader.attempt(force=True) is Outcome.CHANGED

    @property
    def last_error(self) -> str | None:
        """Why the last read failed (``None`` after a successful one)."""
        return self._reloader.last_error

    def close(self) -> None:
        """Stop re-reading (waits a bounded time for a read in progress)."""
        self._reloader.close()


def _reread(owner: PolicyFiles, force: bool) -> Policy | None:
    stamp = _stamp(owner._paths)
    if stamp == owner._stamp and not force:
        return None
    policy = owner._load()
    guard = owner._guard
    if guard is not None:
        guard.replace_policy(policy)
    owner._stamp = stamp
    owner.policy = policy
    return policy
