"""Start-up checks: the timing settings whose order prevents double execution (E001), real
providers (E002) and TLS to every backing service (E003) where the sandbox is off, and the
personal data's keys (E004), and no webhook to private addresses in production (E005).
The timing's reasons are in config/settings/base.py, beside the numbers; TLS's in
config/tls.py."""

import math
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.utils.module_loading import import_string

from config import broker, tls

from . import crypto
from .models import Order

# Email backends that deliver nothing: fine for a laptop or a test, never for customers.
NON_DELIVERING_EMAIL_BACKENDS = frozenset(
    {
        "django.core.mail.backends.console.EmailBackend",
        "django.core.mail.backends.locmem.EmailBackend",
        "django.core.mail.backends.dummy.EmailBackend",
        "django.core.mail.backends.filebased.EmailBackend",
    }
)


def timing_errors() -> list[str]:
    s = settings
    # RabbitMQ has no visibility timeout: an unacknowledged message returns only when its
    # consumer's connection closes.
    visibility = (
        math.inf
        if broker.is_amqp(s.CELERY_BROKER_URL)
        else s.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    )
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
            (
                "TASK_LOCK_TIMEOUT must exceed CELERY_TASK_TIME_LIMIT, "
                "or a running step can lose its lock"
            ),
        ),
        (
            s.TASK_LOCK_TIMEOUT < visibility,
            (
                "the broker's visibility_timeout must exceed TASK_LOCK_TIMEOUT "
                "(the longest lock-wait countdown)"
            ),
        ),
        (
            s.TASK_RETRY_BACKOFF_MAX < visibility,
            (
                "the broker's visibility_timeout must exceed TASK_RETRY_BACKOFF_MAX "
                "(the longest retry countdown)"
            ),
        ),
        (
            s.TASK_RETRY_BACKOFF_MAX + s.CELERY_TASK_TIME_LIMIT < s.ORDER_STALL_SECONDS,
            "ORDER_STALL_SECONDS must exceed TASK_RETRY_BACKOFF_MAX + CELERY_TASK_TIME_LIMIT",
        ),
        (
            s.ORDER_STALL_SECONDS < s.ORDER_DEADLINE_SECONDS,
            "ORDER_DEADLINE_SECONDS must exceed ORDER_STALL_SECONDS",
        ),
        # Stripe keeps an idempotency key's answer for 24 hours: a charge retried later
        # under the same key could be made twice. Unshipped orders end before that.
        (
            s.ORDER_DEADLINE_SECONDS < 23 * 3600,
            (
                "ORDER_DEADLINE_SECONDS must stay below 23 hours (Stripe forgets idempotency "
                "keys after 24)"
            ),
        ),
    ]
    return [message for ok, message in rules if not ok]


def provider_errors() -> list[str]:
    """Where the sandbox is off (production), the providers must be real: no sandbox adapter,
    no adapter path that does not import, no email backend that delivers nothing."""
    if settings.SANDBOX_ENABLED:
        return []
    errors = []
    for name in ("PAYMENT_GATEWAY", "SHIPPING_CARRIER"):
        path = getattr(settings, name)
        try:
            adapter = import_string(path)
        except ImportError as exc:
            errors.append(f"{name}={path!r} cannot be imported: {exc}")
            continue
        if getattr(adapter, "is_sandbox", False):
            errors.append(f"{name}={path} is a sandbox adapter, and the sandbox is off here")
    if settings.PAYMENT_GATEWAY == "integrations.payments.StripeGateway":
        errors += stripe_errors()
    if settings.SHIPPING_CARRIER == "integrations.shipping.EasyPostCarrier":
        errors += easypost_errors()
    if settings.EMAIL_BACKEND in NON_DELIVERING_EMAIL_BACKENDS:
        errors.append(f"EMAIL_BACKEND={settings.EMAIL_BACKEND} delivers no email to customers")
    return errors


def stripe_errors() -> list[str]:
    """Production's Stripe: over TLS, with a key and the webhook endpoint's secret."""
    errors = []
    if not settings.STRIPE_API_BASE.startswith("https://"):
        errors.append(f"STRIPE_API_BASE={settings.STRIPE_API_BASE!r} is not https")
    if not settings.STRIPE_API_KEY:
        errors.append("STRIPE_API_KEY is not set")
    if not settings.STRIPE_WEBHOOK_SECRET:
        errors.append("STRIPE_WEBHOOK_SECRET is not set: Stripe's webhooks cannot be verified")
    return errors


def easypost_errors() -> list[str]:
    """Production's EasyPost: over TLS, with a key, the webhook secret and a sender."""
    errors = []
    if not settings.EASYPOST_API_BASE.startswith("https://"):
        errors.append(f"EASYPOST_API_BASE={settings.EASYPOST_API_BASE!r} is not https")
    if not settings.EASYPOST_API_KEY:
        errors.append("EASYPOST_API_KEY is not set")
    if not settings.EASYPOST_WEBHOOK_SECRET:
        errors.append("EASYPOST_WEBHOOK_SECRET is not set: tracking events cannot be verified")
    missing = {"name", "street1", "city", "zip", "country"} - set(settings.SHIPPING_FROM_ADDRESS)
    if missing:
        errors.append(f"SHIPPING_FROM_ADDRESS lacks {', '.join(sorted(missing))}")
    return errors


def stripe_warnings() -> list[str]:
    if (
        settings.SANDBOX_ENABLED
        or settings.PAYMENT_GATEWAY != "integrations.payments.StripeGateway"
    ):
        return []
    if settings.STRIPE_API_KEY.startswith(("sk_test_", "rk_test_")):
        return ["STRIPE_API_KEY is a test-mode key: no real payment is taken"]
    return []


def field_key_errors() -> list[str]:
    """The keys of the personal data: well formed; in production not the published
    development ones; and able to open what is stored (a wrong key is an error here, at
    start-up, not ciphertext or a failure in the middle of a step)."""
    errors = []
    try:
        crypto.keyring()
    except ImproperlyConfigured as exc:
        return [str(exc)]
    if not settings.SANDBOX_ENABLED:
        if settings.DEVELOPMENT_FIELD_ENCRYPTION_KEY in settings.FIELD_ENCRYPTION_KEYS:
            errors.append("FIELD_ENCRYPTION_KEYS holds the published development key")
        if settings.FIELD_HASH_KEY == settings.DEVELOPMENT_FIELD_HASH_KEY:
            errors.append("FIELD_HASH_KEY is the published development key")
    try:
        # The newest stored address: encrypted under the newest key in use.
        Order.objects.exclude(ship_name="").order_by("-created_at").values_list(
            "ship_name", flat=True
        ).first()
    except crypto.FieldDecryptionError as exc:
        errors.append(str(exc))
    except DatabaseError:
        pass  # no database yet (before migrate, or down): nothing stored to open
    return errors


def plaintext_backends() -> list[str]:
    """Where the sandbox is off (production), every connection to a backing service must be
    encrypted and check the server's certificate and name: PostgreSQL, each Redis client (the
    cache, the locks, the broker and the results, if they are on Redis), RabbitMQ and SMTP.
    Each finding names the setting and what it lacks (config/tls.py)."""
    if settings.SANDBOX_ENABLED:
        return []
    problems = [
        tls.database_problem(f"DATABASES[{alias!r}]", database)
        for alias, database in settings.DATABASES.items()
    ]
    for alias, cache in settings.CACHES.items():
        if cache["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
            locations = cache["LOCATION"]
            for url in [locations] if isinstance(locations, str) else locations:
                problems.append(tls.redis_problem(f"CACHES[{alias!r}] (REDIS_URL)", url))
    problems.append(tls.redis_problem("LOCK_REDIS_URL", settings.LOCK_REDIS_URL))
    if broker.is_amqp(settings.CELERY_BROKER_URL):
        problems.append(
            tls.amqp_problem(
                "CELERY_BROKER_URL", settings.CELERY_BROKER_URL, settings.CELERY_BROKER_USE_SSL
            )
        )
    else:
        problems.append(tls.redis_problem("CELERY_BROKER_URL", settings.CELERY_BROKER_URL))
    if settings.CELERY_RESULT_BACKEND.startswith(("redis", "unix")):
        problems.append(tls.redis_problem("CELERY_RESULT_BACKEND", settings.CELERY_RESULT_BACKEND))
    if settings.EMAIL_BACKEND == "django.core.mail.backends.smtp.EmailBackend" and not (
        settings.EMAIL_USE_TLS or settings.EMAIL_USE_SSL
    ):
        problems.append(
            f"SMTP to {settings.EMAIL_HOST}:{settings.EMAIL_PORT} is plaintext: set "
            "EMAIL_USE_TLS (STARTTLS) or EMAIL_USE_SSL"
        )
    return list(dict.fromkeys(p for p in problems if p))  # REDIS_URL may be named thrice


def tls_errors() -> list[str]:
    """The plaintext backends as errors, unless ALLOW_PLAINTEXT_BACKENDS says on purpose that
    the network to them is private (then they are warnings: tls_warnings)."""
    return [] if settings.ALLOW_PLAINTEXT_BACKENDS else plaintext_backends()


def tls_warnings() -> list[str]:
    if not settings.ALLOW_PLAINTEXT_BACKENDS:
        return []
    return [
        f"{problem} (allowed by ALLOW_PLAINTEXT_BACKENDS=true: the network is taken as private)"
        for problem in plaintext_backends()
    ]


def webhook_errors() -> list[str]:
    """A shop's webhook URL is input from outside: where the sandbox is off, letting it name
    a loopback or private address would let anyone with an API token make our workers call
    into our own network (the metadata service, Redis, the admin)."""
    errors = []
    if settings.WEBHOOK_ALLOW_PRIVATE_URLS and not settings.SANDBOX_ENABLED:
        errors.append(
            "WEBHOOK_ALLOW_PRIVATE_URLS is on: shops could point webhooks at private and "
            "loopback addresses of our network; it is for local development and tests only"
        )
    if settings.WEBHOOK_TIMEOUT_SECONDS <= 0 or settings.WEBHOOK_MAX_IN_FLIGHT < 1:
        errors.append("WEBHOOK_TIMEOUT_SECONDS and WEBHOOK_MAX_IN_FLIGHT must be positive")
    if not settings.WEBHOOK_RETRY_DELAYS_SECONDS:
        errors.append("WEBHOOK_RETRY_DELAYS_SECONDS is empty: failed deliveries need a backoff")
    return errors


def startup_errors() -> list[str]:
    """What stops a web server (system checks) and a worker (config/celery.py) from starting."""
    return (
        timing_errors() + provider_errors() + tls_errors() + field_key_errors() + webhook_errors()
    )


@checks.register("orders")
def check_timing(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [checks.Error(message, id="orders.E001") for message in timing_errors()]


@checks.register("orders")
def check_providers(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [checks.Error(message, id="orders.E002") for message in provider_errors()]


@checks.register("orders")
def check_field_keys(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [checks.Error(message, id="orders.E004") for message in field_key_errors()]


@checks.register("orders")
def check_stripe_mode(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [checks.Warning(message, id="orders.W002") for message in stripe_warnings()]


@checks.register("orders")
def check_backend_tls(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [checks.Error(message, id="orders.E003") for message in tls_errors()] + [
        checks.Warning(message, id="orders.W003") for message in tls_warnings()
    ]


@checks.register("orders")
def check_webhooks(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [checks.Error(message, id="orders.E005") for message in webhook_errors()]
