"""Start-up checks for the timing settings whose order prevents double execution.
The reasons are in config/settings/base.py, beside the numbers."""

from django.conf import settings
from django.core import checks


def timing_errors() -> list[str]:
    s = settings
    visibility = s.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    rules = [
        (
            s.PROVIDER_TIMEOUT_SECONDS < s.CELERY_TASK_SOFT_TIME_LIMIT,
            "PROVIDER_TIMEOUT_SECONDS must be below CELERY_TASK_SOFT_TIME_LIMIT",
        ),
        (
            s.CELERY_TASK_SOFT_TIME_LIMIT < s.CELERY_TASK_TIME_LIMIT,
            "CELERY_TASK_SOFT_TIME_LIMIT must be below CELERY_TASK_TIME_LIMIT",
        ),
        (
            s.CELERY_TASK_TIME_LIMIT < s.TASK_LOCK_TIMEOUT,
            "TASK_LOCK_TIMEOUT must exceed CELERY_TASK_TIME_LIMIT, or a running step can lose its lock",
        ),
        (
            s.TASK_LOCK_TIMEOUT < visibility,
            "the broker's visibility_timeout must exceed TASK_LOCK_TIMEOUT (the longest lock-wait countdown)",
        ),
        (
            s.TASK_RETRY_BACKOFF_MAX < visibility,
            "the broker's visibility_timeout must exceed TASK_RETRY_BACKOFF_MAX (the longest retry countdown)",
        ),
        (
            s.TASK_RETRY_BACKOFF_MAX + s.CELERY_TASK_TIME_LIMIT < s.ORDER_STALL_SECONDS,
            "ORDER_STALL_SECONDS must exceed TASK_RETRY_BACKOFF_MAX + CELERY_TASK_TIME_LIMIT",
        ),
        (
            s.ORDER_STALL_SECONDS < s.ORDER_DEADLINE_SECONDS,
            "ORDER_DEADLINE_SECONDS must exceed ORDER_STALL_SECONDS",
        ),
    ]
    return [message for ok, message in rules if not ok]


@checks.register("orders")
def check_timing(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    return [checks.Error(message, id="orders.E001") for message in timing_errors()]
