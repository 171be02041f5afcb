"""The sandbox providers on a server of their own (`gunicorn config.wsgi` with these
settings), as Stripe and EasyPost are servers of their own: only their routes, under
/sandbox/ as on the app's server, and none of the app's middleware (sessions, CSRF, sign-in,
the request log), which they never needed and which cost a millisecond a request. `make
bench` serves them so, to count the app's work and not a stand-in's. Its adapters and the
sandbox's events are pointed with STRIPE_API_BASE, EASYPOST_API_BASE and
STRIPE_SANDBOX_WEBHOOK_URL, EASYPOST_SANDBOX_WEBHOOK_URL (the app's endpoints)."""

from .local import *  # noqa: F403
from .local import DATABASES

ROOT_URLCONF = "integrations.sandbox.root_urls"
# A database that cannot be reached is a 503 the adapters retry, as on the app's server.
MIDDLEWARE = ["orders.middleware.DatabaseUnavailableMiddleware"]
# No `SELECT 1` before each request's first query: after a database restart, a stand-in's
# first request on a broken connection is that 503, and the adapters' retry finds a new one.
DATABASES = {"default": {**DATABASES["default"], "CONN_HEALTH_CHECKS": False}}
