"""The sandbox providers behave like the third parties they stand for."""

import pytest

CHARGE = {"order": "o-1", "amount": "12.50", "currency": "EUR", "token": "tok_ok"}
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


def ledger(client, order="o-1"):
    return client.get("/sandbox/payments/charges/", {"order": order}).json()["results"]


@pytest.mark.django_db
def test_the_same_idempotency_key_returns_the_same_charge(client):
    first = post(client, "payments/charges/", CHARGE, "key-1")
    again = post(client, "payments/charges/", CHARGE, "key-1")

    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert len(ledger(client)) == 1


@pytest.mark.django_db
def test_a_charge_needs_an_idempotency_key(client):
    assert post(client, "payments/charges/", CHARGE, None).status_code == 400
    assert ledger(client) == []


@pytest.mark.django_db
def test_declines_and_tok_flaky(client):
    assert (
        post(client, "payments/charges/", {**CHARGE, "token": "tok_declined"}, "d").status_code
        == 402
    )
    flaky = [
        post(client, "payments/charges/", {**CHARGE, "token": "tok_flaky"}, "f").status_code
        for _ in range(4)
    ]
    assert flaky == [503, 503, 201, 200]
    assert sorted(c["status"] for c in ledger(client)) == ["captured", "declined"]


@pytest.mark.django_db
def test_a_refund_is_recorded_once(client):
    charge = post(client, "payments/charges/", CHARGE, "c").json()

    first = post(client, "payments/refunds/", {"charge": charge["id"]}, "r")
    again = post(client, "payments/refunds/", {"charge": charge["id"]}, "r")
    other_key = post(client, "payments/refunds/", {"charge": charge["id"]}, "r2")

    assert (first.status_code, again.status_code, other_key.status_code) == (201, 200, 409)
    assert ledger(client)[0]["refunded"] is True


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
    assert post(client, "payments/charges/", CHARGE, "x").status_code == 503
    settings.SANDBOX_FAILURE_RATE = 0.0
    assert ledger(client) == []
