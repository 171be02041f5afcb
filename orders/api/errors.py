"""One error shape for the whole API:

    {"code": "invalid", "detail": "Invalid input.", "fields": {"lines": [...]}}

`fields` appears only on validation errors and mirrors the request's structure.
"""

from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found, server_error
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..errors import ApplicationError


def error_body(*, code: str, detail: str, fields: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "detail": detail}
    if fields is not None:
        body["fields"] = fields
    return body


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(
            error_body(code=exc.code, detail=exc.message, fields=exc.fields), status=exc.status_code
        )
    if isinstance(exc, RequestDataTooBig):
        return Response(
            error_body(code="request_too_large", detail=str(exc)),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a bug: Django answers 500 and Sentry gets it
    if isinstance(exc, exceptions.ValidationError):
        fields = (
            response.data
            if isinstance(response.data, dict)
            else {"non_field_errors": response.data}
        )
        response.data = error_body(code="invalid", detail="Invalid input.", fields=fields)
    else:
        detail = (
            response.data.get("detail", "")
            if isinstance(response.data, dict)
            else str(response.data)
        )
        code = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        response.data = error_body(
            code=code if isinstance(code, str) else "error", detail=str(detail)
        )
    return response


def not_found_view(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """URLs that match no route: JSON under /api/, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(code="not_found", detail="Not found."), status=404)
    return page_not_found(request, exception)


def server_error_view(request: HttpRequest) -> HttpResponse:
    """A bug under /api/ still answers in the API's error shape (Sentry has the details)."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(code="server_error", detail="Server error."), status=500)
    return server_error(request)
