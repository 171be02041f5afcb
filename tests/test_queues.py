"""A queue per step, on real processes: a backlog in one queue does not delay another."""

import uuid

import pytest

from orders.models import Order, PaymentStatus
from tests.factories import ProductFactory, order_payload
from tests.helpers import FAST_TIMINGS, place_as_new_customer, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.brokers]

BACKLOG = 1000


def test_a_backlog_of_emails_does_not_delay_a_charge(stack_factory):
    """1,000 confirmation emails wait in `orders.email` (its workers are busy elsewhere, or
    down). Expected: an order placed now is reserved, charged and shipped within seconds by
    the workers of the other queues, as docker-compose runs them; its email waits its turn."""
    ProductFactory(sku="MUG-001", price="12.50", stock=10)
    stack = stack_factory(env=FAST_TIMINGS, workers=0)
    stack.start_worker(queues="orders.stock,orders.payments,orders.shipping,orders.maintenance")
    for _ in range(BACKLOG):
        stack.celery.send_task(
            "orders.send_confirmation_email",
            kwargs={"order_id": str(uuid.uuid4())},
            queue="orders.email",
            routing_key="orders.email",
        )
    assert stack.queue_depths()["orders.email"] == BACKLOG

    order_id = place_as_new_customer(stack.web_url, order_payload(("MUG-001", 1)))
    order = wait_for(
        lambda: (o := Order.objects.get(pk=order_id)).status == "confirming" and o,
        timeout=30,
        interval=0.2,
        what="the order to be charged and shipped",
    )

    assert order.payment.status == PaymentStatus.CAPTURED
    assert order.shipment.tracking_number
    assert stack.queue_depths()["orders.email"] == BACKLOG + 1  # its email waits behind them
