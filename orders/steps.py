"""The workflow's steps. Each one is safe to run again: it reads what was already done from
the database (or asks the provider, with the same idempotency key) before it acts, and it
does nothing when the order has moved on or ended."""

import logging

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from integrations.email import send_email
from integrations.errors import PermanentError
from integrations.payments import get_payment_gateway
from integrations.shipping import get_carrier

from .errors import StepNotReady
from .models import (
    LineReservation,
    Notification,
    NotificationKind,
    Order,
    OrderStatus,
    Outcome,
    Payment,
    PaymentStatus,
    Product,
    Shipment,
    Step,
)
from .services import event_record, order_fail

logger = logging.getLogger(__name__)


def compensate_later(*, order_id) -> None:
    from . import workflow

    workflow.compensate(order_id=order_id)


def _locked(order_id) -> Order:
    return Order.objects.select_for_update().get(pk=order_id)


def _skip(order: Order, step: str, attempt: int, why: str) -> None:
    event_record(order=order, step=step, outcome=Outcome.SKIPPED, attempt=attempt, detail=why)


# --- 1. Reserve stock, one line at a time (the chord's header) ------------------------------
def reserve_line(*, order_id, line_id: int, attempt: int) -> str:
    """Take the line's units from stock, at most once. A conditional UPDATE makes the check
    and the decrement one statement, so racing orders can never take the same unit."""
    with transaction.atomic():
        # The order's row lock orders this step against cancel and fail, which release stock.
        order = _locked(order_id)
        line = order.lines.get(pk=line_id)
        if order.status not in (OrderStatus.PENDING, OrderStatus.RESERVING):
            _skip(order, Step.RESERVE_STOCK, attempt, f"{line.sku}: order is {order.status}")
            return line.reservation
        if line.reservation != LineReservation.PENDING:
            _skip(order, Step.RESERVE_STOCK, attempt, f"{line.sku}: already {line.reservation}")
            return line.reservation
        if order.status == OrderStatus.PENDING:
            order.status = OrderStatus.RESERVING
            order.save(update_fields=["status", "updated_at"])
        taken = Product.objects.filter(pk=line.product_id, stock__gte=line.quantity).update(
            stock=F("stock") - line.quantity
        )
        line.reservation = LineReservation.RESERVED if taken else LineReservation.OUT_OF_STOCK
        line.save(update_fields=["reservation"])
        if taken:
            event_record(
                order=order,
                step=Step.RESERVE_STOCK,
                outcome=Outcome.SUCCEEDED,
                attempt=attempt,
                detail=f"reserved {line.quantity} x {line.sku}",
            )
        else:
            # In the same transaction as the line's state, so that no crash can leave an
            # out-of-stock line in an order that goes on; failing releases the other lines.
            order_fail(
                order_id=order_id,
                step=Step.RESERVE_STOCK,
                attempt=attempt,
                reason=f"out of stock: {line.sku} (wanted {line.quantity})",
            )
    return line.reservation


# --- 2. Charge the payment (the chord's body) --------------------------------------------------
def charge_payment(*, order_id, attempt: int) -> None:
    with transaction.atomic():
        order = _locked(order_id)
        if order.status in (OrderStatus.PENDING, OrderStatus.RESERVING):
            states = set(order.lines.values_list("reservation", flat=True))
            if states != {LineReservation.RESERVED}:
                # A duplicate chord callback can fire before every line is done.
                raise StepNotReady(f"reservations not finished: {sorted(states)}")
            order.status = OrderStatus.PAYING
            order.save(update_fields=["status", "updated_at"])
        elif order.status != OrderStatus.PAYING:
            _skip(order, Step.CHARGE_PAYMENT, attempt, f"order is {order.status}")
            return
        payment, _ = Payment.objects.get_or_create(
            order=order,
            defaults={
                "amount": order.total,
                "currency": order.currency,
                "idempotency_key": f"order-{order.id}-charge",
            },
        )
        if payment.status == PaymentStatus.CAPTURED:  # charged by an earlier run that died
            order.status = OrderStatus.SHIPPING
            order.save(update_fields=["status", "updated_at"])
            _skip(order, Step.CHARGE_PAYMENT, attempt, f"already captured ({payment.charge_id})")
            return

    # The Payment row is committed before the call: if this run dies mid-call, compensation
    # knows a charge may exist and asks the gateway. The same key on every retry means the
    # gateway charges once, even when a timeout hid its first answer.
    try:
        result = get_payment_gateway().charge(
            order_id=str(order.id),
            amount=payment.amount,
            currency=payment.currency,
            token=order.payment_token,
            idempotency_key=payment.idempotency_key,
        )
    except PermanentError as exc:
        order_fail(
            order_id=order_id,
            step=Step.CHARGE_PAYMENT,
            attempt=attempt,
            reason=f"payment error: {exc}",
        )
        return

    with transaction.atomic():
        order = _locked(order_id)
        payment = Payment.objects.select_for_update().get(order=order)
        if not result.captured:
            payment.status = PaymentStatus.DECLINED
            payment.save(update_fields=["status", "updated_at"])
            order_fail(
                order_id=order_id,
                step=Step.CHARGE_PAYMENT,
                attempt=attempt,
                reason=f"payment declined ({result.decline_code})",
            )
            return
        payment.status, payment.charge_id = PaymentStatus.CAPTURED, result.charge_id
        payment.save(update_fields=["status", "charge_id", "updated_at"])
        if order.status == OrderStatus.PAYING:
            order.status = OrderStatus.SHIPPING
            order.save(update_fields=["status", "updated_at"])
            detail = f"captured {result.amount} {payment.currency} ({result.charge_id})"
        else:
            # The order ended while the charge was in flight. Compensation may already have run
            # and found nothing to refund (e.g. its lock vanished with a Redis restart), so it
            # is opened again: it asks the gateway's ledger and refunds this capture.
            Order.objects.filter(pk=order.pk).update(compensated_at=None)
            transaction.on_commit(lambda: compensate_later(order_id=order_id), robust=True)
            detail = f"captured {result.charge_id} after the order became {order.status}; it will be refunded"
        event_record(
            order=order,
            step=Step.CHARGE_PAYMENT,
            outcome=Outcome.SUCCEEDED,
            attempt=attempt,
            detail=detail,
        )


# --- 3. Create the shipment -----------------------------------------------------------------------
def create_shipment(*, order_id, attempt: int) -> None:
    order = Order.objects.get(pk=order_id)
    if order.status != OrderStatus.SHIPPING:
        _skip(order, Step.CREATE_SHIPMENT, attempt, f"order is {order.status}")
        return
    try:
        result = get_carrier().create_shipment(
            order_id=str(order.id),
            address=order.shipping_address,
            idempotency_key=f"order-{order.id}-shipment",
        )
    except PermanentError as exc:
        order_fail(
            order_id=order_id,
            step=Step.CREATE_SHIPMENT,
            attempt=attempt,
            reason=f"the carrier rejected the shipment: {exc}",
        )
        return
    with transaction.atomic():
        order = _locked(order_id)
        if order.status != OrderStatus.SHIPPING:
            _skip(order, Step.CREATE_SHIPMENT, attempt, f"order is {order.status}")
            return
        Shipment.objects.get_or_create(
            order=order,
            defaults={
                "carrier": result.carrier,
                "tracking_number": result.tracking_number,
                "carrier_reference": result.reference,
            },
        )
        order.status = OrderStatus.CONFIRMING
        order.save(update_fields=["status", "updated_at"])
        event_record(
            order=order,
            step=Step.CREATE_SHIPMENT,
            outcome=Outcome.SUCCEEDED,
            attempt=attempt,
            detail=f"{result.carrier} {result.tracking_number}",
        )


# --- 4. Confirm by email ------------------------------------------------------------------------------
EMAILS = {
    NotificationKind.CONFIRMATION: (
        "Your order {id} is confirmed",
        "Thank you for your order {id}.\n\nTotal: {total} {currency}\nTracking number: {tracking}\n",
    ),
    NotificationKind.FAILURE: (
        "We could not complete your order {id}",
        "We are sorry: we could not complete your order {id} ({reason}).\n"
        "Nothing was charged, or the charge has been refunded.\n",
    ),
    NotificationKind.CANCELLATION: (
        "Your order {id} is cancelled",
        "Your order {id} is cancelled. Nothing was charged, or the charge has been refunded.\n",
    ),
}


def notification_send(*, order: Order, kind: str, step: str, attempt: int) -> bool:
    """Send the order's email of this kind at most once (one Notification row per kind).
    Returns False if it had been sent before."""
    notification, _ = Notification.objects.get_or_create(
        order=order, kind=kind, defaults={"to": order.email}
    )
    if notification.sent_at:
        return False
    if notification.to:
        shipment = Shipment.objects.filter(order=order).first()
        subject, body = EMAILS[kind]
        values = {
            "id": order.id,
            "total": order.total,
            "currency": order.currency,
            "tracking": shipment.tracking_number if shipment else "-",
            "reason": order.failure_reason,
        }
        send_email(
            to=notification.to,
            subject=subject.format(**values),
            body=body.format(**values),
            message_id=f"<{order.id}.{kind}@orders.invalid>",
        )
        detail = f"{kind} email sent to {notification.to}"
    else:
        detail = f"{kind} email not sent: the customer has no email address"
    Notification.objects.filter(pk=notification.pk).update(sent_at=timezone.now())
    event_record(order=order, step=step, outcome=Outcome.SUCCEEDED, attempt=attempt, detail=detail)
    return True


def send_confirmation(*, order_id, attempt: int) -> None:
    order = Order.objects.get(pk=order_id)
    if order.status != OrderStatus.CONFIRMING:
        _skip(order, Step.SEND_CONFIRMATION_EMAIL, attempt, f"order is {order.status}")
        return
    try:
        notification_send(
            order=order,
            kind=NotificationKind.CONFIRMATION,
            step=Step.SEND_CONFIRMATION_EMAIL,
            attempt=attempt,
        )
    except PermanentError as exc:
        # The goods are on their way; a bad address does not undo the order.
        event_record(
            order=order,
            step=Step.SEND_CONFIRMATION_EMAIL,
            outcome=Outcome.FAILED,
            attempt=attempt,
            detail=str(exc),
        )
    order_complete(order_id=order_id, attempt=attempt)


def order_complete(*, order_id, attempt: int, detail: str = "order completed") -> None:
    with transaction.atomic():
        order = _locked(order_id)
        if order.status != OrderStatus.CONFIRMING:
            return
        order.status = OrderStatus.COMPLETED
        order.save(update_fields=["status", "updated_at"])
        event_record(
            order=order, step=Step.ORDER, outcome=Outcome.SUCCEEDED, attempt=attempt, detail=detail
        )


# --- Compensation: refund, tell the customer ---------------------------------------------------------
def compensate(*, order_id, attempt: int) -> None:
    """Undo the payment of a failed or cancelled order and send its one email. The stock was
    released when the order ended. Runs under the payment step's lock, so it never races a
    charge that is still in flight."""
    order = Order.objects.get(pk=order_id)
    if order.status not in (OrderStatus.FAILED, OrderStatus.CANCELLED) or order.compensated_at:
        return
    payment = Payment.objects.filter(order=order).first()
    if payment and payment.status in (PaymentStatus.PENDING, PaymentStatus.CAPTURED):
        _refund_captured_charges(order=order, payment=payment, attempt=attempt)
    kind = (
        NotificationKind.FAILURE
        if order.status == OrderStatus.FAILED
        else NotificationKind.CANCELLATION
    )
    try:
        notification_send(order=order, kind=kind, step=Step.COMPENSATE, attempt=attempt)
    except PermanentError as exc:
        event_record(
            order=order,
            step=Step.COMPENSATE,
            outcome=Outcome.FAILED,
            attempt=attempt,
            detail=str(exc),
        )
    Order.objects.filter(pk=order.pk).update(compensated_at=timezone.now())


def _refund_captured_charges(*, order: Order, payment: Payment, attempt: int) -> None:
    # After a timeout our own record may say "pending" while the gateway captured: the
    # gateway's ledger decides what is refunded.
    gateway = get_payment_gateway()
    refunded = []
    for charge in gateway.list_charges(order_id=str(order.id)):
        if charge.status == "captured" and not charge.refunded:
            refund = gateway.refund(
                charge_id=charge.charge_id, idempotency_key=f"refund-{charge.charge_id}"
            )
            refunded.append(refund)
        elif charge.status == "captured":
            refunded.append(charge)
    payment.status = PaymentStatus.REFUNDED if refunded else PaymentStatus.NOT_CHARGED
    payment.refund_id = getattr(refunded[0], "refund_id", "") if refunded else ""
    payment.save(update_fields=["status", "refund_id", "updated_at"])
    detail = (
        f"refunded {payment.amount} {payment.currency}"
        if refunded
        else "no captured charge to refund"
    )
    event_record(
        order=order, step=Step.COMPENSATE, outcome=Outcome.SUCCEEDED, attempt=attempt, detail=detail
    )
