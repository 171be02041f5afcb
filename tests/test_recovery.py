"""The recovery sweep: lost messages are found and resumed from the step they reached;
orders past their deadline are failed and compensated."""

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.shipping import EasyPostCarrier
from orders import recovery, services, tasks
from orders.models import LineReservation, Order, OrderEvent, OrderStatus, Product, Shipment
from tests.factories import ProductFactory, UserFactory
from tests.helpers import wait_for_order

pytestmark = pytest.mark.brokers


@pytest.fixture
def lost_order(pipeline, monkeypatch):
    """An order committed while its dispatch was lost (the web process died after the commit,
    or Redis dropped the queue)."""
    monkeypatch.setattr("orders.dispatch.workflow_start", lambda **kwargs: None)
    ProductFactory(sku="MUG-001", price="12.50", stock=10)

    def make(**fields):
        order = services.order_create(
            user=UserFactory(),
            lines=[{"product": Product.objects.get(sku="MUG-001"), "quantity": 2}],
            shipping_address={
                "name": "A",
                "line1": "B",
                "city": "C",
                "postal_code": "10115",
                "country": "DE",
            },
            payment_token="tok_ok",
        )
        Order.objects.filter(pk=order.pk).update(**fields)
        return Order.objects.get(pk=order.pk)

    return make


def _age(order, seconds):
    """Make the order look idle for `seconds`."""
    past = timezone.now() - timedelta(seconds=seconds)
    Order.objects.filter(pk=order.pk).update(updated_at=past)
    OrderEvent.objects.filter(order=order).update(at=past)


def test_a_lost_order_is_resumed_and_completes(lost_order, settings):
    order = lost_order()
    _age(order, settings.ORDER_STALL_SECONDS + 1)

    result = tasks.sweep_stalled_orders.delay()  # through the worker, as beat sends it

    order = wait_for_order(order.id)
    assert order.status == "completed"
    resumes = order.events.filter(step="recovery", outcome="resumed")
    assert resumes.count() == 1
    assert "resumed at pending" in resumes.get().detail
    assert Product.objects.get(sku="MUG-001").stock == 8
    assert result.id  # sent through the broker


def test_resume_starts_from_the_step_the_order_reached(lost_order, settings, ledger):
    # Stock reserved and status `paying`, then the chord callback's message was lost.
    order = lost_order(status=OrderStatus.PAYING)
    order.lines.update(reservation=LineReservation.RESERVED)
    Product.objects.filter(sku="MUG-001").update(stock=8)
    _age(order, settings.ORDER_STALL_SECONDS + 1)

    assert recovery.sweep() == {"resumed": 1, "expired": 0, "events": 0}

    order = wait_for_order(order.id)
    assert order.status == "completed"
    assert not order.events.filter(step="reserve_stock").exists()  # not reserved a second time
    assert Product.objects.get(sku="MUG-001").stock == 8
    assert len(ledger(order.id)) == 1


def test_an_order_that_is_moving_is_left_alone(lost_order, settings):
    order = lost_order()
    _age(order, settings.ORDER_STALL_SECONDS - 5)

    assert recovery.sweep() == {"resumed": 0, "expired": 0, "events": 0}
    assert Order.objects.get(pk=order.pk).status == "pending"


def test_an_order_past_its_deadline_fails_and_is_compensated(lost_order, settings):
    order = lost_order(status=OrderStatus.RESERVING)
    order.lines.update(reservation=LineReservation.RESERVED)
    Product.objects.filter(sku="MUG-001").update(stock=8)
    Order.objects.filter(pk=order.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.ORDER_DEADLINE_SECONDS + 1)
    )
    _age(order, settings.ORDER_STALL_SECONDS + 1)

    assert recovery.sweep() == {"resumed": 0, "expired": 1, "events": 0}

    order = wait_for_order(order.id)
    assert order.status == "failed"
    assert "deadline" in order.failure_reason
    assert Product.objects.get(sku="MUG-001").stock == 10
    assert order.compensated_at is not None


def test_a_failed_order_whose_compensation_was_lost_is_compensated(
    lost_order, settings, monkeypatch
):
    monkeypatch.setattr("orders.dispatch.compensation_start", lambda **kwargs: None)  # lost again
    order = lost_order()
    services.order_fail(order_id=order.id, reason="test")
    monkeypatch.undo()
    assert Order.objects.get(pk=order.pk).compensated_at is None
    _age(order, settings.ORDER_STALL_SECONDS + 1)

    assert recovery.sweep() == {"resumed": 1, "expired": 0, "events": 0}

    order = wait_for_order(order.id)
    assert order.compensated_at is not None
    assert order.notifications.get().kind == "failure"


def test_a_shipped_order_is_never_failed(lost_order):
    order = lost_order(status=OrderStatus.CONFIRMING)

    assert services.order_fail(order_id=order.id, reason="a late error") is False

    order.refresh_from_db()
    assert order.status == "confirming"
    assert not order.events.filter(outcome="failed").exists()


def _past_deadline(order, settings):
    Order.objects.filter(pk=order.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.ORDER_DEADLINE_SECONDS + 1)
    )
    _age(order, settings.ORDER_STALL_SECONDS + 1)


def test_a_shipping_order_past_its_deadline_whose_shipment_exists_completes(
    lost_order, settings, sandbox
):
    """The carrier created the shipment but its answer was lost: at the deadline the sweep
    asks the carrier's ledger, records the shipment and completes the order, never fails it."""
    order = lost_order(status=OrderStatus.SHIPPING)
    order.lines.update(reservation=LineReservation.RESERVED)
    # What the step had done before its answer was lost: its row, the carrier's label.
    Shipment.objects.create(order=order)
    carrier = EasyPostCarrier()
    created = carrier.buy(
        shipment=carrier.create_shipment(
            order_id=str(order.id), address=order.shipping_address, parcel_grams=500
        )
    )
    _past_deadline(order, settings)

    assert recovery.sweep() == {"resumed": 0, "expired": 0, "events": 0}

    order = wait_for_order(order.id)
    assert order.status == "completed"
    assert order.shipment.tracking_number == created.tracking_code
    assert order.events.filter(reason_code="shipment_found").exists()
    assert not order.events.filter(outcome="failed").exists()


def test_a_shipping_order_past_its_deadline_without_a_shipment_fails(lost_order, settings):
    order = lost_order(status=OrderStatus.SHIPPING)
    _past_deadline(order, settings)

    assert recovery.sweep() == {"resumed": 0, "expired": 1, "events": 0}

    order = wait_for_order(order.id)
    assert order.status == "failed"
    assert order.events.filter(reason_code="deadline").exists()


def test_a_shipping_order_is_not_failed_while_the_carrier_cannot_be_asked(lost_order, settings):
    """Nobody answers at the carrier's address: the outcome of an earlier create is unknown,
    so the order stays in shipping for a later sweep."""
    settings.EASYPOST_API_BASE = "http://127.0.0.1:9/v2"  # the discard port: refused
    order = lost_order(status=OrderStatus.SHIPPING)
    Shipment.objects.create(order=order)  # a create was sent; its answer is unknown
    _past_deadline(order, settings)

    assert recovery.sweep() == {"resumed": 0, "expired": 0, "events": 0}

    order.refresh_from_db()
    assert order.status == "shipping"
    assert order.events.filter(reason_code="carrier_unknown").exists()
