"""Rates come from settings (REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], from the environment)."""

import logging
from typing import Any

from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

from .. import metrics


class SettingsRateMixin(SimpleRateThrottle):
    def get_rate(self) -> str | None:
        # DRF copies DEFAULT_THROTTLE_RATES onto the class once, at import: read them per
        # request instead, so that the settings in force are the ones that apply.
        rates: dict[str, Any] = api_settings.DEFAULT_THROTTLE_RATES
        return rates[str(self.scope)]


logger = logging.getLogger(__name__)


class FailOpenMixin(SimpleRateThrottle):
    """The counters live in the Redis cache. While Redis is down a throttle cannot count, and
    refusing every order for it would turn a cache outage into an outage of the shop: the
    request goes through, with a warning and `throttle_fail_open_total`."""

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except RedisError as exc:
            logger.warning(
                "throttle %s: the cache is unreachable (%s); not throttling", self.scope, exc
            )
            metrics.THROTTLE_FAIL_OPEN.labels(scope=str(self.scope)).inc()
            return True


class PostOnlyMixin(SimpleRateThrottle):
    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method != "POST":
            return True
        return super().allow_request(request, view)


class OrderCreateUserThrottle(PostOnlyMixin, FailOpenMixin, SettingsRateMixin, UserRateThrottle):
    scope = "order_create"


class OrderCreateAnonThrottle(PostOnlyMixin, FailOpenMixin, SettingsRateMixin, AnonRateThrottle):
    scope = "order_create_anon"


class WebhookEndpointThrottle(PostOnlyMixin, FailOpenMixin, SettingsRateMixin, UserRateThrottle):
    """Registering an endpoint resolves a name the shop chose, and rotating makes a secret:
    cheap, but not to be done thousands of times a minute."""

    scope = "webhook_endpoints"
