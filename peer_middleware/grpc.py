"""gRPC server interceptors: the same identities and rules for grpcio servers, sync and asyncio.

::

    import grpc
    from peer_middleware import MtlsAuthenticator, Namespace, Policy, allow
    from peer_middleware.grpc import PeerInterceptor, current_peer, require

    class Payments(payments_pb2_grpc.PaymentsServicer):
        @require(Namespace("shop", trust_domain="cluster.local"))
        def Charge(self, request, context):
            return Receipt(caller=current_peer(context).principal)

    servicer = Payments()
    server = grpc.server(
        executor,
        interceptors=[
            PeerInterceptor(
                policy=Policy([allow("health", Anyone(), paths="/grpc.health.v1.Health/*")]),
                authenticators=[MtlsAuthenticator(verifier)],
                servicers=[servicer],
            )
        ],
    )

:class:`AsyncPeerInterceptor` does the same for ``grpc.aio.server``.

A call is judged as an HTTP/2 request: the method is always ``POST`` and
the path the gRPC method name, ``/package.Service/Method`` (Istio's
convention), so central rules name methods with the usual path patterns
(``/payments.v1.Payments/*``, ``/payments.v1.Payments/Refund``). The same
:class:`~peer_middleware.guard.Guard` decides; it runs inside the method
handler grpcio dispatches to, before the servicer's code, for unary and
streaming methods alike (a call to a method the server does not have gets
grpcio's own ``UNIMPLEMENTED``).

What the interceptor reads:

* the connection's **client certificate**, from the call's auth context:
  ``x509_pem_cert`` (the leaf, PEM) and ``x509_pem_cert_chain`` (the
  intermediates the client sent). :class:`~peer_middleware.MtlsAuthenticator`
  verifies them against the trust bundle; the auth context's own name
  strings (``x509_subject_alternative_name``, ``peer_uri``,
  ``peer_spiffe_id``) are never used. The server must ask for a client
  certificate: ``grpc.ssl_server_credentials(..., root_certificates=bundle,
  require_client_auth=True)``; a call without TLS has no certificate (and the
  interceptor logs one warning when an authenticator reads certificates);
* the **metadata** the authenticators name (``x-forwarded-client-cert``,
  ``authorization``, ...) and the rules' conditions read
  (:class:`~peer_middleware.conditions.Header`, ``x-forwarded-for`` for
  :class:`~peer_middleware.conditions.RemoteIp`), re-read when the policy is
  replaced. Binary (``-bin``) keys are never read; a value that is not text
  or is longer than :data:`MAX_METADATA_VALUE` characters (repeated keys
  counted together) is refused with ``INVALID_ARGUMENT``; repeated keys are
  joined with ``","`` (two ``authorization`` values are two tokens, refused).
  A call has no Host (a ``host`` metadata key is the client's, not the
  ``:authority``) and no server port: a policy with
  :class:`~peer_middleware.conditions.Host` or
  :class:`~peer_middleware.conditions.Port` conditions is a
  :class:`~peer_middleware.errors.ConfigurationError` (after a reload, every
  call is refused);
* the **peer address**, from ``context.peer()``: ``ipv4:127.0.0.1:51234``,
  ``ipv6:[::1]:51234`` (also percent-encoded, ``ipv6:%5B::1%5D:51234``).
  Anything else (``unix:``, a string this module does not recognise) is an
  unknown peer, which is never a trusted proxy.

.. warning::
   Forwarded credentials (Envoy's ``x-forwarded-client-cert``) are claims
   made by whoever sent the call. They are read only when the connection
   comes from one of the authenticator's ``trusted_proxies``; make the proxy
   the only way to reach the server, and have it *replace* the header
   (``forward_client_cert_details: SANITIZE_SET``).

Refusals are gRPC statuses with fixed details: ``UNAUTHENTICATED`` (no or an
invalid credential), ``PERMISSION_DENIED`` (a known caller the rules do not
allow, or an internal error), ``INVALID_ARGUMENT`` (malformed metadata or
method name); the precise reason goes to the ``peer_middleware`` logger.

Rules next to the servicer: :func:`require` on a servicer's method (or on
the servicer class, for all its methods; with both, both must hold) allows
``who`` to call *that* method. They are read from the servicers given as ``servicers=`` and apply
to the function grpcio actually dispatches a call to, identified by the
servicer's class and the function itself, never by a path pattern: a
neighbour method never inherits them. They only allow (the central policy's
deny rules win), so a declaration the interceptor was not told about, or a
handler another interceptor wrapped, makes calls fall back to the central
policy, which refuses what it does not allow.

The handler finds the caller with :func:`current_peer` (``None`` for an
anonymous call), from the context or, in code that has none, from the
:data:`current_peer_var` context variable.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import ipaddress
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar
from urllib.parse import unquote

import grpc
from grpc import aio

from ._cache import BoundedCache
from .certs import split_pem
from .errors import (
    AccessDenied,
    BadRequest,
    CertificateDecodingError,
    ConfigurationError,
    RequestRefused,
)
from .guard import Guard, Verdict, guard_from
from .matchers import Matcher
from .memory import MemoryLimits
from .observe import Observer
from .peer import Peer
from .policy import Policy
from .request import Authenticator
from .responses import Responder
from .routes import Requirement, declared_rules
from .rules import Decision, Route

__all__ = [
    "MAX_METADATA_VALUE",
    "AsyncPeerInterceptor",
    "GrpcRouteTable",
    "PeerInterceptor",
    "current_peer",
    "current_peer_var",
    "parse_peer",
    "require",
]

logger = logging.getLogger("peer_middleware")

#: The method every gRPC call is judged as (gRPC over HTTP/2 is always POST).
METHOD = "POST"
#: The longest metadata value an authenticator is handed (characters).
MAX_METADATA_VALUE = 64 * 1024
_MAX_CHAIN = 8
# Bounds of what the interceptor remembers: wrapped handlers, peer hosts,
# method names and client chains it has read.
_MAX_WRAPPED = 1024
_MAX_REMEMBERED = 4096
_MAX_CHAINS = 256
_MAX_PEM = 16 * 1024

#: The caller of the call being served (``None`` when anonymous or outside a call).
current_peer_var: contextvars.ContextVar[Peer | None] = contextvars.ContextVar(
    "peer_middleware_grpc_peer", default=None
)

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
}
_DETAILS = {400: "invalid request", 401: "unauthenticated", 403: "permission denied"}
_REQUIREMENTS = "__peer_middleware_grpc_requirements__"

T = TypeVar("T")
# The peers of the calls being served, by their servicer context.
_PEERS: dict[object, Peer | None] = {}


def current_peer(context: object = None) -> Peer | None:
    """The caller of the call ``context`` belongs to (``None`` when anonymous).

    Without ``context``, the caller of the call being served in this thread
    or task (:data:`current_peer_var`).
    """
    if context is not None:
        try:
            return _PEERS[context]
        except (KeyError, TypeError):
            pass
    return current_peer_var.get()


def require(who: Matcher, *, name: str | None = None) -> Callable[[T], T]:
    """Declare that ``who`` may call the decorated servicer method (or every
    method of the decorated servicer class); see the module docstring."""
    requirement = Requirement(who, name)  # validated now, at import time

    def decorate(target: T) -> T:
        own = vars(target).get(_REQUIREMENTS, ()) if hasattr(target, "__dict__") else ()
        setattr(target, _REQUIREMENTS, (requirement, *own))
        return target

    return decorate


def parse_peer(peer: object) -> tuple[str, int] | None:
    """``(host, port)`` from grpcio's ``context.peer()``, or ``None`` when unknown.

    ``ipv4:127.0.0.1:51234`` and ``ipv6:[::1]:51234`` (grpcio writes the
    brackets percent-encoded) are recognised; ``unix:`` peers, other schemes
    and anything malformed are unknown, never a trusted proxy.
    """
    if not isinstance(peer, str) or len(peer) > 200:
        return None
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        host, sep, port = rest.rpartition(":")
        if not sep or not _is_ipv4(host):
            return None
    elif scheme == "ipv6":
        rest = unquote(rest)
        if not rest.startswith("["):
            return None
        host, sep, port = rest[1:].partition("]:")
        if not sep or not _is_ipv6(host):
            return None
    else:
        return None
    if not port.isdigit() or not port.isascii() or len(port) > 5:
        return None
    number = int(port)
    if not 0 < number <= 65535:
        return None
    return host, number


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(
        p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 and (p == "0" or p[0] != "0")
        for p in parts
    )


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _reset(token: contextvars.Token[Peer | None]) -> None:
    # A stream finalised in another context (a cancelled call's generator
    # closed by the garbage collector): that context ends with it.
    with contextlib.suppress(ValueError):
        current_peer_var.reset(token)


def _behavior_key(behavior: object) -> object:
    """What identifies the function grpcio dispatches a call to: (servicer class, function)."""
    owner = getattr(behavior, "__self__", None)
    function = getattr(behavior, "__func__", None)
    if owner is not None and function is not None:
        return (type(owner), function)
    return (None, behavior)


class GrpcRouteTable:
    """The servicer methods that declare rules (:func:`require`), as a
    :class:`~peer_middleware.routes.RouteTable`.

    A route is one function of one servicer class; grpcio's own dispatch
    picks the function, and the interceptor hands it to :meth:`resolve`.
    """

    __slots__ = ("_routes", "rules")

    def __init__(self, servicers: Iterable[object]) -> None:
        routes: dict[object, Route] = {}
        declared: list[tuple[Route, tuple[Requirement, ...]]] = []
        for servicer in servicers:
            if inspect.isfunction(servicer) or inspect.ismethod(servicer):
                found = tuple(getattr(servicer, _REQUIREMENTS, ()))
                if found:
                    route = Route(getattr(servicer, "__qualname__", repr(servicer)))
                    routes[_behavior_key(servicer)] = route
                    declared.append((route, found))
                continue
            cls = servicer if isinstance(servicer, type) else type(servicer)
            on_class: list[Requirement] = []
            for base in cls.__mro__:
                on_class.extend(vars(base).get(_REQUIREMENTS, ()))
            for attribute in dir(cls):
                if attribute.startswith("_"):
                    continue
                function = inspect.getattr_static(cls, attribute)
                if not inspect.isfunction(function):
                    continue
                found = (*on_class, *getattr(function, _REQUIREMENTS, ()))
                if found:
                    route = Route(f"{cls.__qualname__}.{attribute}")
                    routes[(cls, function)] = route
                    declared.append((route, found))
        self._routes = routes
        self.rules = declared_rules(declared, unnamed="servicer ")

    def variant(self, request: object) -> object:
        return request

    def unchanged(self) -> bool:
        return True

    def resolve(self, request: object, method: str, path: str) -> Route | None:
        try:
            return self._routes.get(request)
        except TypeError:
            return None


class _Core:
    """What the sync and asyncio interceptors share: reading a call, and the guard."""

    def __init__(
        self,
        *,
        policy: Policy | None,
        authenticators: Iterable[Authenticator],
        responder: Responder | None,
        www_authenticate: str | None,
        memory: MemoryLimits | None,
        guard: Guard | None,
        servicers: Iterable[object],
        observers: Iterable[Observer],
    ) -> None:
        self.guard = guard_from(
            policy, authenticators, responder, www_authenticate, memory, guard, observers
        )
        table = GrpcRouteTable(servicers)
        if table.rules:
            self.guard.use_routes(table)
        unanswerable = _unanswerable(self.guard)
        if unanswerable:
            raise ConfigurationError(
                f"the policy has {unanswerable} conditions, which a gRPC call cannot be "
                "judged on (the interceptor has neither the :authority nor the server's port)"
            )
        # The metadata keys the guard reads: the authenticators' and those the
        # rules' conditions read (re-read when the policy is replaced).
        # One value, replaced at once, so a thread never pairs one policy's
        # names with another's lookup: (policy, names, lookup, unanswerable).
        self._reading = (
            self.guard.policy,
            self.guard.header_names,
            _wanted(self.guard.header_names),
            "",
        )
        self.reads_tls = self.guard.reads_tls
        self._warned_plaintext = False
        self._lock = threading.Lock()
        self._methods: set[str] = set()
        self._hosts: dict[str, bool] = {}
        # The chains of the last client certificates seen, as the verifier reads them.
        self._chains = BoundedCache[tuple[bytes, bytes | None], tuple[bytes | str, ...]](
            _MAX_CHAINS
        )

    def _client(self, peer: object) -> tuple[str, int] | None:
        """:func:`parse_peer`, remembering which host parts are addresses."""
        if type(peer) is str and peer[:5] == "ipv4:":
            host, sep, port = peer[5:].rpartition(":")
            valid = self._hosts.get(host)
            if valid is None:
                valid = sep == ":" and _is_ipv4(host)
                if len(self._hosts) < _MAX_REMEMBERED:
                    self._hosts[host] = valid
            if (
                valid
                and port.isdigit()
                and port.isascii()
                and len(port) <= 5
                and 0 < int(port) <= 65535
            ):
                return host, int(port)
            return None
        return parse_peer(peer)

    def verdict(self, method: object, context: Any, key: object) -> Verdict:
        """The guard's verdict for one call; never raises."""
        guard = self.guard
        shown = method if isinstance(method, str) else repr(method)
        try:
            if not isinstance(method, str):
                raise BadRequest(f"malformed gRPC method name {shown[:200]!r}")
            if method not in self._methods:
                if not _method_name(method):
                    raise BadRequest(f"malformed gRPC method name {shown[:200]!r}")
                if len(self._methods) < _MAX_REMEMBERED:
                    self._methods.add(method)
            reading = self._reading
            policy, names = guard.policy, guard.header_names
            if policy is not reading[0] or names is not reading[1]:
                # The guard's policy was replaced: it may read other keys.
                reading = (policy, names, _wanted(names), _unanswerable(guard))
                self._reading = reading
            if reading[3]:
                raise AccessDenied(
                    f"the policy has {reading[3]} conditions, which a gRPC call cannot be judged on"
                )
            wanted = reading[2]
            headers = self._headers(context.invocation_metadata(), wanted) if wanted else {}
            client = self._client(context.peer())
            tls_chain = self._tls_chain(context) if self.reads_tls else None
        except RequestRefused as error:
            return guard.reject(error, METHOD, shown)
        except Exception:
            logger.exception("peer_middleware failed while reading the gRPC call %r", shown[:200])
            return guard.reject(
                AccessDenied("internal error while reading the call"), METHOD, shown
            )
        return guard.check(
            METHOD, method, method, client, headers, "", "", tls_chain, request=key, read=reading[1]
        )

    def _headers(self, metadata: object, wanted: frozenset[str]) -> dict[str, str]:
        headers: dict[str, str] = {}
        if not wanted or not metadata:
            return headers
        for item in metadata:  # type: ignore[attr-defined]
            key, value = item[0], item[1]
            if key not in wanted:
                continue
            if not isinstance(value, str):
                raise BadRequest(f"metadata {key!r} is not text")
            if len(value) > MAX_METADATA_VALUE:
                raise BadRequest(f"metadata {key!r} is longer than {MAX_METADATA_VALUE} characters")
            previous = headers.get(key)
            if previous is not None:
                value = previous + "," + value
                if len(value) > MAX_METADATA_VALUE:
                    # Repeated keys, each short, are no way around the bound.
                    raise BadRequest(
                        f"metadata {key!r} repeated to more than {MAX_METADATA_VALUE} characters"
                    )
            headers[key] = value
        return headers

    def _tls_chain(self, context: Any) -> tuple[bytes | str, ...] | None:
        auth = context.auth_context()
        leaf = auth.get("x509_pem_cert")
        if not leaf:
            if not self._warned_plaintext and auth.get("transport_security_type") != [b"ssl"]:
                with self._lock:
                    if not self._warned_plaintext:
                        self._warned_plaintext = True
                        logger.warning(
                            "a gRPC call arrived without TLS, and an authenticator reads client "
                            "certificates: serve with grpc.ssl_server_credentials(..., "
                            "require_client_auth=True); calls without a certificate have no "
                            "identity"
                        )
            return None
        if len(leaf) != 1:
            raise AccessDenied("the auth context holds several client certificates")
        presented = auth.get("x509_pem_cert_chain")
        remembered = (leaf[0], presented[0] if presented and len(presented) == 1 else None)
        known = self._chains.get(remembered)
        if known is not None:
            return known
        chain: list[bytes | str] = [leaf[0]]
        if presented:
            try:
                text = b"".join(presented).decode("ascii")
                blocks = split_pem(text, limit=_MAX_CHAIN)
            except (UnicodeDecodeError, CertificateDecodingError):
                # Handed to the verifier as is: it refuses what it cannot read.
                chain.extend(presented)
            else:
                first = leaf[0].decode("ascii", "replace").strip()
                chain.extend(b for b in blocks if b.strip() != first)
        result = tuple(chain)
        if (presented is None or remembered[1] is not None) and len(leaf[0]) <= _MAX_PEM:
            self._chains.put(remembered, result)
        return result


def _wanted(names: frozenset[str]) -> frozenset[str]:
    """The metadata keys to hand the guard: all it reads but ``host``.

    A ``host`` metadata key is any value the client chose, sent beside the
    call's real ``:authority`` (which grpcio does not expose): never the Host.
    """
    return names - {"host"}


def _unanswerable(guard: Guard) -> str:
    """The request attributes the guard's rules read that a gRPC call has not ("" for none)."""
    reads = guard.policy.reads
    missing = [name for name in ("host", "port") if name in reads]
    return " and ".join(f"{name.capitalize()}" for name in missing)


def _method_name(method: str) -> bool:
    """True for ``/service/method``: two non-empty segments of visible ASCII, no dot segments."""
    if len(method) > 1024 or not method.startswith("/") or not method.isascii():
        return False
    parts = method[1:].split("/")
    return (
        len(parts) == 2
        and all(part and part not in (".", "..") for part in parts)
        and method.isprintable()
        and " " not in method
        and "%" not in method
        and ";" not in method
    )


def _refusal(verdict: Verdict) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    decision: Decision = verdict.decision
    status = decision.status if decision.status in _STATUS else 403
    trailers: tuple[tuple[str, str], ...] = ()
    response = verdict.response
    if status == 401 and response is not None:
        trailers = tuple((k, v) for k, v in response.headers if k == "www-authenticate")
    return _STATUS[status], _DETAILS[status], trailers


class _Base:
    __slots__ = ("_cache", "_core")

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        authenticators: Iterable[Authenticator] = (),
        servicers: Iterable[object] = (),
        responder: Responder | None = None,
        www_authenticate: str | None = None,
        memory: MemoryLimits | None = None,
        guard: Guard | None = None,
        observers: Iterable[Observer] = (),
    ) -> None:
        self._core = _Core(
            policy=policy,
            authenticators=authenticators,
            responder=responder,
            www_authenticate=www_authenticate,
            memory=memory,
            guard=guard,
            servicers=servicers,
            observers=observers,
        )
        self._cache: dict[tuple[str, object], Any] = {}

    @property
    def guard(self) -> Guard:
        return self._core.guard

    def _admit_sync(self, method: str, context: Any, key: object) -> Peer | None:
        """The caller, or the call aborted (``context.abort`` raises)."""
        verdict = self._core.verdict(method, context, key)
        if not verdict.decision.allowed:
            code, text, trailers = _refusal(verdict)
            if trailers:
                context.set_trailing_metadata(trailers)
            context.abort(code, text)
            raise AssertionError("context.abort returned")  # pragma: no cover
        return verdict.peer

    async def _admit_async(self, method: str, context: Any, key: object) -> Peer | None:
        verdict = self._core.verdict(method, context, key)
        if not verdict.decision.allowed:
            code, text, trailers = _refusal(verdict)
            if trailers:
                context.set_trailing_metadata(trailers)
            await context.abort(code, text)
            raise AssertionError("context.abort returned")  # pragma: no cover
        return verdict.peer

    # Handlers ---------------------------------------------------------------

    def _wrapped(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> Any:
        """``handler`` with the check in front, built once per method and handler."""
        cache = self._cache
        try:
            found = cache.get((method, handler))
        except Exception:  # a handler of the application's own, not hashable
            return self._wrap(handler, method)
        if found is None:
            found = self._wrap(handler, method)
            if len(cache) >= _MAX_WRAPPED:
                # Handlers made anew for every call: keep the first ones only.
                return found
            cache[(method, handler)] = found
        return found

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> Any:
        # The behaviour grpcio would run: the one the streaming flags name
        # (never another field the handler also sets).
        kind = (
            f"{'stream' if handler.request_streaming else 'unary'}_"
            f"{'stream' if handler.response_streaming else 'unary'}"
        )
        behavior: Any = getattr(handler, kind)
        key = _behavior_key(behavior)
        streams = kind.endswith("_stream")
        if inspect.isasyncgenfunction(behavior):
            wrapped: Callable[..., Any] = self._async_generator(behavior, method, key)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = self._coroutine(behavior, method, key)
        elif streams:
            wrapped = self._generator(behavior, method, key)
        else:
            wrapped = self._function(behavior, method, key)
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        return make(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _function(
        self, behavior: Callable[..., T], method: str, key: object
    ) -> Callable[[Any, Any], T]:
        def call(request: Any, context: Any) -> T:
            peer = self._admit_sync(method, context, key)
            token = current_peer_var.set(peer)
            _PEERS[context] = peer
            try:
                return behavior(request, context)
            finally:
                _PEERS.pop(context, None)
                _reset(token)

        return call

    def _generator(
        self, behavior: Callable[..., Iterable[T]], method: str, key: object
    ) -> Callable[[Any, Any], Iterator[T]]:
        def call(request: Any, context: Any) -> Iterator[T]:
            peer = self._admit_sync(method, context, key)
            token = current_peer_var.set(peer)
            _PEERS[context] = peer
            try:
                yield from behavior(request, context)
            finally:
                _PEERS.pop(context, None)
                _reset(token)

        return call

    def _coroutine(
        self, behavior: Callable[..., Awaitable[T]], method: str, key: object
    ) -> Callable[[Any, Any], Awaitable[T]]:
        async def call(request: Any, context: Any) -> T:
            peer = await self._admit_async(method, context, key)
            token = current_peer_var.set(peer)
            _PEERS[context] = peer
            try:
                return await behavior(request, context)
            finally:
                _PEERS.pop(context, None)
                _reset(token)

        return call

    def _async_generator(
        self,
        behavior: Callable[..., AsyncIterator[T]],
        method: str,
        key: object,
    ) -> Callable[[Any, Any], AsyncIterator[T]]:
        async def call(request: Any, context: Any) -> AsyncIterator[T]:
            peer = await self._admit_async(method, context, key)
            token = current_peer_var.set(peer)
            _PEERS[context] = peer
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                _PEERS.pop(context, None)
                _reset(token)

        return call


class PeerInterceptor(_Base, grpc.ServerInterceptor):
    """Authenticate the caller and enforce ``policy`` on every call of a ``grpc.server``.

    Give either the configuration (``policy``, ``authenticators``,
    ``responder``, ``www_authenticate``, ``memory``, ``observers``) or a ``guard`` built from
    it; ``servicers`` are the servicers (or handler functions) whose
    :func:`require` declarations apply. Configuration errors raise here.
    """

    __slots__ = ()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        wrapped: grpc.RpcMethodHandler[Any, Any] = self._wrapped(
            handler, handler_call_details.method
        )
        return wrapped


class AsyncPeerInterceptor(_Base, aio.ServerInterceptor):
    """:class:`PeerInterceptor` for ``grpc.aio.server`` (async and sync servicer methods)."""

    __slots__ = ()

    def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # A coroutine for grpc.aio.server, which awaits it. grpc.server does
        # not check its interceptors' type and wants the handler itself (a
        # coroutine there would end its serving thread): it gets it, checked
        # as PeerInterceptor checks it.
        method = handler_call_details.method
        found: Any = continuation(handler_call_details)
        if inspect.isawaitable(found):
            return self._resolve(found, method)
        return None if found is None else self._wrapped(found, method)

    async def _resolve(
        self, found: Awaitable[grpc.RpcMethodHandler[Any, Any] | None], method: str
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await found
        if handler is None:
            return None
        wrapped: grpc.RpcMethodHandler[Any, Any] = self._wrapped(handler, method)
        return wrapped
