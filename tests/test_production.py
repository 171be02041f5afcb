"""Production settings, each in a fresh process given only the documented environment (README,
"Configuration"): `check --deploy` is clean, a missing or weak secret stops the start, the
sandbox routes do not exist, and the admin and Flower ask for credentials."""

import json
import os
import secrets
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from django.conf import settings

from tests.services import answers, free_port

ROOT = Path(__file__).resolve().parent.parent


def production_env(**overrides: str | None) -> dict:
    """The documented production environment, nothing inherited from this shell."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "orders.example.com",
        # Never connected to by these tests: nothing here touches the database. Production
        # reaches every backing service over TLS that checks the server (orders.E003): the
        # URLs say so, and BACKEND_CA_FILE is the CA that signed their certificates.
        "DATABASE_URL": "postgres://orders:secret@db.invalid:5432/orders?sslmode=verify-full",
        "REDIS_URL": "rediss://redis.invalid:6379/0?ssl_cert_reqs=required",
        "BACKEND_CA_FILE": "/run/secrets/backend-ca.pem",
        # Real adapters are required; the unit layer's doubles stand in for them here.
        "PAYMENT_GATEWAY": "tests.fakes.FakeGateway",
        "SHIPPING_CARRIER": "tests.fakes.FakeCarrier",
        "EMAIL_HOST": "smtp.example.com",
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "FIELD_HASH_KEY": secrets.token_urlsafe(32),
        "EMAIL_USE_TLS": "true",
    }
    env.update(overrides)
    return {name: value for name, value in env.items() if value is not None}


def run(args: list[str], **env: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=production_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_reports_nothing_with_the_documented_environment():
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"])
    assert result.returncode == 0, result.stderr
    # One check is silenced, on purpose and with its reason in the settings: axes.W006 asks to
    # lock sign-ins out by address too (see AXES_LOCKOUT_PARAMETERS).
    assert "System check identified no issues (1 silenced)." in result.stdout
    assert settings.SILENCED_SYSTEM_CHECKS == ["axes.W006"]


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "too-short",
        "django-insecure-" + "x1y2z3" * 10,
        "ab" * 40,
        "local-only-insecure-key-do-not-use-in-production" + "0123456789",
    ],
)
def test_production_refuses_to_start_without_a_strong_secret_key(key):
    result = run(["-c", "import config.settings.production"], DJANGO_SECRET_KEY=key)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    "name",
    ["DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "EMAIL_HOST"],
)
def test_production_refuses_to_start_without_its_other_required_settings(name):
    result = run(["-c", "import config.settings.production"], **{name: None})
    assert result.returncode != 0
    assert name in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SHIPPING_CARRIER", "tests.fakes.SandboxOnlyCarrier"),
        ("PAYMENT_GATEWAY", "payments.does.not.Exist"),
    ],
)
def test_production_refuses_the_sandbox_adapters(name, value):
    result = run(["manage.py", "check"], **{name: value})

    assert result.returncode != 0
    assert "orders.E002" in result.stderr and value in result.stderr


STRIPE_PRODUCTION = {
    "PAYMENT_GATEWAY": None,  # the default: Stripe
    "STRIPE_API_KEY": "sk_live_" + "x" * 24,
    "STRIPE_WEBHOOK_SECRET": "whsec_" + "y" * 24,
}


def test_production_pays_through_stripe_by_default_and_checks_it_quietly():
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **STRIPE_PRODUCTION)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("STRIPE_API_BASE", "http://127.0.0.1:8000/sandbox/stripe", "is not https"),
        ("STRIPE_API_KEY", None, "STRIPE_API_KEY is not set"),
        ("STRIPE_WEBHOOK_SECRET", None, "STRIPE_WEBHOOK_SECRET is not set"),
    ],
)
def test_production_refuses_stripe_without_tls_a_key_or_the_webhook_secret(name, value, says):
    result = run(["manage.py", "check"], **{**STRIPE_PRODUCTION, name: value})

    assert result.returncode != 0
    assert "orders.E002" in result.stderr and says in result.stderr


EASYPOST_PRODUCTION = {
    "SHIPPING_CARRIER": None,  # the default: EasyPost
    "EASYPOST_API_KEY": "EZAK" + "x" * 24,
    "EASYPOST_WEBHOOK_SECRET": "y" * 24,
    "SHIPPING_FROM_ADDRESS": '{"name": "Shop", "street1": "1 Way", "city": "Berlin", '
    '"zip": "10115", "country": "DE"}',
}


def test_production_ships_through_easypost_by_default_and_checks_it_quietly():
    result = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **EASYPOST_PRODUCTION
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("EASYPOST_API_BASE", "http://127.0.0.1:8000/sandbox/easypost/v2", "is not https"),
        ("EASYPOST_API_KEY", None, "EASYPOST_API_KEY is not set"),
        ("EASYPOST_WEBHOOK_SECRET", None, "EASYPOST_WEBHOOK_SECRET is not set"),
        ("SHIPPING_FROM_ADDRESS", '{"name": "Shop"}', "SHIPPING_FROM_ADDRESS lacks city"),
    ],
)
def test_production_refuses_easypost_without_tls_a_key_a_secret_or_a_sender(name, value, says):
    result = run(["manage.py", "check"], **{**EASYPOST_PRODUCTION, name: value})

    assert result.returncode != 0
    assert "orders.E002" in result.stderr and says in result.stderr


def test_a_test_mode_stripe_key_in_production_is_a_warning_not_an_error():
    test_key = {**STRIPE_PRODUCTION, "STRIPE_API_KEY": "sk_test_" + "x" * 24}
    assert run(["manage.py", "check"], **test_key).returncode == 0
    warned = run(["manage.py", "check", "--fail-level", "WARNING"], **test_key)
    assert warned.returncode != 0 and "orders.W002" in warned.stderr


def test_a_production_worker_refuses_to_start_on_the_sandbox():
    result = run(
        ["-m", "celery", "-A", "config", "worker", "--pool", "solo"],
        SHIPPING_CARRIER="tests.fakes.SandboxOnlyCarrier",
    )

    assert result.returncode != 0
    assert "Refusing to start" in result.stderr and "sandbox adapter" in result.stderr


# --- TLS to the backing services (orders.E003) ------------------------------------------------
RABBITMQ_PRODUCTION = {"CELERY_BROKER_URL": "amqps://orders:secret@rabbitmq.invalid:5671/orders"}


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            {"DATABASE_URL": "postgres://orders:secret@db.invalid:5432/orders"},
            "no sslmode (libpq's default, prefer, falls back to plaintext)",
        ),
        (
            {"DATABASE_URL": "postgres://orders:secret@db.invalid:5432/orders?sslmode=require"},
            "sslmode=require: add sslmode=verify-full",
        ),
        (
            {"DATABASE_URL": "postgres://orders:secret@db.invalid:5432/orders?sslmode=verify-ca"},
            "sslmode=verify-ca: add sslmode=verify-full",
        ),
        (
            {"REDIS_URL": "redis://:pw@redis.invalid:6379/0"},
            "CACHES['default'] (REDIS_URL) (redis://redis.invalid/0) is plaintext",
        ),
        (
            {"REDIS_URL": "rediss://redis.invalid:6379/0?ssl_cert_reqs=none"},
            "has ssl_cert_reqs=none: add ssl_cert_reqs=required",
        ),
        (
            {"REDIS_URL": "rediss://redis.invalid:6379/0"},
            "has no ssl_cert_reqs: add ssl_cert_reqs=required",
        ),
        (
            {"LOCK_REDIS_URL": "redis://locks.invalid:6379/0"},
            "LOCK_REDIS_URL (redis://locks.invalid/0) is plaintext",
        ),
        (
            {"CELERY_BROKER_URL": "rediss://broker.invalid:6379/0?ssl_cert_reqs=optional"},
            "CELERY_BROKER_URL (rediss://broker.invalid/0) has ssl_cert_reqs=optional",
        ),
        (
            {
                "REDIS_URL": "rediss://redis.invalid:6379/0?ssl_cert_reqs=required"
                "&ssl_check_hostname=false"
            },
            "has ssl_check_hostname=false",
        ),
        (
            {"CELERY_BROKER_URL": "amqp://orders:secret@rabbitmq.invalid:5672/orders"},
            "CELERY_BROKER_URL (amqp://rabbitmq.invalid/orders) is plaintext: use amqps://",
        ),
        ({"EMAIL_USE_TLS": None}, "SMTP to smtp.example.com:25 is plaintext"),
    ],
    ids=[
        "postgres-without-sslmode",
        "postgres-require",
        "postgres-verify-ca",
        "redis-plaintext",
        "rediss-cert-none",
        "rediss-without-cert-reqs",
        "lock-redis-plaintext",
        "broker-rediss-optional",
        "rediss-no-hostname-check",
        "amqp-plaintext",
        "smtp-plaintext",
    ],
)
def test_production_refuses_a_backing_service_without_verified_tls(overrides, says):
    result = run(["manage.py", "check"], **overrides)

    assert result.returncode != 0
    assert "orders.E003" in result.stderr and says in result.stderr, result.stderr
    assert "secret" not in result.stderr and ":pw@" not in result.stderr  # no password shown


def test_production_accepts_rabbitmq_over_tls_and_smtp_over_ssl():
    result = run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        **RABBITMQ_PRODUCTION,
        EMAIL_USE_TLS=None,
        EMAIL_USE_SSL="true",
        EMAIL_PORT="465",
    )
    assert result.returncode == 0, result.stderr


def test_a_production_worker_refuses_to_start_with_a_plaintext_broker():
    result = run(
        ["-m", "celery", "-A", "config", "worker", "--pool", "solo"],
        CELERY_BROKER_URL="amqp://orders:secret@rabbitmq.invalid:5672/orders",
    )

    assert result.returncode != 0
    assert "Refusing to start" in result.stderr and "use amqps://" in result.stderr


PLAINTEXT = {
    "DATABASE_URL": "postgres://orders:secret@db.invalid:5432/orders",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "CELERY_BROKER_URL": "amqp://orders:secret@rabbitmq.invalid:5672/orders",
    "EMAIL_USE_TLS": None,
}


def test_allow_plaintext_backends_turns_the_refusal_into_a_warning_for_each_connection():
    allowed = {**PLAINTEXT, "ALLOW_PLAINTEXT_BACKENDS": "true"}
    assert run(["manage.py", "check"], **allowed).returncode == 0
    warned = run(["manage.py", "check", "--fail-level", "WARNING"], **allowed)

    assert warned.returncode != 0 and "orders.E003" not in warned.stderr
    warnings = [line for line in warned.stderr.splitlines() if "orders.W003" in line]
    named = ("DATABASES['default']", "CACHES['default']", "LOCK_REDIS_URL", "CELERY_BROKER_URL")
    assert [any(name in line for line in warnings) for name in named] == [True] * 4
    assert any("SMTP" in line for line in warnings)
    assert all("ALLOW_PLAINTEXT_BACKENDS=true" in line for line in warnings)
    # And a worker starts past its checks (it then fails to reach the .invalid broker).
    refused = run(["manage.py", "check"], **PLAINTEXT)
    assert refused.returncode != 0 and refused.stderr.count("orders.E003") == 5


TLS_PROBE = """
import json
from django.conf import settings
print(json.dumps({
    "database": settings.DATABASES["default"]["OPTIONS"],
    "redis": [settings.REDIS_URL, settings.LOCK_REDIS_URL, settings.CACHES["default"]["LOCATION"]],
    "broker_use_ssl": settings.CELERY_BROKER_USE_SSL,
}))
"""


def test_backend_ca_file_reaches_every_client():
    """BACKEND_CA_FILE becomes each client's CA: libpq's sslrootcert, the ssl_ca_certs of the
    Redis URL the cache and the locks read, and an amqps broker's ca_certs with the
    certificate required and the host name checked (kombu fills in a None server_hostname)."""
    result = run(["-c", TLS_PROBE], **RABBITMQ_PRODUCTION)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    ca = "/run/secrets/backend-ca.pem"

    tls = {name: found["database"].get(name) for name in ("sslmode", "sslrootcert")}
    assert tls == {"sslmode": "verify-full", "sslrootcert": ca}
    redis_url = "rediss://redis.invalid:6379/0?ssl_cert_reqs=required&ssl_ca_certs=%2Frun%2Fsecrets%2Fbackend-ca.pem"
    assert found["redis"] == [redis_url] * 3
    assert found["broker_use_ssl"] == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": ca,
        "server_hostname": None,
    }


PROBE = """
import json
import django
django.setup()
from django.conf import settings
from django.test import Client
from django.urls import Resolver404, resolve

def sandbox_resolves():
    try:
        resolve("/sandbox/stripe/v1/payment_intents")
    except Resolver404:
        return False
    return True

client = Client(HTTP_HOST="orders.example.com")
secure = client.get("/sandbox/stripe/v1/payment_intents", secure=True)
print(json.dumps({
    "secret_key": settings.SECRET_KEY,
    "debug": settings.DEBUG,
    "sandbox_app": any(app.startswith("integrations.sandbox") for app in settings.INSTALLED_APPS),
    "sandbox_resolves": sandbox_resolves(),
    "sandbox_status": secure.status_code,
    "sandbox_post_status": client.post("/sandbox/stripe/v1/payment_intents", "{}",
                                       content_type="application/json", secure=True).status_code,
    "hsts": secure.headers.get("Strict-Transport-Security"),
    "http_redirect": client.get("/api/orders/").headers.get("Location"),
    "admin": [client.get("/admin/", secure=True).status_code,
              client.get("/admin/", secure=True).headers.get("Location")],
    "orders_without_token": client.get("/api/orders/", secure=True).status_code,
    "cookies": [settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE],
    "foreign_host": client.get("/admin/", secure=True, HTTP_HOST="evil.example").status_code,
}))
"""


@pytest.fixture(scope="module")
def production():
    key = secrets.token_urlsafe(50)
    result = run(["-c", PROBE], DJANGO_SECRET_KEY=key, DJANGO_DEBUG="true")
    assert result.returncode == 0, result.stderr
    return {**json.loads(result.stdout.splitlines()[-1]), "expected_key": key}


def test_the_sandbox_routes_do_not_exist_in_production(production):
    assert production["sandbox_app"] is False
    assert production["sandbox_resolves"] is False
    assert production["sandbox_status"] == 404
    assert production["sandbox_post_status"] == 404


def test_the_sandbox_routes_exist_under_the_test_settings_only():
    from django.urls import resolve

    assert settings.SANDBOX_ENABLED
    resolve("/sandbox/stripe/v1/payment_intents")  # the contrast: here they do


def test_secrets_come_from_the_environment_and_debug_stays_off(production):
    assert production["secret_key"] == production["expected_key"]
    assert production["debug"] is False  # DJANGO_DEBUG=true is ignored


def test_production_serves_https_only_with_hsts_and_secure_cookies(production):
    assert production["http_redirect"] == "https://orders.example.com/api/orders/"
    assert production["hsts"] == "max-age=31536000; includeSubDomains; preload"
    assert production["cookies"] == [True, True]
    assert production["foreign_host"] == 400  # ALLOWED_HOSTS


def test_the_admin_and_the_api_need_credentials_in_production(production):
    status, location = production["admin"]
    assert status == 302 and location.startswith("/admin/login/")
    assert production["orders_without_token"] == 401


# --- Flower ---------------------------------------------------------------------------------------
@pytest.fixture
def flower(tmp_path):
    """Start Flower against the test Redis with the given credentials; always stop it."""
    processes = []
    log_path = tmp_path / "flower.log"

    def start(*args: str, **env: str) -> str:
        port = free_port()
        full_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            **env,
        }
        log = log_path.open("a")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
                *args,
            ],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        processes.append((process, log))
        deadline = time.monotonic() + 60
        while not answers(port):
            if process.poll() is not None:
                raise AssertionError(f"Flower exited: {log_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError("Flower did not start within 60 s")
            time.sleep(0.2)
        return f"http://127.0.0.1:{port}"

    yield start
    for process, log in processes:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--basic-auth (Procfile)", "FLOWER_BASIC_AUTH (docker-compose)"])
def test_flower_needs_its_credentials(flower, how):
    if how.startswith("--basic-auth"):
        url = flower("--basic-auth=user:pass")
    else:
        url = flower(FLOWER_BASIC_AUTH="user:pass")

    for path in ("/", "/workers", "/tasks", "/api/workers", "/api/tasks"):
        assert requests.get(url + path, timeout=10).status_code == 401, path
        assert requests.get(url + path, auth=("user", "wrong"), timeout=10).status_code == 401, path
    assert requests.get(url + "/", auth=("user", "pass"), timeout=10).status_code == 200


@pytest.fixture
def flower_behind_auth(flower, tmp_path):
    """Flower on a private port, and the project's authenticating proxy in front of it."""
    upstream = flower("--basic-auth=user:pass")
    port = free_port()
    log = (tmp_path / "proxy.log").open("w")
    proxy = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "config.flower_auth",
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
            "--upstream",
            upstream,
        ],
        cwd=ROOT,
        env={**os.environ, "FLOWER_BASIC_AUTH": "user:pass"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not answers(port):
            assert proxy.poll() is None and time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", upstream
    finally:
        proxy.terminate()
        proxy.wait(timeout=15)
        log.close()


@pytest.mark.slow
def test_flowers_whole_surface_needs_credentials_through_the_proxy(flower_behind_auth):
    """Flower itself leaves /metrics and /healthcheck open; the proxy closes them too."""
    url, upstream = flower_behind_auth
    assert requests.get(upstream + "/metrics", timeout=10).status_code == 200  # Flower's gap

    for path in ("/", "/tasks", "/api/workers", "/metrics", "/healthcheck"):
        assert requests.get(url + path, timeout=10).status_code == 401, path
        assert requests.get(url + path, auth=("user", "wrong"), timeout=10).status_code == 401
    # Every method on every path, those that command workers or send tasks included, is
    # answered by the proxy itself ("Authentication required"), never passed to Flower.
    paths = (
        "/api/tasks",
        "/api/task/info/x",
        "/api/task/async-apply/orders.charge_payment",
        "/api/task/revoke/x",
        "/api/worker/shutdown/w1@host",
        "/api/worker/pool/restart/w1@host",
        "/worker/w1@host",
        "/static/css/flower.css",
        "/no-such-page",
    )
    for path in paths:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            response = requests.request(method, url + path, timeout=10)
            assert response.status_code == 401, (method, path)
            assert response.text == "Authentication required", (method, path)
        assert requests.head(url + path, timeout=10).status_code == 401, path
    assert requests.get(url + "/", auth=("user", "pass"), timeout=10).status_code == 200
    metrics = requests.get(url + "/metrics", auth=("user", "pass"), timeout=10)
    assert metrics.status_code == 200 and "flower_" in metrics.text
    assert requests.get(url + "/healthcheck", auth=("user", "pass"), timeout=10).text == "OK"


def _fresh_settings_module(name: str):
    import importlib

    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_the_production_settings_as_a_module(monkeypatch):
    """The same module the subprocess tests start, read here for its values."""
    for name, value in production_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LOG_FORMAT", raising=False)

    production = _fresh_settings_module("config.settings.production")

    assert production.DEBUG is False and production.SANDBOX_ENABLED is False
    assert production.PAYMENT_GATEWAY == "tests.fakes.FakeGateway"
    assert production.EMAIL_BACKEND == "django.core.mail.backends.smtp.EmailBackend"
    assert production.METRICS_REQUIRE_TOKEN is True
    assert production.LOGGING["handlers"]["console"]["formatter"] == "json"
    # Its JSON logging is its own: the base settings (and so these tests') keep theirs.
    assert settings.LOGGING["handlers"]["console"]["formatter"] != "json" or (
        os.environ.get("LOG_FORMAT") == "json"
    )


def test_the_local_settings_run_the_sandbox_with_debug_on(monkeypatch):
    monkeypatch.delenv("DJANGO_DEBUG", raising=False)

    local = _fresh_settings_module("config.settings.local")

    assert local.DEBUG is True and local.SANDBOX_ENABLED is True
    assert "integrations.sandbox" in local.INSTALLED_APPS
    assert local.PAYMENT_GATEWAY == "integrations.payments.StripeGateway"
    assert local.STRIPE_API_BASE == "http://127.0.0.1:8000/sandbox/stripe"  # the same server


def test_the_flower_proxy_checks_every_credential_in_constant_time(monkeypatch):
    import base64

    from config.flower_auth import authorized, credentials_from_env

    def basic(pair: str) -> str:
        return "Basic " + base64.b64encode(pair.encode()).decode()

    monkeypatch.setenv("FLOWER_BASIC_AUTH", "ops:one, viewer:two")
    allowed = credentials_from_env()

    assert allowed == ["ops:one", "viewer:two"]
    assert authorized(basic("viewer:two"), allowed)
    assert not authorized(basic("viewer:one"), allowed)
    assert not authorized("Basic !!!not-base64", allowed)
    assert not authorized("Bearer ops:one", allowed) and not authorized(None, allowed)
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "no-colon")
    with pytest.raises(SystemExit):
        credentials_from_env()


# --- The keys of the personal data ------------------------------------------------------------
@pytest.mark.parametrize("name", ["FIELD_ENCRYPTION_KEYS", "FIELD_HASH_KEY"])
def test_production_does_not_start_without_the_personal_datas_keys(name):
    result = run(["manage.py", "check"], **{name: None})
    assert result.returncode != 0
    assert name in result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"FIELD_ENCRYPTION_KEYS": "not-a-key"}, "holds a key that is not a Fernet key"),
        (
            {"FIELD_ENCRYPTION_KEYS": settings.DEVELOPMENT_FIELD_ENCRYPTION_KEY},
            "FIELD_ENCRYPTION_KEYS holds the published development key",
        ),
        (
            {"FIELD_HASH_KEY": settings.DEVELOPMENT_FIELD_HASH_KEY},
            "FIELD_HASH_KEY is the published development key",
        ),
    ],
)
def test_production_refuses_a_malformed_or_published_key(overrides, message):
    result = run(["manage.py", "check", "--deploy"], **overrides)
    assert result.returncode != 0
    assert "orders.E004" in result.stderr and message in result.stderr, result.stderr
