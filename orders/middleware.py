from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse


class BodySizeLimitMiddleware:
    """Answer 413 before reading a body larger than API_MAX_BODY_BYTES sent to the API.
    (Django's own DATA_UPLOAD_MAX_MEMORY_SIZE answers 400, and only for form data.)"""

    def __init__(self, get_response) -> None:
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
