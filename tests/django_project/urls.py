"""Views of the test project: a neighbour before a declared template, sync, async, DRF."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from peer_middleware import Namespace
from peer_middleware.django import get_peer, require
from peer_middleware.django.rest_framework import peer_permission

SHOP = Namespace("shop", trust_domain="cluster.local")


def _caller(request: HttpRequest) -> dict[str, Any]:
    peer = get_peer(request)
    return {
        "caller": peer.principal if peer else None,
        "proof": peer.proof.value if peer else None,
        "path": request.path,
    }


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok", **_caller(request)})


def export(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"export": "everything"})


@require(SHOP, name="read-payment")
def read_payment(request: HttpRequest, payment_id: str) -> JsonResponse:
    return JsonResponse({"id": payment_id, **_caller(request)})


@require(SHOP, name="async-payment")
async def async_payment(request: HttpRequest, payment_id: int) -> JsonResponse:
    return JsonResponse({"id": payment_id, **_caller(request)})


class PaymentApi(APIView):
    permission_classes = (peer_permission(SHOP, name="payment-api"),)

    def get(self, request: Any, payment_id: int) -> Response:
        return Response({"id": payment_id, **_caller(request._request)})


urlpatterns = [
    path("healthz/", healthz),
    path("payments/export/", export),
    path("payments/<str:payment_id>/", read_payment),
    path("async/payments/<int:payment_id>/", async_payment),
    path("api/payments/<int:payment_id>/", PaymentApi.as_view()),
]
