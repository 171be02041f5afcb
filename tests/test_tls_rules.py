"""The rules of config/tls.py, in process: what counts as verified TLS for each kind of
connection, and how BACKEND_CA_FILE reaches each client. (tests/test_tls.py shows them on real
servers; tests/test_production.py through the production check.)"""

import ssl

import pytest

from config import tls
from orders import checks

POSTGRES = "django.db.backends.postgresql"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"sslmode": "verify-full"}, None),
        ({"sslmode": "require"}, "sslmode=require"),
        ({}, "no sslmode"),
    ],
)
def test_postgres_needs_verify_full(options, problem):
    found = tls.database_problem("DATABASES['default']", {"ENGINE": POSTGRES, "OPTIONS": options})
    assert (found is None) if problem is None else (problem in found)
    assert tls.database_problem("x", {"ENGINE": "django.db.backends.sqlite3"}) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("rediss://:pw@redis.example:6380/0?ssl_cert_reqs=required", None),
        ("unix:///run/redis.sock", None),
        ("redis://:secret@redis.example:6379/0", "is plaintext"),
        ("rediss://redis.example:6380/0", "no ssl_cert_reqs"),
        ("rediss://redis.example:6380/0?ssl_cert_reqs=none", "ssl_cert_reqs=none"),
        (
            "rediss://redis.example/0?ssl_cert_reqs=required&ssl_check_hostname=false",
            "ssl_check_hostname=false",
        ),
    ],
)
def test_redis_needs_rediss_with_the_certificate_required(url, problem):
    found = tls.redis_problem("REDIS_URL", url)
    assert (found is None) if problem is None else (problem in found)
    assert "secret" not in (found or "")  # never a password in a message


def test_rabbitmq_needs_amqps_on_every_broker_and_the_certificate_required():
    required = tls.broker_use_ssl("amqps://mq.example//", "/ca.pem")
    assert required == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": "/ca.pem",
        "server_hostname": None,
    }
    assert tls.broker_use_ssl("redis://r/0", "/ca.pem") is False
    assert tls.amqp_problem("B", "amqps://mq.example//", required) is None
    assert "plaintext" in tls.amqp_problem("B", "amqps://a//;amqp://b//", required)
    assert "not required" in tls.amqp_problem("B", "amqps://a//", {"cert_reqs": ssl.CERT_NONE})


def test_the_ca_file_reaches_each_client_where_its_url_names_none():
    assert tls.redis_url("rediss://r:6380/0?ssl_cert_reqs=required", "/ca.pem").endswith(
        "ssl_cert_reqs=required&ssl_ca_certs=%2Fca.pem"
    )
    assert tls.redis_url("rediss://r/0?ssl_ca_certs=/own.pem", "/ca.pem").endswith("/own.pem")
    assert tls.redis_url("redis://r/0", "/ca.pem") == "redis://r/0"
    database = tls.database_tls({"ENGINE": POSTGRES}, "/ca.pem")
    assert database["OPTIONS"]["sslrootcert"] == "/ca.pem"


def test_the_production_check_lists_every_plaintext_backend(settings):
    settings.SANDBOX_ENABLED = False
    settings.ALLOW_PLAINTEXT_BACKENDS = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    errors = checks.tls_errors()
    assert any("PostgreSQL" in e for e in errors)
    assert any("LOCK_REDIS_URL" in e for e in errors)
    assert any("SMTP" in e for e in errors)
    assert checks.tls_warnings() == []
    settings.ALLOW_PLAINTEXT_BACKENDS = True
    assert checks.tls_errors() == [] and len(checks.tls_warnings()) == len(errors)
