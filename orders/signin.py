"""Sign-in lock-out (django-axes): after AXES_FAILURE_LIMIT failed attempts within
AXES_COOLOFF_TIME, a username (the admin) or a client id (the token endpoint) is refused
until the cool-off has passed. Here: the lock-out is logged and counted."""

from typing import Any

import structlog
from axes.signals import user_locked_out
from django.dispatch import receiver
from django.http import HttpRequest

from .metrics import SIGN_IN_LOCKOUTS

logger = structlog.get_logger(__name__)

TOKEN_PATH = "/api/oauth/"


def surface(request: HttpRequest | None) -> str:
    path = getattr(request, "path", "") or ""
    return "token" if path.startswith(TOKEN_PATH) else "admin"


@receiver(user_locked_out)
def _locked_out(sender: Any, request: HttpRequest, username: str, **kwargs: Any) -> None:
    where = surface(request)
    SIGN_IN_LOCKOUTS.labels(surface=where).inc()
    # The username or client id, never a password: what an operator needs to unlock it
    # (`python manage.py axes_reset_username <name>`) or to see who is being tried.
    logger.warning("sign-in locked out", surface=where, username=username)
