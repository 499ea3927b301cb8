"""A payments service behind an Istio/Envoy sidecar, with FastAPI.

Run it behind a sidecar that terminates mTLS and sets
``x-forwarded-client-cert`` (``nox -s demo`` does exactly that)::

    uvicorn examples.fastapi_app.app:app --port 8000 --forwarded-allow-ips=''

Environment:

``PEER_MIDDLEWARE_TRUSTED_PROXIES``
    comma-separated addresses or CIDRs of the sidecar (default ``127.0.0.1,::1``;
    Istio's sidecar connects from ``127.0.0.6``).
``PEER_MIDDLEWARE_EXPECTED_BY``
    this service's own SPIFFE ID; when set, the sidecar's ``By=`` must name it.
``PEER_MIDDLEWARE_FORWARD_CLIENT_CERT``
    the sidecar's XFCC mode: ``sanitize_set`` (default; one element) or
    ``append_forward`` (Istio's sidecars; the rightmost element is used).
``PEER_MIDDLEWARE_TOKEN_AUDIENCE`` (and the other ``PEER_MIDDLEWARE_TOKEN_*``)
    accept a Kubernetes service-account token as an alternative to the
    sidecar's certificate (see ``examples/README.md``); off when unset.
``PEER_MIDDLEWARE_BUNDLE_FILE``
    a trust bundle file (PEM CA certificates of ``cluster.local``); when set,
    the sidecar's ``Cert=`` must verify against it (re-read when it changes).

The routes (each with its allow rule, ``require(...)``) and the app-wide
policy are those of ``peer-middleware demo``, defined once in
``peer_middleware/_demo_app.py`` so that the command works from an installed
package; this module adds the configuration from the environment.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from examples.bundle_config import xfcc_verifier
from examples.token_config import token_authenticators
from peer_middleware import XfccAuthenticator
from peer_middleware._demo_app import TRUST_DOMAIN, policy, router
from peer_middleware.fastapi import install

XFCC_MODE = (
    "append_forward"
    if os.environ.get("PEER_MIDDLEWARE_FORWARD_CLIENT_CERT") == "append_forward"
    else "sanitize_set"
)

app = FastAPI(title="payments")
app.include_router(router)  # GET /healthz, POST /payments, GET and DELETE /payments/{payment_id}

install(
    app,
    policy=policy,  # GET /healthz for anyone; legacy-export denied on /payments/**
    authenticators=[
        XfccAuthenticator(
            trusted_proxies=os.environ.get(
                "PEER_MIDDLEWARE_TRUSTED_PROXIES", "127.0.0.1,::1"
            ).split(","),
            expected_by=os.environ.get("PEER_MIDDLEWARE_EXPECTED_BY") or None,
            forward_client_cert=XFCC_MODE,
            # Envoy's Cert= verified against a trust bundle file, only when configured.
            verifier=xfcc_verifier(TRUST_DOMAIN),
        ),
        # Kubernetes service-account tokens, only when configured (see examples/README.md).
        *token_authenticators(TRUST_DOMAIN),
    ],
)
