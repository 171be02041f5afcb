"""Labels through EasyPost, end to end on a real worker: the adapter on EasyPost's official
SDK against the sandbox's EasyPost over HTTP, whose trackers move on by themselves and come
back signed to our webhook endpoint. The parcel followed to `delivered` with one "shipped"
and one confirmation email, a return to sender in the admin's filter, a forged signature,
events repeated and out of order."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import requests
from django.core import mail

from orders.models import Order, ProviderEvent, Shipment
from tests.factories import order_payload
from tests.helpers import carrier_ledger, place, wait_for, wait_for_order

pytestmark = pytest.mark.brokers


@pytest.fixture
def fast_tracking(settings):
    settings.EASYPOST_SANDBOX_TRACKING_STEP_SECONDS = 0.3


def _statuses(order: Order) -> list[str]:
    return list(
        order.events.filter(step="tracking", actor_kind="easypost")
        .order_by("at", "id")
        .values_list("reason_code", flat=True)
    )


def test_a_parcel_followed_to_delivered_sends_one_shipped_email(live_api, mug, fast_tracking):
    order = wait_for_order(place(live_api, order_payload(("MUG-001", 2)))["id"], timeout=30)
    assert order.status == "completed"

    wait_for(
        lambda: Shipment.objects.get(order=order).tracking_status == "delivered",
        timeout=30,
        what="the parcel to be delivered",
    )
    wait_for(lambda: len(mail.outbox) >= 2, timeout=10, what="the shipped email")

    shipment = Shipment.objects.get(order=order)
    # (EasyPost sends no event for the label's own `pre_transit`.)
    assert _statuses(order) == ["in_transit", "out_for_delivery", "delivered"]
    subjects = sorted(m.subject for m in mail.outbox)
    assert subjects == sorted(
        [f"Your order {order.id} is confirmed", f"Your order {order.id} is on its way"]
    )
    shipped = next(m for m in mail.outbox if "on its way" in m.subject)
    assert shipment.tracking_number in shipped.body
    [label] = carrier_ledger(live_api.base_url, order.id)
    assert label["tracking_number"] == shipment.tracking_number
    order.refresh_from_db()
    assert order.status == "completed"  # the parcel's story is the shipment's
    body = live_api.get(f"{live_api.base_url}/api/orders/{order.id}/", timeout=5).json()
    assert body["shipment"]["status"] == "delivered" and body["shipment"]["label_url"]


def test_a_return_to_sender_is_a_delivery_problem_for_staff(live_api, mug, fast_tracking, client):
    payload = order_payload(("MUG-001", 1), postal_code="00002")
    order = wait_for_order(place(live_api, payload)["id"], timeout=30)

    wait_for(
        lambda: Shipment.objects.get(order=order).tracking_status == "return_to_sender",
        timeout=30,
        what="the parcel to come back",
    )

    assert "delivery_problem" in _statuses(order)
    order.refresh_from_db()
    assert order.status == "completed"
    from django.contrib.auth.models import User

    client.force_login(User.objects.create_superuser("boss", "boss@example.com", "pw"))
    listed = client.get("/admin/orders/order/", {"delivery": "problem"}).content.decode()
    assert str(order.id) in listed


def _signed(body: dict, secret: str) -> tuple[bytes, dict[str, str]]:
    payload = json.dumps(body).encode()
    digest = hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return payload, {
        "X-Hmac-Signature": f"hmac-sha256-hex={digest}",
        "Content-Type": "application/json",
    }


def _tracker_event(event_id: str, shipment: Shipment, status: str) -> dict:
    return {
        "id": event_id,
        "object": "Event",
        "description": "tracker.updated",
        "mode": "test",
        "result": {
            "id": shipment.tracker_id,
            "object": "Tracker",
            "status": status,
            "tracking_code": shipment.tracking_number,
            "shipment_id": shipment.carrier_reference,
        },
    }


def test_events_twice_and_out_of_order_never_move_a_parcel_back(live_api, mug, settings):
    settings.EASYPOST_SANDBOX_WEBHOOK_URL = "http://127.0.0.1:9/nowhere"  # its own: lost
    order = wait_for_order(place(live_api, order_payload(("MUG-001", 1)))["id"], timeout=30)
    shipment = Shipment.objects.get(order=order)
    url = f"{live_api.base_url}/api/webhooks/easypost/"
    secret = settings.EASYPOST_WEBHOOK_SECRET

    answers = []
    for event_id, status in [
        ("evt_delivered", "delivered"),
        ("evt_delivered", "delivered"),  # again
        ("evt_in_transit", "in_transit"),  # older, late
        ("evt_delivered", "delivered"),
    ]:
        payload, headers = _signed(_tracker_event(event_id, shipment, status), secret)
        answers.append(requests.post(url, data=payload, headers=headers, timeout=10).json())
    wait_for(
        lambda: (
            ProviderEvent.objects.filter(provider="easypost", processed_at__isnull=False).count()
            == 2
        ),
        timeout=20,
        what="both events processed",
    )

    assert [a["duplicate"] for a in answers] == [False, True, False, True]
    shipment.refresh_from_db()
    assert shipment.tracking_status == "delivered"
    assert _statuses(order) == ["delivered"]
    assert ProviderEvent.objects.get(event_id="evt_in_transit").result == "not_newer"
    wait_for(lambda: len(mail.outbox) >= 2, timeout=10, what="the shipped email")
    assert sum("on its way" in m.subject for m in mail.outbox) == 1


def test_a_forged_signature_is_refused_and_changes_nothing(live_api, mug, settings):
    settings.EASYPOST_SANDBOX_WEBHOOK_URL = "http://127.0.0.1:9/nowhere"
    order = wait_for_order(place(live_api, order_payload(("MUG-001", 1)))["id"], timeout=30)
    shipment = Shipment.objects.get(order=order)
    url = f"{live_api.base_url}/api/webhooks/easypost/"

    payload, headers = _signed(_tracker_event("evt_forged", shipment, "delivered"), "not-ours")
    forged = requests.post(url, data=payload, headers=headers, timeout=10)
    unsigned = requests.post(url, data=payload, timeout=10)

    for response in (forged, unsigned):
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_signature"
    assert not ProviderEvent.objects.filter(provider="easypost").exists()
    shipment.refresh_from_db()
    assert shipment.tracking_status == ""
