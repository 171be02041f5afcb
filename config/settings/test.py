"""The test suite: real PostgreSQL and Redis, never eager Celery."""

from config import broker, tls

from .base import *  # noqa: F403
from .base import (
    BACKEND_CA_FILE,
    INSTALLED_APPS,
    ORDER_QUEUE_DELIVERY_LIMIT,
    REDIS_CACHE_OPTIONS,
    database_from_env,
    env,
)

SECRET_KEY = env("DJANGO_SECRET_KEY", default="test-only-insecure-key")
DATABASES = {"default": database_from_env("postgres://postgres@127.0.0.1:5432/test")}
TEST_DATABASE_NAME = env("TEST_DATABASE_NAME", default="test_orders")
DATABASES["default"]["TEST"] = {"NAME": TEST_DATABASE_NAME}
# Database 1, so a developer's `make run` (database 0) never shares queues with the tests.
REDIS_URL = tls.redis_url(env("REDIS_URL", default="redis://127.0.0.1:6379/1"), BACKEND_CA_FILE)
LOCK_REDIS_URL = tls.redis_url(env("LOCK_REDIS_URL", default=REDIS_URL), BACKEND_CA_FILE)
# BROKER_UNDER_TEST=rabbitmq runs the suite's Celery traffic through the local RabbitMQ, in a
# virtual host of this run's own, named after its test database (tests/conftest.py creates it
# and deletes it afterwards), so that concurrent runs never share a queue.
# (Not TEST_BROKER: celery.contrib.testing reads that name as a broker host name.)
BROKER_UNDER_TEST = env("BROKER_UNDER_TEST", default="redis")
RABBITMQ_URL = env("RABBITMQ_URL", default="amqp://guest:guest@127.0.0.1:5672")
RUN_VHOST_URL = f"{RABBITMQ_URL}/{TEST_DATABASE_NAME}"
CELERY_BROKER_URL = tls.redis_url(
    env(
        "CELERY_BROKER_URL",
        default=RUN_VHOST_URL if BROKER_UNDER_TEST == "rabbitmq" else REDIS_URL,
    ),
    BACKEND_CA_FILE,
)
CELERY_BROKER_READ_URL = CELERY_BROKER_WRITE_URL = CELERY_BROKER_URL  # as base.py says why
CELERY_BROKER_USE_SSL = tls.broker_use_ssl(CELERY_BROKER_URL, BACKEND_CA_FILE)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": REDIS_CACHE_OPTIONS,
    }
}
SANDBOX_ENABLED = True
# The sandbox's Stripe; tests point the base at the server that serves it (the live server
# fixture, or a stack's web server).
STRIPE_API_BASE = env("STRIPE_API_BASE", default="http://127.0.0.1:8000/sandbox/stripe")
STRIPE_API_KEY = env("STRIPE_API_KEY", default="sk_test_sandbox")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="whsec_sandbox_test")
EASYPOST_API_BASE = env("EASYPOST_API_BASE", default="http://127.0.0.1:8000/sandbox/easypost/v2")
EASYPOST_API_KEY = env("EASYPOST_API_KEY", default="EZTK_sandbox")
EASYPOST_WEBHOOK_SECRET = env("EASYPOST_WEBHOOK_SECRET", default="easypost_sandbox_secret")
SHIPPING_FROM_ADDRESS = env.json(
    "SHIPPING_FROM_ADDRESS",
    default={
        "name": "Order Pipeline Shop",
        "street1": "1 Warehouse Way",
        "city": "Berlin",
        "zip": "10115",
        "country": "DE",
    },
)
# Parcels stand still unless a test moves them (fast_tracking): a "shipped" email arriving
# in the middle of another test's count of emails would be noise.
EASYPOST_SANDBOX_TRACKING_STEP_SECONDS = env.float(
    "EASYPOST_SANDBOX_TRACKING_STEP_SECONDS", default=3600.0
)
# A failed delivery is tried again within seconds, so a test sees it through.
STRIPE_SANDBOX_WEBHOOK_MAX_WAIT_SECONDS = env.float(
    "STRIPE_SANDBOX_WEBHOOK_MAX_WAIT_SECONDS", default=2.0
)
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
REDIS_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # kombu looks for messages left unacknowledged by a dead worker every interval x throttle
    # seconds (100 s by default); the chaos test shortens it to see them redelivered.
    "unacked_restore_interval": env.int("CELERY_UNACKED_RESTORE_INTERVAL", default=10),
    "unacked_restore_throttle": env.int("CELERY_UNACKED_RESTORE_THROTTLE", default=10),
}
CELERY_BROKER_TRANSPORT_OPTIONS = broker.transport_options(
    CELERY_BROKER_URL, redis=REDIS_TRANSPORT_OPTIONS
)
CELERY_TASK_QUEUES = broker.order_queues(
    CELERY_BROKER_URL, delivery_limit=ORDER_QUEUE_DELIVERY_LIMIT
)
# The receivers of the webhook tests listen on 127.0.0.1; retries come within seconds.
WEBHOOK_ALLOW_PRIVATE_URLS = env.bool("WEBHOOK_ALLOW_PRIVATE_URLS", default=True)
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=3.0)
WEBHOOK_RETRY_DELAYS_SECONDS = env.list(
    "WEBHOOK_RETRY_DELAYS_SECONDS", cast=float, default=[1, 2, 3, 4]
)
WEBHOOK_SWEEP_SECONDS = env.float("WEBHOOK_SWEEP_SECONDS", default=2.0)
# Static files straight from the apps (no collectstatic), so gunicorn serves the admin's CSS.
WHITENOISE_USE_FINDERS = True
