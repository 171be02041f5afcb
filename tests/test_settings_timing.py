"""The timing settings whose order prevents a step from running twice at once."""

import subprocess
import sys

import pytest

from orders.checks import timing_errors


def test_the_shipped_defaults_are_in_order(settings):
    base = {
        "PROVIDER_TIMEOUT_SECONDS": 10.0,
        "CELERY_TASK_SOFT_TIME_LIMIT": 60,
        "CELERY_TASK_TIME_LIMIT": 90,
        "TASK_LOCK_TIMEOUT": 120,
        "TASK_RETRY_BACKOFF_MAX": 60,
        "ORDER_STALL_SECONDS": 300,
        "ORDER_DEADLINE_SECONDS": 3600,
        "CELERY_BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": 3600},
    }
    for name, value in base.items():
        setattr(settings, name, value)
    assert timing_errors() == []


def test_the_test_settings_are_in_order():
    assert timing_errors() == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TASK_LOCK_TIMEOUT", 20, "TASK_LOCK_TIMEOUT must exceed CELERY_TASK_TIME_LIMIT"),
        (
            "CELERY_BROKER_TRANSPORT_OPTIONS",
            {"visibility_timeout": 30},
            "visibility_timeout must exceed TASK_LOCK_TIMEOUT",
        ),
        (
            "PROVIDER_TIMEOUT_SECONDS",
            25.0,
            "PROVIDER_TIMEOUT_SECONDS must be below CELERY_TASK_SOFT_TIME_LIMIT",
        ),
        ("ORDER_STALL_SECONDS", 10, "ORDER_STALL_SECONDS must exceed"),
    ],
)
def test_a_number_out_of_order_is_reported(settings, name, value, message):
    setattr(settings, name, value)
    assert any(message in error for error in timing_errors())


def test_a_worker_refuses_to_start_with_timings_out_of_order():
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "TASK_LOCK_TIMEOUT": "5",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "TASK_LOCK_TIMEOUT must exceed CELERY_TASK_TIME_LIMIT" in result.stderr


def test_without_the_sandbox_every_provider_must_be_real(settings):
    from orders.checks import provider_errors

    settings.SANDBOX_ENABLED = False
    settings.PAYMENT_GATEWAY = "tests.fakes.FakeGateway"
    settings.SHIPPING_CARRIER = "tests.fakes.FakeCarrier"
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    assert provider_errors() == []

    for backend in ("console", "locmem"):
        settings.EMAIL_BACKEND = f"django.core.mail.backends.{backend}.EmailBackend"
        assert any("delivers no email" in e for e in provider_errors())
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.SHIPPING_CARRIER = "tests.fakes.SandboxOnlyCarrier"
    assert provider_errors() == [
        (
            "SHIPPING_CARRIER=tests.fakes.SandboxOnlyCarrier is a sandbox adapter, "
            "and the sandbox is off here"
        )
    ]


def test_with_the_sandbox_on_its_adapters_are_fine(settings):
    from orders.checks import provider_errors

    assert settings.SANDBOX_ENABLED
    assert provider_errors() == []


def test_production_checks_stripe_and_easypost(settings):
    """What orders.E002 and W002 say of the real providers' settings (the subprocess tests in
    tests/test_production.py show the same through `manage.py check`)."""
    from orders.checks import provider_errors, stripe_warnings

    settings.SANDBOX_ENABLED = False
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.PAYMENT_GATEWAY = "integrations.payments.StripeGateway"
    settings.SHIPPING_CARRIER = "integrations.shipping.EasyPostCarrier"
    settings.STRIPE_API_BASE = "http://stripe.invalid"
    settings.STRIPE_API_KEY = settings.STRIPE_WEBHOOK_SECRET = ""
    settings.EASYPOST_API_BASE = "http://easypost.invalid/v2"
    settings.EASYPOST_API_KEY = settings.EASYPOST_WEBHOOK_SECRET = ""
    settings.SHIPPING_FROM_ADDRESS = {"name": "Shop"}

    errors = provider_errors()

    assert len(errors) == 7
    assert any("STRIPE_API_BASE" in e and "https" in e for e in errors)
    assert any("SHIPPING_FROM_ADDRESS lacks city, country, street1, zip" in e for e in errors)
    settings.STRIPE_API_BASE = "https://api.stripe.com"
    settings.STRIPE_API_KEY = "sk_test_x"
    settings.STRIPE_WEBHOOK_SECRET = "whsec_x"
    settings.EASYPOST_API_BASE = "https://api.easypost.com/v2"
    settings.EASYPOST_API_KEY = settings.EASYPOST_WEBHOOK_SECRET = "x"
    sender = ("name", "street1", "city", "zip", "country")
    settings.SHIPPING_FROM_ADDRESS = dict.fromkeys(sender, "x")
    assert provider_errors() == []
    assert stripe_warnings() == ["STRIPE_API_KEY is a test-mode key: no real payment is taken"]
    settings.STRIPE_API_KEY = "sk_live_x"
    assert stripe_warnings() == []
