"""The webhooks' outbox without a worker: what an event costs a status change with and
without a subscribed endpoint, the body as the API shows the order, and what erasing the
order's personal data leaves of it."""

from __future__ import annotations

import json

from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from orders import outbox, privacy
from orders.api.serializers import OrderOutputSerializer
from orders.models import Order, WebhookDelivery, WebhookEndpoint
from orders.selectors import order_get
from orders.state import order_transition
from tests.factories import OrderFactory, OrderLineFactory


def _transition(order: Order, to: str) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        order_transition(order=order, to=to, step="order", outcome="succeeded", reason_code="x")
    return [q["sql"] for q in queries.captured_queries if "webhook" in q["sql"]]


def test_the_outbox_costs_one_query_without_an_endpoint_and_one_insert_with_two(db):
    order = OrderFactory(status="paying")

    assert _transition(OrderFactory(status="pending", user=order.user), "reserving") == []
    [asked] = _transition(order, "shipping")  # order.paid: is anyone subscribed?
    assert asked.startswith("SELECT") and "orders_webhookendpoint" in asked
    for url, events in (("https://a.example/", ["*"]), ("https://b.example/", ["order.paid"])):
        WebhookEndpoint.objects.create(user=order.user, url=url, events=events, secret="whsec_AA")
    written = _transition(OrderFactory(status="paying", user=order.user), "shipping")

    inserts = [sql for sql in written if sql.startswith('INSERT INTO "orders_webhookdelivery"')]
    assert len(inserts) == 1  # one bulk insert for both endpoints
    assert WebhookDelivery.objects.filter(type="order.paid").count() == 2


def test_erasing_an_order_erases_its_webhook_payloads(db):
    order = OrderFactory(status="completed")
    endpoint = WebhookEndpoint.objects.create(
        user=order.user, url="https://a.example/", events=["*"], secret="whsec_AAAA"
    )
    with transaction.atomic():
        outbox.event_record(order=order, event_type="order.completed")
    assert "Ada Lovelace" in WebhookDelivery.objects.get().body

    privacy.order_anonymize(order_id=order.id, reason=privacy.Reason.REQUEST)

    row = WebhookDelivery.objects.get(endpoint=endpoint)
    assert row.body == "" and row.status == "failed"


def test_the_body_holds_the_order_exactly_as_the_api_shows_it(db):
    order = OrderLineFactory().order
    order_transition(order=order, to="paying", step="order", outcome="succeeded", reason_code="x")
    WebhookEndpoint.objects.create(
        user=order.user, url="https://a.example/", events=["*"], secret="whsec_AAAA"
    )

    with transaction.atomic():
        order_transition(
            order=order, to="shipping", step="order", outcome="succeeded", reason_code="x"
        )

    body = json.loads(WebhookDelivery.objects.get().body)
    api = OrderOutputSerializer(order_get(user=order.user, order_id=order.id)).data
    assert body["type"] == "order.paid" and body["id"].startswith("msg_")
    assert body["data"]["order"] == json.loads(json.dumps(api, default=str))
    assert body["data"]["order"]["status"] == "shipping"
