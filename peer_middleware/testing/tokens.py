"""Test tokens: signing keys, a token minter and a JWKS / OIDC discovery server.

Keys are generated in memory when a test runs; nothing here is for production.

::

    from peer_middleware.testing.tokens import JwksServer, SigningKey, TokenMinter

    minter = TokenMinter(issuer="https://kubernetes.default.svc.cluster.local")
    token = minter.kubernetes("shop", "checkout", audience="payments")
    svid = minter.jwt_svid("spiffe://example.org/ns/shop/sa/checkout", audience="payments")

    with JwksServer(minter.jwks()) as server:      # http://127.0.0.1:<port>
        server.url("/jwks.json"), server.issuer    # discovery at /.well-known/...
        server.mode = "down"                       # or "error", "slow", "garbage", "ok"
        server.set_jwks(other.jwks())              # rotate keys mid-run

:meth:`TokenMinter.token` signs any claims and headers as given, so tests can
build the malformed tokens a verifier must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["JwksServer", "KeyKind", "SigningKey", "TokenMinter", "certificate_thumbprint"]

KeyKind = Literal["rsa", "ec", "ec384", "ec521", "ed25519"]
_ALGORITHMS: dict[str, str] = {
    "rsa": "RS256",
    "ec": "ES256",
    "ec384": "ES384",
    "ec521": "ES512",
    "ed25519": "EdDSA",
}


class SigningKey:
    """A private key with a ``kid``; :attr:`jwk` is its public JWK."""

    def __init__(
        self, kind: KeyKind = "ec", *, kid: str | None = None, algorithm: str | None = None
    ) -> None:
        if kind == "rsa":
            self.private_key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kind == "ec":
            self.private_key = ec.generate_private_key(ec.SECP256R1())
        elif kind == "ec384":
            self.private_key = ec.generate_private_key(ec.SECP384R1())
        elif kind == "ec521":
            self.private_key = ec.generate_private_key(ec.SECP521R1())
        elif kind == "ed25519":
            self.private_key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(f"unknown key kind {kind!r}")
        self.kind = kind
        self.kid = kid or uuid.uuid4().hex[:16]
        self.algorithm = algorithm or _ALGORITHMS[kind]

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()

    def jwk(self, *, use: str | None = "sig", include_alg: bool = True) -> dict[str, Any]:
        """The public JWK (``use`` ``"jwt-svid"`` for a SPIFFE bundle, ``None`` for none)."""
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        data: dict[str, Any] = json.loads(algorithm.to_jwk(self.public_key))
        data["kid"] = self.kid
        if include_alg:
            data["alg"] = self.algorithm
        else:
            data.pop("alg", None)
        if use is not None:
            data["use"] = use
        else:
            data.pop("use", None)
        return data

    def sign(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        """Sign ``claims`` as given; ``headers`` are added to (or replace) the defaults."""
        header: dict[str, Any] = {"kid": self.kid, "typ": "JWT"}
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None}
        algorithm = header.pop("alg", self.algorithm)
        # The JWS layer signs the claims as given: no checks of their types.
        payload = json.dumps(dict(claims), separators=(",", ":")).encode()
        return jwt.api_jws.encode(payload, self.private_key, algorithm=algorithm, headers=header)


def certificate_thumbprint(certificate_der: bytes) -> str:
    """The RFC 8705 ``x5t#S256`` value of a DER certificate."""
    digest = hashlib.sha256(certificate_der).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class TokenMinter:
    """Mints JWT-SVIDs and Kubernetes service-account tokens signed by :attr:`keys`.

    ``issuer`` goes into ``iss`` (omitted when ``None``); ``clock`` gives the
    time tokens are minted at.
    """

    def __init__(
        self,
        *,
        issuer: str | None = None,
        keys: Iterable[SigningKey] | None = None,
        kind: KeyKind = "ec",
        clock: Any = time.time,
    ) -> None:
        self.issuer = issuer
        self.keys = list(keys) if keys is not None else [SigningKey(kind)]
        self.clock = clock

    @property
    def key(self) -> SigningKey:
        """The key tokens are signed with (the first)."""
        return self.keys[0]

    def jwks(self, *, use: str | None = "sig") -> dict[str, Any]:
        """The public JWKS of every key."""
        return {"keys": [k.jwk(use=use) for k in self.keys]}

    def spiffe_bundle(self, *, sequence: int = 1) -> dict[str, Any]:
        """A SPIFFE bundle document holding the keys as ``jwt-svid`` keys."""
        return {
            "keys": [k.jwk(use="jwt-svid") for k in self.keys],
            "spiffe_sequence": sequence,
            "spiffe_refresh_hint": 300,
        }

    def claims(
        self,
        subject: str,
        audience: str | list[str],
        *,
        lifetime: float = 300,
        not_before: float | None = None,
        issued_at: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = self.clock()
        claims: dict[str, Any] = {
            "sub": subject,
            "aud": audience,
            "exp": int(now + lifetime),
            "iat": int(now if issued_at is None else issued_at),
        }
        if not_before is not None:
            claims["nbf"] = int(not_before)
        if self.issuer is not None:
            claims["iss"] = self.issuer
        claims.update(extra or {})
        return claims

    def token(
        self,
        claims: Mapping[str, Any],
        *,
        headers: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """Sign exactly ``claims`` (for malformed and hostile tokens)."""
        return (key or self.key).sign(claims, headers)

    def jwt_svid(
        self,
        spiffe_id: str,
        audience: str | list[str],
        *,
        lifetime: float = 300,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """A JWT-SVID for ``spiffe_id``."""
        claims = self.claims(spiffe_id, audience, lifetime=lifetime, extra=extra)
        return self.token(claims, headers=headers, key=key)

    def kubernetes(
        self,
        namespace: str,
        service_account: str,
        audience: str | list[str],
        *,
        lifetime: float = 3600,
        pod: str | None = "app-7d4b9c",
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """A projected service-account token as the Kubernetes API server issues it."""
        info: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
        }
        if pod is not None:
            info["pod"] = {"name": pod, "uid": str(uuid.uuid4())}
        now = self.clock()
        merged: dict[str, Any] = {"kubernetes.io": info, "nbf": int(now)}
        merged.update(extra or {})
        claims = self.claims(
            f"system:serviceaccount:{namespace}:{service_account}",
            audience,
            lifetime=lifetime,
            extra=merged,
        )
        return self.token(claims, headers={"typ": None, **(headers or {})}, key=key)

    def legacy_kubernetes_secret(self, namespace: str, service_account: str) -> str:
        """A legacy secret-based service-account token: no ``exp``, no ``aud``."""
        claims = {
            "iss": "kubernetes/serviceaccount",
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/service-account.name": service_account,
        }
        return self.token(claims)


Mode = Literal["ok", "down", "error", "slow", "garbage"]


class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a JWKS and an OIDC discovery document.

    ``GET /jwks.json`` answers the JWKS; ``GET /.well-known/openid-configuration``
    a discovery document whose ``issuer`` is :attr:`issuer` (the server's URL,
    unless ``issuer=`` is given) and whose ``jwks_uri`` is ``/jwks.json``.
    :attr:`mode` switches failures: ``"down"`` (the connection is closed
    without an answer), ``"error"`` (HTTP 500), ``"slow"`` (answers after
    :attr:`delay` seconds), ``"garbage"`` (a non-JSON body). :attr:`requests`
    counts the requests per path.
    """

    def __init__(
        self,
        jwks: Mapping[str, Any] | None = None,
        *,
        issuer: str | None = None,
        delay: float = 3.0,
    ) -> None:
        self._jwks: bytes = json.dumps(dict(jwks or {"keys": []})).encode()
        self._issuer = issuer
        self.mode: Mode = "ok"
        self.delay = delay
        self.discovery: dict[str, Any] | None = None
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def set_jwks(self, jwks: Mapping[str, Any]) -> None:
        """Serve another JWKS from now on (a key rotation)."""
        self._jwks = json.dumps(dict(jwks)).encode()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not running")
        return int(self._server.server_address[1])

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def issuer(self) -> str:
        return self._issuer or self.url()

    @property
    def jwks_url(self) -> str:
        return self.url("/jwks.json")

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests.get(path, 0)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        with self._lock:
            self.requests[path] = self.requests.get(path, 0) + 1
        mode = self.mode
        if mode == "down":
            handler.close_connection = True
            handler.connection.close()
            return
        if mode == "slow":
            time.sleep(self.delay)
        if path == "/jwks.json":
            body = self._jwks
        elif path == "/.well-known/openid-configuration":
            document = self.discovery or {
                "issuer": self.issuer,
                "jwks_uri": self.url("/jwks.json"),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
            body = json.dumps(document).encode()
        else:
            handler.send_error(404)
            return
        if mode == "error":
            handler.send_error(500)
            return
        if mode == "garbage":
            body = b"<html>\x00not json{"
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def start(self) -> JwksServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="JwksServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def __enter__(self) -> JwksServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
