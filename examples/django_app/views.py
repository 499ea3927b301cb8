"""The payments service's views, each declaring who may call it."""

from __future__ import annotations

import uuid

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from peer_middleware import Namespace, Principal
from peer_middleware.django import require

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    caller = request.peer.principal if request.peer else None  # type: ignore[attr-defined]
    return JsonResponse({"status": "ok", "caller": caller})


@require_POST
@require(Principal(CHECKOUT), name="create-payment", methods="POST")
def create_payment(request: HttpRequest) -> JsonResponse:
    created_by = request.peer.principal  # type: ignore[attr-defined]
    return JsonResponse({"id": str(uuid.uuid4()), "created_by": created_by}, status=201)


# Django dispatches on the path alone: one view, a rule per method.
@require_http_methods(["GET", "DELETE"])
@require(Namespace("shop", trust_domain="cluster.local"), name="read-payment", methods="GET")
@require(Principal(ADMIN), name="delete-payment", methods="DELETE")
def payment(request: HttpRequest, payment_id: str) -> JsonResponse:
    caller = request.peer.principal  # type: ignore[attr-defined]
    if request.method == "DELETE":
        return JsonResponse({"id": payment_id, "deleted_by": caller})
    return JsonResponse({"id": payment_id, "status": "settled", "caller": caller})
