"""X.509 trust bundles from the SPIFFE Workload API (a SPIRE agent's socket).

Needs the optional ``spiffe`` package: ``pip install 'peer-middleware[spiffe]'``.

The ``spiffe`` package's ``X509Source`` starts a thread that streams updates
from the Workload API and *blocks* in its constructor until the first update
arrives (or its timeout passes). Build it before the event loop starts, or in
a worker thread: :meth:`WorkloadApiX509Source.open` does the latter::

    source = await WorkloadApiX509Source.open(socket_path="unix:///run/spire/agent.sock")
    verifier = X509SvidVerifier(source)

Every update (rotation, federation changes) replaces a snapshot that
:meth:`~WorkloadApiX509Source.x509_authorities` reads without locking or
blocking, and increases :attr:`~WorkloadApiX509Source.generation`; an update
that cannot be read keeps the last good snapshot and logs why (the shared
:class:`~peer_middleware._reload.Reloader`, with no thread of its own: the
``spiffe`` package's stream pushes the updates). A bundle that the update
carries without any X.509 authority stays known, with none: its trust
domain's X.509-SVIDs are then refused (a warning is logged when a trust
domain becomes so).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509

from ._reload import Reloader
from .errors import ConfigurationError

__all__ = ["WorkloadApiX509Source"]

logger = logging.getLogger("peer_middleware")

_Authorities = Mapping[str, tuple[x509.Certificate, ...]]


def _x509_source_class() -> Any:
    try:
        from spiffe import X509Source
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigurationError(
            "the SPIFFE Workload API source needs the 'spiffe' package: "
            "pip install 'peer-middleware[spiffe]'"
        ) from exc
    return X509Source


class WorkloadApiX509Source:
    """An :class:`~peer_middleware.bundles.X509BundleSource` fed by the SPIFFE Workload API.

    ``socket_path`` is the Workload API endpoint (``unix:///path``; default:
    the ``SPIFFE_ENDPOINT_SOCKET`` environment variable); ``timeout`` the
    seconds to wait for the first update. ``source`` is an already open
    ``spiffe.X509Source`` (or anything with its ``get_x509_context()``,
    ``subscribe_for_updates()`` and ``close()``) to use instead; it is then
    the caller's to close.

    The constructor blocks until the first update: do not call it on a
    running event loop (use :meth:`open`).
    """

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        timeout: float = 10.0,
        source: Any = None,
    ) -> None:
        if source is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise ConfigurationError(
                    "WorkloadApiX509Source() blocks until the Workload API answers: build it "
                    "before the event loop starts, or use 'await WorkloadApiX509Source.open()'"
                )
            cls = _x509_source_class()
            try:
                source = cls(socket_path=socket_path, timeout_in_seconds=timeout)
            except Exception as exc:
                raise ConfigurationError(f"SPIFFE Workload API: {exc}") from exc
            self._owns_source = True
        else:
            self._owns_source = False
        self._source = source
        self._reloader: Reloader[WorkloadApiX509Source, _Authorities] = Reloader(
            self,
            _read_update,
            subject="SPIFFE Workload API update",
            noun="bundles",
            logger=logger,
            level=logging.ERROR,
            interval=None,  # the Workload API client pushes updates (and retries)
        )
        self._refresh()
        source.subscribe_for_updates(self._refresh)

    @classmethod
    async def open(
        cls, *, socket_path: str | None = None, timeout: float = 10.0
    ) -> WorkloadApiX509Source:
        """Build the source in a worker thread, keeping the event loop free."""
        loop = asyncio.get_running_loop()
        source_class = _x509_source_class()

        def connect() -> Any:
            return source_class(socket_path=socket_path, timeout_in_seconds=timeout)

        try:
            source = await loop.run_in_executor(None, connect)
        except Exception as exc:
            raise ConfigurationError(f"SPIFFE Workload API: {exc}") from exc
        self = cls(source=source)
        self._owns_source = True
        return self

    def _refresh(self) -> None:
        self._reloader.attempt()

    @property
    def _authorities(self) -> _Authorities:
        snapshot = self._reloader.snapshot
        return {} if snapshot is None else snapshot.value

    @property
    def generation(self) -> int:
        snapshot = self._reloader.snapshot
        return 0 if snapshot is None else snapshot.generation

    @property
    def trust_domains(self) -> frozenset[str]:
        return frozenset(self._authorities)

    def x509_authorities(self, trust_domain: str) -> Sequence[x509.Certificate] | None:
        return self._authorities.get(trust_domain)

    def close(self) -> None:
        """Stop following updates; close the ``spiffe`` source if this object opened it."""
        unsubscribe = getattr(self._source, "unsubscribe_for_updates", None)
        if unsubscribe is not None:
            unsubscribe(self._refresh)
        if self._owns_source:
            self._source.close()

    def __repr__(self) -> str:
        return f"WorkloadApiX509Source(trust_domains={sorted(self._authorities)!r})"


def _read_update(source: WorkloadApiX509Source, force: bool) -> _Authorities:
    """The authorities of the source's current X.509 context, for the reloader."""
    context = source._source.get_x509_context()
    authorities: dict[str, tuple[x509.Certificate, ...]] = {}
    for bundle in context.x509_bundle_set.bundles:
        # An empty bundle is kept: it says the trust domain trusts nothing
        # (rather than that this source does not know it).
        authorities[str(bundle.trust_domain)] = tuple(bundle.x509_authorities)
    previous = source._authorities
    for domain in sorted(authorities):
        if not authorities[domain] and previous.get(domain) != ():
            logger.warning(
                "SPIFFE Workload API: trust domain %r holds no X.509 authority: "
                "its X.509-SVIDs are all refused",
                domain,
            )
    return authorities
