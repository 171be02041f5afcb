"""Payments through Stripe, end to end on a real worker: the adapter on Stripe's official SDK
against the sandbox's Stripe over HTTP, whose events come back signed to our webhook
endpoint. 3-D Secure passed and failed, a webhook lost, repeated and out of order, a forged
signature, a refund and a dispute made outside the backend, the authentication deadline, a
cancel while the customer authenticates, and a currency without a minor unit."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
import requests
import stripe

from orders import recovery
from orders.models import Order, Product, ProviderEvent
from tests.factories import ProductFactory, order_payload
from tests.helpers import (
    STRIPE_TEST_KEY,
    gateway_ledger,
    place,
    reason_codes,
    stripe_list,
    wait_for,
    wait_for_order,
)
from tests.services import free_port

pytestmark = pytest.mark.brokers

THREE_DS = "pm_card_authenticationRequired"


def awaiting(live_api, payload) -> dict:
    """Place the order and wait until it waits for the customer; returns the API's order."""
    created = place(live_api, payload)
    wait_for_order(created["id"], statuses=["awaiting_payment_action"], timeout=30)
    return live_api.get(f"{live_api.base_url}/api/orders/{created['id']}/", timeout=5).json()


def authenticate(base_url: str, order: dict, outcome: str) -> None:
    intent_id = order["payment"]["client_secret"].split("_secret_")[0]
    response = requests.post(
        f"{base_url}/sandbox/stripe/test/payment_intents/{intent_id}/authenticate",
        json={"outcome": outcome},
        timeout=10,
    )
    assert response.status_code == 200, response.text


@pytest.fixture
def no_webhooks(settings):
    """The sandbox's events go nowhere (a closed port): lost, as a network cut loses them."""
    settings.STRIPE_SANDBOX_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/lost"
    settings.STRIPE_SANDBOX_WEBHOOK_ATTEMPTS = 1


def test_3d_secure_passed_completes_the_order(live_api, mug, ledger):
    order = awaiting(live_api, order_payload(("MUG-001", 2), token=THREE_DS))

    payment = order["payment"]
    assert payment["status"] == "requires_action"
    assert payment["client_secret"].startswith("pi_") and payment["next_action"]["type"]
    assert Product.objects.get(sku="MUG-001").stock == 8  # held while the customer decides

    authenticate(live_api.base_url, order, "succeed")
    done = wait_for_order(order["id"], timeout=30)

    assert done.status == "completed"
    assert [(c["status"], c["refunded"]) for c in ledger(done.id)] == [("succeeded", False)]
    body = live_api.get(f"{live_api.base_url}/api/orders/{done.id}/", timeout=5).json()
    assert body["payment"]["status"] == "captured" and body["payment"]["client_secret"] is None
    assert "payment_requires_action" in reason_codes(done)
    assert ProviderEvent.objects.filter(order=done, type="payment_intent.succeeded").exists()


def test_3d_secure_failed_fails_the_order_and_releases_the_stock(live_api, mug, ledger):
    order = awaiting(live_api, order_payload(("MUG-001", 2), token=THREE_DS))

    authenticate(live_api.base_url, order, "fail")
    done = wait_for_order(order["id"], timeout=30)

    assert done.status == "failed"
    assert "payment_authentication_failed" in reason_codes(done)
    assert "authentication failed" in done.failure_reason
    assert Product.objects.get(sku="MUG-001").stock == 10
    # Nothing taken, and the PaymentIntent can no longer be confirmed with its secret.
    assert [c["status"] for c in ledger(done.id)] == ["canceled"]


def test_a_lost_webhook_does_not_strand_the_order_the_sweep_asks_stripe(
    live_api, mug, ledger, no_webhooks, settings
):
    order = awaiting(live_api, order_payload(("MUG-001", 1), token=THREE_DS))
    authenticate(live_api.base_url, order, "succeed")
    time.sleep(1.5)
    assert Order.objects.get(pk=order["id"]).status == "awaiting_payment_action"  # not told

    settings.ORDER_STALL_SECONDS = 1
    assert recovery.sweep()["resumed"] == 1
    done = wait_for_order(order["id"], timeout=30)

    assert done.status == "completed"
    assert not ProviderEvent.objects.filter(order=done).exists()  # no webhook came
    assert [(c["status"], c["refunded"]) for c in ledger(done.id)] == [("succeeded", False)]


def _post_event(base_url: str, payload: bytes, secret: str, timestamp: int | None = None):
    from integrations.sandbox.stripe import sign

    return requests.post(
        f"{base_url}/api/webhooks/stripe/",
        data=payload,
        headers={
            "Stripe-Signature": sign(payload, secret, timestamp),
            "Content-Type": "application/json",
        },
        timeout=10,
    )


def test_an_event_delivered_three_times_and_out_of_order_acts_once(
    live_api, mug, ledger, no_webhooks, settings
):
    order = awaiting(live_api, order_payload(("MUG-001", 1), token=THREE_DS))
    authenticate(live_api.base_url, order, "succeed")
    intent_id = order["payment"]["client_secret"].split("_secret_")[0]
    events = {
        e["type"]: e
        for e in stripe_list(live_api.base_url, "events")
        if e["data"]["object"].get("id") == intent_id
    }
    succeeded = json.dumps(events["payment_intent.succeeded"]).encode()
    older = json.dumps(events["payment_intent.requires_action"]).encode()
    # A failure of an earlier attempt, as Stripe would send it, arriving first and late: its
    # copy of the PaymentIntent is out of date, and the order must not act on it.
    stale = events["payment_intent.succeeded"] | {
        "id": "evt_stale_failure",
        "type": "payment_intent.payment_failed",
    }
    stale["data"] = {"object": {**stale["data"]["object"], "status": "requires_payment_method"}}

    answers = [
        _post_event(live_api.base_url, body, settings.STRIPE_WEBHOOK_SECRET).json()
        for body in (json.dumps(stale).encode(), succeeded, succeeded, older, succeeded)
    ]
    done = wait_for_order(order["id"], timeout=30)

    assert [a["duplicate"] for a in answers] == [False, False, True, False, True]
    assert done.status == "completed"
    assert [(c["status"], c["refunded"]) for c in ledger(done.id)] == [("succeeded", False)]
    assert done.events.filter(reason_code="captured").count() == 1
    assert done.events.filter(reason_code="shipment_created").count() == 1
    assert done.notifications.filter(sent_at__isnull=False).count() == 1
    assert ProviderEvent.objects.filter(order=done).count() == 2  # requires_action: ignored
    assert ProviderEvent.objects.get(type="payment_intent.requires_action").result == ""


def test_a_forged_or_stale_signature_is_refused_and_changes_nothing(
    live_api, mug, no_webhooks, settings
):
    order = awaiting(live_api, order_payload(("MUG-001", 1), token=THREE_DS))
    intent_id = order["payment"]["client_secret"].split("_secret_")[0]
    forged = json.dumps(
        {
            "id": "evt_forged",
            "object": "event",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": intent_id, "object": "payment_intent"}},
        }
    ).encode()

    wrong_secret = _post_event(live_api.base_url, forged, "whsec_attacker")
    stale = _post_event(
        live_api.base_url, forged, settings.STRIPE_WEBHOOK_SECRET, int(time.time()) - 600
    )
    unsigned = requests.post(f"{live_api.base_url}/api/webhooks/stripe/", data=forged, timeout=5)

    for response in (wrong_secret, stale, unsigned):
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_signature"
    assert not ProviderEvent.objects.exists()
    time.sleep(1)
    assert Order.objects.get(pk=order["id"]).status == "awaiting_payment_action"


def test_a_refund_made_in_stripe_is_recorded_and_leaves_the_order_alone(
    live_api, mug, ledger, settings
):
    done = wait_for_order(place(live_api, order_payload(("MUG-001", 2)))["id"], timeout=30)
    [charge] = ledger(done.id)
    client = stripe.StripeClient(STRIPE_TEST_KEY, base_addresses={"api": settings.STRIPE_API_BASE})

    client.v1.refunds.create({"payment_intent": charge["id"], "amount": 1000})  # the dashboard

    wait_for(
        lambda: done.events.filter(reason_code="refunded_outside").exists(),
        timeout=20,
        what="the refund in the timeline",
    )
    done.refresh_from_db()
    entry = done.events.get(reason_code="refunded_outside")
    assert (entry.actor_kind, entry.data["amount"]) == ("stripe", "10.00")
    assert done.status == "completed"
    assert done.payment.amount_refunded == Decimal("10.00") and done.payment.status == "captured"


def test_a_dispute_is_recorded_filtered_and_counted(live_api, mug, ledger, client):
    done = wait_for_order(place(live_api, order_payload(("MUG-001", 1)))["id"], timeout=30)
    [charge] = ledger(done.id)
    disputes_before = _metric(live_api.base_url, "payment_disputes_total")

    opened = requests.post(
        f"{live_api.base_url}/sandbox/stripe/test/payment_intents/{charge['id']}/dispute",
        timeout=10,
    )
    assert opened.status_code == 200
    wait_for(
        lambda: done.events.filter(reason_code="disputed").exists(), timeout=20, what="dispute"
    )

    body = live_api.get(f"{live_api.base_url}/api/orders/{done.id}/", timeout=5).json()
    assert body["payment"]["disputed"] is True and body["status"] == "completed"
    from django.contrib.auth.models import User

    admin = User.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(admin)
    page = client.get("/admin/orders/order/", {"payment": "disputed"})
    assert str(done.id) in page.content.decode()
    assert _metric(live_api.base_url, "payment_disputes_total") == disputes_before + 1


def _metric(base_url: str, name: str) -> float:
    for line in requests.get(f"{base_url}/metrics", timeout=5).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


def test_past_the_deadline_the_payment_intent_is_cancelled_and_the_order_fails(
    live_api, mug, ledger, no_webhooks, settings
):
    order = awaiting(live_api, order_payload(("MUG-001", 3), token=THREE_DS))
    settings.ORDER_PAYMENT_ACTION_DEADLINE_SECONDS = 1
    settings.ORDER_STALL_SECONDS = 1
    time.sleep(1.5)

    assert recovery.sweep()["resumed"] == 1
    done = wait_for_order(order["id"], timeout=30)

    assert done.status == "failed"
    assert "payment_action_expired" in reason_codes(done)
    assert [c["status"] for c in ledger(done.id)] == ["canceled"]
    assert Product.objects.get(sku="MUG-001").stock == 10
    # The customer comes back too late: Stripe refuses, nothing is taken.
    intent_id = order["payment"]["client_secret"].split("_secret_")[0]
    late = requests.post(
        f"{live_api.base_url}/sandbox/stripe/test/payment_intents/{intent_id}/authenticate",
        json={"outcome": "succeed"},
        timeout=10,
    )
    assert late.status_code == 400


def test_cancelling_while_the_customer_authenticates_cancels_the_payment_intent(
    live_api, mug, ledger
):
    order = awaiting(live_api, order_payload(("MUG-001", 2), token=THREE_DS))

    response = live_api.post(f"{live_api.base_url}/api/orders/{order['id']}/cancel/", timeout=10)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    done = wait_for_order(order["id"], timeout=30)

    assert [c["status"] for c in ledger(done.id)] == ["canceled"]
    assert Product.objects.get(sku="MUG-001").stock == 10


def test_a_currency_without_minor_units_is_charged_in_whole_units(live_api, transactional_db):
    ProductFactory(sku="TEA-JP", price=Decimal("1500"), currency="JPY", stock=5)

    done = wait_for_order(place(live_api, order_payload(("TEA-JP", 2)))["id"], timeout=30)

    assert done.status == "completed"
    [intent] = [
        i
        for i in stripe_list(live_api.base_url, "payment_intents")
        if i["metadata"].get("order_id") == str(done.id)
    ]
    assert (intent["amount"], intent["currency"]) == (3000, "jpy")  # not 300000
    assert [c["amount"] for c in gateway_ledger(live_api.base_url, done.id)] == ["3000"]


def test_a_total_finer_than_the_currencys_unit_is_refused(live_api, transactional_db):
    ProductFactory(sku="TEA-HALF", price=Decimal("10.50"), currency="JPY", stock=5)

    response = live_api.post(
        f"{live_api.base_url}/api/orders/", json=order_payload(("TEA-HALF", 1)), timeout=10
    )

    assert response.status_code == 400 and "lines" in response.json()["fields"]
    assert not Order.objects.exists()
