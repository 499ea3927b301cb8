"""A Django REST framework permission naming who may call a view.

::

    from rest_framework.views import APIView
    from peer_middleware.django.rest_framework import peer_permission

    class PaymentView(APIView):
        permission_classes = [peer_permission(Namespace("shop", trust_domain="cluster.local"))]

The permission is a rule declared on the view (see :mod:`peer_middleware.django`):
the middleware, which must be installed, applies it to the view Django's
resolver dispatches to when no central rule decided, and the permission
checks it again when DRF runs it. A refusal is the library's fixed response,
not DRF's: the permission raises a :class:`~peer_middleware.errors.RequestRefused`
that DRF's default exception handler leaves alone and the middleware's
``process_exception`` turns into the fixed body (a custom
``EXCEPTION_HANDLER`` must let it through too). Permissions composed with
``&``, ``|`` or ``~`` still check, but are not read as a declaration: the
central policy alone must allow the request first.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from peer_middleware.django import (
    PERMISSION_REQUIREMENT,
    DjangoConfigurationError,
    get_peer,
    requirement_error,
)
from peer_middleware.errors import ConfigurationError
from peer_middleware.matchers import Matcher
from peer_middleware.peer import Peer
from peer_middleware.routes import Requirement

__all__ = ["PeerAuthentication", "PeerPermission", "PeerUser", "peer_permission"]


class PeerPermission(BasePermission):
    """Allows the callers its ``requirement`` names; make one with :func:`peer_permission`."""

    requirement: ClassVar[Requirement | None] = None

    def has_permission(self, request: Request, view: Any) -> bool:
        requirement = type(self).requirement
        error = requirement_error(
            request._request, () if requirement is None else (requirement,), require_some=True
        )
        if error is not None:
            raise error
        return True


def peer_permission(who: Matcher, *, name: str | None = None) -> type[PeerPermission]:
    """A permission class allowing the callers ``who`` names (``name`` names the rule)."""
    try:
        requirement = Requirement(who, name)
    except ConfigurationError as error:
        raise DjangoConfigurationError(f"peer_permission(): {error}") from error
    return type(
        f"PeerPermission({who.describe()})",
        (PeerPermission,),
        {"requirement": requirement, PERMISSION_REQUIREMENT: requirement},
    )


class PeerUser:
    """The calling service as DRF's ``request.user`` (see :class:`PeerAuthentication`).

    Authenticated, never staff nor superuser, with no permissions of Django's
    auth framework; ``username`` and ``str()`` are the SPIFFE ID, ``peer``
    the :class:`~peer_middleware.Peer`.
    """

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.username = peer.principal

    def __str__(self) -> str:
        return self.username

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return False


class PeerAuthentication(BaseAuthentication):
    """DRF authentication from the peer the middleware proved.

    ``request.user`` is a :class:`PeerUser`, ``request.auth`` the
    :class:`~peer_middleware.Peer`; an anonymous request is left to the next
    authentication class (DRF's anonymous user at the end). It verifies
    nothing itself: the middleware did, before DRF ran.
    """

    def authenticate(self, request: Request) -> tuple[PeerUser, Peer] | None:
        peer = get_peer(request._request)
        return None if peer is None else (PeerUser(peer), peer)
