"""Nothing done twice: idempotent steps, the race for the last unit, cancellation, and a
gateway that times out after it charged. Real worker, sandbox over HTTP."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core import mail

from orders import workflow
from orders.models import Product, Shipment
from tests.factories import ProductFactory, UserFactory, order_payload, token_for
from tests.helpers import place, timeline, wait_for, wait_for_order

pytestmark = pytest.mark.brokers


def test_gateway_timeout_after_success_charges_once(live_api, mug, ledger):
    created = place(live_api, order_payload(("MUG-001", 1), token="tok_timeout_after_success"))

    order = wait_for_order(created["id"], timeout=60)

    assert order.status == "completed"
    charges = ledger(order.id)
    assert [(c["status"], c["refunded"]) for c in charges] == [("succeeded", False)]
    outcomes = list(order.events.filter(step="charge_payment").values_list("outcome", flat=True))
    assert outcomes[0] == "retrying" and outcomes[-1] == "succeeded"  # the timeout, then the replay


def test_every_step_run_again_changes_nothing(live_api, mug, ledger):
    order = wait_for_order(place(live_api, order_payload(("MUG-001", 3)))["id"])
    assert order.status == "completed"
    events_before = order.events.count()

    # Redelivery of everything, as after a lost acknowledgement: the whole canvas again,
    # and then the compensation for good measure.
    line_ids = list(order.lines.values_list("id", flat=True))
    workflow.build(order_id=order.id, line_ids=line_ids).apply_async()
    workflow.compensation(order_id=order.id).delay()
    wait_for(
        lambda: order.events.count() >= events_before + 4,
        timeout=20,
        what=lambda: timeline(order),
    )  # reserve, charge, ship, email: each skipped

    order.refresh_from_db()
    assert order.status == "completed"
    assert Product.objects.get(sku="MUG-001").stock == 7
    assert len(ledger(order.id)) == 1
    assert Shipment.objects.filter(order=order).count() == 1
    assert len(mail.outbox) == 1
    new = set(order.events.order_by("at", "id")[events_before:].values_list("outcome", flat=True))
    assert new == {"skipped"}


def test_ten_orders_race_for_the_last_unit_and_one_wins(pipeline, transactional_db):
    ProductFactory(sku="LAST-1", stock=1)
    tokens = [token_for(user=UserFactory()) for _ in range(10)]

    def order_as(token):
        import requests

        return requests.post(
            f"{pipeline.url}/api/orders/",
            json=order_payload(("LAST-1", 1)),
            headers={"Authorization": f"Bearer {token.key}"},
            timeout=15,
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(order_as, tokens))
    assert [r.status_code for r in responses] == [201] * 10

    orders = [wait_for_order(r.json()["id"]) for r in responses]

    assert sorted(o.status for o in orders) == ["completed"] + ["failed"] * 9
    assert Product.objects.get(sku="LAST-1").stock == 0
    for order in orders:
        if order.status == "failed":
            assert "out of stock" in order.failure_reason


def test_cancel_while_the_charge_is_in_flight_refunds_it(live_api, mug, ledger, settings):
    settings.SANDBOX_LATENCY_MS = 1500  # the gateway answers slowly: cancel lands mid-charge
    created = place(live_api, order_payload(("MUG-001", 2)))
    wait_for_order(created["id"], statuses=["paying"], timeout=20)

    response = live_api.post(f"{live_api.base_url}/api/orders/{created['id']}/cancel/", timeout=10)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    order = wait_for_order(created["id"], timeout=30)
    assert order.status == "cancelled"
    assert Product.objects.get(sku="MUG-001").stock == 10
    charges = ledger(order.id)
    assert all(c["refunded"] for c in charges if c["status"] == "succeeded")
    assert not Shipment.objects.filter(order=order).exists()
    assert [m.subject for m in mail.outbox] == [f"Your order {order.id} is cancelled"]


def test_cancel_after_shipment_is_a_conflict(live_api, mug):
    order = wait_for_order(place(live_api, order_payload(("MUG-001", 1)))["id"])

    response = live_api.post(f"{live_api.base_url}/api/orders/{order.id}/cancel/", timeout=10)

    assert response.status_code == 409
    assert response.json()["code"] == "not_cancellable"
    order.refresh_from_db()
    assert order.status == "completed"
    assert Product.objects.get(sku="MUG-001").stock == 9
