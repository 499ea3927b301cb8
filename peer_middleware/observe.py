"""Watching the guard's decisions: the observer hook, reason classes, log helpers.

The guard hands every verdict it makes to its observers, once, after it is
logged (``Guard(observers=[...])`` or :meth:`Guard.observe
<peer_middleware.guard.Guard.observe>`). An observer is any object with an
``observe(verdict, nanoseconds)`` method: :class:`peer_middleware.metrics.PrometheusMetrics`
and :class:`peer_middleware.otel.OpenTelemetryMetrics` are two. With no
observer the guard does no extra work at all; an observer that raises is
logged once and never changes a decision.

Labels an observer may use are bounded by construction: the rule that decided
(rule names come from the code), the outcome, the status, the proof kind and
the :func:`reason_class` of a refusal (the name of the exception class that
refused). Principals, paths and tokens are not labels.

Also here, for operators: :class:`JsonFormatter` (one JSON object a line,
with the decision's fields) and :func:`rule_header` (a responder that names
the deciding rule in a response header, for development only).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any, Protocol, runtime_checkable

from ._once import Once, safe_host
from .errors import CertificateDecodingError, ConfigurationError, RequestRefused
from .peer import Peer
from .proxies import TrustedProxies
from .request import Authenticator, RequestView
from .responses import ProblemResponse, Refusal, Responder, default_responder, respond
from .rules import MANY0, MANY1, MANY1N, ONE, Decision, PathPattern, Rule

__all__ = [
    "BUCKETS",
    "Counts",
    "JsonFormatter",
    "Observed",
    "Observer",
    "ProxyWatch",
    "Tally",
    "outcome",
    "reason_class",
    "refusal_class",
    "rule_header",
    "unmatched_rules",
    "warn_unmatched_rules",
]

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


@runtime_checkable
class Observed(Protocol):
    """What an observer sees of one decision (a :class:`~peer_middleware.guard.Verdict`).

    ``failure`` is the :func:`refusal_class` of the error that refused the
    request before the policy decided (``None`` when the policy decided).
    """

    @property
    def decision(self) -> Decision: ...

    @property
    def peer(self) -> Peer | None: ...

    @property
    def failure(self) -> str | None: ...


@runtime_checkable
class Observer(Protocol):
    """Called by the guard once per decision.

    ``nanoseconds`` is how long the guard took to decide, given for one
    decision in :data:`~peer_middleware.guard.TIMED_ONE_IN` (reading the clock
    costs more than counting); ``None`` for the others, and for a request
    an adapter or a route refused outside :meth:`Guard.check
    <peer_middleware.guard.Guard.check>`. It runs on the request's thread or
    event loop: keep it to a few counter increments.
    """

    def observe(self, verdict: Observed, nanoseconds: int | None) -> None: ...


def refusal_class(error: RequestRefused) -> str:
    """A short, stable name for what refused: the error's class in snake case.

    ``invalid_token``, ``authentication_failed``, ``bad_request``,
    ``access_denied``, ``untrusted_issuer``; a certificate that could not be
    decoded adds its fault (``certificate_decoding_error:not_pem``).
    """
    name = _CAMEL.sub("_", type(error).__name__).lower()
    if isinstance(error, CertificateDecodingError):
        return f"{name}:{error.fault}"
    return name


def reason_class(verdict: Observed) -> str:
    """Why a verdict came out as it did, as a label of bounded cardinality.

    ``allowed`` for an allow; the :func:`refusal_class` of an error that
    refused before the policy decided; ``no_identity`` / ``no_matching_rule``
    for the policy's default refusals; ``denied_by_rule`` for a rule's.
    """
    failure = verdict.failure
    if failure is not None:
        return failure
    decision = verdict.decision
    if decision.allowed and not decision.dry_run:
        return "allowed"
    if decision.rule is not None:
        return "denied_by_rule"
    return "no_identity" if decision.status == 401 else "no_matching_rule"


def outcome(decision: Decision) -> str:
    """``allowed``, ``refused`` or ``dry_run`` (a shadow-mode policy let a refusal through)."""
    if decision.dry_run:
        return "dry_run"
    return "allowed" if decision.allowed else "refused"


class JsonFormatter(logging.Formatter):
    """Log records as one JSON object a line.

    Every record has ``time``, ``level``, ``logger`` and ``message``; a
    decision record adds its fields (``outcome``, ``status``, ``rule``,
    ``reason``, ``principal``, ``proof``, ``proxy``, ``method``, ``path``,
    ``dry_run``, ``shadow``, ``audit``, ``notes``) from the record's
    ``peer_middleware`` attribute. For ``logging.config.dictConfig``:
    ``{"()": "peer_middleware.observe.JsonFormatter"}``.
    """

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "peer_middleware", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                data.setdefault(str(key), list(value) if isinstance(value, tuple) else value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def rule_header(
    responder: Responder | None = None, *, header: str = "x-peer-middleware-rule"
) -> Responder:
    """A responder that adds ``header: <rule that refused>`` to every refusal.

    **For development only**: it tells any caller which rule refused it,
    which is the policy's business, not the caller's. Off unless you pass it
    as ``responder=``. A refusal no rule decided names ``(none)``.
    """
    inner: Responder = responder or default_responder
    name = header.lower()
    if not re.fullmatch(r"[a-z0-9-]+", name):
        raise ConfigurationError(f"rule_header: {header!r} is not a header name")

    def responder_with_rule(refusal: Refusal) -> ProblemResponse:
        response = respond(inner, refusal)
        rule = refusal.rule if refusal.rule is not None else "(none)"
        value = rule.encode("ascii", "replace").decode("ascii")
        value = "".join(c if c.isprintable() else "?" for c in value)[:200]
        headers = (*response.headers, (name, value))
        return ProblemResponse(response.status, headers, response.body)

    return responder_with_rule


#: The decision-time histogram's upper bounds, in seconds: powers of two
#: nanoseconds from 256 ns (a remembered verdict takes about a microsecond)
#: to 16.8 ms (a first verification takes tens to hundreds of microseconds).
#: Powers of two let a duration find its bucket with one ``int.bit_length()``.
BUCKETS: tuple[float, ...] = tuple(2 ** (k + 8) / 1e9 for k in range(17))
_SLOTS = 64  # bit lengths of any duration below 2**72 ns
OVERFLOW = "(overflow)"


@dataclass(frozen=True, slots=True)
class Counts:
    """A copy of a :class:`Tally`'s counts, taken at once.

    ``decisions`` is keyed by (outcome, status, rule, proof); ``buckets``
    holds the count of each histogram bucket (not cumulative), the last one
    above every bound.
    """

    decisions: dict[tuple[str, int, str, str], int]
    refusals: dict[str, int]
    authentication_failures: dict[str, int]
    shadow: dict[tuple[str, str], int]
    audit: dict[str, int]
    bounds: tuple[float, ...]
    buckets: list[int]
    seconds: float


class Tally:
    """An observer that counts decisions in memory, for exporters to read.

    The request path takes no lock and builds nothing but one key: each count
    is an :func:`itertools.count`, whose ``next()`` is atomic under the GIL
    (only the histogram's sum may miss an update when threads race). An
    exporter (Prometheus at scrape time, OpenTelemetry's observable
    instruments at collection) reads :meth:`counts`. Label values are the
    outcome, status, deciding rule, proof kind and reason class; ``max_series``
    bounds how many distinct keys each count keeps (new ones beyond it are
    counted under ``(overflow)``).
    """

    def __init__(self, *, max_series: int = 10_000) -> None:
        if not isinstance(max_series, int) or max_series < 1:
            raise ConfigurationError("max_series must be a positive integer")
        self.buckets = BUCKETS
        self.max_series = max_series
        self._lock = threading.Lock()  # taken only to add a key
        # (allowed, dry_run, status, rule, proof) -> count
        self._decisions: dict[tuple[bool, bool, int, str | None, str], count[int]] = {}
        self._refusals: dict[str, count[int]] = {}
        self._auth_failures: dict[str, count[int]] = {}
        self._shadow: dict[tuple[str, str], count[int]] = {}
        self._audit: dict[str, count[int]] = {}
        # Slot i counts durations of d nanoseconds with (d >> 8).bit_length() == i,
        # that is below BUCKETS[i] (slot 0: below 256 ns).
        self._bucket_counts = tuple(count() for _ in range(_SLOTS))
        self._nanoseconds = 0
        self._last: tuple[object, count[int], bool] = (None, count(), True)

    def observe(self, verdict: Observed, nanoseconds: int | None) -> None:
        last = self._last
        if last[0] is verdict:
            # A remembered verdict served again (the guard's memory hands out
            # the same object): its counter is known.
            counter: count[int] = last[1]
            quiet = last[2]
        else:
            decision = verdict.decision
            peer = verdict.peer
            key = (
                decision.allowed,
                decision.dry_run,
                decision.status,
                decision.rule,
                # The enum's value, read without the enum machinery (this is hot).
                peer.proof._value_ if peer is not None else "none",
            )
            found = self._decisions.get(key)
            counter = found if found is not None else self._new(self._decisions, key)
            quiet = decision.quiet
            # One assignment: threads see a matching triple.
            self._last = (verdict, counter, quiet)
        next(counter)
        if nanoseconds is not None:
            next(self._bucket_counts[(nanoseconds >> 8).bit_length()])
            self._nanoseconds += nanoseconds
        if not quiet:
            self._news(verdict)

    def _new(self, table: dict[Any, count[int]], key: Any) -> count[int]:
        """The counter of a key seen for the first time (or the overflow one)."""
        with self._lock:
            counter = table.get(key)
            if counter is not None:
                return counter
            if len(table) >= self.max_series:
                if isinstance(key, str):
                    key = OVERFLOW
                elif table is self._decisions:
                    key = (*key[:3], OVERFLOW, key[4])
                else:
                    key = (OVERFLOW, *key[1:])
                counter = table.get(key)
                if counter is not None:
                    return counter
            counter = table[key] = count()
            return counter

    def _bump(self, table: dict[Any, count[int]], key: Any) -> None:
        counter = table.get(key)
        if counter is None:
            counter = self._new(table, key)
        next(counter)

    def _news(self, verdict: Observed) -> None:
        """Everything but a plain allow: refusals, shadow and audit results."""
        decision = verdict.decision
        if not decision.allowed or decision.dry_run:
            reason = reason_class(verdict)
            self._bump(self._refusals, reason)
            if verdict.failure is not None and decision.status == 401:
                self._bump(self._auth_failures, reason)
        for entry in decision.shadow:
            effect, _, name = entry.partition(":")
            self._bump(self._shadow, (name, effect))
        for name in decision.audit:
            self._bump(self._audit, name)

    def counts(self) -> Counts:
        """A copy of every count (each read at once; together, within a few requests)."""
        decisions: dict[tuple[str, int, str, str], int] = {}
        for (allowed, dry_run, status, rule, proof), counter in list(self._decisions.items()):
            if dry_run:
                kind = "dry_run"
            elif allowed:
                kind, status = "allowed", 200
            else:
                kind = "refused"
            key = (kind, status, rule or "(none)", proof)
            decisions[key] = decisions.get(key, 0) + _read(counter)
        return Counts(
            decisions,
            _values(self._refusals),
            _values(self._auth_failures),
            _values(self._shadow),
            _values(self._audit),
            self.buckets,
            _histogram([_read(counter) for counter in self._bucket_counts]),
            self._nanoseconds / 1e9,
        )


def _read(counter: count[int]) -> int:
    """How many times ``next`` was called on ``counter`` (``count(5)`` -> 5), without calling it."""
    return int(repr(counter)[6:-1])


def _histogram(slots: list[int]) -> list[int]:
    """Counts per bucket of :data:`BUCKETS`, and the count above the last."""
    size = len(BUCKETS)
    return [*slots[:size], sum(slots[size:])]


def _values(table: dict[Any, count[int]]) -> dict[Any, int]:
    return {key: _read(counter) for key, counter in list(table.items())}


logger = logging.getLogger("peer_middleware")


class ProxyWatch:
    """Warns about forwarded-identity headers that cannot be what the operator meant.

    Built by the guard over its authenticators that read a header from
    ``trusted_proxies``, and shown each request the authenticators ran on:

    * such a header from a peer that is not a trusted proxy is ignored, which
      a wrong ``trusted_proxies`` makes look like a legitimate refusal: one
      warning per (header, peer address), with the address;
    * a trusted proxy whose first ``absent_after`` requests carry none of the
      headers (a sidecar that does not forward identities, such as Envoy
      without ``forward_client_cert_details: SANITIZE_SET``): one warning per
      proxy address.

    Each warning comes once per cause, for at most ``max_causes`` causes and
    ``per_minute`` warnings a minute, so an attacker cannot turn it into a flood.
    """

    __slots__ = ("_absent", "_entries", "_fine", "_once", "absent_after")

    def __init__(
        self,
        authenticators: Sequence[Authenticator],
        *,
        absent_after: int = 20,
        max_causes: int = 32,
        per_minute: int = 10,
    ) -> None:
        entries: list[tuple[tuple[str, ...], TrustedProxies, str]] = []
        for authenticator in authenticators:
            proxies = getattr(authenticator, "trusted_proxies", None)
            if authenticator.forwarded and isinstance(proxies, TrustedProxies):
                entries.append(
                    (tuple(authenticator.header_names), proxies, str(authenticator.name))
                )
        self._entries = tuple(entries)
        self.absent_after = absent_after
        self._once = Once(max_causes=max_causes, per_minute=per_minute)
        self._absent: dict[str, int] = {}
        self._fine: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __call__(self, request: RequestView) -> None:
        client = request.client
        if client is None:
            return  # unknown, or rewritten by the server: warned about elsewhere
        host = client[0]
        headers = request.headers
        for names, proxies, name in self._entries:
            present = [n for n in names if n in headers]
            if host in proxies:
                if present:
                    self.fine(host)
                elif host not in self._fine:
                    self._count_absent(host, names, name)
            elif present and self._once(("untrusted", present[0], host)):
                logger.warning(
                    "%s arrived from %s, which is not in the %s authenticator's "
                    "trusted_proxies: the header is ignored and the request has no identity "
                    "from it. If %s is your proxy or sidecar, add it to trusted_proxies. "
                    "(Warned once per header and address.)",
                    present[0],
                    safe_host(host),
                    name,
                    safe_host(host),
                )

    def fine(self, host: str) -> None:
        """``host``, a trusted proxy, sent an identity header: it is set up."""
        fine = self._fine
        if host not in fine and len(fine) < 64:
            fine.add(host)

    def _count_absent(self, host: str, names: tuple[str, ...], name: str) -> None:
        absent = self._absent
        count = absent.get(host)
        if count is None:
            if len(absent) >= 64:
                return
            count = 0
        elif count >= self.absent_after:
            return  # warned (or had its chance): no more counting
        count += 1
        absent[host] = count
        if count == self.absent_after and self._once(("absent", host)):
            logger.warning(
                "the trusted proxy %s sent none of %s on its first %d requests: the %s "
                "authenticator finds no identity in them. Make the proxy set the header "
                "(Envoy: forward_client_cert_details: SANITIZE_SET), or check that it is "
                "the proxy you meant. (Warned once per proxy.)",
                safe_host(host),
                ", ".join(names),
                count,
                name,
            )


def unmatched_rules(rules: Iterable[Rule], routes: Iterable[str]) -> list[Rule]:
    """The rules none of whose path patterns can match a path of any of ``routes``.

    ``routes`` are the app's route templates (``/payments/{payment_id}``,
    ``/items/<int:item_id>``; a mount as ``/prefix/{rest:path}``). A rule for
    every path (``/**``) always matches. Converters are not compared (``<int:id>``
    is one segment): the check finds rules that name paths the app does not
    serve at all, such as a typo or a prefix the app was moved from.
    """
    compiled = []
    for template in routes:
        try:
            compiled.append(PathPattern.compile(template).segments)
        except ConfigurationError:
            compiled.append((MANY0,))  # a template of a syntax not known here: anything
    return [
        rule
        for rule in rules
        if not any(_overlap(p.segments, route) for p in rule.paths for route in compiled)
    ]


def warn_unmatched_rules(rules: Iterable[Rule], routes: Iterable[str], app: str) -> list[Rule]:
    """Log one WARNING naming the central rules that match no route of ``app``."""
    unmatched = unmatched_rules(rules, routes)
    if unmatched:
        named = "; ".join(
            f"{r.name!r} ({', '.join(p.text for p in r.paths)})" for r in unmatched[:_NAMED]
        )
        if len(unmatched) > _NAMED:
            named += f"; and {len(unmatched) - _NAMED} more (peer-middleware check lists them)"
        logger.warning(
            "%d rule(s) of the policy match no route of %s at start-up: %s. A path pattern "
            "with a typo, or one for routes that moved, protects nothing; check the paths.",
            len(unmatched),
            app,
            named,
        )
    return unmatched


#: How many unmatched rules the start-up warning names (the rest are counted).
_NAMED = 10


_MANY = (MANY0, MANY1, MANY1N)


def _overlap(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """True when some path matches both segment patterns (multi-segment wildcards
    taken as "zero or more segments", converters ignored)."""
    seen: dict[tuple[int, int], bool] = {}

    def step(i: int, j: int) -> bool:
        key = (i, j)
        if key in seen:
            return seen[key]
        seen[key] = False
        if i == len(a) and j == len(b):
            result = True
        elif i < len(a) and a[i] in _MANY:
            result = step(i + 1, j) or (j < len(b) and step(i, j + 1))
        elif j < len(b) and b[j] in _MANY:
            result = step(i, j + 1) or (i < len(a) and step(i + 1, j))
        elif i == len(a) or j == len(b):
            result = False
        else:
            x, y = a[i], b[j]
            if x is ONE:
                same = y is ONE or y != ""
            elif y is ONE:
                same = x != ""
            else:
                same = x == y
            result = same and step(i + 1, j + 1)
        seen[key] = result
        return result

    return step(0, 0)
