"""Prometheus metrics of the guard's decisions (``pip install 'peer-middleware[prometheus]'``).

::

    from prometheus_client import REGISTRY
    from peer_middleware.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()            # registers in prometheus_client's REGISTRY
    guard = Guard(policy=policy, authenticators=authenticators, observers=[metrics])
    metrics.watch_trust("bundle", bundle)    # age, last refresh result, generation

Every decision costs a few dictionary operations under one lock: the
counters and the histogram are kept here and handed to Prometheus when it
scrapes (a :mod:`prometheus_client` custom collector), so nothing of
``prometheus_client`` runs on the request path.

Metrics (``peer_middleware_`` prefix):

=====================================  =========================================
``decisions_total``                    counter: ``outcome`` (allowed, refused,
                                       dry_run), ``status``, ``rule`` (the rule
                                       that decided, ``(none)``), ``proof``
``refusals_total``                     counter: ``reason`` (the reason class,
                                       :func:`~peer_middleware.observe.reason_class`)
``authentication_failures_total``      counter: ``reason`` (401s a credential caused)
``shadow_results_total``               counter: ``rule``, ``effect`` (what a shadow
                                       rule would have done)
``audit_matches_total``                counter: ``rule``
``decision_seconds``                   histogram of the time to decide (one
                                       decision in eight is timed)
``memory_entries`` / ``memory_bytes``  gauges: ``part`` (paths, plans, routes,
                                       identities, verdicts)
``memory_hits_total``                  counter: requests answered by a remembered verdict
``trust_material_age_seconds``         gauge: ``source``; time since the last good read
``trust_material_generation``          gauge: ``source``
``trust_material_last_refresh_ok``     gauge: ``source``; 1 after a good read, 0 after a failed one
=====================================  =========================================

Labels are bounded by construction: rule names and reason classes come from
the code and the configuration, never from a request. A custom responder or
authenticator can add classes, but only as many as it has exception types.
``max_series`` bounds the label sets kept all the same (default 10 000);
beyond it, new label sets are counted under ``rule="(overflow)"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._reload import Outcome, reloader_of
from .errors import ConfigurationError
from .guard import Guard
from .observe import Tally

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = ["PrometheusMetrics"]


class PrometheusMetrics(Tally):
    """An observer of the guard that Prometheus scrapes.

    ``registry`` is where the collector registers (default
    ``prometheus_client.REGISTRY``); with ``register=False`` it registers
    nowhere (``registry.register(metrics)`` yourself). ``namespace`` prefixes
    every metric; ``max_series`` bounds the label sets of each metric. The
    decision-time histogram's buckets are :data:`~peer_middleware.observe.BUCKETS`.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        register: bool = True,
        namespace: str = "peer_middleware",
        max_series: int = 10_000,
    ) -> None:
        try:
            import prometheus_client
        except ImportError as error:  # pragma: no cover - depends on the extra
            raise ConfigurationError(
                "PrometheusMetrics needs prometheus_client: "
                "pip install 'peer-middleware[prometheus]'"
            ) from error
        if not namespace.replace("_", "").isalnum():
            raise ConfigurationError(f"namespace {namespace!r} must be letters, digits and _")
        super().__init__(max_series=max_series)
        self.namespace = namespace
        self._guards: list[Guard] = []
        self._trust: dict[str, object] = {}
        if register:
            (registry or prometheus_client.REGISTRY).register(self)

    # What is watched -------------------------------------------------------

    def bind(self, guard: Guard) -> None:
        """Report ``guard``'s memory (entries and bytes per part, hits) too.

        Called by the guard this observer is given to; call it yourself for
        another guard to watch.
        """
        if not isinstance(guard, Guard):
            raise ConfigurationError(f"bind needs a Guard, not {type(guard).__name__}")
        if all(known is not guard for known in self._guards):
            self._guards.append(guard)

    def watch_trust(self, name: str, source: object) -> None:
        """Report a trust bundle or key source as ``source=name``.

        ``source`` is an :class:`~peer_middleware.bundles.X509BundleFile`,
        :class:`~peer_middleware.bundles.StaticX509Bundle`,
        :class:`~peer_middleware.bundles.SpiffeBundleSet` (each of its sources
        as ``name/index``), a key source from :mod:`peer_middleware.keys`, or
        anything with a ``generation``.
        """
        if not isinstance(name, str) or not name:
            raise ConfigurationError("watch_trust needs a non-empty name")
        self._trust[name] = source
        for index, inner in enumerate(getattr(source, "sources", ()) or ()):
            self._trust[f"{name}/{index}"] = inner

    # The scrape ----------------------------------------------------------

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        ns = self.namespace
        counts = self.counts()
        family = CounterMetricFamily(
            f"{ns}_decisions",
            "Decisions of the guard, by outcome, status, deciding rule and proof.",
            labels=["outcome", "status", "rule", "proof"],
        )
        for (out, status, rule, proof), value in sorted(counts.decisions.items()):
            family.add_metric([out, str(status), rule, proof], value)
        yield family
        yield _counter(
            CounterMetricFamily,
            f"{ns}_refusals",
            "Refusals (and dry-run would-be refusals) by reason class.",
            "reason",
            counts.refusals,
        )
        yield _counter(
            CounterMetricFamily,
            f"{ns}_authentication_failures",
            "Requests refused with 401 because a credential was missing, malformed or invalid.",
            "reason",
            counts.authentication_failures,
        )
        family = CounterMetricFamily(
            f"{ns}_shadow_results",
            "What shadow rules would have done.",
            labels=["rule", "effect"],
        )
        for (rule, effect), value in sorted(counts.shadow.items()):
            family.add_metric([rule, effect], value)
        yield family
        yield _counter(
            CounterMetricFamily,
            f"{ns}_audit_matches",
            "Audit rules that matched.",
            "rule",
            counts.audit,
        )
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*counts.bounds, float("inf")), counts.buckets, strict=True):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        yield HistogramMetricFamily(
            f"{ns}_decision_seconds",
            "Time the guard took to decide a request.",
            buckets=buckets,
            sum_value=counts.seconds,
        )
        yield from self._memory(CounterMetricFamily, GaugeMetricFamily)
        yield from self._trust_material(GaugeMetricFamily)

    def _memory(self, counter: Any, gauge: Any) -> Iterable[Any]:
        if not self._guards:
            return
        ns = self.namespace
        entries = gauge(f"{ns}_memory_entries", "Entries the guard remembers.", labels=["part"])
        nbytes = gauge(
            f"{ns}_memory_bytes", "Estimated bytes the guard remembers.", labels=["part"]
        )
        hits = counter(f"{ns}_memory_hits", "Requests answered by a remembered verdict.")
        totals: dict[str, tuple[int, int]] = {}
        hit_count = 0
        for guard in self._guards:
            memory = guard.memory
            hit_count += memory.hits
            for part, cache in memory.parts().items():
                count, size = totals.get(part, (0, 0))
                totals[part] = (count + len(cache), size + cache.nbytes)
        for part, (count, size) in totals.items():
            entries.add_metric([part], count)
            nbytes.add_metric([part], size)
        hits.add_metric([], hit_count)
        yield entries
        yield nbytes
        yield hits

    def _trust_material(self, gauge: Any) -> Iterable[Any]:
        if not self._trust:
            return
        ns = self.namespace
        age = gauge(
            f"{ns}_trust_material_age_seconds",
            "Seconds since the trust material was last read or confirmed.",
            labels=["source"],
        )
        generation = gauge(
            f"{ns}_trust_material_generation",
            "Generation of the trust material (increases with every change).",
            labels=["source"],
        )
        ok = gauge(
            f"{ns}_trust_material_last_refresh_ok",
            "1 when the last refresh succeeded, 0 when it failed.",
            labels=["source"],
        )
        for name, source in self._trust.items():
            value = _generation(source)
            if value is not None:
                generation.add_metric([name], value)
            reloader = reloader_of(source)
            if reloader is None:
                continue
            if reloader.snapshot is not None and value is None:
                generation.add_metric([name], reloader.snapshot.generation)
            if reloader.checked_at is not None:
                age.add_metric([name], max(0.0, reloader.clock() - reloader.checked_at))
            if reloader.last_outcome is not None:
                ok.add_metric([name], 0 if reloader.last_outcome is Outcome.FAILED else 1)
            elif reloader.snapshot is not None:
                ok.add_metric([name], 1)
        yield age
        yield generation
        yield ok


def _counter(
    kind: Callable[..., Any], name: str, doc: str, label: str, values: dict[str, int]
) -> Any:
    family = kind(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _bound(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(value)


def _generation(source: object) -> int | None:
    value = getattr(source, "generation", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
