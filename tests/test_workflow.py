"""The order workflow on a real worker, against the sandbox providers over HTTP."""

import pytest
from django.core import mail

from orders.models import Product
from tests.factories import ProductFactory, order_payload
from tests.helpers import NO_PAYMENT_EXTRAS, place, timeline, wait_for_order

pytestmark = pytest.mark.brokers


@pytest.fixture
def tee(transactional_db):
    return ProductFactory(sku="TEE-001", price="19.90", stock=10)


def test_tok_ok_completes_with_a_full_timeline(live_api, mug, tee, ledger):
    created = place(live_api, order_payload(("MUG-001", 2), ("TEE-001", 1)))
    assert created["status"] == "pending"
    assert created["total"] == "44.90"

    order = wait_for_order(created["id"])

    assert order.status == "completed"
    body = live_api.get(f"{live_api.base_url}/api/orders/{order.id}/", timeout=5).json()
    assert body["payment"] == {
        "status": "captured",
        "amount": "44.90",
        "currency": "EUR",
        **NO_PAYMENT_EXTRAS,
    }
    assert body["shipment"]["carrier"] and body["shipment"]["tracking_number"]
    assert body["shipment"]["label_url"] and body["shipment"]["service"]
    steps = [(e["step"], e["outcome"]) for e in body["events"]]
    assert steps.count(("reserve_stock", "succeeded")) == 2
    for step in ("charge_payment", "create_shipment", "send_confirmation_email"):
        assert (step, "succeeded") in steps
    assert steps[-1] == ("order", "succeeded")
    assert Product.objects.get(sku="MUG-001").stock == 8
    assert Product.objects.get(sku="TEE-001").stock == 9
    [charge] = ledger(order.id)
    assert (
        charge["status"] == "succeeded" and charge["amount"] == "44.90" and not charge["refunded"]
    )
    assert [m.subject for m in mail.outbox] == [f"Your order {order.id} is confirmed"]


def test_tok_declined_fails_releases_stock_and_charges_nothing(live_api, mug, ledger):
    created = place(live_api, order_payload(("MUG-001", 3), token="tok_declined"))

    order = wait_for_order(created["id"])

    assert order.status == "failed"
    assert "declined" in order.failure_reason
    assert Product.objects.get(sku="MUG-001").stock == 10
    assert [c["status"] for c in ledger(order.id)] == [
        "canceled"
    ]  # declined, then cancelled by compensation
    assert order.payment.status == "declined"
    assert ("charge_payment", "retrying") not in timeline(order)  # a decline is not retried
    assert [m.subject for m in mail.outbox] == [f"We could not complete your order {order.id}"]


def test_tok_flaky_retries_then_completes(live_api, mug, ledger):
    created = place(live_api, order_payload(("MUG-001", 1), token="tok_flaky"))

    order = wait_for_order(created["id"])

    assert order.status == "completed"
    attempts = list(order.events.filter(step="charge_payment").values_list("outcome", "attempt"))
    assert attempts == [("retrying", 1), ("retrying", 2), ("succeeded", 3)]
    assert [c["status"] for c in ledger(order.id)] == ["succeeded"]


def test_carrier_rejection_fails_the_order_and_refunds_the_charge(live_api, mug, ledger):
    created = place(live_api, order_payload(("MUG-001", 2), postal_code="00000"))

    order = wait_for_order(created["id"])

    assert order.status == "failed"
    assert "carrier rejected" in order.failure_reason
    [charge] = ledger(order.id)
    assert charge["status"] == "succeeded" and charge["refunded"]
    assert order.payment.status == "refunded"
    assert Product.objects.get(sku="MUG-001").stock == 10
    assert ("compensate", "succeeded") in timeline(order)


def test_out_of_stock_fails_with_the_reason_in_the_timeline(live_api, mug, tee, ledger):
    created = place(live_api, order_payload(("TEE-001", 1), ("MUG-001", 11)))

    order = wait_for_order(created["id"])

    assert order.status == "failed"
    assert "out of stock: MUG-001" in order.failure_reason
    assert any(  # details are encrypted: read, not queried
        "MUG-001" in event.detail
        for event in order.events.filter(step="reserve_stock", outcome="failed")
    )
    assert (
        Product.objects.get(sku="TEE-001").stock == 10
    )  # the other line's reservation is given back
    assert Product.objects.get(sku="MUG-001").stock == 10
    assert ledger(order.id) == []
