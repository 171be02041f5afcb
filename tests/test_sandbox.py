"""The sandbox carrier behaves like the third party it stands for (the sandbox's Stripe:
tests/test_stripe_contract.py)."""

import pytest

SHIPMENT = {
    "order": "o-1",
    "name": "A",
    "line1": "B",
    "city": "C",
    "postal_code": "10115",
    "country": "DE",
}


def post(client, path, body, key):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post(f"/sandbox/{path}", body, content_type="application/json", **headers)


@pytest.mark.django_db
def test_the_carrier_rejects_postal_code_00000_and_replays_shipments(client):
    assert (
        post(client, "shipping/shipments/", {**SHIPMENT, "postal_code": "00000"}, "s0").status_code
        == 422
    )
    first = post(client, "shipping/shipments/", SHIPMENT, "s1")
    again = post(client, "shipping/shipments/", SHIPMENT, "s1")
    assert (
        first.status_code == 201
        and again.json()["tracking_number"] == first.json()["tracking_number"]
    )


@pytest.mark.django_db
def test_failure_rate_makes_calls_fail_before_anything_is_recorded(client, settings):
    settings.SANDBOX_FAILURE_RATE = 1.0
    assert post(client, "shipping/shipments/", SHIPMENT, "x").status_code == 503
    settings.SANDBOX_FAILURE_RATE = 0.0
    assert client.get("/sandbox/shipping/shipments/").json()["results"] == []
