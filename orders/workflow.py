"""The order's Celery canvas, in one place.

    chain(
        chord([reserve_stock(line) for each line]),   # in parallel
        charge_payment, create_shipment, send_confirmation_email,
    )

Tasks are named here and referred to by name, so building a canvas needs neither the task
functions nor what they import: orders/tasks.py registers the functions under these names.
Every task takes ids, never model instances. Nothing here sends anything; orders/dispatch.py
does, after the order's transaction has committed.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import chain, chord, signature
from celery.canvas import Signature

from .models import OrderId, OrderStatus


class TaskName:
    RESERVE_STOCK = "orders.reserve_stock"
    CHARGE_PAYMENT = "orders.charge_payment"
    CREATE_SHIPMENT = "orders.create_shipment"
    SEND_CONFIRMATION_EMAIL = "orders.send_confirmation_email"
    COMPENSATE_ORDER = "orders.compensate_order"
    SWEEP_STALLED_ORDERS = "orders.sweep_stalled_orders"
    RELAY_DISPATCHES = "orders.relay_dispatches"
    PURGE_IDEMPOTENCY_KEYS = "orders.purge_idempotency_keys"
    CLEAR_EXPIRED_TOKENS = "orders.clear_expired_tokens"
    ANONYMIZE_EXPIRED_ORDERS = "orders.anonymize_expired_orders"
    PROCESS_PROVIDER_EVENT = "orders.process_provider_event"
    PROCESS_CARRIER_EVENT = "orders.process_carrier_event"
    DELIVER_WEBHOOKS = "orders.deliver_webhooks"
    RETRY_WEBHOOKS = "orders.retry_webhooks"
    PURGE_WEBHOOK_LOG = "orders.purge_webhook_log"


def _step(name: str, *, immutable: bool = True, **kwargs: object) -> Signature:
    return signature(name, kwargs=kwargs, immutable=immutable)


def build(
    *, order_id: OrderId, line_ids: Iterable[int], from_status: str = OrderStatus.PENDING
) -> Signature:
    """The rest of the workflow for an order that has reached `from_status`."""
    oid = str(order_id)
    ship = _step(TaskName.CREATE_SHIPMENT, order_id=oid)
    confirm = _step(TaskName.SEND_CONFIRMATION_EMAIL, order_id=oid)
    if from_status in (OrderStatus.PENDING, OrderStatus.RESERVING):
        reserve = chord(
            [_step(TaskName.RESERVE_STOCK, order_id=oid, line_id=line_id) for line_id in line_ids],
            # Not immutable: it receives the reservations' results (informative only).
            _step(TaskName.CHARGE_PAYMENT, immutable=False, order_id=oid),
        )
        return chain(reserve, ship, confirm)
    if from_status == OrderStatus.AWAITING_PAYMENT_ACTION:
        # Only the charge step, which asks the gateway; if the customer has authenticated
        # it moves the order to shipping and sends the rest (orders/steps.py).
        return _step(TaskName.CHARGE_PAYMENT, order_id=oid)
    if from_status == OrderStatus.PAYING:
        return chain(_step(TaskName.CHARGE_PAYMENT, order_id=oid), ship, confirm)
    if from_status == OrderStatus.SHIPPING:
        return chain(ship, confirm)
    if from_status == OrderStatus.CONFIRMING:
        return confirm
    raise ValueError(f"no workflow from status {from_status!r}")


def provider_event(*, event_pk: int, carrier: bool = False) -> Signature:
    """Process a recorded webhook event (orders/payment_events.py, orders/carrier_events.py)."""
    name = TaskName.PROCESS_CARRIER_EVENT if carrier else TaskName.PROCESS_PROVIDER_EVENT
    return _step(name, event_pk=event_pk)


def compensation(*, order_id: OrderId) -> Signature:
    """Refund what was charged and tell the customer, for a failed or cancelled order."""
    return _step(TaskName.COMPENSATE_ORDER, order_id=str(order_id))


def webhook_delivery(*, endpoint_id: int) -> Signature:
    """Deliver an endpoint's due webhook events (orders/webhook_delivery.py)."""
    return _step(TaskName.DELIVER_WEBHOOKS, endpoint_id=endpoint_id)
