"""A payments service behind an Istio/Envoy sidecar, with Django: the settings.

Run it behind a sidecar that terminates mTLS and sets
``x-forwarded-client-cert``::

    gunicorn examples.django_app.wsgi:application --bind 127.0.0.1:8000
    uvicorn examples.django_app.asgi:application --port 8000 --forwarded-allow-ips=''

Environment: the same variables as the FastAPI and Flask examples
(``PEER_MIDDLEWARE_TRUSTED_PROXIES``, ``PEER_MIDDLEWARE_EXPECTED_BY``,
``PEER_MIDDLEWARE_FORWARD_CLIENT_CERT``, ``PEER_MIDDLEWARE_BUNDLE_FILE``,
``PEER_MIDDLEWARE_TOKEN_*``; see ``examples/README.md``), and
``DJANGO_SECRET_KEY``. The allow rules sit on the views (``views.py``);
the health check and the deny rule are the app-wide policy below.
"""

from __future__ import annotations

import os
import secrets

from examples.bundle_config import xfcc_verifier
from examples.token_config import token_authenticators
from peer_middleware import Anyone, Policy, Principal, XfccAuthenticator, allow, deny

TRUST_DOMAIN = "cluster.local"
LEGACY_EXPORT = "spiffe://cluster.local/ns/shop/sa/legacy-export"
XFCC_MODE = (
    "append_forward"
    if os.environ.get("PEER_MIDDLEWARE_FORWARD_CLIENT_CERT") == "append_forward"
    else "sanitize_set"
)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32)
DEBUG = False
ALLOWED_HOSTS = ["*"]  # behind the sidecar; restrict to the service's names in production
ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, object] = {}
USE_TZ = True
APPEND_SLASH = False  # the routes have no trailing slash, as in the other examples

# peer_middleware first: nothing else runs for a refused caller.
MIDDLEWARE = ["peer_middleware.django.PeerMiddleware"]
PEER_MIDDLEWARE = {
    "POLICY": Policy(
        [
            allow("healthz", Anyone(), methods="GET", paths="/healthz"),
            deny("no-legacy-export", Principal(LEGACY_EXPORT), paths="/payments/**"),
        ]
    ),
    "AUTHENTICATORS": [
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
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"peer_middleware": {"handlers": ["console"], "level": "INFO"}},
}
