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
"""

from __future__ import annotations

import os
import uuid

from fastapi import FastAPI

from examples.bundle_config import xfcc_verifier
from examples.token_config import token_authenticators
from peer_middleware import Anyone, Namespace, Policy, Principal, XfccAuthenticator, allow, deny
from peer_middleware.fastapi import CurrentPeer, OptionalPeer, install, require

TRUST_DOMAIN = "cluster.local"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
LEGACY_EXPORT = "spiffe://cluster.local/ns/shop/sa/legacy-export"
XFCC_MODE = (
    "append_forward"
    if os.environ.get("PEER_MIDDLEWARE_FORWARD_CLIENT_CERT") == "append_forward"
    else "sanitize_set"
)

app = FastAPI(title="payments")


@app.get("/healthz")
def healthz(peer: OptionalPeer) -> dict[str, str | None]:
    return {"status": "ok", "caller": peer.principal if peer else None}


@app.post(
    "/payments", status_code=201, dependencies=[require(Principal(CHECKOUT), name="create-payment")]
)
def create_payment(peer: CurrentPeer) -> dict[str, str]:
    return {"id": str(uuid.uuid4()), "created_by": peer.principal}


@app.get(
    "/payments/{payment_id}",
    dependencies=[require(Namespace("shop", trust_domain=TRUST_DOMAIN), name="read-payment")],
)
def read_payment(payment_id: str, peer: CurrentPeer) -> dict[str, str]:
    return {"id": payment_id, "status": "settled", "caller": peer.principal}


@app.delete(
    "/payments/{payment_id}", dependencies=[require(Principal(ADMIN), name="delete-payment")]
)
def delete_payment(payment_id: str, peer: CurrentPeer) -> dict[str, str]:
    return {"id": payment_id, "deleted_by": peer.principal}


policy = Policy(
    [
        allow("healthz", Anyone(), methods="GET", paths="/healthz"),
        deny("no-legacy-export", Principal(LEGACY_EXPORT), paths="/payments/**"),
    ]
)

install(
    app,
    policy=policy,
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
