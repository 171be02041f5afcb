"""Writes: every change of an order's status happens here, under a row lock, with an entry
in the order's timeline, and side effects scheduled with transaction.on_commit."""

import logging
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F

from . import workflow
from .errors import ApplicationError, Conflict
from .models import (
    CANCELLABLE_STATUSES,
    LineReservation,
    Order,
    OrderEvent,
    OrderLine,
    OrderStatus,
    Outcome,
    Product,
    Step,
)

logger = logging.getLogger(__name__)

# Order.total has 14 digits, 2 after the point.
MAX_TOTAL = Decimal("1e12")


def event_record(
    *, order: Order, step: str, outcome: str, attempt: int = 1, detail: str = ""
) -> OrderEvent:
    return OrderEvent.objects.create(
        order=order, step=step, outcome=outcome, attempt=attempt, detail=detail[:2000]
    )


def order_create(
    *,
    user: AbstractBaseUser,
    lines: list[dict[str, Any]],
    shipping_address: dict[str, str],
    payment_token: str,
) -> Order:
    """Create the order from validated lines ({"product": Product, "quantity": int}) and start
    its workflow once the transaction has committed. Prices come from the database."""
    products = [line["product"] for line in lines]
    currencies = {p.currency for p in products}
    if len(currencies) > 1:
        raise ApplicationError(
            "All products of one order must have the same currency.",
            fields={"lines": [f"Mixed currencies: {', '.join(sorted(currencies))}."]},
        )
    total = sum((line["product"].price * line["quantity"] for line in lines), Decimal("0"))
    if total >= MAX_TOTAL:
        raise ApplicationError(
            "The order's total is larger than one order may be.",
            fields={"lines": [f"The total must stay below {MAX_TOTAL}."]},
        )
    with transaction.atomic():
        order = Order.objects.create(
            user=user,
            email=getattr(user, "email", "") or "",
            status=OrderStatus.PENDING,
            currency=currencies.pop(),
            total=total,
            payment_token=payment_token,
            ship_name=shipping_address["name"],
            ship_line1=shipping_address["line1"],
            ship_city=shipping_address["city"],
            ship_postal_code=shipping_address["postal_code"],
            ship_country=shipping_address["country"],
        )
        OrderLine.objects.bulk_create(
            OrderLine(
                order=order,
                product=line["product"],
                sku=line["product"].sku,
                quantity=line["quantity"],
                unit_price=line["product"].price,
            )
            for line in lines
        )
        event_record(
            order=order,
            step=Step.ORDER,
            outcome=Outcome.CREATED,
            detail=f"{len(lines)} line(s), total {total} {order.currency}",
        )
        order_id = order.id
        # robust: if the broker is down the order is still accepted; the recovery sweep
        # starts it once it has waited ORDER_STALL_SECONDS.
        transaction.on_commit(lambda: workflow.start(order_id=order_id), robust=True)
    return order


def _release_reservations(order: Order) -> int:
    """Give back the stock of every reserved line. Caller holds the order's row lock."""
    released = 0
    # Lines in product order, so that two releases never wait on each other's rows.
    for line in order.lines.filter(reservation=LineReservation.RESERVED).order_by("product_id"):
        Product.objects.filter(pk=line.product_id).update(stock=F("stock") + line.quantity)
        line.reservation = LineReservation.RELEASED
        line.save(update_fields=["reservation"])
        released += line.quantity
    return released


def _end_order(
    *, order: Order, status: str, step: str, outcome: str, detail: str, attempt: int = 1
) -> None:
    """Move a locked, non-terminal order to failed or cancelled and schedule compensation."""
    released = _release_reservations(order)
    order.status = status
    if status == OrderStatus.FAILED:
        order.failure_reason = detail
    order.save(update_fields=["status", "failure_reason", "updated_at"])
    suffix = f"; {released} unit(s) of stock released" if released else ""
    event_record(order=order, step=step, outcome=outcome, attempt=attempt, detail=detail + suffix)
    order_id = order.id
    transaction.on_commit(lambda: workflow.compensate(order_id=order_id), robust=True)


def order_fail(*, order_id, reason: str, step: str = Step.ORDER, attempt: int = 1) -> bool:
    """End the order `failed`: release its stock now, refund and notify in the background.
    Returns False if the order had already ended."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.is_terminal:
            return False
        if order.status == OrderStatus.CONFIRMING:
            # Its shipment exists: the goods are on their way and nothing may be refunded.
            # Whatever went wrong, the order completes (orders/steps.py send_confirmation).
            logger.error("order %s is shipped; not failing it (%s)", order_id, reason)
            return False
        _end_order(
            order=order,
            status=OrderStatus.FAILED,
            step=step,
            outcome=Outcome.FAILED,
            detail=reason,
            attempt=attempt,
        )
    logger.info("order %s failed: %s", order_id, reason)
    return True


def order_cancel(*, order: Order, reason: str = "cancelled by the customer") -> Order:
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order.pk)
        if order.status == OrderStatus.CANCELLED:
            return order
        if order.status not in CANCELLABLE_STATUSES:
            raise Conflict(
                f"The order is {order.status} and can no longer be cancelled: its shipment "
                "exists or is being created.",
                code="not_cancellable",
            )
        _end_order(
            order=order,
            status=OrderStatus.CANCELLED,
            step=Step.ORDER,
            outcome=Outcome.CANCELLED,
            detail=reason,
        )
    return order
