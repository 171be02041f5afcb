"""Settings shared by every environment. Everything that differs comes from the environment."""

from datetime import timedelta
from pathlib import Path
from typing import Any

import environ
import structlog

from config import broker, redaction, tls

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()

# --- Core -------------------------------------------------------------------
SECRET_KEY = env("DJANGO_SECRET_KEY", default="")  # local/test give a default; production refuses
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "orders.apps.OrdersAdminConfig",  # django.contrib.admin, on our site (second factor)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "oauth2_provider",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "django_structlog",
    "orders",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "orders.middleware.RequestIdMiddleware",
    "django_structlog.middlewares.RequestMiddleware",
    "orders.middleware.BodySizeLimitMiddleware",
    "orders.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",  # request.user.is_verified(): the admin's second factor
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as its documentation asks: it turns a lock-out raised by sign-in into the answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# --- Database -----------------------------------------------------------------
# The embedded default is a SQLite file. At Django's defaults SQLite loses chords
# under two worker processes ("database is locked", measured); WAL lets readers run
# beside the writer, IMMEDIATE takes the write lock at BEGIN so two writers queue
# instead of deadlocking on a lock upgrade, and the busy timeout makes them wait.
# TLS to the backing services (config/tls.py; README, "TLS to the backing services"): each
# URL says how its connection is encrypted and checked (PostgreSQL `sslmode=verify-full`,
# Redis `rediss://...?ssl_cert_reqs=required`, RabbitMQ `amqps://`), and this CA bundle is
# what they trust where the URL names none (the system's CAs when unset). orders.E003 refuses
# anything less in production, unless ALLOW_PLAINTEXT_BACKENDS says on purpose that the
# network to them is private (then orders.W003).
BACKEND_CA_FILE = env("BACKEND_CA_FILE", default="")
ALLOW_PLAINTEXT_BACKENDS = env.bool("ALLOW_PLAINTEXT_BACKENDS", default=False)


def database_from_env(default: str | None = None) -> dict:
    """DATABASE_URL, tuned for its engine. Without a default the variable is required."""
    database = env.db("DATABASE_URL", default=default) if default else env.db("DATABASE_URL")
    tls.database_tls(database, BACKEND_CA_FILE)
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    else:
        # Reconnecting per request or task costs a round trip and the catalogue look-ups
        # (about 6 times the rows read per order, measured with `make bench`). Workers apply
        # these like web requests do: config/celery.py closes broken or old connections
        # before every task.
        database["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
        database["CONN_HEALTH_CHECKS"] = True
        # DATABASE_PREPARE_THRESHOLD (off unless set): parameters bound by the server, not
        # quoted into the SQL here, and a statement run that many times on a connection
        # prepared there (psycopg), so that PostgreSQL neither parses nor plans it again.
        # `make bench` (bench/README.md, sixth count): PostgreSQL's CPU per order down by a
        # fifth, orders/s up 6 %. Off by default, as in Django: a pooler in transaction mode
        # may not keep prepared statements, and a migration that changes a column's type
        # makes PostgreSQL refuse the running code's prepared statements (`cached plan must
        # not change result type`, not retried) until its connections are replaced.
        if threshold := env("DATABASE_PREPARE_THRESHOLD", default=""):
            database.setdefault("OPTIONS", {}).update(
                server_side_binding=True, prepare_threshold=int(threshold)
            )
    return database


# Web, workers and beat connect as a role that reads and writes rows and changes no table;
# `manage.py migrate` connects as the owner, MIGRATION_DATABASE_URL, in DATABASE_URL's place
# (manage.py; README, "Least privilege").
DATABASES = {"default": database_from_env(f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache ---------------------------------------------------------------
# A rediss:// URL gets BACKEND_CA_FILE as its ssl_ca_certs here, so that the cache, the
# locks and the broker, which all read their Redis from a URL, trust the same CA.
REDIS_URL = tls.redis_url(env("REDIS_URL", default="redis://localhost:6379/0"), BACKEND_CA_FILE)
# Locks live in Redis too, beside the broker: see orders/locks.py.
LOCK_REDIS_URL = tls.redis_url(env("LOCK_REDIS_URL", default=REDIS_URL), BACKEND_CA_FILE)
# Throttle counters must be shared by every web process, so not LocMem. Short socket timeouts:
# a Redis that does not answer costs a request half a second, then throttling fails open
# (orders/api/throttles.py).
REDIS_CACHE_OPTIONS = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "OPTIONS": REDIS_CACHE_OPTIONS,
    },
}

# --- Auth, i18n, static -----------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # First, so that a locked-out username is refused before its password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Sign-in lock-out (orders/signin.py): LOGIN_FAILURE_LIMIT failures within
# LOGIN_LOCKOUT_MINUTES lock that username (admin) or client id (token endpoint) for as long.
# By name, not address: an attacker rotating addresses still hits the limit.
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["username"]
AXES_HTTP_RESPONSE_CODE = 429
# axes.W006 asks to lock by address too. Locking by address would lock out every shop behind
# one NAT, or every client of one shop's server, after five mistakes; the name is what is
# being guessed, and it is locked whatever address the guesses come from.
SILENCED_SYSTEM_CHECKS = ["axes.W006"]
# Staff sign in to the admin with a second factor (django-otp, TOTP) where this is on:
# production turns it on by default; local runs (seed_demo's admin) and tests leave it off.
ADMIN_REQUIRE_OTP = env.bool("ADMIN_REQUIRE_OTP", default=False)
OTP_TOTP_ISSUER = "Order pipeline"

# --- Personal data at rest (orders/crypto.py) ---------------------------------------------
# Fernet keys, comma-separated: the first encrypts, all decrypt (rotate with
# `manage.py rotate_field_keys`). Apart from SECRET_KEY on purpose: rotating one must not
# touch the other. The default is a development key, published here: production requires
# its own (no default there).
DEVELOPMENT_FIELD_ENCRYPTION_KEY = "bGyM1d2Pbv1F5H6Oc9sH4m1O3zIAU8ZydWZ1w1wpS2w="
FIELD_ENCRYPTION_KEYS = env.list(
    "FIELD_ENCRYPTION_KEYS", default=[DEVELOPMENT_FIELD_ENCRYPTION_KEY]
)
# The key of the blind index (an email's keyed hash, to find a customer's orders). Stable
# across FIELD_ENCRYPTION_KEYS rotations; changing it needs the hashes recomputed
# (`manage.py rotate_field_keys --rehash`).
DEVELOPMENT_FIELD_HASH_KEY = "development-blind-index-key"
FIELD_HASH_KEY = env("FIELD_HASH_KEY", default=DEVELOPMENT_FIELD_HASH_KEY)
# Finished orders older than this have their personal data anonymized by beat.
ORDER_PERSONAL_DATA_RETENTION_DAYS = env.int("ORDER_PERSONAL_DATA_RETENTION_DAYS", default=730)

# --- OAuth 2.0 (the API's clients: orders/oauth.py) ------------------------------------
OAUTH_ACCESS_TOKEN_SECONDS = env.int("OAUTH_ACCESS_TOKEN_SECONDS", default=3600)
OAUTH2_PROVIDER_APPLICATION_MODEL = "orders.ApiClient"
OAUTH2_PROVIDER = {
    "ACCESS_TOKEN_EXPIRE_SECONDS": OAUTH_ACCESS_TOKEN_SECONDS,
    "SCOPES_BACKEND_CLASS": "orders.oauth.ClientScopes",
    "OAUTH2_VALIDATOR_CLASS": "orders.oauth.OAuth2Validator",
    # Tokens are stored as their SHA-256 only (RFC 9700 2.1.1): a copy of the table
    # authenticates nobody. Client secrets are hashed too (the library's default).
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    # The rest of RFC 9700 as well (the library's 4.0 defaults): only client credentials are
    # used here, and every other grant's weaker options stay shut.
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,  # never a token in a query string
    "COMPLIANT_BCP_RFC9700_AUTHZ_RESPONSE_ISS": True,
    "COMPLIANT_BCP_RFC9700_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "COMPLIANT_BCP_RFC9700_REDIRECT_URI_SCHEME": True,
    "ALLOWED_REDIRECT_URI_SCHEMES": ["https"],
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# --- REST framework ---------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Bearer tokens from POST /api/oauth/token/ only: a staff member's admin session does
        # not open the API (no cookie-authenticated writes, so no CSRF surface either).
        "oauth2_provider.contrib.rest_framework.OAuth2Authentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: anything else is a 415, not a guess.
    "DEFAULT_PARSER_CLASSES": ["orders.api.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "orders.api.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "orders.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        "order_create": env("THROTTLE_ORDER_CREATE_RATE", default="120/min"),
        "order_create_anon": env("THROTTLE_ORDER_CREATE_ANON_RATE", default="20/min"),
        "webhook_endpoints": env("THROTTLE_WEBHOOK_ENDPOINTS_RATE", default="30/min"),
    },
    # Anonymous clients are throttled by address. With None, DRF takes X-Forwarded-For as the
    # address, which any client can write, and so rotate past the limits. Behind N proxies
    # that each append to X-Forwarded-For, set N: the address the outermost proxy saw is used.
    "NUM_PROXIES": env.int("THROTTLE_NUM_PROXIES", default=0),
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Order pipeline API",
    "DESCRIPTION": (
        "Shops place orders; each order runs through stock reservation, payment, shipment "
        "and a confirmation email in the background. Creating an order does not promise "
        "stock: an order whose stock cannot be reserved ends `failed`, with the reason in "
        "its timeline (`events`)."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Shops' servers get tokens with the client-credentials flow; each operation lists the
    # scope it needs (drf-spectacular's django-oauth-toolkit extension reads the views).
    "OAUTH2_FLOWS": ["clientCredentials"],
    "OAUTH2_TOKEN_URL": "/api/oauth/token/",
}
# Largest request body the API accepts (413 above it). 100 lines of an order fit in ~20 KB.
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=256 * 1024)

# --- Email ---------------------------------------------------------------------------
EMAIL_HOST = env("EMAIL_HOST", default="")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env("EMAIL_HOST_PASSWORD", default="")
# STARTTLS (usually port 587) or TLS from the first byte (465); production requires one
# (orders.E003). Django checks the relay's certificate against the system's CAs.
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="orders@example.com")

# --- Providers -------------------------------------------------------------------------
# Each kind of provider has one adapter interface (integrations/); these pick the class.
PAYMENT_GATEWAY = env("PAYMENT_GATEWAY", default="integrations.payments.StripeGateway")
SHIPPING_CARRIER = env("SHIPPING_CARRIER", default="integrations.shipping.EasyPostCarrier")
SANDBOX_ENABLED = False  # the /sandbox/ providers; local and test switch them on
SANDBOX_FAILURE_RATE = env.float("SANDBOX_FAILURE_RATE", default=0.0)
SANDBOX_LATENCY_MS = env.int("SANDBOX_LATENCY_MS", default=0)

# Stripe (integrations.payments.StripeGateway). Local and test settings point the base at the
# sandbox's Stripe (/sandbox/stripe), which speaks the same wire format; production requires
# an https base, a key and a webhook secret (orders.E002).
STRIPE_API_KEY = env("STRIPE_API_KEY", default="")
STRIPE_API_BASE = env("STRIPE_API_BASE", default="https://api.stripe.com")
# Signs the events Stripe sends to POST /api/webhooks/stripe/ (the endpoint's "whsec_...").
STRIPE_WEBHOOK_SECRET = env("STRIPE_WEBHOOK_SECRET", default="")
# The sandbox's Stripe sends its events here (empty: this app's own /api/webhooks/stripe/ on
# the host the request came to), retrying a failed delivery this many times with a doubling
# wait of at most MAX_WAIT, and sending a delivered event a second time at DUPLICATE_RATE, as
# Stripe may. Its search shows a new PaymentIntent SEARCH_LAG seconds late, as Stripe's.
STRIPE_SANDBOX_WEBHOOK_URL = env("STRIPE_SANDBOX_WEBHOOK_URL", default="")
STRIPE_SANDBOX_WEBHOOK_ATTEMPTS = env.int("STRIPE_SANDBOX_WEBHOOK_ATTEMPTS", default=8)
STRIPE_SANDBOX_WEBHOOK_MAX_WAIT_SECONDS = env.float(
    "STRIPE_SANDBOX_WEBHOOK_MAX_WAIT_SECONDS", default=8.0
)
STRIPE_SANDBOX_WEBHOOK_DUPLICATE_RATE = env.float(
    "STRIPE_SANDBOX_WEBHOOK_DUPLICATE_RATE", default=0.1
)
STRIPE_SANDBOX_SEARCH_LAG_SECONDS = env.float("STRIPE_SANDBOX_SEARCH_LAG_SECONDS", default=1.0)

# EasyPost (integrations.shipping.EasyPostCarrier). Local and test settings point the base at
# the sandbox's EasyPost (/sandbox/easypost/v2); production requires an https base, a key,
# the webhook secret and the sender's address (orders.E002).
EASYPOST_API_KEY = env("EASYPOST_API_KEY", default="")
EASYPOST_API_BASE = env("EASYPOST_API_BASE", default="https://api.easypost.com/v2")
# Signs EasyPost's events to POST /api/webhooks/easypost/ (X-Hmac-Signature).
EASYPOST_WEBHOOK_SECRET = env("EASYPOST_WEBHOOK_SECRET", default="")
# The shop's sender address, as EasyPost takes it: {"name", "street1", "city", "zip",
# "country"} (JSON in the environment).
SHIPPING_FROM_ADDRESS: dict[str, str] = env.json("SHIPPING_FROM_ADDRESS", default={})
# The service to buy (`Priority`, or `USPS:Priority`); empty: the lowest rate.
SHIPPING_SERVICE = env("SHIPPING_SERVICE", default="")
# The sandbox's EasyPost moves each tracker on one status every this many seconds and sends
# each change to EASYPOST_SANDBOX_WEBHOOK_URL (empty: this app's /api/webhooks/easypost/).
EASYPOST_SANDBOX_TRACKING_STEP_SECONDS = env.float(
    "EASYPOST_SANDBOX_TRACKING_STEP_SECONDS", default=5.0
)
EASYPOST_SANDBOX_WEBHOOK_URL = env("EASYPOST_SANDBOX_WEBHOOK_URL", default="")

# --- Timing: these numbers must stay in this order (orders/checks.py enforces it) ----------
#   PROVIDER_TIMEOUT_SECONDS < CELERY_TASK_SOFT_TIME_LIMIT < CELERY_TASK_TIME_LIMIT
#       a provider call must end (and be retried) before the task is interrupted;
#   CELERY_TASK_TIME_LIMIT < TASK_LOCK_TIMEOUT
#       a step's lock outlives its longest possible run, so a redelivered copy cannot
#       start while the first still runs;
#   TASK_LOCK_TIMEOUT, TASK_RETRY_BACKOFF_MAX < CELERY visibility_timeout
#       Redis redelivers an unacknowledged message after visibility_timeout; anything
#       that can keep a message unacknowledged longer (a run, a retry countdown, a
#       lock-wait countdown) would make Redis hand out a second copy while the first
#       still runs (celery/celery#5935, #2481, #3270);
#   TASK_RETRY_BACKOFF_MAX + CELERY_TASK_TIME_LIMIT < ORDER_STALL_SECONDS
#       an order that is merely waiting out a backoff is not taken for stalled.
PROVIDER_CONNECT_TIMEOUT_SECONDS = env.float("PROVIDER_CONNECT_TIMEOUT_SECONDS", default=3.0)
PROVIDER_TIMEOUT_SECONDS = env.float("PROVIDER_TIMEOUT_SECONDS", default=10.0)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=60)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=90)
TASK_LOCK_TIMEOUT = env.int("TASK_LOCK_TIMEOUT", default=120)
TASK_RETRY_BACKOFF_MAX = env.int("TASK_RETRY_BACKOFF_MAX", default=60)
TASK_MAX_RETRIES = env.int("TASK_MAX_RETRIES", default=8)
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
# Recovery (orders/recovery.py): an order with no timeline entry for ORDER_STALL_SECONDS is
# resumed from the step it reached; one older than ORDER_DEADLINE_SECONDS that has not
# shipped is failed and compensated. The sweep runs every ORDER_SWEEP_INTERVAL_SECONDS.
ORDER_STALL_SECONDS = env.int("ORDER_STALL_SECONDS", default=300)
ORDER_SWEEP_INTERVAL_SECONDS = env.float("ORDER_SWEEP_INTERVAL_SECONDS", default=60.0)
ORDER_DEADLINE_SECONDS = env.int("ORDER_DEADLINE_SECONDS", default=3600)
# How often beat sends the orders whose dispatch failed while the broker was down
# (orders/dispatch.py): they start this long, at most, after the broker is back.
ORDER_DISPATCH_RELAY_SECONDS = env.float("ORDER_DISPATCH_RELAY_SECONDS", default=5.0)
# A shipped order stays `confirming` until its confirmation email is accepted: the sweep
# tries again (waiting ORDER_STALL_SECONDS, doubling per failed round, at most an hour).
# Past this deadline it completes without the email (noted, counted, reported).
ORDER_EMAIL_DEADLINE_SECONDS = env.int("ORDER_EMAIL_DEADLINE_SECONDS", default=24 * 3600)
# An order whose card needs the customer's authentication (3-D Secure) waits this long in
# `awaiting_payment_action`; then its PaymentIntent is cancelled and the order failed.
ORDER_PAYMENT_ACTION_DEADLINE_SECONDS = env.int(
    "ORDER_PAYMENT_ACTION_DEADLINE_SECONDS", default=3600
)
# Webhooks to the shops (orders/webhooks.py, orders/webhook_delivery.py). A shop's URL is
# attacker-controlled: only public https addresses unless WEBHOOK_ALLOW_PRIVATE_URLS (local
# and test settings; production refuses it, orders.E005).
WEBHOOK_ALLOW_PRIVATE_URLS = env.bool("WEBHOOK_ALLOW_PRIVATE_URLS", default=False)
# A 2xx within this long is delivered; anything else is retried.
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
# Retried with backoff for this long after the event, then given up (`failed`).
WEBHOOK_RETRY_HOURS = env.float("WEBHOOK_RETRY_HOURS", default=72.0)
# The backoff between attempts, the last repeated; each delay gets up to 20 % jitter.
WEBHOOK_RETRY_DELAYS_SECONDS = env.list(
    "WEBHOOK_RETRY_DELAYS_SECONDS",
    cast=float,
    default=[5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800],
)
# An endpoint whose every attempt failed for this long is disabled and its shop emailed.
WEBHOOK_DISABLE_AFTER_HOURS = env.float("WEBHOOK_DISABLE_AFTER_HOURS", default=72.0)
# Deliveries and their attempts are kept this long for the shop's and staff's log.
WEBHOOK_LOG_DAYS = env.int("WEBHOOK_LOG_DAYS", default=30)
# Attempts in flight per endpoint at once: a slow endpoint holds at most this many workers.
WEBHOOK_MAX_IN_FLIGHT = env.int("WEBHOOK_MAX_IN_FLIGHT", default=2)
# A busy endpoint gets at most one delivery run per this many seconds: what its shop's orders
# raise meanwhile waits for the next run and goes in one batch (a run has a cost of its own:
# a task, a claim, the endpoint's secret). An idle endpoint's first event goes at once.
WEBHOOK_BATCH_SECONDS = env.float("WEBHOOK_BATCH_SECONDS", default=2.0)
# How often beat looks for deliveries that are due (retries, a crashed worker's rows).
WEBHOOK_SWEEP_SECONDS = env.float("WEBHOOK_SWEEP_SECONDS", default=15.0)

# The API's Idempotency-Key responses are replayed for this long.
IDEMPOTENCY_KEY_TTL_SECONDS = env.int("IDEMPOTENCY_KEY_TTL_SECONDS", default=24 * 3600)

# --- Celery ------------------------------------------------------------------------------
# Redis by default; an amqp:// URL runs every queue on RabbitMQ (config/broker.py says what
# changes, the README's "Brokers" section why).
CELERY_BROKER_URL = tls.redis_url(env("CELERY_BROKER_URL", default=REDIS_URL), BACKEND_CA_FILE)
# Celery takes CELERY_BROKER_URL from the environment ahead of this setting, so a rediss:// URL
# would reach the broker without the CA added above (measured: "certificate verify failed").
# Every connection Celery opens uses the read or the write URL, and those follow the settings.
CELERY_BROKER_READ_URL = CELERY_BROKER_WRITE_URL = CELERY_BROKER_URL
# amqps://: the broker's certificate is required and checked against BACKEND_CA_FILE.
CELERY_BROKER_USE_SSL = tls.broker_use_ssl(CELERY_BROKER_URL, BACKEND_CA_FILE)
# Redis hands an unacknowledged message to another worker after visibility_timeout; the
# timing above keeps every run, lock and countdown shorter than that.
REDIS_TRANSPORT_OPTIONS: dict[str, Any] = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
CELERY_BROKER_TRANSPORT_OPTIONS = broker.transport_options(
    CELERY_BROKER_URL, redis=REDIS_TRANSPORT_OPTIONS
)
# RabbitMQ: a message handed out this many times without an ack (a poison message that kills
# every worker taking it) is dropped; the sweep resends its order's step as a new message.
# 20 is RabbitMQ 4's own default: a handful of worker kills or broker restarts never reach it.
ORDER_QUEUE_DELIVERY_LIMIT = env.int("ORDER_QUEUE_DELIVERY_LIMIT", default=20)
# RabbitMQ: a connection whose peer went silent (a cut network, not a closed socket) is
# noticed after about two heartbeats; Celery's default of 120 s would leave a cut-off worker's
# consumer looking alive for four minutes.
CELERY_BROKER_HEARTBEAT = env.int("CELERY_BROKER_HEARTBEAT", default=30)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# When the broker connection drops, the steps running on it are terminated (Celery 6's
# default). They could not be acknowledged anyway (their messages come back: RabbitMQ at
# once, Redis after the visibility timeout, and the sweep covers those a Redis restart lost),
# and every step is idempotent. Left running, they outlive their time limits: a prefork
# worker reconnects in its main loop, which meanwhile neither reads the pool's results nor
# runs the time limits, so a step that finished waits to write its result into a full pipe;
# once the loop runs again its soft time limit interrupts that write, the half-written result
# is read as garbage (UnicodeDecodeError), and the worker stops, hanging, never exiting.
# Measured: tests/test_partition.py on RabbitMQ, which cuts a worker off for 36 s.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
# Results are written only where the canvas reads them (the chord header, see
# orders/tasks.py) and for failures, which staff look up in the admin. Each stored
# result is a database write on the hot path.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_STORE_ERRORS_EVEN_IF_IGNORED = True
# At-least-once delivery: a message is acknowledged after its task ran, and a task whose
# worker process died is put back. One message prefetched per process, so a killed
# worker strands as few messages as possible.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A redelivered message whose task already succeeded (its result is stored: the chord's
# reservations) is not run again; running it again would count the chord's header twice
# and fire the callback before every line is reserved.
CELERY_WORKER_DEDUPLICATE_SUCCESSFUL_TASKS = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery closes the database connection around every task unless told to reuse it;
# reconnecting costs about half the throughput on PostgreSQL (measured, see README).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=200)
# Task events feed Flower.
CELERY_WORKER_SEND_TASK_EVENTS = True
# Sent events let Flower show a task that still waits in its queue; dropping them saves a
# publish per task and measured no throughput (bench/README.md).
CELERY_TASK_SEND_SENT_EVENT = env.bool("CELERY_TASK_SEND_SENT_EVENT", default=True)
# A queue per step: a backlog of emails or a slow carrier never delays a charge. A plain
# `celery -A config worker` consumes every queue below; `-Q orders.payments` runs a worker
# for payments alone (docker-compose runs one worker per group). Tasks are routed by name,
# so the web process needs no task code to send them to the right queue.
ORDER_QUEUES = broker.ORDER_QUEUES
CELERY_TASK_QUEUES = broker.order_queues(
    CELERY_BROKER_URL, delivery_limit=ORDER_QUEUE_DELIVERY_LIMIT
)
CELERY_TASK_DEFAULT_QUEUE = "orders.maintenance"
CELERY_TASK_ROUTES = {
    "orders.reserve_stock": {"queue": "orders.stock"},
    "orders.charge_payment": {"queue": "orders.payments"},
    # Refunds: beside the charges, and under the same lock.
    "orders.compensate_order": {"queue": "orders.payments"},
    # Webhook events from the payment gateway: beside the charges they may move on.
    "orders.process_provider_event": {"queue": "orders.payments"},
    # The carrier's tracking events: beside the shipments.
    "orders.process_carrier_event": {"queue": "orders.shipping"},
    "orders.create_shipment": {"queue": "orders.shipping"},
    "orders.send_confirmation_email": {"queue": "orders.email"},
    "orders.sweep_stalled_orders": {"queue": "orders.maintenance"},
    "orders.relay_dispatches": {"queue": "orders.maintenance"},
    "orders.purge_idempotency_keys": {"queue": "orders.maintenance"},
    "orders.clear_expired_tokens": {"queue": "orders.maintenance"},
    "orders.anonymize_expired_orders": {"queue": "orders.maintenance"},
    "orders.deliver_webhooks": {"queue": "orders.webhooks"},
    "orders.retry_webhooks": {"queue": "orders.webhooks"},
    "orders.purge_webhook_log": {"queue": "orders.maintenance"},
}
CELERY_BEAT_SCHEDULE = {
    "sweep-stalled-orders": {
        "task": "orders.sweep_stalled_orders",
        "schedule": ORDER_SWEEP_INTERVAL_SECONDS,
        # A sweep that waited longer than one interval is superseded by the next one.
        "options": {"expires": ORDER_SWEEP_INTERVAL_SECONDS},
    },
    "relay-dispatches": {
        "task": "orders.relay_dispatches",
        "schedule": ORDER_DISPATCH_RELAY_SECONDS,
        "options": {"expires": ORDER_DISPATCH_RELAY_SECONDS},
    },
    "purge-idempotency-keys": {
        "task": "orders.purge_idempotency_keys",
        "schedule": 3600.0,
    },
    "clear-expired-tokens": {
        "task": "orders.clear_expired_tokens",
        "schedule": 3600.0,
    },
    "anonymize-expired-orders": {
        "task": "orders.anonymize_expired_orders",
        "schedule": 3600.0,
    },
    "retry-webhooks": {
        "task": "orders.retry_webhooks",
        "schedule": WEBHOOK_SWEEP_SECONDS,
        "options": {"expires": WEBHOOK_SWEEP_SECONDS},
    },
    "purge-webhook-log": {
        "task": "orders.purge_webhook_log",
        "schedule": 3600.0,
    },
}

# /metrics: open where the sandbox runs (local, test); production sets METRICS_REQUIRE_TOKEN
# and answers only `Authorization: Bearer <METRICS_TOKEN>` (404 otherwise, and while unset).
METRICS_REQUIRE_TOKEN = False
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# Where the admin links a timeline entry's task in Flower.
FLOWER_URL = env("FLOWER_URL", default="http://127.0.0.1:5555")

# --- Logging, Sentry ------------------------------------------------------------------------
# Structured logs (django-structlog): every line written while handling a request or running
# a task carries request_id and, where there is one, order_id, task_id and task_name, in the
# web server and the workers alike. LOG_FORMAT=json writes one JSON object per line
# (production's default); `console` writes readable key=value lines. Both formatters redact
# personal data (config/redaction.py) from every line, whoever wrote it: our code, Django,
# Celery, kombu, the providers' SDKs.
LOG_FORMAT = env("LOG_FORMAT", default="console")
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
_LOG_PRE_CHAIN = [
    structlog.contextvars.merge_contextvars,  # request_id, order_id, task_id, task_name
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso"),
]
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": structlog.stdlib.ProcessorFormatter,
            "processors": [
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redaction.redact_log_event,
                structlog.processors.JSONRenderer(),
            ],
            "foreign_pre_chain": _LOG_PRE_CHAIN,
        },
        "console": {
            "()": structlog.stdlib.ProcessorFormatter,
            "processors": [
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # Plain tracebacks: rich's, with locals, call repr() on live objects (broker
                # channels among them), which held a worker in its shutdown instead of exiting.
                # Rendered to text here, before the renderer, so that they are redacted too.
                structlog.processors.format_exc_info,
                redaction.redact_log_event,
                structlog.dev.ConsoleRenderer(
                    colors=False, exception_formatter=structlog.dev.plain_traceback
                ),
            ],
            "foreign_pre_chain": _LOG_PRE_CHAIN,
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # The SDK logs two INFO lines per call (request, response); our own lines say more.
        "stripe": {"level": "WARNING"},
        # A worker's "ready" and beat's start are what supervisors and the tests wait for.
        "celery.apps": {"level": "INFO"},
        "celery.beat": {"level": "INFO"},
    },
}
structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.filter_by_level,
        structlog.processors.TimeStamper(fmt="iso"),
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.UnicodeDecoder(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    cache_logger_on_first_use=True,
)
DJANGO_STRUCTLOG_CELERY_ENABLED = True
# orders.middleware.RequestIdMiddleware has vetted the header before django-structlog reads it.
DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID = True
# Addresses would be read from X-Forwarded-For, which clients can write (see THROTTLE_NUM_PROXIES).
DJANGO_STRUCTLOG_IP_LOGGING_ENABLED = False
# Workers log through LOGGING too (config/celery.py hooks setup_logging), not Celery's own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

SENTRY_DSN = env("SENTRY_DSN", default="")
if SENTRY_DSN:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=SENTRY_DSN,
        environment=env("SENTRY_ENVIRONMENT", default="production"),
        integrations=[DjangoIntegration(), CeleryIntegration(monitor_beat_tasks=True)],
        traces_sample_rate=env.float("SENTRY_TRACES_SAMPLE_RATE", default=0.0),
        # No request bodies, cookies or frame locals; messages, exceptions, extra data and
        # breadcrumbs redacted by the log lines' rules (config/redaction.py).
        **redaction.SENTRY_PRIVACY_OPTIONS,
    )
