"""The framework-free core: one request in, an identity and a decision out.

The ASGI and WSGI adapters translate their request into the few values this
module needs (method, decoded path, raw target, client address, the headers
authenticators asked for) and turn its :class:`Verdict` back into a call to
the app or a refusal. Nothing here knows about Starlette, Flask, ASGI or WSGI.

Order of work for every request, failing closed at each step:

1. the method must be an HTTP token, else 400;
2. the raw target must carry no forbidden encoding, else 400; the decoded
   path is normalised (see :mod:`peer_middleware.paths`), else 400;
3. each authenticator, in order, may find a peer; one that finds a malformed
   or invalid credential refuses the request with 401; forwarded credentials
   are read only from trusted proxies. The first certificate-based peer is
   the request's peer, and a bearer-token peer found as well is attached to
   it as ``peer.token`` (a token alone makes the peer); a token bound to a
   certificate (RFC 8705) is refused unless that certificate was presented;
4. the policy decides (403 for a known peer, 401 without identity);
5. one log record describes the decision.

Any unexpected exception in steps 1 to 4 refuses the request with 403 and is
logged with its traceback: a bug must never let a request through.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from itertools import cycle
from time import perf_counter_ns

from ._once import WARNINGS
from .conditions import RequestFacts, check_value
from .errors import (
    AccessDenied,
    BadRequest,
    ConfigurationError,
    InvalidToken,
    RequestRefused,
    UntrustedIssuer,
)
from .memory import Memory, MemoryLimits
from .observe import Observer, ProxyWatch, refusal_class
from .paths import check_method, check_raw_target, normalise_path
from .peer import Peer, Proof, never_still_valid
from .policy import Policy
from .proxies import could_be_rewritten, rewrite_evidence
from .request import Authenticator, RequestView
from .responses import ProblemResponse, Refusal, Responder, default_responder, respond
from .routes import RouteResolver, RouteTable
from .rules import Decision, Route, Rule

__all__ = ["Guard", "Verdict", "guard_from", "logger"]

logger = logging.getLogger("peer_middleware")

FORWARDED_FOR = "x-forwarded-for"
FORWARDED = "forwarded"


class Verdict:
    """What the core decided for one request.

    ``path`` is the normalised full path (what the router gets); ``route`` the
    path the rules saw (``None`` when the request was refused before its path
    was normalised); ``notes`` what the authenticators asked the log to
    mention. ``www_authenticate`` is the challenge of the credential that was
    refused, when it names one (an invalid bearer token); it replaces the
    guard's default challenge in the 401 response. ``response`` is what a
    refused request gets on the wire (``None`` when allowed): the adapters
    only serialise it. ``failure`` is the :func:`~peer_middleware.observe.refusal_class`
    of the error that refused the request before the policy decided.
    ``adapted`` is free for the adapter that serves the verdict to keep what
    it derives from it (ASGI: ``scope["user"]`` and ``scope["auth"]``); a
    remembered verdict is served again with it. It must be immutable.
    """

    __slots__ = (
        "adapted",
        "decision",
        "failure",
        "notes",
        "path",
        "peer",
        "response",
        "route",
        "www_authenticate",
    )

    def __init__(
        self,
        decision: Decision,
        peer: Peer | None,
        path: str,
        route: str | None,
        notes: tuple[str, ...] = (),
        www_authenticate: str | None = None,
    ) -> None:
        self.decision = decision
        self.peer = peer
        self.path = path
        self.route = route
        self.notes = notes
        self.www_authenticate = www_authenticate
        self.response: ProblemResponse | None = None
        self.failure: str | None = None
        self.adapted: object = None

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


def _error_decision(error: RequestRefused) -> Decision:
    return Decision(False, error.status, None, error.reason)


_INTERNAL = Decision(False, 403, None, "internal error while authorizing; see the traceback")
_COMMON_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
#: The most characters of credentials (headers, query, TLS chain) an
#: identity or verdict remembered may hold.
_IDENTITY_MAX_CHARS = 16 * 1024
_NO_ROUTE = Route("(no route)")
_AUTHENTICATOR_MEMBERS = (
    "name",
    "header_names",
    "forwarded",
    "bearer",
    "reads_query",
    "reads_tls",
    "www_authenticate",
    "authenticate",
)
_TOKEN_PROOF = Proof.TOKEN
#: Observers are given the time of one decision in this many.
TIMED_ONE_IN = 8

# An identity: the peer (or None), the checks that must all still hold for it
# to be reused, the notes for the log.
_Identity = tuple[Peer | None, tuple[Callable[[], bool], ...], tuple[str, ...]]


_NEVER_AGAIN: tuple[Callable[[], bool], ...] = (never_still_valid,)


class _PolicyView:
    """A policy and what the guard derives from it: the request attributes its
    conditions read, the headers the adapters must pass."""

    __slots__ = (
        "fact_headers",
        "fact_only",
        "header_names",
        "policy",
        "reads_facts",
        "reads_port",
        "reads_source",
    )

    def __init__(self, policy: Policy, auth_header_names: frozenset[str]) -> None:
        reads = policy.reads
        self.policy = policy
        self.reads_facts = bool(reads)
        self.reads_port = "port" in reads
        self.reads_source = "source" in reads
        fact_headers = {name[7:] for name in reads if name.startswith("header:")}
        if "host" in reads:
            fact_headers.add("host")
        if self.reads_source:
            # Both headers a server may rewrite the client address from.
            fact_headers |= {FORWARDED_FOR, FORWARDED}
        self.fact_headers = tuple(sorted(fact_headers))
        # Headers only the rules read: they key verdicts, not identities.
        self.fact_only = frozenset(fact_headers - auth_header_names)
        self.header_names = auth_header_names | fact_headers


class Guard:
    """Authenticate and authorize requests; shared by every adapter.

    ``policy`` decides; ``authenticators`` are tried in order: the first that
    finds a certificate-based peer wins, and authenticators that declare
    ``bearer = True`` (bearer tokens) are run as well, their peer attached as
    ``peer.token`` (or, without a certificate, becoming the peer). Two tokens
    on one request are refused. ``www_authenticate`` is sent with 401
    responses when set (or taken from the first authenticator that declares
    one); a refused credential may bring its own challenge. ``observers``
    are told of every decision (see :mod:`peer_middleware.observe`).
    """

    __slots__ = (
        "_auth_header_names",
        "_forwarded",
        "_identities",
        "_notify",
        "_observers",
        "_refusal_hinted",
        "_rewrite_warned",
        "_router",
        "_routes_changed_logged",
        "_runs",
        "_secret_headers",
        "_timed",
        "_view",
        "_watch",
        "authenticators",
        "header_names",
        "memory",
        "policy",
        "reads_port",
        "reads_query",
        "reads_tls",
        "responder",
        "www_authenticate",
    )

    def __init__(
        self,
        *,
        policy: Policy,
        authenticators: Iterable[Authenticator] = (),
        responder: Responder | None = None,
        www_authenticate: str | None = None,
        memory: MemoryLimits | None = None,
        observers: Iterable[Observer] = (),
    ) -> None:
        if not isinstance(policy, Policy):
            raise ConfigurationError(f"policy must be a Policy, not {type(policy).__name__}")
        self.policy = policy
        self._router: RouteResolver | None = None
        self._routes_changed_logged = False
        self.authenticators: tuple[Authenticator, ...] = tuple(authenticators)
        names: list[str] = []
        for authenticator in self.authenticators:
            if not isinstance(authenticator, Authenticator):
                missing = [m for m in _AUTHENTICATOR_MEMBERS if not hasattr(authenticator, m)]
                raise ConfigurationError(
                    f"{authenticator!r} is not an Authenticator: it does not declare "
                    + ", ".join(missing or ["authenticate"])
                )
            for header in authenticator.header_names:
                if header != header.lower():
                    raise ConfigurationError(f"header name {header!r} must be lower-case")
                names.append(header)
            if www_authenticate is None:
                www_authenticate = authenticator.www_authenticate
        self._forwarded = any(a.forwarded for a in self.authenticators)
        self._runs = tuple((a, bool(a.bearer)) for a in self.authenticators)
        #: True when an authenticator reads the query string (adapters pass it then only).
        self.reads_query = any(a.reads_query for a in self.authenticators)
        #: True when an authenticator reads the TLS client chain (adapters pass it then only).
        self.reads_tls = any(a.reads_tls for a in self.authenticators)
        if self._forwarded:
            # Both headers a server may rewrite the client address from.
            names.append(FORWARDED_FOR)
            names.append(FORWARDED)
        self._auth_header_names = frozenset(names)
        self._use(policy)
        if responder is not None and not callable(responder):
            raise ConfigurationError("responder must be callable")
        self.responder: Responder = responder or default_responder
        self.www_authenticate = www_authenticate
        self._rewrite_warned = False
        # Warnings about forwarded-identity headers from untrusted peers, and
        # trusted proxies that send none (see ProxyWatch).
        watch = ProxyWatch(self.authenticators) if self._forwarded else None
        self._watch = watch or None
        self._refusal_hinted = False
        self._observers: tuple[Observer, ...] = ()
        self._notify: Callable[[Verdict, int | None], None] | None = None
        # Which decisions are timed: one in TIMED_ONE_IN (reading the clock
        # twice costs more than the rest of the hook).
        self._timed = cycle((True, *(False,) * (TIMED_ONE_IN - 1)))
        for observer in observers:
            self.observe(observer)
        #: Everything the guard remembers between requests (see :mod:`peer_middleware.memory`).
        self.memory = Memory(memory if memory is not None else MemoryLimits())
        # When every authenticator is memoizable: credentials -> identity, and
        # (method, path, raw target, root path, kind, credentials) -> allowed
        # verdict. Both hold authenticated callers only, and entries of
        # bounded size.
        self._identities = bool(self.authenticators) and all(map(_memoizable, self.authenticators))
        # Credentials the memory keeps only as a digest: bearer tokens.
        self._secret_headers = frozenset(
            name
            for authenticator, bearer in self._runs
            if bearer
            for name in authenticator.header_names
        )

    def _use(self, policy: Policy) -> None:
        """Decide with ``policy`` from now on, with what its conditions read
        (:attr:`Policy.reads`): the adapters pass that, and the memory keys every
        verdict on it. The policy and what is derived from it are one object,
        replaced at once, so a request never mixes two policies."""
        view = _PolicyView(policy, self._auth_header_names)
        self._view = view
        self.policy = policy
        #: True when a rule reads the port the app was reached on (adapters pass it then only).
        self.reads_port = view.reads_port
        self.header_names: frozenset[str] = view.header_names

    @staticmethod
    def _source_key(client: tuple[str, int] | None, headers: dict[str, str]) -> object:
        """What the source address a rule reads depends on: the client's host and
        whether it is the connection's own (never its ephemeral port alone)."""
        if client is None or len(client) != 2:
            return client
        forwarded_for = headers.get(FORWARDED_FOR)
        forwarded = headers.get(FORWARDED)
        if not could_be_rewritten(client[1], forwarded_for, forwarded):
            return client[0]
        return (client[0], rewrite_evidence(client, forwarded_for, forwarded) is None)

    def _facts(
        self,
        view: _PolicyView,
        client: tuple[str, int] | None,
        headers: dict[str, str],
        port: int | None,
    ) -> RequestFacts:
        """What the rules' conditions read from this request; 400 for a value
        holding a control character or obs-text."""
        values = {}
        for name in view.fact_headers:
            value = headers.get(name)
            if value is not None:
                values[name] = check_value(value, f"header {name!r}")
        source = None
        if view.reads_source and client is not None and len(client) == 2:
            forwarded_for = headers.get(FORWARDED_FOR)
            forwarded = headers.get(FORWARDED)
            if could_be_rewritten(client[1], forwarded_for, forwarded):
                trusted = self._client_if_trustworthy(client, forwarded_for, forwarded)
            else:
                trusted = client
            if trusted is not None and isinstance(trusted[0], str):
                source = trusted[0]
        return RequestFacts(values.get("host"), port if type(port) is int else None, values, source)

    def use_routes(self, table: RouteTable) -> None:
        """Apply the rules declared on ``table``'s routes, resolved by ``table``.

        Called once, before the guard serves its first request (the adapters
        do it when they are built, or before the first request for Flask).
        Rule names that clash raise :class:`ConfigurationError`.
        """
        if self._router is not None:
            raise ConfigurationError("this guard already has its routes")
        policy = self.policy.with_routes(table.rules)
        self._router = table if policy.routes else None
        self._use(policy)
        self.memory.clear()

    def replace_policy(self, policy: Policy) -> None:
        """Swap in ``policy`` as a whole (a reload), keeping the rules declared on routes.

        Requests already being decided finish with the policy they started
        with; the memory is replaced, so nothing remembered under the old
        policy is reused. The adapters pass what the new policy reads from
        their next request on.
        """
        if not isinstance(policy, Policy):
            raise ConfigurationError(f"policy must be a Policy, not {type(policy).__name__}")
        routes = self.policy.routes
        new = policy.with_routes(routes) if routes else policy
        self._use(new)
        # A new memory, not a cleared one: a request still deciding under the
        # old policy writes into the old memory, which nobody reads again.
        self.memory = Memory(self.memory.limits)

    def observe(self, observer: Observer) -> None:
        """Tell ``observer`` of every decision from now on (its ``observe(verdict, nanoseconds)``).

        An observer with a ``bind(guard)`` method is given the guard first
        (metrics read its memory that way).
        """
        if not isinstance(observer, Observer):
            raise ConfigurationError(f"{observer!r} has no observe(verdict, nanoseconds) method")
        bind = getattr(observer, "bind", None)
        if callable(bind):
            bind(self)
        self._observers = observers = (*self._observers, observer)
        # One observer is called directly: the hook's cost is one call.
        self._notify = observer.observe if len(observers) == 1 else self._observed

    def extend(self, rules: Iterable[Rule]) -> None:
        """Append central ``rules`` to the policy (once, before serving)."""
        self._use(self.policy.extended(rules))
        self.memory.clear()

    def check(
        self,
        method: str,
        path: str,
        raw_target: str | None,
        client: tuple[str, int] | None,
        headers: dict[str, str],
        root_path: str = "",
        query: str = "",
        tls_chain: tuple[bytes | str, ...] | None = None,
        *,
        request: object = None,
        port: int | None = None,
        read: frozenset[str] | None = None,
    ) -> Verdict:
        """Run the whole pipeline for one request.

        ``path`` is the decoded path the router will see, ``raw_target`` the
        target as sent when the server provides it. ``root_path`` is the
        mount point the app is served under (ASGI ``root_path``): rules are
        written against the path without it, as the router matches it. The
        verdict's ``path`` is the normalised full path to write back for the
        router. ``query`` is the raw query string, needed only when
        :attr:`reads_query` is True; ``tls_chain`` the connection's client
        certificate chain (leaf first), needed only when :attr:`reads_tls` is
        True.

        ``request`` is the adapter's own request (scope, environ), handed as
        it is to the route table (:meth:`use_routes`) to find the route the
        framework dispatches to; what else that route depends on (the table's
        ``variant``) is part of what the memory keys a verdict on. ``port``
        is the port the app was reached on, needed only when :attr:`reads_port`.
        ``read`` is the :attr:`header_names` the adapter picked ``headers`` by:
        when the policy was replaced in between with one that reads a header
        outside it, the request is refused rather than judged without it.
        """
        started = perf_counter_ns() if self._notify is not None and next(self._timed) else 0
        router = self._router
        normalised = path
        matched: str | None = None
        notes: tuple[str, ...] = ()
        credentials: tuple[object, ...] | None = None
        request_key: tuple[object, ...] | None = None
        memory = self.memory
        # The policy and what it reads, as one (a reload replaces both at once).
        view = self._view
        try:
            if read is not None and read is not view.header_names and not view.header_names <= read:
                raise AccessDenied(
                    "the policy was replaced while the request was read: refused rather than"
                    " judged without the headers the new policy reads"
                )
            # Inside the try: a route table that fails refuses, never raises.
            variant = router.variant(request) if router is not None else None
            if self._identities:
                # Everything memoizable authenticators read: the client's host
                # (with its port when the address may have been rewritten),
                # the declared headers in order, the query and the TLS chain.
                if client is None:
                    where: object = None
                elif len(client) != 2:
                    where = client
                elif not self._forwarded:
                    where = client[0]
                else:
                    client_port = client[1]
                    if (
                        type(client_port) is int
                        and 0 < client_port <= 65535
                        and FORWARDED_FOR not in headers
                        and FORWARDED not in headers
                    ):
                        # The common case, decided without a call: a real
                        # port and no header the address could come from.
                        where = client[0]
                    elif could_be_rewritten(
                        client_port, headers.get(FORWARDED_FOR), headers.get(FORWARDED)
                    ):
                        where = client
                    else:
                        where = client[0]
                secret = self._secret_headers
                items: Iterable[tuple[str, str]] = headers.items()
                fact_only = view.fact_only
                if fact_only:
                    # Headers only the rules read are no credential: they key
                    # the verdict below, not the identity.
                    items = [(n, v) for n, v in items if n not in fact_only]
                if secret:
                    # A usable token is never kept: only its SHA-256.
                    credentials = (
                        where,
                        _digest(query) if query else query,
                        tls_chain,
                        *[
                            (name, _digest(value) if name in secret else value)
                            for name, value in items
                        ],
                    )
                else:
                    credentials = (where, query, tls_chain, *items)
                # What the rules' conditions read (Policy.reads), and nothing else.
                facts_key = (
                    (
                        port if view.reads_port else None,
                        self._source_key(client, headers) if view.reads_source else None,
                        *[headers.get(name) for name in view.fact_headers],
                    )
                    if view.reads_facts
                    else None
                )
                # A request seen before, byte for byte, from a caller whose
                # proof still holds: the verdict is the one made then.
                request_key = (method, path, raw_target, root_path, variant, credentials, facts_key)
                verdicts = memory.verdicts
                try:
                    seen = verdicts.young.get(request_key) or verdicts.get(request_key)
                except TypeError:
                    # A server handed over something unhashable (a TLS chain
                    # of odd objects): no reuse; the authenticator says why.
                    seen = credentials = request_key = None
                if seen is not None:
                    for still_valid in seen[1]:
                        if not still_valid():
                            break
                    else:
                        if self._notify is not None:
                            memory.hits += 1
                        return self._logged(seen[0], method, path, started)
            if method not in _COMMON_METHODS:
                check_method(method)
                if method != method.upper():
                    # Methods are case-sensitive (RFC 9110, 9.1), yet several
                    # routers upper-case them before dispatch: refuse, as Istio does.
                    raise BadRequest(f"method {method[:32]!r} is not in upper case")
            # Paths repeat; their checks are pure, so the memory serves
            # repeat requests. The key says whether the raw target was seen:
            # a path checked without one must not vouch for a raw target.
            key = path if raw_target == path else (path, raw_target)
            paths = memory.paths
            cached = paths.young.get(key) or paths.get(key)
            if cached is None:
                if raw_target is not None:
                    check_raw_target(raw_target)
                cached = normalise_path(path)
                paths.put(key, cached)
                # A path never seen (a new resource id, most often): its
                # verdict is not worth keeping either.
                request_key = None
            normalised = cached
            matched = route_path(normalised, root_path) if root_path else normalised
            known = None
            identities = memory.identities
            if credentials is not None:
                known = identities.young.get(credentials) or identities.get(credentials)
                if known is not None:
                    for still_valid in known[1]:
                        if not still_valid():
                            known = None
                            break
            if known is None:
                # A first sight of the credential: the verdict is kept only
                # once the credential comes back (most cold ones never do).
                request_key = None
                known = self._authenticate(method, matched, client, headers, query, tls_chain)
                if (
                    credentials is not None
                    and known[0] is not None
                    and _chars(headers, query, tls_chain) <= _IDENTITY_MAX_CHARS
                ):
                    identities.put(credentials, known)
            peer, checks, notes = known
            policy = view.policy
            facts = self._facts(view, client, headers, port) if view.reads_facts else None
            decision = policy.decide(method, matched, peer, plans=memory.plans, facts=facts)
            if decision.rule is None and router is not None:
                # No central rule decided: the rules declared on the route the
                # framework will run may allow it.
                route = self._route(router, request, method, normalised, root_path, variant)
                if route is not None:
                    decision = policy.decide(
                        method, matched, peer, route, plans=memory.plans, facts=facts
                    )
                    if decision.allowed and decision.rule is not None:
                        # Reused only while the app's routes are as they were.
                        checks = (*checks, router.unchanged)
            verdict = Verdict(decision, peer, normalised, matched, notes)
            if (
                request_key is not None
                and decision.allowed
                and peer is not None
                and len(path)
                + len(raw_target or "")
                + len(root_path)
                + len(method)
                + _chars(headers, query, tls_chain)
                <= _IDENTITY_MAX_CHARS
            ):
                memory.verdicts.put(request_key, (verdict, checks))
        except RequestRefused as error:
            verdict = Verdict(
                _error_decision(error),
                None,
                normalised,
                matched,
                notes,
                error.www_authenticate,
            )
            verdict.failure = refusal_class(error)
        except Exception:
            logger.exception("peer_middleware failed while authorizing %s %r", method, path[:200])
            verdict = Verdict(_INTERNAL, None, normalised, matched, notes)
            verdict.failure = "internal_error"
        return self._logged(verdict, method, path, started)

    def _route(
        self,
        router: RouteResolver,
        request: object,
        method: str,
        path: str,
        root_path: str,
        variant: object,
    ) -> Route | None:
        """The route the framework dispatches to, remembered per (variant, method, path).

        Refuses (403) once the app's routes changed after the table was built:
        the rules declared on routes were read from the routes as they were.
        """
        if not router.unchanged():
            if not self._routes_changed_logged:
                self._routes_changed_logged = True
                logger.error(
                    "the app's routes changed after peer_middleware read the rules declared on "
                    "them; requests that only those rules would allow are refused until the "
                    "app restarts. Declare every route before the app serves requests."
                )
            raise AccessDenied("the app's routes changed after start-up")
        key = (variant, method, root_path, path)
        routes = self.memory.routes
        route = routes.young.get(key) or routes.get(key)
        if route is None:
            route = router.resolve(request, method, path) or _NO_ROUTE
            routes.put(key, route)
        return None if route is _NO_ROUTE else route

    def _logged(self, verdict: Verdict, method: str, path: str, started: int = 0) -> Verdict:
        """``verdict``, once its decision is logged and observed and, when
        refused, its response built.

        Every verdict the guard hands out leaves through here: there is one
        way to be refused.
        """
        decision = verdict.decision
        notify = self._notify
        if notify is not None:
            try:
                notify(verdict, perf_counter_ns() - started if started else None)
            except Exception:
                self._observer_failed(self._observers[0])
        if decision.quiet:
            # An allow with nothing to report is logged at DEBUG only.
            if logger.isEnabledFor(logging.DEBUG):
                self.log(verdict, method, path)
            return verdict
        self.log(verdict, method, path)
        if not decision.allowed and verdict.response is None:
            verdict.response = self._response(verdict, method)
        return verdict

    def _observed(self, verdict: Verdict, nanoseconds: int | None) -> None:
        for observer in self._observers:
            try:
                observer.observe(verdict, nanoseconds)
            except Exception:
                self._observer_failed(observer)

    @staticmethod
    def _observer_failed(observer: Observer) -> None:
        """Called in an ``except`` block: an observer never changes a decision;
        its failure is logged once."""
        if WARNINGS(("observer", id(observer))):
            logger.exception("peer_middleware observer %r failed", observer)

    def _authenticate(
        self,
        method: str,
        path: str,
        client: tuple[str, int] | None,
        headers: dict[str, str],
        query: str,
        tls_chain: tuple[bytes | str, ...] | None,
    ) -> _Identity:
        """Run the authenticators: the request's peer, the checks that must
        hold for it to be reused, and the notes for the log.

        A result is reusable (``checks`` meaningful) only when no token was
        refused as untrusted on the way; otherwise ``checks`` holds one that
        always fails.
        """
        if self._forwarded and client is not None:
            forwarded_for = headers.get(FORWARDED_FOR)
            forwarded = headers.get(FORWARDED)
            if could_be_rewritten(client[1], forwarded_for, forwarded):
                client = self._client_if_trustworthy(client, forwarded_for, forwarded)
        request = RequestView(method, path, client, headers, query, tls_chain)
        primary: Peer | None = None
        token: Peer | None = None
        untrusted: UntrustedIssuer | None = None
        for authenticator, bearer in self._runs:
            if primary is not None and not bearer:
                continue
            try:
                found = authenticator.authenticate(request)
            except UntrustedIssuer as error:
                # Another token authenticator may accept this token.
                if untrusted is None:
                    untrusted = error
                continue
            if found is None:
                continue
            if found.proof is _TOKEN_PROOF:
                if token is not None:
                    raise InvalidToken("two bearer tokens on one request")
                token = found
            elif primary is None:
                primary = found
        peer = primary
        if token is not None:
            if primary is None and token.certificate_sha256 is None:
                peer = token  # a token alone, bound to no certificate
            else:
                peer = self._combine(primary, token)
        elif untrusted is not None:
            raise untrusted
        notes = tuple(request.notes) if request.notes else ()
        watch = self._watch
        if watch is not None:
            if peer is None or notes:
                watch(request)
            elif peer.proxy is not None:
                watch.fine(peer.proxy)
        if untrusted is not None:
            # Another authenticator might accept the token once its keys
            # change: never reuse this result.
            return peer, _NEVER_AGAIN, notes
        # Every check an authenticator gave: the identity is reused only while
        # all hold (a check from an authenticator whose peer was not used only
        # makes reuse rarer).
        checks = tuple(request.checks) if request.checks else ()
        return peer, checks, notes

    def _combine(self, primary: Peer | None, token: Peer) -> Peer:
        """The request's peer from a certificate peer and a token peer."""
        bound = token.certificate_sha256
        if primary is None:
            if bound is not None:
                # RFC 8705 section 3: a bound token is accepted only with its certificate.
                raise InvalidToken(
                    "the token is bound to a client certificate (cnf x5t#S256) and the "
                    "request presents none"
                )
            return token
        if bound is not None and bound != primary.certificate_sha256:
            raise InvalidToken(
                "the token is bound to a client certificate (cnf x5t#S256) other than the "
                "one presented"
            )
        return replace(primary, token=token)

    def reject(
        self, error: RequestRefused, method: str, path: str, peer: Peer | None = None
    ) -> Verdict:
        """A refused verdict for ``error``: a request an adapter refused before
        :meth:`check`, or one a route's own requirement refused inside the app
        (then ``peer`` is the request's peer)."""
        verdict = Verdict(
            _error_decision(error), peer, path[:200], None, (), error.www_authenticate
        )
        verdict.failure = refusal_class(error)
        return self._logged(verdict, method, path)

    def _client_if_trustworthy(
        self, client: tuple[str, int], forwarded_for: str | None, forwarded: str | None
    ) -> tuple[str, int] | None:
        """``client``, or ``None`` when the server took it from a forwarding header
        (see :func:`~peer_middleware.proxies.rewrite_evidence`)."""
        evidence = rewrite_evidence(client, forwarded_for, forwarded)
        if evidence is None:
            return client
        if not self._rewrite_warned:
            self._rewrite_warned = True
            host = client[0]
            if not isinstance(host, str) or not host.isprintable() or len(host) > 100:
                host = repr(host)[:100]
            logger.warning(
                "the server reports a client address %s (%s), not the connection's own "
                "peer; forwarded credentials are ignored because the proxy cannot be "
                "identified. Let the server record the connection's own address (uvicorn "
                "--http peer_middleware.servers.uvicorn:H11Protocol) or turn its rewriting "
                "off (uvicorn --forwarded-allow-ips='' or proxy_headers=False; hypercorn "
                "without ProxyFixMiddleware).",
                evidence,
                host,
            )
        return None

    def _hint_refusal(self, decision: Decision) -> None:
        """Once per guard: where the reasons of refusals go, when nobody reads them."""
        self._refusal_hinted = True
        logger.warning(
            "peer_middleware refused a request (status=%s rule=%s); the reason of every "
            "refusal is logged at INFO on the 'peer_middleware' logger, which is not enabled. "
            "Enable it with logging.getLogger('peer_middleware').setLevel(logging.INFO) and a "
            "handler (README, 'Operating it'). This warning is shown once.",
            decision.status,
            decision.rule,
        )

    def _response(self, verdict: Verdict, method: str) -> ProblemResponse:
        """The response for a refused verdict."""
        decision = verdict.decision
        www = (
            (verdict.www_authenticate or self.www_authenticate) if decision.status == 401 else None
        )
        path = verdict.route if verdict.route is not None else verdict.path
        refusal = Refusal(
            decision.status, decision.reason, decision.rule, www, method, path, verdict.peer
        )
        return respond(self.responder, refusal)

    def log(self, verdict: Verdict, method: str, raw_path: str) -> None:
        decision = verdict.decision
        level = logging.DEBUG if decision.quiet else logging.INFO
        if not logger.isEnabledFor(level):
            if not self._refusal_hinted and not decision.allowed:
                self._hint_refusal(decision)
            return
        path = verdict.route if verdict.route is not None else raw_path[:200]
        fields = _log_fields(decision, verdict.peer, method, path, verdict.notes)
        message = "%s %s %r status=%s rule=%s principal=%s proxy=%s reason=%r"
        args: tuple[object, ...] = (
            fields["outcome"] if not decision.dry_run else "would-refuse(dry-run)",
            fields["method"],
            path,
            fields["status"] if not decision.dry_run else decision.status,
            decision.rule,
            fields["principal"],
            fields["proxy"],
            decision.reason,
        )
        extra_parts = []
        if decision.shadow:
            extra_parts.append(" shadow=%s")
            args += (",".join(decision.shadow),)
        if decision.audit:
            extra_parts.append(" audit=%s")
            args += (",".join(decision.audit),)
        if fields["notes"]:
            extra_parts.append(" notes=%r")
            args += (fields["notes"],)
        logger.log(level, message + "".join(extra_parts), *args, extra={"peer_middleware": fields})


def guard_from(
    policy: Policy | None,
    authenticators: Iterable[Authenticator],
    responder: Responder | None,
    www_authenticate: str | None,
    memory: MemoryLimits | None,
    guard: Guard | None,
    observers: Iterable[Observer] = (),
) -> Guard:
    """The guard given, or one built from the configuration (never both)."""
    observers = tuple(observers)
    if guard is None:
        if policy is None:
            raise ConfigurationError("give policy= (and the rest of the configuration) or guard=")
        return Guard(
            policy=policy,
            authenticators=authenticators,
            responder=responder,
            www_authenticate=www_authenticate,
            memory=memory,
            observers=observers,
        )
    if not isinstance(guard, Guard):
        raise ConfigurationError(f"guard must be a Guard, not {type(guard).__name__}")
    if (
        policy is not None
        or tuple(authenticators)
        or responder
        or www_authenticate
        or memory
        or observers
    ):
        raise ConfigurationError("give guard= or the configuration it is built from, not both")
    return guard


def _memoizable(authenticator: Authenticator) -> bool:
    """True when the authenticator's own class declares ``memoizable = True``."""
    return vars(type(authenticator)).get("memoizable") is True


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def route_path(path: str, root_path: str) -> str:
    """The path the router matches under mount point ``root_path``.

    Mirrors Starlette's ``get_route_path()``: rules are written against the
    path without the mount point.
    """
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return "/"
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


def _chars(headers: dict[str, str], query: str, tls_chain: tuple[bytes | str, ...] | None) -> int:
    """How many characters of credentials an identity-cache entry would keep."""
    size = len(query) + sum(map(len, headers.values()))
    if tls_chain:
        size += sum(map(len, tls_chain))
    return size


def _log_fields(
    decision: Decision, peer: Peer | None, method: str, path: str, notes: tuple[str, ...]
) -> dict[str, object]:
    """The structured fields of a decision record (``record.peer_middleware``)."""
    return {
        "outcome": "allowed" if decision.allowed else "refused",
        "status": decision.enforced_status,
        "rule": decision.rule,
        "reason": decision.reason,
        "principal": peer.principal if peer is not None else None,
        "proof": peer.proof.value if peer is not None else None,
        "proxy": peer.proxy if peer is not None else None,
        "method": method[:32],
        "path": path,
        "dry_run": decision.dry_run,
        "shadow": decision.shadow,
        "audit": decision.audit,
        "notes": notes,
    }
