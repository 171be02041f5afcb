"""OAuth 2.0 for the API: the token and revocation endpoints (django-oauth-toolkit's, with the
sign-in lock-out in front), and the permission by which each endpoint names its scope."""

import base64
import binascii
import json
from typing import Any
from urllib.parse import unquote

from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.http import HttpRequest, HttpResponse, JsonResponse
from oauth2_provider import views as oauth_views
from oauth2_provider.contrib.rest_framework import TokenMatchesOASRequirements
from rest_framework.request import Request
from rest_framework.views import APIView


class ScopeRequired(TokenMatchesOASRequirements):
    """A view's `required_alternate_scopes` ({"GET": [["orders:read"]], ...}) decide; a token
    without the scope is a 403 naming it. No token at all is a 401 (DRF asks authentication
    first)."""

    code = "insufficient_scope"

    def has_permission(self, request: Request, view: APIView) -> bool:
        method = (request.method or "").upper()
        required = self.get_required_alternate_scopes(request, view)
        if method not in required and (method == "OPTIONS" or not hasattr(view, method.lower())):
            # A method the view does not have is DRF's 405, not a scope question; OPTIONS
            # describes the endpoint and reads nothing.
            return True
        if super().has_permission(request, view):
            return True
        needed = [" ".join(scopes) for scopes in required.get(method, [])]
        # DRF makes a permission instance per request: the message is this request's own.
        self.message = f"This token lacks the scope this endpoint needs: {' or '.join(needed)}."
        return False


def scopes(**by_method: str) -> dict[str, list[list[str]]]:
    """`required_alternate_scopes` for one scope per method: scopes(GET="orders:read"). HEAD
    is GET without the body, so it needs what GET needs."""
    if "GET" in by_method:
        by_method.setdefault("HEAD", by_method["GET"])
    return {method: [[scope]] for method, scope in by_method.items()}


def _client_id(request: HttpRequest) -> str:
    """The client id the request authenticates as: HTTP Basic first (RFC 6749 2.3.1, its parts
    form-urlencoded), else the body's client_id."""
    kind, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() == "basic":
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return unquote(decoded.partition(":")[0])
    return request.POST.get("client_id", "")


def _locked_out() -> JsonResponse:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    response = JsonResponse(
        {
            "error": "invalid_client",
            "error_description": "Too many failed attempts: this client is locked out for "
            f"up to {minutes} minutes.",
        },
        status=settings.AXES_HTTP_RESPONSE_CODE,
    )
    response["Retry-After"] = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    return response


class _LockOut:
    """Before the library authenticates the client: a locked-out client id is refused without
    its secret being checked. After: a failed client authentication counts against it (the
    same counter as the admin's, keyed by the client id)."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        client_id = _client_id(request)
        credentials = {"username": client_id}  # axes reads the name under "username"
        if client_id and AxesProxyHandler.is_locked(request, credentials):
            return _locked_out()
        response = super().post(request, *args, **kwargs)  # type: ignore[misc]
        if client_id and response.status_code == 401 and _oauth_error(response) == "invalid_client":
            user_login_failed.send(sender=type(self), credentials=credentials, request=request)
            if getattr(request, "axes_locked_out", False):
                return _locked_out()
        return response


def _oauth_error(response: HttpResponse) -> str:
    try:
        return str(json.loads(response.content).get("error", ""))
    except (ValueError, AttributeError):
        return ""


class TokenView(_LockOut, oauth_views.TokenView):
    """POST /api/oauth/token/: grant_type=client_credentials, the client authenticated with
    HTTP Basic (or client_id and client_secret in the body), an optional `scope`."""


class RevokeTokenView(_LockOut, oauth_views.RevokeTokenView):
    """POST /api/oauth/revoke/ (RFC 7009): token=<access token>, the client authenticated."""
