"""A small Django project served by gunicorn and uvicorn in tests/test_django_servers.py.

Direct mTLS: the server terminates TLS, the middleware verifies the client's
certificate against the bundle file named by ``PEER_MIDDLEWARE_TEST_BUNDLE``.
"""

from __future__ import annotations

import os

from peer_middleware import (
    Anyone,
    MtlsAuthenticator,
    Policy,
    X509BundleFile,
    X509SvidVerifier,
    allow,
)

SECRET_KEY = "test-only-not-secret"
DEBUG = os.environ.get("PEER_MIDDLEWARE_TEST_DEBUG") == "1"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django_project.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, object] = {}
USE_TZ = True
MIDDLEWARE = [
    "peer_middleware.django.PeerMiddleware",
    "django.middleware.common.CommonMiddleware",
]
PEER_MIDDLEWARE = {
    "POLICY": Policy([allow("healthz", Anyone(), methods="GET", paths="/healthz/")]),
    "AUTHENTICATORS": [
        MtlsAuthenticator(
            X509SvidVerifier(
                X509BundleFile(
                    os.environ["PEER_MIDDLEWARE_TEST_BUNDLE"], trust_domain="cluster.local"
                )
            )
        )
    ],
}
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"peer_middleware": {"handlers": ["console"], "level": "INFO"}},
}
