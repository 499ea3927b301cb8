"""Django configured once for the test process (settings.configure), shared by the
Django tests and the example tests; each test overrides what it needs."""

from __future__ import annotations

import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import django
from django.conf import settings
from django.test import override_settings

from peer_middleware import Anyone, Policy, allow

#: A policy for settings that name it by its dotted path.
POLICY_FOR_IMPORT = Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz/")])
MIDDLEWARE = ["peer_middleware.django.PeerMiddleware", "django.middleware.common.CommonMiddleware"]


def configure() -> None:
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="test-only-not-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=urlconf([]),
        MIDDLEWARE=MIDDLEWARE,
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        APPEND_SLASH=True,
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": [],
            "DEFAULT_PERMISSION_CLASSES": [],
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "UNAUTHENTICATED_USER": None,
        },
    )
    django.setup()


def urlconf(patterns: Sequence[Any], name: str = "test_urls") -> types.ModuleType:
    """A URLconf module made of ``patterns`` (hashable, as Django's resolver cache needs)."""
    module = types.ModuleType(name)
    module.urlpatterns = list(patterns)  # type: ignore[attr-defined]
    return module


@contextmanager
def project(
    patterns: Sequence[Any] | types.ModuleType, peer_middleware: Any, **extra: Any
) -> Iterator[None]:
    """Django serving ``patterns`` with ``settings.PEER_MIDDLEWARE = peer_middleware``."""
    configure()
    root = patterns if isinstance(patterns, (types.ModuleType, str)) else urlconf(patterns)
    with override_settings(ROOT_URLCONF=root, PEER_MIDDLEWARE=peer_middleware, **extra):
        yield


def example_request(
    settings_module: types.ModuleType,
    method: str,
    url: str,
    headers: dict[str, str],
    client: tuple[str, int],
) -> tuple[int, bytes, str]:
    """One request to the Django example configured by ``settings_module``, through
    Django's WSGI handler, as gunicorn would pass it (the target as sent in ``RAW_URI``)."""
    from django.test import Client

    configure()
    names = ("ROOT_URLCONF", "MIDDLEWARE", "PEER_MIDDLEWARE", "APPEND_SLASH")
    with override_settings(**{name: getattr(settings_module, name) for name in names}):
        response = Client().generic(
            method,
            url,
            headers=headers,
            REMOTE_ADDR=client[0],
            REMOTE_PORT=str(client[1]),
            RAW_URI=url,
        )
    return response.status_code, response.content, response["content-type"]
