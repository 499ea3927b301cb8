"""Watching the guard's decisions: the observer hook, reason classes, log helpers.

The guard hands every verdict it makes to its observers, once, after it is
logged (``Guard(observers=[...])`` or :meth:`Guard.observe
<peer_middleware.guard.Guard.observe>`). An observer is any object with an
``observe(verdict, seconds)`` method: :class:`peer_middleware.metrics.PrometheusMetrics`
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
from typing import Protocol, runtime_checkable

from .errors import CertificateDecodingError, ConfigurationError, RequestRefused
from .peer import Peer
from .responses import ProblemResponse, Refusal, Responder, default_responder, respond
from .rules import Decision

__all__ = [
    "JsonFormatter",
    "Observed",
    "Observer",
    "outcome",
    "reason_class",
    "refusal_class",
    "rule_header",
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

    ``seconds`` is how long the guard took to decide (``None`` for a request
    an adapter or a route refused outside :meth:`Guard.check
    <peer_middleware.guard.Guard.check>`). It runs on the request's thread or
    event loop: keep it to a few counter increments.
    """

    def observe(self, verdict: Observed, seconds: float | None) -> None: ...


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
