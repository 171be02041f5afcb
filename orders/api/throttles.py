"""Rates come from settings (REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], from the environment)."""

from rest_framework.throttling import AnonRateThrottle, UserRateThrottle


class PostOnlyMixin:
    def allow_request(self, request, view):
        if request.method != "POST":
            return True
        return super().allow_request(request, view)


class OrderCreateUserThrottle(PostOnlyMixin, UserRateThrottle):
    scope = "order_create"


class OrderCreateAnonThrottle(PostOnlyMixin, AnonRateThrottle):
    scope = "order_create_anon"


class AuthTokenThrottle(AnonRateThrottle):
    """Per client address, whoever it claims to be: slows password guessing."""

    scope = "auth_token"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}
