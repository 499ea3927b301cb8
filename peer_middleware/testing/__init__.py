"""Tools for testing apps that use peer_middleware: impersonate callers in your own tests.

* :class:`TestCA` and :class:`Svid` (in :mod:`peer_middleware.testing.pki`):
  a throw-away CA that mints X.509-SVIDs, built in memory when the test runs.
* :func:`xfcc_header`: the ``x-forwarded-client-cert`` value an Envoy sidecar
  would send for a caller, to put in a test client's request together with a
  trusted-proxy client address::

      from starlette.testclient import TestClient
      from peer_middleware.testing import xfcc_header

      client = TestClient(app, client=("127.0.0.1", 50000))  # the "sidecar"
      response = client.get(
          "/payments/1",
          headers={"x-forwarded-client-cert": xfcc_header("spiffe://cluster.local/ns/shop/sa/cart")},
      )

* :class:`TokenMinter`, :class:`SigningKey` and :class:`JwksServer` (in
  :mod:`peer_middleware.testing.tokens`): JWT-SVIDs and Kubernetes
  service-account tokens signed by keys made when the test runs, and a real
  HTTP server on 127.0.0.1 serving their JWKS and an OIDC discovery document,
  with switchable failure modes.
* :func:`asgi_tls_extensions` and :func:`wsgi_tls_environ`: a caller's client
  certificate chain as an ASGI server with the TLS extension, or mod_wsgi,
  hands it to the app (for :class:`~peer_middleware.authenticators.MtlsAuthenticator`).
* :func:`forwarded_cert_headers`: the headers a TLS-terminating proxy (nginx,
  HAProxy, Caddy, ... see :class:`~peer_middleware.presets.Preset`) sends
  for a caller's certificate, or for a request without one;
  :func:`linkerd_client_id`: Linkerd's ``l5d-client-id`` for a caller.
* :class:`~peer_middleware.testing.envoy.EnvoySidecar` and the helpers in
  :mod:`peer_middleware.testing.processes` run a real Envoy and uvicorn on
  127.0.0.1 for end-to-end tests; :mod:`peer_middleware.testing.proxies`
  runs nginx, HAProxy and Caddy the same way.

Nothing here is for production use.
"""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import quote

from cryptography.hazmat.primitives.serialization import Encoding

from peer_middleware.presets import Preset
from peer_middleware.spiffe import SpiffeId
from peer_middleware.xfcc import XfccElement, format_xfcc

from .pki import Svid, TestCA
from .tokens import JwksServer, SigningKey, TokenMinter

__all__ = [
    "JwksServer",
    "SigningKey",
    "Svid",
    "TestCA",
    "TokenMinter",
    "asgi_tls_extensions",
    "forwarded_cert_headers",
    "linkerd_client_id",
    "wsgi_tls_environ",
    "xfcc_header",
]


def xfcc_header(
    caller: str | Svid,
    *,
    by: str | None = None,
    include_cert: bool = False,
    include_chain: bool | None = None,
    subject: str | None = "",
) -> str:
    """An XFCC value as Envoy writes it for ``caller`` (a SPIFFE ID or an :class:`Svid`).

    With an :class:`Svid`, ``Hash`` is its real SHA-256 fingerprint and
    ``include_cert`` adds the URL-encoded ``Cert`` (the leaf) and ``Chain``
    (the leaf and its intermediates, as Envoy's ``chain: true`` sends it;
    ``include_chain=False`` leaves it out); with a plain ID, ``Hash`` is the
    SHA-256 of the ID (stable, but not a certificate's). ``by`` is the
    receiving app's own SPIFFE ID.
    """
    if include_chain is None:
        include_chain = include_cert
    if isinstance(caller, Svid):
        uris = caller.uris
        fingerprint = caller.fingerprint_sha256
        cert = quote(caller.cert_pem.decode("ascii"), safe="") if include_cert else None
        chain = quote(caller.chain_pem.decode("ascii"), safe="") if include_chain else None
    else:
        uris = (caller,)
        fingerprint = hashlib.sha256(caller.encode("utf-8")).hexdigest()
        cert = chain = None
    element = XfccElement(
        by=(by,) if by else (),
        hash=fingerprint,
        cert=cert,
        chain=chain,
        subject=subject,
        uri=tuple(uris),
    )
    return format_xfcc([element])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def forwarded_cert_headers(preset: Preset | str, caller: Svid | None) -> dict[str, str]:
    """The headers ``preset``'s proxy sends for ``caller``'s certificate (and intermediates).

    With ``caller=None``, the headers it sends for a request without a client
    certificate (which may be none at all). Header names are the preset's
    defaults (see :mod:`peer_middleware.presets` and ``docs/proxies.md``).
    """
    preset = Preset(preset)
    if caller is None:
        return dict(_NO_CERTIFICATE[preset])
    leaf = caller.der
    chain = [cert.public_bytes(Encoding.DER) for cert in caller.chain]
    chain_pems = [cert.public_bytes(Encoding.PEM).decode("ascii") for cert in caller.chain]
    pem = caller.cert_pem.decode("ascii")
    if preset is Preset.NGINX:
        return {"x-ssl-client-cert": quote(pem, safe=""), "x-ssl-client-verify": "SUCCESS"}
    if preset is Preset.TRAEFIK:
        return {"x-forwarded-tls-client-cert": ",".join(_b64(d) for d in (leaf, *chain))}
    if preset is Preset.CADDY:
        return {"x-client-cert": _b64(leaf)}
    if preset is Preset.HAPROXY:
        return {
            "x-ssl-client-cert": _b64(leaf),
            "x-ssl-client-chain": _b64(b"".join(chain)),
            "x-ssl-client-used": "1",
            "x-ssl-client-verify": "0",
        }
    if preset is Preset.APACHE:
        headers = {
            "x-ssl-client-cert": pem.strip().replace("\n", " "),
            "x-ssl-client-verify": "SUCCESS",
        }
        for n in range(4):
            value = chain_pems[n].strip().replace("\n", " ") if n < len(chain_pems) else "(null)"
            headers[f"x-ssl-client-cert-chain-{n}"] = value
        return headers
    if preset is Preset.AWS_ALB:
        return {"x-amzn-mtls-clientcert-leaf": quote(pem, safe="+=/")}
    if preset is Preset.AWS_ALB_PASSTHROUGH:
        return {"x-amzn-mtls-clientcert": quote(caller.chain_pem.decode("ascii"), safe="+=/")}
    if preset is Preset.GCP:
        return {
            "x-client-cert-present": "true",
            "x-client-cert-chain-verified": "true",
            "x-client-cert-leaf": f":{_b64(leaf)}:",
            "x-client-cert-chain": ", ".join(f":{_b64(d)}:" for d in chain),
        }
    if preset is Preset.AZURE:
        return {"x-arr-clientcert": _b64(leaf)}
    headers = {"client-cert": f":{_b64(leaf)}:"}
    if chain:
        headers["client-cert-chain"] = ", ".join(f":{_b64(d)}:" for d in chain)
    return headers


_NO_CERTIFICATE: dict[Preset, dict[str, str]] = {
    Preset.NGINX: {"x-ssl-client-verify": "NONE"},
    Preset.TRAEFIK: {},
    Preset.CADDY: {"x-client-cert": "<nil>"},
    Preset.HAPROXY: {
        "x-ssl-client-cert": "",
        "x-ssl-client-chain": "",
        "x-ssl-client-used": "0",
        "x-ssl-client-verify": "0",
    },
    Preset.APACHE: {
        "x-ssl-client-cert": "(null)",
        **{f"x-ssl-client-cert-chain-{n}": "(null)" for n in range(4)},
        "x-ssl-client-verify": "NONE",
    },
    Preset.AWS_ALB: {},
    Preset.AWS_ALB_PASSTHROUGH: {},
    Preset.GCP: {
        "x-client-cert-present": "false",
        "x-client-cert-chain-verified": "false",
        "x-client-cert-leaf": "",
        "x-client-cert-chain": "",
    },
    Preset.AZURE: {},
    Preset.RFC9440: {},
}


def linkerd_client_id(caller: str, *, identity_domain: str = "linkerd.cluster.local") -> str:
    """The ``l5d-client-id`` Linkerd sends for ``caller``, a ``/ns/<ns>/sa/<sa>`` SPIFFE ID."""
    spiffe_id = SpiffeId.parse(caller)
    namespace, account = spiffe_id.namespace, spiffe_id.service_account
    if namespace is None or account is None:
        raise ValueError(f"{caller!r} does not name a namespace and a service account")
    return f"{account}.{namespace}.serviceaccount.identity.{identity_domain}"


def asgi_tls_extensions(caller: Svid) -> dict[str, dict[str, object]]:
    """``scope["extensions"]`` as an ASGI server with the TLS extension fills it for ``caller``.

    ``client_cert_chain`` is the caller's leaf and intermediates, PEM strings,
    leaf first. Merge it into a test scope to exercise
    :class:`~peer_middleware.authenticators.MtlsAuthenticator` without a TLS handshake.
    """
    pems = [
        cert.public_bytes(Encoding.PEM).decode("ascii")
        for cert in (caller.certificate, *caller.chain)
    ]
    return {"tls": {"client_cert_chain": pems, "tls_version": 0x0304, "server_cert": None}}


def wsgi_tls_environ(caller: Svid) -> dict[str, str]:
    """The environ keys mod_wsgi (Apache mod_ssl) sets for ``caller``'s certificate.

    ``SSL_CLIENT_CERT`` is the leaf, ``SSL_CLIENT_CERT_CHAIN_0``... the
    intermediates, all PEM.
    """
    environ = {"SSL_CLIENT_CERT": caller.cert_pem.decode("ascii")}
    for index, cert in enumerate(caller.chain):
        environ[f"SSL_CLIENT_CERT_CHAIN_{index}"] = cert.public_bytes(Encoding.PEM).decode("ascii")
    return environ
