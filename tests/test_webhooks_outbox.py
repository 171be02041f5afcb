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


def test_an_endpoint_failing_for_the_disable_window_is_disabled_and_its_shop_told(db, settings):
    from datetime import timedelta

    from django.core import mail
    from django.utils import timezone

    from orders import webhook_delivery
    from tests.services import free_port

    order = OrderFactory(status="paying")
    endpoint = WebhookEndpoint.objects.create(
        user=order.user,
        url=f"http://127.0.0.1:{free_port()}/closed",  # nothing listens
        events=["*"],
        secret="whsec_AAAA",
        failing_since=timezone.now()
        - timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS, minutes=1),
    )
    with transaction.atomic():
        outbox.event_record(order=order, event_type="order.paid")

    # The delivery task's work, called directly: one more failed attempt.
    webhook_delivery.endpoint_deliver(endpoint_id=endpoint.pk)

    endpoint.refresh_from_db()
    assert (endpoint.enabled, endpoint.disabled_reason) == (False, "failing")
    [notice] = mail.outbox
    assert notice.to == [order.user.email] and endpoint.url in notice.body
    row = WebhookDelivery.objects.get()
    assert row.status == "pending" and row.attempts == 1 and row.last_error  # kept to retry
    assert row.attempt_log.get().error


def test_the_log_is_purged_after_its_days_and_expired_rows_of_disabled_endpoints_fail(db, settings):
    from datetime import timedelta

    from django.utils import timezone

    from orders import webhook_delivery
    from orders.models import WebhookAttempt

    order = OrderFactory(status="completed")
    endpoint = WebhookEndpoint.objects.create(
        user=order.user, url="https://a.example/", events=["*"], secret="whsec_AAAA"
    )
    for _ in range(3):
        with transaction.atomic():
            outbox.event_record(order=order, event_type="order.completed")
    old, kept, waiting = WebhookDelivery.objects.order_by("pk")
    long_ago = timezone.now() - timedelta(days=settings.WEBHOOK_LOG_DAYS, hours=1)
    WebhookDelivery.objects.filter(pk=old.pk).update(status="delivered", created_at=long_ago)
    WebhookAttempt.objects.create(delivery=kept, status_code=500)
    WebhookAttempt.objects.filter(delivery=kept).update(at=long_ago)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(enabled=False)
    WebhookDelivery.objects.filter(pk=waiting.pk).update(expires_at=timezone.now())

    assert webhook_delivery.log_purge() == 2  # the old delivery, the old attempt
    swept = webhook_delivery.sweep()

    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == {kept.pk, waiting.pk}
    assert not WebhookAttempt.objects.exists()
    assert swept["expired"] == 1 and WebhookDelivery.objects.get(pk=waiting.pk).status == "failed"


def test_staff_see_the_webhook_pages_read_only_and_resend_a_failed_delivery(admin_client, db):
    order = OrderFactory(status="completed")
    endpoint = WebhookEndpoint.objects.create(
        user=order.user, url="https://a.example/", events=["*"], secret="whsec_AAAA"
    )
    with transaction.atomic():
        outbox.event_record(order=order, event_type="order.completed")
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed")

    for page in (
        "/admin/orders/webhookendpoint/",
        f"/admin/orders/webhookendpoint/{endpoint.pk}/change/",
        "/admin/orders/webhookdelivery/",
        f"/admin/orders/webhookdelivery/{delivery.pk}/change/",
    ):
        response = admin_client.get(page)
        assert response.status_code == 200, page
        assert b'name="_save"' not in response.content, page  # nothing edited by hand
    assert admin_client.get("/admin/orders/webhookdelivery/add/").status_code == 403

    admin_client.post(
        "/admin/orders/webhookdelivery/",
        {"action": "resend", "_selected_action": [delivery.pk]},
    )
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.event_id.startswith("msg_")


def test_the_order_read_in_one_query_shows_as_the_api_shows_it(db, django_assert_num_queries):
    from decimal import Decimal

    from django.utils import timezone

    from orders import selectors
    from orders.models import OrderEvent, Payment, Shipment
    from tests.factories import ProductFactory

    order = OrderLineFactory(quantity=2, unit_price=Decimal("12.50")).order
    OrderLineFactory(order=order, product=ProductFactory(sku="TEA-001"), unit_price=Decimal("3"))
    Payment.objects.create(
        order=order,
        status="requires_action",
        amount=Decimal("28.00"),
        currency="EUR",
        idempotency_key=f"charge-{order.id}",
        client_secret="pi_1_secret_2",
        next_action={"type": "use_stripe_sdk", "amount": 0.1},
        amount_refunded=Decimal("1.05"),
        disputed_at=timezone.now(),
    )
    Shipment.objects.create(
        order=order,
        label_status="purchased",
        carrier="USPS",
        service="Priority",
        rate=Decimal("7.35"),
        rate_currency="USD",
        tracking_number="9400",
        tracking_status="in_transit",
    )
    for index, detail in enumerate(["", "declined: Ada Lovelace, 1 Main St", "ok"]):
        OrderEvent.objects.create(
            order=order,
            step="payment",
            outcome="failed" if index == 1 else "succeeded",
            attempt=index + 1,
            status="awaiting_payment_action" if index == 2 else "",
            reason_code="x",
            data={"amount": "28.00", "nested": {"ids": [1, 2]}, "ratio": 0.25},
            detail=detail,
        )

    with django_assert_num_queries(1):
        whole = selectors.order_whole(order.id)
        shown = outbox.representation_of(whole)

    api = OrderOutputSerializer(order_get(user=order.user, order_id=order.id)).data
    assert json.dumps(shown, default=str) == json.dumps(api, default=str)
    assert shown["payment"]["next_action"] == {"type": "use_stripe_sdk", "amount": 0.1}
    assert [line["unit_price"] for line in shown["lines"]] == ["12.50", "3.00"]
    assert shown["events"][-2]["detail"] == "declined: Ada Lovelace, 1 Main St"
    assert shown["shipment"]["rate"] == "7.35"


def test_an_order_without_payment_or_shipment_reads_as_the_api_shows_it(db):
    from orders import selectors

    order = OrderLineFactory().order
    shown = outbox.representation_of(selectors.order_whole(order.id))
    api = OrderOutputSerializer(order_get(user=order.user, order_id=order.id)).data
    assert json.dumps(shown, default=str) == json.dumps(api, default=str)
    assert shown["payment"] is None and shown["shipment"] is None
