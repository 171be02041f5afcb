"""Webhook events that are not ours, or that the provider cannot explain, are recorded and
end there: never a 500, never a task retried forever, never another order touched."""

from __future__ import annotations

import json

import pytest

from integrations.sandbox.stripe import sign
from orders import carrier_events, payment_events
from orders.models import Payment, ProviderEvent
from tests.factories import OrderFactory


def _receive(client, settings, event: dict):
    payload = json.dumps(event).encode()
    return client.post(
        "/api/webhooks/stripe/",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign(payload, settings.STRIPE_WEBHOOK_SECRET),
    )


@pytest.mark.django_db
def test_events_of_charges_that_are_not_ours_touch_no_order(client, settings):
    order = OrderFactory()
    Payment.objects.create(order=order, amount=1, currency="EUR", idempotency_key="k")  # no id
    events = [
        {"id": "evt_a", "type": "charge.dispute.created", "data": {"object": {"id": "dp_1"}}},
        {
            "id": "evt_b",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_x", "metadata": {"order_id": "not-a-uuid"}}},
        },
        {"id": "evt_c", "type": "customer.created", "data": {"object": {"id": "cus_1"}}},
    ]

    answers = [_receive(client, settings, event) for event in events]
    results = {
        e.event_id: payment_events.stripe_event_process(event_pk=e.pk)
        for e in ProviderEvent.objects.all()
    }

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert results == {"evt_a": "unknown_order", "evt_b": "unknown_order", "evt_c": "ignored"}
    assert Payment.objects.get(order=order).disputed_at is None
    assert not order.events.exists()


@pytest.mark.django_db
def test_a_tracker_of_no_shipment_of_ours_is_recorded_and_ends(client, settings):
    import hashlib
    import hmac

    body = json.dumps(
        {
            "id": "evt_t",
            "object": "Event",
            "description": "tracker.updated",
            "result": {"id": "trk_unknown", "status": "delivered"},
        }
    ).encode()
    digest = hmac.new(settings.EASYPOST_WEBHOOK_SECRET.encode(), body, hashlib.sha256)

    answer = client.post(
        "/api/webhooks/easypost/",
        body,
        content_type="application/json",
        HTTP_X_HMAC_SIGNATURE=f"hmac-sha256-hex={digest.hexdigest()}",
    )
    [event] = ProviderEvent.objects.all()

    assert answer.status_code == 200
    assert carrier_events.easypost_event_process(event_pk=event.pk) == "unknown_shipment"
    assert carrier_events.easypost_event_process(event_pk=event.pk) == "unknown_shipment"
