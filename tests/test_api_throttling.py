"""Throttling (OWASP API4, unrestricted resource consumption): order creation per user and per
anonymous address. Over the rate: 429 with Retry-After, in the error shape, and nothing done.
Rates are settings, from the environment. (The token endpoint locks a client out after
repeated failures instead: test_oauth.py.)"""

import json
import os
import subprocess
import sys

import pytest
from rest_framework.test import APIClient

from orders.api.throttles import OrderCreateAnonThrottle, OrderCreateUserThrottle
from orders.models import Order
from tests.api_fixtures import assert_error, db_state
from tests.factories import IssuedToken, order_payload, token_for

URL = "/api/orders/"


@pytest.fixture
def rates(settings):
    """Low rates for these tests, set the way an operator would: in settings."""

    def set_rates(**rates):
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {
                **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
                **rates,
            },
        }

    return set_rates


@pytest.fixture
def post_order(django_capture_on_commit_callbacks):
    def post(client, body=None, **extra):
        with django_capture_on_commit_callbacks(execute=False):
            return client.post(
                URL, order_payload(("MUG-001", 1)) if body is None else body, format="json", **extra
            )

    return post


def assert_throttled(response) -> None:
    assert_error(response, 429, "throttled")
    retry_after = int(response["Retry-After"])
    assert 0 < retry_after <= 60


def client_for(token: IssuedToken | None) -> APIClient:
    client = APIClient()
    if token is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.key}")
    return client


# --- Rates ----------------------------------------------------------------------------------------
def test_rates_are_read_from_settings_at_request_time(rates):
    rates(order_create="7/min", order_create_anon="3/hour")
    assert OrderCreateUserThrottle().rate == "7/min"
    assert OrderCreateAnonThrottle().rate == "3/hour"


def test_rates_come_from_the_environment():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "THROTTLE_ORDER_CREATE_RATE": "11/min",
        "THROTTLE_ORDER_CREATE_ANON_RATE": "12/hour",
        "THROTTLE_WEBHOOK_ENDPOINTS_RATE": "13/min",
        "THROTTLE_NUM_PROXIES": "1",
    }
    code = (
        "import django, json; django.setup(); "
        "from rest_framework.settings import api_settings as s; "
        "print(json.dumps([s.DEFAULT_THROTTLE_RATES, s.NUM_PROXIES]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == [
        {"order_create": "11/min", "order_create_anon": "12/hour", "webhook_endpoints": "13/min"},
        1,
    ]


# --- Order creation, per user ---------------------------------------------------------------------
def test_order_creation_is_throttled_per_user(rates, mug, post_order, token):
    rates(order_create="2/min")
    alice, bob = client_for(token), client_for(token_for())
    assert [post_order(alice).status_code for _ in range(2)] == [201, 201]
    before = db_state()

    response = post_order(alice)

    assert_throttled(response)
    assert db_state() == before
    assert Order.objects.filter(user=token.user).count() == 2
    assert post_order(bob).status_code == 201  # per user, not for everyone
    assert alice.get(URL).status_code == 200  # reading is not creating


def test_bad_requests_count_against_the_rate_too(rates, mug, post_order, token):
    rates(order_create="2/min")
    client = client_for(token)
    assert [post_order(client, {"lines": "junk"}).status_code for _ in range(2)] == [400, 400]
    before = db_state()
    assert_throttled(post_order(client))
    assert db_state() == before


def test_a_replayed_idempotent_request_is_throttled_like_any_other(rates, mug, post_order, token):
    rates(order_create="1/min")
    client = client_for(token)
    assert post_order(client, HTTP_IDEMPOTENCY_KEY="k").status_code == 201
    assert_throttled(post_order(client, HTTP_IDEMPOTENCY_KEY="k"))


# --- Anonymous clients, per address ---------------------------------------------------------------
def test_anonymous_order_attempts_are_throttled_per_address(rates, mug, post_order):
    rates(order_create_anon="2/min")
    anonymous = APIClient()
    before = db_state()

    answers = [post_order(anonymous, HTTP_X_FORWARDED_FOR=f"10.0.0.{n}") for n in range(3)]

    assert [r.status_code for r in answers[:2]] == [401, 401]
    assert_throttled(answers[2])  # a forged X-Forwarded-For is not another client
    assert post_order(anonymous, REMOTE_ADDR="192.0.2.7").status_code == 401  # another address is
    assert db_state() == before


def test_with_a_trusted_proxy_the_address_it_saw_is_throttled(rates, mug, post_order, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    rates(order_create_anon="1/min")
    anonymous = APIClient()
    # The client forges the first entry; the proxy appends the address it saw.
    assert post_order(anonymous, HTTP_X_FORWARDED_FOR="1.1.1.1, 198.51.100.1").status_code == 401
    assert_throttled(post_order(anonymous, HTTP_X_FORWARDED_FOR="2.2.2.2, 198.51.100.1"))
    assert post_order(anonymous, HTTP_X_FORWARDED_FOR="1.1.1.1, 198.51.100.2").status_code == 401
