"""Idempotency-Key on POST /api/orders/, as Stripe does it."""

from concurrent.futures import ThreadPoolExecutor

import requests

from orders.models import IdempotencyKey, Order
from tests.factories import ProductFactory, order_payload

URL = "/api/orders/"


def test_same_key_replays_the_first_response_and_creates_one_order(
    api, mug, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        first = api.post(
            URL, order_payload(("MUG-001", 1)), format="json", HTTP_IDEMPOTENCY_KEY="k-1"
        )
        again = api.post(
            URL, order_payload(("MUG-001", 1)), format="json", HTTP_IDEMPOTENCY_KEY="k-1"
        )

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Location"] == first["Location"]
    assert again["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


def test_keys_are_scoped_to_the_user(api, mug, django_capture_on_commit_callbacks):
    from rest_framework.test import APIClient

    from tests.factories import token_for

    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for().key}")
    with django_capture_on_commit_callbacks(execute=False):
        mine = api.post(
            URL, order_payload(("MUG-001", 1)), format="json", HTTP_IDEMPOTENCY_KEY="shared"
        )
        theirs = other.post(
            URL, order_payload(("MUG-001", 1)), format="json", HTTP_IDEMPOTENCY_KEY="shared"
        )

    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


def test_same_key_with_another_body_is_422(api, mug, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        api.post(URL, order_payload(("MUG-001", 1)), format="json", HTTP_IDEMPOTENCY_KEY="k-2")
        response = api.post(
            URL, order_payload(("MUG-001", 2)), format="json", HTTP_IDEMPOTENCY_KEY="k-2"
        )

    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert Order.objects.count() == 1


def test_a_request_that_fails_validation_stores_nothing(
    api, mug, django_capture_on_commit_callbacks
):
    bad = api.post(URL, order_payload(("MUG-001", 0)), format="json", HTTP_IDEMPOTENCY_KEY="k-3")
    assert bad.status_code == 400
    assert not IdempotencyKey.objects.exists()

    with django_capture_on_commit_callbacks(execute=False):
        good = api.post(
            URL, order_payload(("MUG-001", 1)), format="json", HTTP_IDEMPOTENCY_KEY="k-3"
        )
    assert good.status_code == 201
    assert Order.objects.count() == 1


def test_same_key_while_the_first_is_in_flight_is_409(api, user, mug):
    from orders import idempotency

    # The first request has claimed the key and is still working.
    body = order_payload(("MUG-001", 1))
    idempotency.begin(user=user, key="k-4", request_fingerprint=idempotency.fingerprint(body))

    response = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="k-4")

    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_key_in_use"
    assert Order.objects.count() == 0


def test_a_key_over_255_characters_is_400(api, mug):
    response = api.post(
        URL, order_payload(("MUG-001", 1)), format="json", HTTP_IDEMPOTENCY_KEY="k" * 256
    )

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["fields"]
    assert Order.objects.count() == 0 and not IdempotencyKey.objects.exists()


def test_the_response_is_kept_for_24_hours(api, mug, settings, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    with django_capture_on_commit_callbacks(execute=False):
        api.post(URL, order_payload(("MUG-001", 1)), format="json", HTTP_IDEMPOTENCY_KEY="k-5")
        IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=23, minutes=59))
        replay = api.post(
            URL, order_payload(("MUG-001", 1)), format="json", HTTP_IDEMPOTENCY_KEY="k-5"
        )
        IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=24, minutes=1))
        fresh = api.post(
            URL, order_payload(("MUG-001", 1)), format="json", HTTP_IDEMPOTENCY_KEY="k-5"
        )

    assert replay.status_code == 201 and replay["Idempotent-Replayed"] == "true"
    assert fresh.status_code == 201 and not fresh.has_header("Idempotent-Replayed")
    assert Order.objects.count() == 2


def test_fifty_parallel_requests_with_one_key_create_one_order(pipeline, token, transactional_db):
    ProductFactory(sku="MUG-001", stock=100)
    body = order_payload(("MUG-001", 1))

    def post(_):
        return requests.post(
            f"{pipeline.url}{URL}",
            json=body,
            timeout=30,
            headers={"Authorization": f"Bearer {token.key}", "Idempotency-Key": "k-50"},
        )

    with ThreadPoolExecutor(max_workers=50) as pool:
        responses = list(pool.map(post, range(50)))

    statuses = sorted({r.status_code for r in responses})
    assert set(statuses) <= {201, 409}, statuses
    created_ids = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(created_ids) == 1
    assert Order.objects.count() == 1
