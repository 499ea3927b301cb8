"""GET /healthz, POST /payments, GET and DELETE /payments/<payment_id>."""

from django.urls import path

from examples.django_app import views

urlpatterns = [
    path("healthz", views.healthz),
    path("payments", views.create_payment),
    path("payments/<str:payment_id>", views.payment),
]
