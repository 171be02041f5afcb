"""The test suite: real PostgreSQL and Redis, never eager Celery."""

from .base import *  # noqa: F403
from .base import INSTALLED_APPS, REDIS_CACHE_OPTIONS, database_from_env, env

SECRET_KEY = env("DJANGO_SECRET_KEY", default="test-only-insecure-key")
DATABASES = {"default": database_from_env("postgres://postgres@127.0.0.1:5432/test")}
DATABASES["default"]["TEST"] = {"NAME": env("TEST_DATABASE_NAME", default="test_orders")}
# Database 1, so a developer's `make run` (database 0) never shares queues with the tests.
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/1")
LOCK_REDIS_URL = env("LOCK_REDIS_URL", default=REDIS_URL)
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=REDIS_URL)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": REDIS_CACHE_OPTIONS,
    }
}
SANDBOX_ENABLED = True
INSTALLED_APPS = [*INSTALLED_APPS, "integrations.sandbox"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # speed only
EMAIL_BACKEND = env("EMAIL_BACKEND", default="django.core.mail.backends.locmem.EmailBackend")
if EMAIL_HOST:  # noqa: F405 - a test that runs an SMTP server sets EMAIL_HOST
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
# Shorter timings so that retries and timeouts take seconds, in the same order as base.
PROVIDER_TIMEOUT_SECONDS = env.float("PROVIDER_TIMEOUT_SECONDS", default=2.0)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=20)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=30)
TASK_LOCK_TIMEOUT = env.int("TASK_LOCK_TIMEOUT", default=40)
TASK_RETRY_BACKOFF_MAX = env.int("TASK_RETRY_BACKOFF_MAX", default=2)
ORDER_STALL_SECONDS = env.int("ORDER_STALL_SECONDS", default=60)
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=600)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # kombu looks for messages left unacknowledged by a dead worker every interval x throttle
    # seconds (100 s by default); the chaos test shortens it to see them redelivered.
    "unacked_restore_interval": env.int("CELERY_UNACKED_RESTORE_INTERVAL", default=10),
    "unacked_restore_throttle": env.int("CELERY_UNACKED_RESTORE_THROTTLE", default=10),
}
# Static files straight from the apps (no collectstatic), so gunicorn serves the admin's CSS.
WHITENOISE_USE_FINDERS = True
