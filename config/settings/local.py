"""Local development: `make run`."""

from .base import *  # noqa: F403
from .base import INSTALLED_APPS, REST_FRAMEWORK, env

DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = env("DJANGO_SECRET_KEY", default="local-only-insecure-key-do-not-use-in-production")
SANDBOX_ENABLED = True
# The sandbox's Stripe, served by this same web server (`make run`).
STRIPE_API_BASE = env("STRIPE_API_BASE", default="http://127.0.0.1:8000/sandbox/stripe")
STRIPE_API_KEY = env("STRIPE_API_KEY", default="sk_test_sandbox_local")
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="whsec_sandbox_local")
# The sandbox's EasyPost, on the same server.
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
INSTALLED_APPS = [*INSTALLED_APPS, "integrations.sandbox"]
REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
# A receiver on this machine (127.0.0.1) may be registered while developing.
WEBHOOK_ALLOW_PRIVATE_URLS = env.bool("WEBHOOK_ALLOW_PRIVATE_URLS", default=True)
# Static files straight from the apps (no collectstatic), so gunicorn serves the admin's CSS.
WHITENOISE_USE_FINDERS = True
