"""Writes that the API, the admin, the sweep and the steps share: creating, cancelling,
failing, completing and resuming an order, and the bookkeeping of its compensation.

Each one runs in a transaction under the order's row lock, changes the status only through
orders/state.py's `order_transition`, and schedules its side effects through
orders/dispatch.py, which sends them once the transaction has committed.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import structlog
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from integrations.payments import to_minor_units

from . import crypto, dispatch, outbox, statements
from .errors import ApplicationError, Conflict
from .models import (
    CANCELLABLE_STATUSES,
    FAILABLE_STATUSES,
    LineReservation,
    Order,
    OrderEvent,
    OrderId,
    OrderLine,
    OrderStatus,
    Outcome,
    Payment,
    PaymentStatus,
    Product,
    Step,
    StockAdjustment,
)
from .state import SYSTEM, Actor, event_record, lock_order, order_transition

logger = logging.getLogger(__name__)

# Order.total has 14 digits, 2 after the point.
MAX_TOTAL = Decimal("1e12")


def order_create(
    *,
    user: User,
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
    currency = currencies.pop()
    try:
        to_minor_units(total, currency)  # what the gateway will be asked to take
    except ValueError:
        raise ApplicationError(
            f"{total} {currency} cannot be charged: {currency} has no unit that small.",
            fields={"lines": [f"The total must be a whole amount of {currency}'s smallest unit."]},
        ) from None
    # No savepoint when nested (the API's transaction also stores the Idempotency-Key's
    # response): what fails in here is a database error, which ends the caller's
    # transaction as well; a savepoint would cost two round trips per order.
    email = getattr(user, "email", "") or ""
    with transaction.atomic(savepoint=False):
        order = Order(
            user=user,
            email=email,
            email_hash=crypto.blind_index(email),
            status=OrderStatus.PENDING,
            currency=currency,
            total=total,
            payment_token=payment_token,
            ship_name=shipping_address["name"],
            ship_line1=shipping_address["line1"],
            ship_city=shipping_address["city"],
            ship_postal_code=shipping_address["postal_code"],
            ship_country=shipping_address["country"],
            request_id=structlog.contextvars.get_contextvars().get("request_id", ""),
        )
        # Written by SQL built once (orders/statements.py): the ORM compiled these two
        # INSERTs anew for every POST, a tenth of the web server's CPU per order.
        statements.insert(order)
        structlog.contextvars.bind_contextvars(order_id=str(order.id))
        created_lines = [
            OrderLine(
                order=order,
                product=line["product"],
                sku=line["product"].sku,
                quantity=line["quantity"],
                unit_price=line["product"].price,
            )
            for line in lines
        ]
        statements.insert_many(created_lines, returning=True)
        created = event_record(
            order=order,
            step=Step.ORDER,
            outcome=Outcome.CREATED,
            status=OrderStatus.PENDING,
            reason_code="created",
            actor=Actor.for_user(user),
            data={"lines": len(lines), "total": str(total), "currency": order.currency},
            detail=f"{len(lines)} line(s), total {total} {order.currency}",
        )
        # If the broker is down the order is still accepted: the recovery sweep starts it.
        dispatch.workflow_start(order_id=order.id, line_ids=[line.pk for line in created_lines])
        _related_known(order, lines=created_lines, events=[created])
        # The shops' order.created: the order as the API answers this POST, from memory.
        outbox.event_record(
            order=order,
            event_type="order.created",
            representation=lambda: outbox.representation_of(order),
        )
    return order


def _related_known(order: Order, *, lines: list[OrderLine], events: list[OrderEvent]) -> None:
    """Give a new order what it would read back (lines, timeline, no payment, no shipment)
    as Django's prefetch does, so the API answers the POST from memory instead of four more
    queries (about a sixth of the request's time, profiled)."""
    prefetched: dict[str, Any] = {}
    for name, rows in (("lines", lines), ("events", events)):
        cached = getattr(order, name).all()  # the relation's QuerySet, not evaluated
        cached._result_cache, cached._prefetch_done = list(rows), True
        prefetched[name] = cached
    order._prefetched_objects_cache = prefetched  # type: ignore[attr-defined]
    for one_to_one in (Order.payment, Order.shipment):
        one_to_one.related.set_cached_value(order, None)


def _reservations_release(order: Order) -> int:
    """Give back the stock of every reserved line. Caller holds the order's row lock."""
    released = 0
    # Lines in product order, so that two releases never wait on each other's rows.
    for line in order.lines.filter(reservation=LineReservation.RESERVED).order_by("product_id"):
        Product.objects.filter(pk=line.product_id).update(stock=F("stock") + line.quantity)
        line.reservation = LineReservation.RELEASED
        line.save(update_fields=["reservation"])
        released += line.quantity
    return released


def _order_end(
    *,
    order: Order,
    status: str,
    step: str,
    outcome: str,
    reason_code: str,
    detail: str,
    attempt: int,
    actor: Actor,
) -> None:
    """Move a locked order to failed or cancelled, release its stock now, and compensate
    (refund, email) in the background."""
    released = _reservations_release(order)
    suffix = f"; {released} unit(s) of stock released" if released else ""
    order_transition(
        order=order,
        to=status,
        step=step,
        outcome=outcome,
        reason_code=reason_code,
        detail=detail + suffix,
        attempt=attempt,
        actor=actor,
        data={"released_units": released},
        failure_reason=detail,
    )
    dispatch.compensation_start(order_id=order.id)


def order_fail(
    *,
    order_id: OrderId,
    reason: str,
    reason_code: str = "failed",
    step: str = Step.ORDER,
    attempt: int = 1,
    actor: Actor = SYSTEM,
    only_from: frozenset[str] | None = None,
    carrier_ledger_checked: bool = False,
) -> bool:
    """End the order `failed`: release its stock now, refund and notify in the background.

    Returns False, changing nothing, if the order had ended or has shipped (a shipped order
    is never failed: the goods are out, nothing may be refunded), if it is no longer in
    `only_from` (a step that gave up after the order moved past it), or if it is in
    `shipping` and the caller has not asked the carrier's ledger: a shipment whose answer
    was lost may exist, so a shipping order is failed only through
    orders/steps.py's shipment_fail, which asks first."""
    with transaction.atomic():
        order = lock_order(order_id)
        if order.status not in FAILABLE_STATUSES:
            if order.status == OrderStatus.CONFIRMING:
                logger.error("order %s is shipped; not failing it (%s)", order_id, reason)
            return False
        if only_from is not None and order.status not in only_from:
            logger.warning(
                "order %s moved on to %s; not failing it (%s)", order_id, order.status, reason
            )
            return False
        if order.status == OrderStatus.SHIPPING and not carrier_ledger_checked:
            logger.error(
                "order %s is shipping and the carrier's ledger was not asked; not failing it (%s)",
                order_id,
                reason,
            )
            return False
        _order_end(
            order=order,
            status=OrderStatus.FAILED,
            step=step,
            outcome=Outcome.FAILED,
            reason_code=reason_code,
            detail=reason,
            attempt=attempt,
            actor=actor,
        )
    logger.info("order %s failed: %s", order_id, reason)
    return True


def order_cancel(*, order_id: OrderId, actor: Actor, reason: str = "") -> Order:
    """Cancel the order (stock released now, charge refunded in the background). Cancelling a
    cancelled order is a no-op; after shipment creation began it is a Conflict."""
    with transaction.atomic():
        order = lock_order(order_id)
        if order.status == OrderStatus.CANCELLED:
            return order
        if order.status not in CANCELLABLE_STATUSES:
            raise Conflict(
                f"The order is {order.status} and can no longer be cancelled: its shipment "
                "exists or is being created.",
                code="not_cancellable",
            )
        _order_end(
            order=order,
            status=OrderStatus.CANCELLED,
            step=Step.ORDER,
            outcome=Outcome.CANCELLED,
            reason_code="cancelled",
            detail=reason or f"cancelled by the {actor.describe()}",
            attempt=1,
            actor=actor,
        )
    return order


def order_complete(
    *,
    order_id: OrderId,
    attempt: int,
    detail: str = "order completed",
    reason_code: str = "completed",
) -> bool:
    """Complete a shipped order. Returns False if it is not in `confirming`."""
    with transaction.atomic():
        order = lock_order(order_id)
        if order.status != OrderStatus.CONFIRMING:
            return False
        order_transition(
            order=order,
            to=OrderStatus.COMPLETED,
            step=Step.ORDER,
            outcome=Outcome.SUCCEEDED,
            reason_code=reason_code,
            detail=detail,
            attempt=attempt,
        )
    return True


def order_resume(*, order: Order, detail: str, actor: Actor = SYSTEM) -> None:
    """Send the rest of an unfinished order's workflow (or its compensation, if it ended and
    was not compensated), from the step it reached. Safe while the order is still moving:
    the steps hold locks and are idempotent."""
    event_record(
        order=order,
        step=Step.RECOVERY,
        outcome=Outcome.RESUMED,
        reason_code="resumed",
        actor=actor,
        data={"status": order.status},
        detail=detail,
    )
    dispatch.workflow_resume(order=order)


def compensation_reopen(*, order_id: OrderId) -> None:
    """A charge was captured after its order had ended: compensation runs (again) and asks
    the gateway's ledger, which now holds that charge. Caller holds the row lock."""
    Order.objects.filter(pk=order_id).update(compensated_at=None)
    # An earlier compensation may have found nothing to settle: the ledger is asked again.
    Payment.objects.filter(order_id=order_id, status=PaymentStatus.NOT_CHARGED).update(
        status=PaymentStatus.PENDING
    )
    dispatch.compensation_start(order_id=order_id)


def compensation_done(*, order_id: OrderId) -> None:
    """Refunds and the customer's email are done for this ended order."""
    Order.objects.filter(pk=order_id).update(compensated_at=timezone.now())


def product_stock_adjust(
    *, product_id: int, delta: int, user: User | None, reason: str = ""
) -> StockAdjustment:
    """Add (or take, with a negative delta) units to a product's stock, as one conditional
    F() update: reservations made since anyone looked at the stock are kept, and the stock
    never goes below zero (ApplicationError instead)."""
    if delta == 0:
        raise ApplicationError("An adjustment must change the stock.", fields={"delta": ["0"]})
    with transaction.atomic():
        changed = Product.objects.filter(pk=product_id, stock__gte=max(-delta, 0)).update(
            stock=F("stock") + delta
        )
        if not changed:
            stock = Product.objects.filter(pk=product_id).values_list("stock", flat=True).first()
            raise ApplicationError(
                f"Cannot take {-delta} unit(s): only {stock} in stock.",
                fields={"delta": [f"At most -{stock}."]},
            )
        stock_after = Product.objects.values_list("stock", flat=True).get(pk=product_id)
        return StockAdjustment.objects.create(
            product_id=product_id, delta=delta, stock_after=stock_after, user=user, reason=reason
        )
