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

* :class:`~peer_middleware.testing.envoy.EnvoySidecar` and the helpers in
  :mod:`peer_middleware.testing.processes` run a real Envoy and uvicorn on
  127.0.0.1 for end-to-end tests.

Nothing here is for production use.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from peer_middleware.xfcc import XfccElement, format_xfcc

from .pki import Svid, TestCA

__all__ = ["Svid", "TestCA", "xfcc_header"]


def xfcc_header(
    caller: str | Svid,
    *,
    by: str | None = None,
    include_cert: bool = False,
    subject: str | None = "",
) -> str:
    """An XFCC value as Envoy writes it for ``caller`` (a SPIFFE ID or an :class:`Svid`).

    With an :class:`Svid`, ``Hash`` is its real SHA-256 fingerprint and
    ``include_cert`` adds the URL-encoded ``Cert`` and ``Chain``; with a plain
    ID, ``Hash`` is the SHA-256 of the ID (stable, but not a certificate's).
    ``by`` is the receiving app's own SPIFFE ID.
    """
    if isinstance(caller, Svid):
        uris = caller.uris
        fingerprint = caller.fingerprint_sha256
        cert = quote(caller.cert_pem.decode("ascii"), safe="") if include_cert else None
        chain = quote(caller.chain_pem.decode("ascii"), safe="") if include_cert else None
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
