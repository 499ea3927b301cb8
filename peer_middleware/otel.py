"""OpenTelemetry metrics and span attributes of the guard's decisions.

``pip install 'peer-middleware[otel]'`` (the API only; the SDK and exporters
are the application's choice)::

    from peer_middleware.otel import DecisionSpans, OpenTelemetryMetrics

    metrics = OpenTelemetryMetrics()          # the global MeterProvider, or meter_provider=
    guard = Guard(policy=policy, authenticators=authenticators,
                  observers=[metrics, DecisionSpans()])

:class:`OpenTelemetryMetrics` counts in memory (as
:class:`~peer_middleware.observe.Tally`) and reports through observable
instruments, read when the SDK collects: ``peer_middleware.decisions``
(attributes ``outcome``, ``status``, ``rule``, ``proof``),
``peer_middleware.refusals`` and ``peer_middleware.authentication_failures``
(``reason``), ``peer_middleware.shadow_results`` (``rule``, ``effect``),
``peer_middleware.audit_matches`` (``rule``), ``peer_middleware.memory.entries``
and ``peer_middleware.memory.bytes`` (``part``), ``peer_middleware.memory.hits``.
The decision time goes to the histogram ``peer_middleware.decision.duration``
(seconds) only with ``durations=True``: a synchronous OpenTelemetry
histogram costs about a microsecond a request.

:class:`DecisionSpans` sets the decision on the active span, when one is
recording: ``peer_middleware.decision.outcome``, ``.status``, ``.rule``,
``.reason_class``, ``peer_middleware.peer.principal`` and
``peer_middleware.peer.proof``. Traces are per request, so the principal is
there; it never is in metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .errors import ConfigurationError
from .guard import Guard
from .observe import Observed, Tally, outcome, reason_class

__all__ = ["DecisionSpans", "OpenTelemetryMetrics"]


def _api() -> Any:
    try:
        from opentelemetry import metrics, trace
    except ImportError as error:  # pragma: no cover - depends on the extra
        raise ConfigurationError(
            "peer_middleware.otel needs opentelemetry-api: pip install 'peer-middleware[otel]'"
        ) from error
    return metrics, trace


class OpenTelemetryMetrics(Tally):
    """An observer of the guard reporting through an OpenTelemetry ``MeterProvider``.

    ``meter_provider`` defaults to the global one. ``durations`` records each
    decision's time in a histogram (off by default: it costs about a
    microsecond a request).
    """

    def __init__(
        self,
        *,
        meter_provider: Any = None,
        durations: bool = False,
        max_series: int = 10_000,
    ) -> None:
        metrics, _ = _api()
        super().__init__(max_series=max_series)
        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("peer_middleware")
        self._guards: list[Guard] = []
        observation = metrics.Observation

        def counter(
            name: str, description: str, read: Callable[[], Iterable[tuple[dict[str, Any], int]]]
        ) -> None:
            def callback(options: Any) -> Iterable[Any]:
                return [observation(value, attributes) for attributes, value in read()]

            meter.create_observable_counter(name, callbacks=[callback], description=description)

        counter(
            "peer_middleware.decisions",
            "Decisions of the guard, by outcome, status, deciding rule and proof.",
            lambda: [
                ({"outcome": o, "status": s, "rule": r, "proof": p}, v)
                for (o, s, r, p), v in self.counts().decisions.items()
            ],
        )
        counter(
            "peer_middleware.refusals",
            "Refusals (and dry-run would-be refusals) by reason class.",
            lambda: [({"reason": k}, v) for k, v in self.counts().refusals.items()],
        )
        counter(
            "peer_middleware.authentication_failures",
            "Requests refused with 401 because a credential was missing, malformed or invalid.",
            lambda: [({"reason": k}, v) for k, v in self.counts().authentication_failures.items()],
        )
        counter(
            "peer_middleware.shadow_results",
            "What shadow rules would have done.",
            lambda: [({"rule": r, "effect": e}, v) for (r, e), v in self.counts().shadow.items()],
        )
        counter(
            "peer_middleware.audit_matches",
            "Audit rules that matched.",
            lambda: [({"rule": k}, v) for k, v in self.counts().audit.items()],
        )
        counter(
            "peer_middleware.memory.hits",
            "Requests answered by a remembered verdict.",
            lambda: [({}, sum(g.memory.hits for g in self._guards))] if self._guards else [],
        )

        def memory(what: str) -> Callable[[Any], Iterable[Any]]:
            def callback(options: Any) -> Iterable[Any]:
                totals: dict[str, int] = {}
                for guard in self._guards:
                    for part, cache in guard.memory.parts().items():
                        value = len(cache) if what == "entries" else cache.nbytes
                        totals[part] = totals.get(part, 0) + value
                return [observation(v, {"part": k}) for k, v in totals.items()]

            return callback

        meter.create_observable_gauge(
            "peer_middleware.memory.entries",
            callbacks=[memory("entries")],
            description="Entries the guard remembers.",
        )
        meter.create_observable_gauge(
            "peer_middleware.memory.bytes",
            callbacks=[memory("bytes")],
            description="Estimated bytes the guard remembers.",
            unit="By",
        )
        self._histogram: Any = None
        if durations:
            self._histogram = meter.create_histogram(
                "peer_middleware.decision.duration",
                unit="s",
                description="Time the guard took to decide a request.",
                explicit_bucket_boundaries_advisory=list(self.buckets),
            )

    def observe(self, verdict: Observed, nanoseconds: int | None) -> None:
        super().observe(verdict, nanoseconds)
        histogram = self._histogram
        if histogram is not None and nanoseconds is not None:
            histogram.record(nanoseconds / 1e9)

    def bind(self, guard: Guard) -> None:
        """Report ``guard``'s memory (entries and bytes per part, hits) too.

        Called by the guard this observer is given to; call it yourself for
        another guard to watch.
        """
        if not isinstance(guard, Guard):
            raise ConfigurationError(f"bind needs a Guard, not {type(guard).__name__}")
        if all(known is not guard for known in self._guards):
            self._guards.append(guard)


class DecisionSpans:
    """An observer that puts each decision on the active span, when one is recording."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        _, trace = _api()
        self._current: Callable[[], Any] = trace.get_current_span

    def observe(self, verdict: Observed, nanoseconds: int | None) -> None:
        span = self._current()
        if not span.is_recording():
            return
        decision = verdict.decision
        peer = verdict.peer
        attributes: dict[str, str | int] = {
            "peer_middleware.decision.outcome": outcome(decision),
            "peer_middleware.decision.status": decision.enforced_status,
            "peer_middleware.decision.rule": decision.rule or "",
            "peer_middleware.decision.reason_class": reason_class(verdict),
        }
        if peer is not None:
            attributes["peer_middleware.peer.principal"] = peer.principal
            attributes["peer_middleware.peer.proof"] = peer.proof.value
        span.set_attributes(attributes)
