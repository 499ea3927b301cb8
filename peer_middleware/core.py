"""Former home of the guard, the request view and the responses (kept for imports)."""

from .guard import Guard, Verdict, logger
from .request import Authenticator, RequestView
from .responses import ProblemResponse, Refusal, Responder, default_responder

__all__ = [
    "Authenticator",
    "Guard",
    "ProblemResponse",
    "Refusal",
    "RequestView",
    "Responder",
    "Verdict",
    "default_responder",
    "logger",
]
