"""The payments service that ``peer-middleware demo`` serves, with FastAPI.

It lives in the package, not in the repository's ``examples/``, so that the
command works from an installed wheel. The routes and the policy are defined
once, here: ``examples/fastapi_app/app.py`` (the documented example) builds
its app from :data:`router` and :data:`policy` and adds configuration from
the environment; :data:`app` is the same service with the demo's fixed
configuration (the sidecar connects from the loopback address and its
``URI=`` is taken as is), so the demo does not change with the caller's
environment.

=================================  ==============================================
route                              allowed
=================================  ==============================================
``GET /healthz``                   anyone, no identity needed (policy rule)
``POST /payments``                 ``spiffe://cluster.local/ns/shop/sa/checkout``
``GET /payments/{payment_id}``     any workload of namespace ``shop``
``DELETE /payments/{payment_id}``  ``spiffe://cluster.local/ns/ops/sa/admin``
any ``/payments`` route            DENY ``.../ns/shop/sa/legacy-export`` (wins)
=================================  ==============================================
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, FastAPI

from peer_middleware import Anyone, Namespace, Policy, Principal, XfccAuthenticator, allow, deny
from peer_middleware.fastapi import CurrentPeer, OptionalPeer, install, require

__all__ = ["ADMIN", "CHECKOUT", "LEGACY_EXPORT", "TRUST_DOMAIN", "app", "policy", "router"]

TRUST_DOMAIN = "cluster.local"
CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"
LEGACY_EXPORT = "spiffe://cluster.local/ns/shop/sa/legacy-export"

#: The routes, each allow rule declared on its route with :func:`require`.
router = APIRouter()


@router.get("/healthz")
def healthz(peer: OptionalPeer) -> dict[str, str | None]:
    return {"status": "ok", "caller": peer.principal if peer else None}


@router.post(
    "/payments", status_code=201, dependencies=[require(Principal(CHECKOUT), name="create-payment")]
)
def create_payment(peer: CurrentPeer) -> dict[str, str]:
    return {"id": str(uuid.uuid4()), "created_by": peer.principal}


@router.get(
    "/payments/{payment_id}",
    dependencies=[require(Namespace("shop", trust_domain=TRUST_DOMAIN), name="read-payment")],
)
def read_payment(payment_id: str, peer: CurrentPeer) -> dict[str, str]:
    return {"id": payment_id, "status": "settled", "caller": peer.principal}


@router.delete(
    "/payments/{payment_id}", dependencies=[require(Principal(ADMIN), name="delete-payment")]
)
def delete_payment(payment_id: str, peer: CurrentPeer) -> dict[str, str]:
    return {"id": payment_id, "deleted_by": peer.principal}


#: The app-wide rules: the health check, and the deny rule that wins over the routes' allows.
policy = Policy(
    [
        allow("healthz", Anyone(), methods="GET", paths="/healthz"),
        deny("no-legacy-export", Principal(LEGACY_EXPORT), paths="/payments/**"),
    ]
)

app = FastAPI(title="payments")
app.include_router(router)
install(
    app,
    policy=policy,
    authenticators=[XfccAuthenticator(trusted_proxies=["127.0.0.1", "::1"])],
)
