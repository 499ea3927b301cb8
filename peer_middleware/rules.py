"""Rules: what a matcher may or may not call, and the decisions they lead to.

A :class:`Rule` names a :class:`~peer_middleware.matchers.Matcher`, the
methods and the path patterns it applies to, and what happens when it
matches (:class:`Action`). Build rules with :func:`allow`, :func:`deny` and
:func:`audit`; a :class:`~peer_middleware.policy.Policy` compiles them. A
:class:`Decision` is what a policy says about one request, naming the rule
that decided. A :class:`Route` is a route of the app as its framework
dispatches to it (rules can be declared on one).

Paths are matched against the normalised path (see :mod:`peer_middleware.paths`).
Patterns:

=====================  ===============================================
``/payments``          exactly that path (case-sensitive, no trailing slash)
``/payments/``         exactly that path, with its trailing slash
``/payments/*``        one more segment, any value
``/payments/**``       ``/payments`` itself and anything below it (a prefix
                       that respects segment boundaries: not ``/paymentsX``)
``/p/{id}``, ``/p/<id>``, ``/p/<int:id>``
                       route templates (FastAPI/Starlette and Flask styles):
                       one non-empty segment
``/p/{x:path}``        the rest after ``/p/``, possibly empty (as Starlette)
``/p/<path:x>``        one or more segments, the first non-empty (as Flask)
``/a/**/z``            a multi-segment wildcard may stand anywhere, once
=====================  ===============================================
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .conditions import Condition
from .errors import ConfigurationError
from .matchers import Matcher

__all__ = [
    "Action",
    "Decision",
    "PathPattern",
    "Route",
    "Rule",
    "allow",
    "audit",
    "deny",
]

_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")
#: The methods a rule may name: the IANA HTTP Method Registry. Any other name
#: is far more likely a typo ("DELTE") than a method a router serves.
KNOWN_METHODS = frozenset(
    {
        "ACL", "BASELINE-CONTROL", "BIND", "CHECKIN", "CHECKOUT", "CONNECT", "COPY",
        "DELETE", "GET", "HEAD", "LABEL", "LINK", "LOCK", "MERGE", "MKACTIVITY",
        "MKCALENDAR", "MKCOL", "MKREDIRECTREF", "MKWORKSPACE", "MOVE", "OPTIONS",
        "ORDERPATCH", "PATCH", "POST", "PRI", "PROPFIND", "PROPPATCH", "PUT", "QUERY",
        "REBIND", "REPORT", "SEARCH", "TRACE", "UNBIND", "UNCHECKOUT", "UNLINK",
        "UNLOCK", "UPDATE", "UPDATEREDIRECTREF", "VERSION-CONTROL",
    }
)  # fmt: skip


# --------------------------------------------------------------------------
# Rules.
# --------------------------------------------------------------------------


class Action(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    AUDIT = "audit"


# Path pattern pieces: a literal segment is a str; these mark the others in
# PathPattern.segments (the compiled policy builds its tree from them).
ONE = object()  # exactly one segment, any value
MANY0 = object()  # zero or more segments ("**")
MANY1 = object()  # the rest after a slash, possibly empty ("{x:path}", as Starlette)
MANY1N = object()  # one or more segments, the first not empty ("<path:x>", as Flask)

_BRACE = re.compile(r"\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<conv>[A-Za-z_]+))?\}")
_ANGLE = re.compile(
    r"<(?:(?P<conv>[A-Za-z_][A-Za-z0-9_]*)(?:\([^)<>]*\))?:)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>"
)
_LITERAL_FORBIDDEN = re.compile(r"[*{}<>;\\\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled path pattern (see the module docstring for the syntax)."""

    text: str
    segments: tuple[object, ...]

    @classmethod
    def compile(cls, text: str) -> PathPattern:
        if not isinstance(text, str) or not text.startswith("/"):
            raise ConfigurationError(f"path pattern {text!r} must be a string starting with '/'")
        parts = text[1:].split("/")
        segments: list[object] = []
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            template = _BRACE.fullmatch(part) or _ANGLE.fullmatch(part)
            if part == "**":
                segments.append(MANY0)
            elif template is not None and template.group("conv") == "path":
                segments.append(MANY1 if part.startswith("{") else MANY1N)
            elif part == "*" or template is not None:
                segments.append(ONE)
            elif part == "" and not last:
                raise ConfigurationError(f"path pattern {text!r} has an empty segment")
            elif part in (".", ".."):
                raise ConfigurationError(f"path pattern {text!r} has a dot segment")
            elif _LITERAL_FORBIDDEN.search(part):
                raise ConfigurationError(
                    f"path pattern {text!r}: segment {part!r} mixes wildcards or templates "
                    "with text, or has a character no normalised path contains"
                )
            else:
                segments.append(part)
        if sum(1 for s in segments if s is MANY0 or s is MANY1 or s is MANY1N) > 1:
            raise ConfigurationError(
                f"path pattern {text!r} has more than one multi-segment wildcard"
            )
        return cls(text, tuple(segments))


def _as_tuple(value: str | Iterable[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ConfigurationError(f"{what} must be a string or an iterable of strings") from None
    if not items:
        raise ConfigurationError(f"{what} is empty: the rule would never match")
    return items


@dataclass(frozen=True, slots=True)
class Rule:
    """A named rule. Build with :func:`allow`, :func:`deny` or :func:`audit`.

    ``methods`` ``None`` means any method; methods are upper-case HTTP tokens
    compared with the method exactly as sent. ``paths`` are patterns (see the
    module docstring); the default ``("/**",)`` is every path.
    """

    name: str
    action: Action
    who: Matcher
    methods: frozenset[str] | None = None
    paths: tuple[PathPattern, ...] = ()
    shadow: bool = False
    #: Request conditions (:mod:`peer_middleware.conditions`); all must hold.
    when: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError(f"rule name {self.name!r} must be a non-empty string")
        if not isinstance(self.action, Action):
            raise ConfigurationError(f"rule {self.name!r}: action must be an Action")
        if not isinstance(self.who, Matcher):
            raise ConfigurationError(f"rule {self.name!r}: who={self.who!r} is not a matcher")
        if not self.paths:
            raise ConfigurationError(f"rule {self.name!r} has no paths")
        for condition in self.when:
            if not isinstance(condition, Condition):
                raise ConfigurationError(f"rule {self.name!r}: {condition!r} is not a condition")

    @property
    def reads(self) -> frozenset[str]:
        """The request attributes the rule's conditions read (see :attr:`Condition.reads`)."""
        return frozenset().union(*(c.reads for c in self.when))

    @classmethod
    def build(
        cls,
        action: Action,
        name: str,
        who: Matcher,
        *,
        methods: str | Iterable[str] | None = None,
        paths: str | Iterable[str] = "/**",
        shadow: bool = False,
        when: Condition | Iterable[Condition] = (),
    ) -> Rule:
        method_items = _as_tuple(methods, f"rule {name!r} methods")
        method_set: frozenset[str] | None = None
        if method_items is not None:
            for method in method_items:
                if not isinstance(method, str) or _METHOD.fullmatch(method) is None:
                    raise ConfigurationError(
                        f"rule {name!r}: method {method!r} must be an upper-case HTTP token"
                    )
                if method not in KNOWN_METHODS:
                    raise ConfigurationError(
                        f"rule {name!r}: unknown method {method!r} (not in the IANA HTTP "
                        "method registry)"
                    )
            method_set = frozenset(method_items)
        path_items = _as_tuple(paths, f"rule {name!r} paths") or ()
        compiled = tuple(PathPattern.compile(p) for p in path_items)
        conditions = (when,) if isinstance(when, Condition) else tuple(when)
        return cls(name, action, who, method_set, compiled, bool(shadow), conditions)

    def describe(self) -> str:
        methods = "*" if self.methods is None else ",".join(sorted(self.methods))
        paths = ",".join(p.text for p in self.paths)
        shadow = " (shadow)" if self.shadow else ""
        when = "".join(f" when {c.describe()}" for c in self.when)
        return (
            f"{self.action.value} {self.name!r}: {methods} {paths} {self.who.describe()}"
            f"{when}{shadow}"
        )


def allow(
    name: str,
    who: Matcher,
    *,
    methods: str | Iterable[str] | None = None,
    paths: str | Iterable[str] = "/**",
    shadow: bool = False,
    when: Condition | Iterable[Condition] = (),
) -> Rule:
    """An ALLOW rule: ``who`` may call ``methods`` on ``paths``."""
    return Rule.build(
        Action.ALLOW, name, who, methods=methods, paths=paths, shadow=shadow, when=when
    )


def deny(
    name: str,
    who: Matcher,
    *,
    methods: str | Iterable[str] | None = None,
    paths: str | Iterable[str] = "/**",
    shadow: bool = False,
    when: Condition | Iterable[Condition] = (),
) -> Rule:
    """A DENY rule: ``who`` may not call ``methods`` on ``paths``; wins over ALLOW."""
    return Rule.build(
        Action.DENY, name, who, methods=methods, paths=paths, shadow=shadow, when=when
    )


def audit(
    name: str,
    who: Matcher,
    *,
    methods: str | Iterable[str] | None = None,
    paths: str | Iterable[str] = "/**",
    when: Condition | Iterable[Condition] = (),
) -> Rule:
    """An AUDIT rule: a match is logged at INFO and changes nothing."""
    return Rule.build(Action.AUDIT, name, who, methods=methods, paths=paths, when=when)


# --------------------------------------------------------------------------
# Decisions.
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a policy for one request.

    ``rule`` is the name of the rule that decided (``None`` when no rule
    matched and the default refusal applied); ``reason`` says why in words.
    ``status`` is 200 when allowed, else 401 or 403. ``dry_run`` is True when
    a shadow-mode policy let through a request it would have refused (then
    ``status``, ``rule`` and ``reason`` describe the refusal it would have
    made). ``shadow`` and ``audit`` list what shadow and audit rules said.
    """

    allowed: bool
    status: int
    rule: str | None
    reason: str
    dry_run: bool = False
    shadow: tuple[str, ...] = ()
    audit: tuple[str, ...] = ()
    #: True for an allow with no dry-run, shadow or audit news (logged at DEBUG).
    quiet: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        quiet = self.allowed and not (self.dry_run or self.shadow or self.audit)
        object.__setattr__(self, "quiet", quiet)

    @property
    def enforced_status(self) -> int:
        """The status the caller actually gets."""
        return 200 if self.allowed else self.status


#: The default refusals, when no rule decided.
NO_IDENTITY = Decision(False, 401, None, "no allow rule matched and the request has no identity")
NO_RULE = Decision(False, 403, None, "no allow rule matched this caller")


# --------------------------------------------------------------------------
# Routes.
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """A route of the app, as its framework dispatches requests to it.

    Rules declared on a route (FastAPI's and Flask's ``require``) are keyed by
    the :class:`Route` the framework integration resolves for each request,
    never by a path pattern: they apply to that route and to nothing else.
    Two routes are the same only if they are the same object. ``name``
    describes it in logs (``"GET /payments/{payment_id}"``).
    """

    name: str

    def __repr__(self) -> str:
        return f"Route({self.name!r})"
