import uuid
from collections.abc import Callable

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse


class BodySizeLimitMiddleware:
    """Answer 413 before reading a body larger than API_MAX_BODY_BYTES sent to the API.
    (Django's own DATA_UPLOAD_MAX_MEMORY_SIZE answers 400, and only for form data.)"""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > settings.API_MAX_BODY_BYTES:
                return JsonResponse(
                    {
                        "code": "request_too_large",
                        "detail": f"The request body exceeds {settings.API_MAX_BODY_BYTES} bytes.",
                    },
                    status=413,
                )
        return self.get_response(request)


# A client's X-Request-ID is kept if it is printable ASCII of at most this many characters;
# anything else (too long, control characters that could forge log lines) gets a new id.
REQUEST_ID_MAX_LENGTH = 200


def _acceptable_request_id(value: str) -> bool:
    return 0 < len(value) <= REQUEST_ID_MAX_LENGTH and all(32 <= ord(c) < 127 for c in value)


class RequestIdMiddleware:
    """Take the client's X-Request-ID (or make one), hand it to django-structlog, which puts
    it on every log line of the request and into the headers of every Celery task sent while
    handling it, and echo it in the response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # From META, not request.headers: that is cached on first use, and django-structlog
        # must see the vetted value written below.
        request_id = request.META.get("HTTP_X_REQUEST_ID", "")
        if not _acceptable_request_id(request_id):
            request_id = uuid.uuid4().hex
        # django-structlog reads it from here (DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID).
        request.META["HTTP_X_REQUEST_ID"] = request_id
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


# How long a client should wait before trying again while the database is unreachable:
# a restart or a failover takes seconds.
DATABASE_RETRY_AFTER_SECONDS = 5


class DatabaseUnavailableMiddleware:
    """While PostgreSQL cannot be reached, every request answers 503 with Retry-After in the
    API's one error shape, not a 500 or an HTML page: clients retry (with the same
    Idempotency-Key), and the sandbox providers' 503 is a transient error to the adapters."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        response = JsonResponse(
            {
                "code": "service_unavailable",
                "detail": "The database is unreachable; try again shortly.",
            },
            status=503,
        )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response
