"""Refusals: what a refused request gets on the wire.

The engine decides; this module turns a refusal into a fixed,
``application/problem+json`` response (RFC 9457) that reveals nothing of the
reason, which goes to the log. A custom responder may shape it otherwise;
should it fail, the default answer is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .peer import Peer

__all__ = ["ProblemResponse", "Refusal", "Responder", "default_responder", "respond"]

logger = logging.getLogger("peer_middleware")


@dataclass(frozen=True, slots=True)
class ProblemResponse:
    """A refusal as it goes on the wire."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused, for a custom responder.

    ``reason`` is precise and meant for logs; the default responder never
    puts it in the response.
    """

    status: int
    reason: str
    rule: str | None
    www_authenticate: str | None
    method: str
    path: str
    peer: Peer | None


_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}


def _problem(status: int) -> bytes:
    title = _TITLES[status]
    return f'{{"type":"about:blank","title":"{title}","status":{status}}}'.encode()


_BODIES = {status: _problem(status) for status in _TITLES}
_PROBLEM_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "application/problem+json"),
    ("cache-control", "no-store"),
)


def default_responder(refusal: Refusal) -> ProblemResponse:
    """Fixed ``application/problem+json`` bodies (RFC 9457) that reveal nothing."""
    status = refusal.status if refusal.status in _BODIES else 403
    headers = _PROBLEM_HEADERS
    if status == 401 and refusal.www_authenticate:
        headers = (*headers, ("www-authenticate", refusal.www_authenticate))
    return ProblemResponse(status, headers, _BODIES[status])


Responder = Callable[[Refusal], ProblemResponse]


def respond(responder: Responder, refusal: Refusal) -> ProblemResponse:
    """The responder's answer; the default one if a custom responder fails."""
    try:
        return responder(refusal)
    except Exception:
        logger.exception("custom responder failed; sending the default refusal")
        return default_responder(refusal)
