"""Production: every secret from the environment, no defaults, HTTPS everywhere."""

import copy

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import LOGGING as BASE_LOGGING
from .base import database_from_env, env

DEBUG = False
SECRET_KEY = env("DJANGO_SECRET_KEY")  # no default: a missing key stops the start
# The bar of `check --deploy` (security.W009), as an error: a weak key must stop the start,
# not scroll past as a warning.
if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or "insecure" in SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be a random string of 50+ characters.")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS")
DATABASES = {"default": database_from_env()}  # DATABASE_URL required
SANDBOX_ENABLED = False
# Personal data's keys (orders/crypto.py): no default, a missing one stops the start.
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS")
FIELD_HASH_KEY = env("FIELD_HASH_KEY")
METRICS_REQUIRE_TOKEN = True  # and METRICS_TOKEN from the environment: no outsider sees volumes
# Real providers: no default can silently point production at the sandbox (orders.E002
# refuses sandbox adapters, a Stripe base that is not https or lacks its key and webhook
# secret, and mail backends that deliver nothing).
PAYMENT_GATEWAY = env("PAYMENT_GATEWAY", default="integrations.payments.StripeGateway")
SHIPPING_CARRIER = env("SHIPPING_CARRIER", default="integrations.shipping.EasyPostCarrier")
EMAIL_HOST = env("EMAIL_HOST")
EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
# One JSON object per log line, for the log pipeline.
LOGGING = copy.deepcopy(BASE_LOGGING)
LOGGING["handlers"]["console"]["formatter"] = env("LOG_FORMAT", default="json")

# Staff sign in to the admin with a password and a TOTP code (django-otp); a staff member's
# device is added with `python manage.py staff_totp_create --username <name>`.
ADMIN_REQUIRE_OTP = env.bool("ADMIN_REQUIRE_OTP", default=True)

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
