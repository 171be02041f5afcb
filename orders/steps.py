"""The workflow's steps. Each one is safe to run again: it reads what was already done from
the database (or asks the provider, with the same idempotency key) before it acts, and it
does nothing when the order has moved on or ended. Status changes go through
orders/state.py; ending, completing and compensating through orders/services.py."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from integrations.errors import PermanentError, ProviderError, TransientError
from integrations.payments import ChargeResult, ChargeStatus, GatewayCharge, get_payment_gateway
from integrations.shipping import Carrier, CarrierShipment, get_carrier

from . import dispatch, outbox, selectors, services, statements
from .errors import StepNotReady
from .models import (
    COMPENSATED_STATUSES,
    LabelStatus,
    LineReservation,
    NotificationKind,
    Order,
    OrderId,
    OrderLine,
    OrderStatus,
    Outcome,
    Payment,
    PaymentStatus,
    Product,
    Shipment,
    Step,
)
from .notifications import notification_send
from .state import SYSTEM, Actor, event_record, lock_order, order_transition

logger = logging.getLogger(__name__)


def _skip(order: Order, step: str, attempt: int, why: str, reason_code: str = "not_due") -> None:
    event_record(
        order=order,
        step=step,
        outcome=Outcome.SKIPPED,
        attempt=attempt,
        detail=why,
        reason_code=reason_code,
    )


# --- 1. Reserve stock, one line at a time (the chord's header) ------------------------------
def reserve_line(*, order_id: OrderId, line_id: int, attempt: int) -> str:
    """Take the line's units from stock, at most once. A conditional UPDATE makes the check
    and the decrement one statement, so racing orders can never take the same unit. The
    first reservation moves the order to `reserving`, the last one to `paying`."""
    with transaction.atomic():
        # The order's row lock orders this step against cancel and fail, which release stock,
        # and against the order's other lines, so exactly one of them sees itself last.
        order = lock_order(order_id)
        line = statements.get(OrderLine, pk=line_id, order_id=order.pk)
        if order.status not in (OrderStatus.PENDING, OrderStatus.RESERVING):
            _skip(order, Step.RESERVE_STOCK, attempt, f"{line.sku}: order is {order.status}")
            return line.reservation
        if line.reservation != LineReservation.PENDING:
            _skip(
                order,
                Step.RESERVE_STOCK,
                attempt,
                f"{line.sku}: already {line.reservation}",
                "already_done",
            )
            return line.reservation
        if not statements.take(Product, "stock", line.quantity, pk=line.product_id):
            line.reservation = LineReservation.OUT_OF_STOCK
            statements.update(line, ["reservation"])
            # In the same transaction as the line's state, so that no crash can leave an
            # out-of-stock line in an order that goes on; failing releases the other lines.
            services.order_fail(
                order_id=order.id,
                step=Step.RESERVE_STOCK,
                attempt=attempt,
                reason_code="out_of_stock",
                reason=f"out of stock: {line.sku} (wanted {line.quantity})",
            )
            return line.reservation
        line.reservation = LineReservation.RESERVED
        statements.update(line, ["reservation"])
        unreserved = any(
            reservation != LineReservation.RESERVED
            for (reservation,) in statements.values_list(
                OrderLine, ("reservation",), order_id=order.pk
            )
        )
        to = OrderStatus.RESERVING if unreserved else OrderStatus.PAYING
        record = event_record if order.status == to else partial(order_transition, to=to)
        record(
            order=order,
            step=Step.RESERVE_STOCK,
            outcome=Outcome.SUCCEEDED,
            attempt=attempt,
            reason_code="reserved",
            data={"sku": line.sku, "quantity": line.quantity, "line_id": line.pk},
            detail=f"reserved {line.quantity} x {line.sku}",
        )
    return line.reservation


# --- 2. Charge the payment (the chord's body) --------------------------------------------------
def charge_payment(*, order_id: OrderId, attempt: int) -> None:
    with transaction.atomic():
        order = lock_order(order_id)
        if order.status == OrderStatus.AWAITING_PAYMENT_ACTION:
            payment = None  # charged already; the customer's authentication is asked after
        else:
            payment = _payment_prepare(order, attempt)
            if payment is None:
                return
    if payment is None:
        payment_action_check(order_id=order_id, attempt=attempt)
        return

    # The Payment row is committed before the call: if this run dies mid-call, compensation
    # knows a charge may exist and asks the gateway. The same key on every retry means the
    # gateway charges once, even when a timeout hid its first answer.
    gateway = get_payment_gateway()
    try:
        if payment.charge_id:  # an earlier answer said "processing": ask by id
            result = gateway.retrieve_result(charge_id=payment.charge_id)
        else:
            result = gateway.charge(
                order_id=str(order.id),
                amount=payment.amount,
                currency=payment.currency,
                token=order.payment_token,
                idempotency_key=payment.idempotency_key,
            )
    except PermanentError as exc:
        # The gateway refused the request itself (not a card decline): nothing was charged,
        # as a retry under the same key would replay an earlier charge, never refuse it.
        with transaction.atomic():
            order = lock_order(order_id)
            if order.status == OrderStatus.PAYING:
                Payment.objects.filter(pk=payment.pk, status=PaymentStatus.PENDING).update(
                    status=PaymentStatus.NOT_CHARGED
                )
            services.order_fail(
                order_id=order.id,
                step=Step.CHARGE_PAYMENT,
                attempt=attempt,
                reason_code="payment_error",
                reason=f"payment error: {exc}",
            )
        return
    _charge_record(order_id=order_id, result=result, attempt=attempt)


def _payment_prepare(order: Order, attempt: int) -> Payment | None:
    """Under the order's row lock: the Payment to charge, or None when there is nothing to
    charge (the order moved on, or an earlier run that died had charged)."""
    if order.status in (OrderStatus.PENDING, OrderStatus.RESERVING):
        states = set(order.lines.values_list("reservation", flat=True))
        if states != {LineReservation.RESERVED}:
            # A duplicate chord callback can fire before every line is done.
            raise StepNotReady(f"reservations not finished: {sorted(states)}")
        # The last reservation moves the order to `paying` in its own transaction; an
        # order found here with every line reserved was written before it did.
        order_transition(
            order=order,
            to=OrderStatus.PAYING,
            step=Step.CHARGE_PAYMENT,
            outcome=Outcome.SUCCEEDED,
            reason_code="reserved_all",
            attempt=attempt,
            detail="every line is reserved; charging",
        )
    elif order.status != OrderStatus.PAYING:
        _skip(order, Step.CHARGE_PAYMENT, attempt, f"order is {order.status}")
        return None
    payment = Payment(
        order=order,
        amount=order.total,
        currency=order.currency,
        idempotency_key=f"order-{order.id}-charge",
    )
    if not statements.insert_once(payment, conflict=["order"]):
        payment = statements.get(Payment, order_id=order.pk)  # an earlier run's
    if payment.status == PaymentStatus.CAPTURED:  # charged by an earlier run that died
        order_transition(
            order=order,
            to=OrderStatus.SHIPPING,
            step=Step.CHARGE_PAYMENT,
            outcome=Outcome.SKIPPED,
            reason_code="already_done",
            attempt=attempt,
            data={"charge_id": payment.charge_id},
            detail=f"already captured ({payment.charge_id})",
        )
        return None
    return payment


def _charge_record(*, order_id: OrderId, result: ChargeResult, attempt: int) -> None:
    with transaction.atomic():
        order = lock_order(order_id)
        # The fence: this run's lock may have expired during the call (its worker was cut
        # off from Redis and the database for longer than TASK_LOCK_TIMEOUT) and another copy
        # may have charged with the same key, recorded it and moved the order on. The order's
        # state, read under its row lock, decides, not the lock: a late write to an order that
        # went on would overwrite what the other copy did.
        if order.status not in (OrderStatus.PAYING, *COMPENSATED_STATUSES):
            _skip(
                order,
                Step.CHARGE_PAYMENT,
                attempt,
                f"order is {order.status}: another run recorded the charge",
                reason_code="already_done",
            )
            return
        payment = statements.get(Payment, lock=True, order_id=order.pk)
        payment.charge_id = result.charge_id or payment.charge_id  # known: ask by id from now on
        if result.status not in (
            ChargeStatus.CAPTURED,
            ChargeStatus.DECLINED,
            ChargeStatus.REQUIRES_ACTION,
        ):
            # Not decided yet (`processing`): the id is kept and the retry asks by it.
            payment.save(update_fields=["charge_id", "updated_at"])
            undecided = result
        else:
            undecided = None
            _charge_decided(order=order, payment=payment, result=result, attempt=attempt)
    if undecided is not None:
        raise TransientError(f"the charge {undecided.charge_id} is {undecided.status}")


def _charge_decided(*, order: Order, payment: Payment, result: ChargeResult, attempt: int) -> None:
    """Record a charge the gateway decided on. Caller holds the order's row lock."""
    if result.status == ChargeStatus.DECLINED:
        payment.status, payment.decline_code = PaymentStatus.DECLINED, result.decline_code
        payment.save(update_fields=["status", "charge_id", "decline_code", "updated_at"])
        services.order_fail(
            order_id=order.id,
            step=Step.CHARGE_PAYMENT,
            attempt=attempt,
            reason_code="payment_declined",
            reason=f"payment declined ({result.decline_code})",
        )
        return
    if result.status == ChargeStatus.REQUIRES_ACTION:
        payment.status = PaymentStatus.REQUIRES_ACTION
        payment.client_secret, payment.next_action = result.client_secret, result.next_action
        payment.action_required_at = timezone.now()
        payment.save()
        if order.status == OrderStatus.PAYING:
            order_transition(
                order=order,
                to=OrderStatus.AWAITING_PAYMENT_ACTION,
                step=Step.CHARGE_PAYMENT,
                outcome=Outcome.SUCCEEDED,
                reason_code="payment_requires_action",
                attempt=attempt,
                data={"charge_id": result.charge_id},
                detail=f"the card needs the customer's authentication ({result.charge_id})",
            )
        else:  # ended meanwhile: compensation cancels the PaymentIntent
            services.compensation_reopen(order_id=order.id)
        return
    payment.status = PaymentStatus.CAPTURED
    statements.update(payment, ["status", "charge_id", "updated_at"])
    data = {"charge_id": result.charge_id, "amount": str(result.amount)}
    if order.status == OrderStatus.PAYING:
        order_transition(
            order=order,
            to=OrderStatus.SHIPPING,
            step=Step.CHARGE_PAYMENT,
            outcome=Outcome.SUCCEEDED,
            reason_code="captured",
            attempt=attempt,
            data=data,
            detail=f"captured {result.amount} {payment.currency} ({result.charge_id})",
        )
        return
    # The order ended while the charge was in flight. Compensation may already have run
    # and found nothing to refund (e.g. its lock vanished with a Redis restart), so it is
    # opened again: it asks the gateway's ledger and refunds this capture.
    services.compensation_reopen(order_id=order.id)
    event_record(
        order=order,
        step=Step.CHARGE_PAYMENT,
        outcome=Outcome.SUCCEEDED,
        attempt=attempt,
        reason_code="captured_after_end",
        data=data,
        detail=f"captured {result.charge_id} after the order became {order.status}; "
        "it will be refunded",
    )


def payment_action_deadline_passed(payment: Payment) -> bool:
    started = payment.action_required_at or payment.updated_at
    waited = (timezone.now() - started).total_seconds()
    return waited > settings.ORDER_PAYMENT_ACTION_DEADLINE_SECONDS


def payment_action_check(*, order_id: OrderId, attempt: int) -> None:
    """An order waiting for the customer's authentication: ask the gateway what became of
    its charge (never trust a webhook's copy, which may be old or come out of order) and move
    the order on. Past ORDER_PAYMENT_ACTION_DEADLINE_SECONDS the charge is cancelled at the
    gateway first; if the customer authenticated in that moment, the cancel is refused and
    the order goes on as paid."""
    payment = Payment.objects.get(order_id=order_id)
    gateway = get_payment_gateway()
    charge = gateway.retrieve(charge_id=payment.charge_id)
    expired = charge.status == ChargeStatus.REQUIRES_ACTION and payment_action_deadline_passed(
        payment
    )
    if expired:
        try:
            charge = gateway.cancel(
                charge_id=payment.charge_id, idempotency_key=f"order-{order_id}-cancel"
            )
        except PermanentError as exc:
            if exc.code != "payment_intent_unexpected_state":
                raise
            charge = gateway.retrieve(charge_id=payment.charge_id)
    with transaction.atomic():
        order = lock_order(order_id)
        if order.status != OrderStatus.AWAITING_PAYMENT_ACTION:
            _skip(order, Step.CHARGE_PAYMENT, attempt, f"order is {order.status}")
            return
        payment = Payment.objects.select_for_update().get(order=order)
        if charge.status == ChargeStatus.REQUIRES_ACTION:
            return  # still with the customer; the sweep asks again
        payment.client_secret, payment.next_action = "", None
        data = {"charge_id": charge.charge_id, "gateway_status": charge.status}
        if charge.status == ChargeStatus.CAPTURED:
            payment.status = PaymentStatus.CAPTURED
            payment.save()
            order_transition(
                order=order,
                to=OrderStatus.SHIPPING,
                step=Step.CHARGE_PAYMENT,
                outcome=Outcome.SUCCEEDED,
                reason_code="captured",
                attempt=attempt,
                data=data,
                detail=f"the customer authenticated; captured {charge.amount} "
                f"{payment.currency} ({charge.charge_id})",
            )
            dispatch.workflow_resume(order=order)  # the shipment and the confirmation
            return
        if charge.status == ChargeStatus.DECLINED:
            payment.status, payment.decline_code = PaymentStatus.DECLINED, charge.decline_code
            reason_code, reason = (
                "payment_authentication_failed",
                f"payment authentication failed ({charge.decline_code or 'declined'})",
            )
        elif charge.status != ChargeStatus.CANCELED:
            return  # not decided yet (`processing`): the sweep asks again
        elif expired:
            payment.status = PaymentStatus.NOT_CHARGED
            reason_code = "payment_action_expired"
            reason = (
                "the customer did not authenticate the payment within "
                f"{settings.ORDER_PAYMENT_ACTION_DEADLINE_SECONDS}s"
            )
        else:  # cancelled at the gateway (its dashboard)
            payment.status = PaymentStatus.NOT_CHARGED
            reason_code, reason = (
                "payment_canceled",
                f"the payment is {charge.status} at the gateway",
            )
        payment.save()
        services.order_fail(
            order_id=order.id,
            step=Step.CHARGE_PAYMENT,
            attempt=attempt,
            reason_code=reason_code,
            reason=reason,
        )


# --- 3. Create the shipment and buy its label ----------------------------------------------
def create_shipment(*, order_id: OrderId, attempt: int) -> None:
    """Create the carrier's shipment and buy its label, never twice. The Shipment row is
    committed before the create (`creating`) and the carrier's id before the buy
    (`created`): a retry retrieves what was recorded; a create whose answer was lost is
    looked up by the order's reference before another is made; a label already bought is
    the step's success."""
    order = statements.get(Order, pk=order_id)
    if order.status != OrderStatus.SHIPPING:
        _skip(order, Step.CREATE_SHIPMENT, attempt, f"order is {order.status}")
        return
    if statements.get(Payment, order_id=order.pk).status == PaymentStatus.REFUNDED:
        # Refunded in full at the gateway (its dashboard) before anything was shipped: the
        # goods do not go out unpaid.
        shipment_fail(
            order_id=order.id,
            step=Step.CREATE_SHIPMENT,
            attempt=attempt,
            reason_code="refunded_before_shipping",
            reason="the payment was refunded at the gateway before the shipment was made",
            resume=False,
        )
        return
    # Committed before the create: a retry that finds it without the carrier's id knows a
    # create may have been sent, and asks the carrier by the order's reference.
    row = Shipment(order=order)
    first_try = statements.insert_once(row, conflict=["order"])
    if not first_try:
        row = Shipment.objects.get(order=order)
    carrier = get_carrier()
    try:
        found = _carrier_shipment(carrier, order=order, row=row, first_try=first_try)
        if found is None:
            found = carrier.create_shipment(
                order_id=str(order.id),
                address=order.shipping_address,
                parcel_grams=_parcel_grams(order),
            )
        if row.carrier_reference != found.shipment_id:
            values = {"carrier_reference": found.shipment_id, "label_status": LabelStatus.CREATED}
            statements.update_where(Shipment, values, pk=row.pk)
        if not found.purchased:
            found = _buy(carrier, found)
    except PermanentError as exc:
        # Asks the ledger first: the chain goes on to the confirmation if a label exists.
        shipment_fail(
            order_id=order.id,
            step=Step.CREATE_SHIPMENT,
            attempt=attempt,
            reason_code="shipment_rejected",
            reason=f"the carrier rejected the shipment: {exc}",
            resume=False,
        )
        return
    _shipment_record(
        order_id=order.id, result=found, attempt=attempt, reason_code="shipment_created"
    )


def _carrier_shipment(
    carrier: Carrier, *, order: Order, row: Shipment, first_try: bool
) -> CarrierShipment | None:
    """What the carrier holds already: the recorded shipment, or (after a create whose
    answer was lost) one found by the order's reference. None: nothing, create it."""
    if row.carrier_reference:
        return carrier.retrieve(shipment_id=row.carrier_reference)
    if first_try:
        return None  # no create was ever sent for this order
    found = carrier.find_shipments(order_id=str(order.id), since=order.created_at)
    bought = [s for s in found if s.purchased]
    return next(iter(bought or found), None)


def _buy(carrier: Carrier, shipment: CarrierShipment) -> CarrierShipment:
    try:
        return carrier.buy(shipment=shipment)
    except PermanentError as exc:
        if exc.code != "SHIPMENT.POSTAGE.EXISTS":
            raise
        # Bought by a run whose answer was lost: the label is there.
        return carrier.retrieve(shipment_id=shipment.shipment_id)


def _parcel_grams(order: Order) -> int:
    return selectors.order_weight_grams(order.pk) or 1


def _shipment_record(
    *,
    order_id: OrderId,
    result: CarrierShipment,
    attempt: int,
    reason_code: str,
    detail: str = "",
) -> bool:
    """Record the bought label and move the order to `confirming`. Returns False if the
    order is no longer shipping."""
    with transaction.atomic():
        order = lock_order(order_id)
        if order.status != OrderStatus.SHIPPING:
            _skip(order, Step.CREATE_SHIPMENT, attempt, f"order is {order.status}")
            return False
        label = {
            "label_status": LabelStatus.PURCHASED,
            "carrier": result.carrier,
            "service": result.service,
            "rate": result.amount,
            "rate_currency": result.currency,
            "tracking_number": result.tracking_code,
            "carrier_reference": result.shipment_id,
            "tracker_id": result.tracker_id,
            "label_url": result.label_url,
            "tracking_url": result.tracking_url,
            "purchased_at": timezone.now(),
        }
        # One UPDATE: the row was written before the create, and the order's row lock, held
        # here, orders this against any other writer of it (update_or_create took a
        # savepoint, a locking read and the update).
        if not statements.update_where(Shipment, label, order_id=order.pk):
            # The row is written before every create, so only a row deleted since lands here.
            Shipment.objects.create(order=order, **label)
        order_transition(
            order=order,
            to=OrderStatus.CONFIRMING,
            step=Step.CREATE_SHIPMENT,
            outcome=Outcome.SUCCEEDED,
            reason_code=reason_code,
            attempt=attempt,
            data={
                "carrier": result.carrier,
                "service": result.service,
                "tracking_number": result.tracking_code,
                "shipment_id": result.shipment_id,
            },
            detail=detail
            or f"{result.carrier} {result.service} {result.tracking_code} "
            f"({result.amount} {result.currency})",
        )
    return True


class ShipmentVerdict:
    SHIPPED = "shipped"  # the carrier holds a label: the order goes on to confirming
    FAILED = "failed"  # the carrier holds none: the order failed
    UNKNOWN = "unknown"  # the carrier could not be asked: the order stays shipping


def _bought_at_carrier(order_id: OrderId) -> CarrierShipment | None:
    """The carrier's ledger: a bought label for the order, by the recorded shipment or by
    the order's reference. Raises ProviderError when the carrier cannot be asked."""
    order = Order.objects.get(pk=order_id)
    row = Shipment.objects.filter(order=order).first()
    carrier = get_carrier()
    if row is not None and row.carrier_reference:
        recorded = carrier.retrieve(shipment_id=row.carrier_reference)
        if recorded.purchased:
            return recorded
    if row is None:
        return None  # no create was ever sent
    found = carrier.find_shipments(order_id=str(order_id), since=order.created_at)
    return next((s for s in found if s.purchased), None)


def shipment_fail(
    *,
    order_id: OrderId,
    reason: str,
    reason_code: str,
    step: str = Step.CREATE_SHIPMENT,
    attempt: int = 1,
    resume: bool = True,
    actor: Actor = SYSTEM,
) -> str:
    """Fail a shipping order, unless the carrier's ledger says its label was bought.

    A create or buy whose answer was lost (a timeout after the carrier acted) may have made
    a label: the goods would leave while the money goes back. So before a shipping order is
    failed, for any reason, the carrier is asked. A label found is recorded and the order
    goes on to its confirmation (sent now if `resume`, i.e. when no chain follows the
    caller); none found fails the order; no answer leaves it in `shipping` for the recovery
    sweep, which asks again. Returns a ShipmentVerdict."""
    try:
        bought = _bought_at_carrier(order_id)
    except ProviderError as exc:
        order = Order.objects.get(pk=order_id)
        event_record(
            order=order,
            step=step,
            outcome=Outcome.FAILED,
            attempt=attempt,
            reason_code="carrier_unknown",
            data={"wanted_to_fail": reason_code},
            detail=f"{reason}; the carrier's ledger could not be asked ({exc}), so the order "
            "stays in shipping until it can",
        )
        return ShipmentVerdict.UNKNOWN
    if bought is not None:
        recorded = _shipment_record(
            order_id=order_id,
            result=bought,
            attempt=attempt,
            reason_code="shipment_found",
            detail=f"the carrier's ledger holds {bought.carrier} {bought.tracking_code} "
            f"(the answer was lost: {reason})",
        )
        if recorded and resume:
            dispatch.workflow_resume(order=Order.objects.get(pk=order_id))
        return ShipmentVerdict.SHIPPED
    failed = services.order_fail(
        order_id=order_id,
        step=step,
        attempt=attempt,
        reason_code=reason_code,
        reason=reason,
        actor=actor,
        carrier_ledger_checked=True,
    )
    return ShipmentVerdict.FAILED if failed else ShipmentVerdict.UNKNOWN


# --- 4. Confirm by email ----------------------------------------------------------------
def send_confirmation(*, order_id: OrderId, attempt: int) -> None:
    order = statements.get(Order, pk=order_id)
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
            reason_code="email_refused",
            detail=str(exc),
        )
    services.order_complete(order_id=order.id, attempt=attempt)


def confirmation_give_up(*, order_id: OrderId, attempt: int, reason: str) -> None:
    """The confirmation email could not be sent with all of the step's retries (the mail
    server is down). "Completed" means the customer was told, so the order stays in
    `confirming` and the recovery sweep tries again, with a growing wait; only past
    ORDER_EMAIL_DEADLINE_SECONDS does it complete without the email."""
    order = Order.objects.get(pk=order_id)
    if order.status != OrderStatus.CONFIRMING:
        return
    if email_deadline_passed(order=order):
        confirmation_abandon(order_id=order_id, attempt=attempt, reason=reason)
        return
    event_record(
        order=order,
        step=Step.SEND_CONFIRMATION_EMAIL,
        outcome=Outcome.RETRYING,
        attempt=attempt,
        reason_code="email_waiting",
        detail=f"{reason}; the order stays confirming and the recovery sweep tries again",
    )


def email_deadline_passed(*, order: Order) -> bool:
    shipped_at = (
        Shipment.objects.filter(order=order).values_list("purchased_at", flat=True).first()
        or order.updated_at
    )
    waited = (timezone.now() - shipped_at).total_seconds()
    return waited > settings.ORDER_EMAIL_DEADLINE_SECONDS


def confirmation_abandon(*, order_id: OrderId, attempt: int, reason: str) -> None:
    """Complete a shipped order whose confirmation email could not be sent for
    ORDER_EMAIL_DEADLINE_SECONDS: noted in the timeline (reason_code
    `completed_without_email`, counted on /metrics) and reported (an error log line, which
    Sentry receives)."""
    completed = services.order_complete(
        order_id=order_id,
        attempt=attempt,
        reason_code="completed_without_email",
        detail=f"completed without a confirmation email after "
        f"{settings.ORDER_EMAIL_DEADLINE_SECONDS}s: {reason}",
    )
    if completed:
        logger.error(
            "order %s completed without its confirmation email: the mail server did not "
            "accept it for %ss (%s)",
            order_id,
            settings.ORDER_EMAIL_DEADLINE_SECONDS,
            reason,
        )


# --- Compensation: refund, tell the customer ------------------------------------------------
def compensate(*, order_id: OrderId, attempt: int) -> None:
    """Undo the payment of a failed or cancelled order and send its one email. The stock was
    released when the order ended. Runs under the payment step's lock, so it never races a
    charge that is still in flight."""
    order = Order.objects.get(pk=order_id)
    if order.status not in COMPENSATED_STATUSES or order.compensated_at:
        return
    payment = Payment.objects.filter(order=order).first()
    if payment and payment.status in SETTLED_BY_COMPENSATION:
        _settle_charges(order=order, payment=payment, attempt=attempt)
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
            reason_code="email_refused",
            detail=str(exc),
        )
    services.compensation_done(order_id=order.id)


# Payments whose charge may hold money, or could still take it (a PaymentIntent that is
# declined or awaits authentication can be confirmed later with its client secret).
SETTLED_BY_COMPENSATION = frozenset(
    {
        PaymentStatus.PENDING,
        PaymentStatus.CAPTURED,
        PaymentStatus.REQUIRES_ACTION,
        PaymentStatus.DECLINED,
    }
)


def _ledger(payment: Payment) -> list[GatewayCharge]:
    """The order's charges as the gateway has them: by id where an answer brought it,
    otherwise the gateway's own search (which raises rather than guess "none")."""
    gateway = get_payment_gateway()
    if payment.charge_id:
        try:
            return [gateway.retrieve(charge_id=payment.charge_id)]
        except PermanentError as exc:
            if exc.code != "resource_missing":
                raise
            # The gateway has no such charge (another account's key, a deleted object):
            # nothing there can hold the customer's money.
            logger.error("order %s: the gateway has no charge %s", payment.order_id, exc)
            return []
    return gateway.find_charges(
        order_id=str(payment.order_id),
        idempotency_key=payment.idempotency_key,
        amount=payment.amount,
        currency=payment.currency,
    )


def _settle_charges(*, order: Order, payment: Payment, attempt: int) -> None:
    # After a timeout our own record may say "pending" while the gateway captured: the
    # gateway's ledger decides what is refunded, and what is still open is cancelled.
    gateway = get_payment_gateway()
    refund_ids, cancelled = [], []
    for charge in _ledger(payment):
        if charge.status in ChargeStatus.OPEN:
            try:
                gateway.cancel(
                    charge_id=charge.charge_id, idempotency_key=f"cancel-{charge.charge_id}"
                )
                cancelled.append(charge.charge_id)
                continue
            except PermanentError as exc:
                if exc.code != "payment_intent_unexpected_state":
                    raise
                # The customer authenticated in this very moment: it is captured now.
                charge = gateway.retrieve(charge_id=charge.charge_id)
        if charge.status == ChargeStatus.CANCELED:
            continue
        if charge.status != ChargeStatus.CAPTURED:
            # `processing` and the like: money may yet be taken; ask again after a backoff.
            raise TransientError(f"the charge {charge.charge_id} is {charge.status}")
        if charge.refunded:
            refund_ids.append(next((r[0] for r in charge.refunds), ""))
            continue
        refund = gateway.refund(
            charge_id=charge.charge_id,
            order_id=str(order.id),
            idempotency_key=f"refund-{charge.charge_id}",
        )
        refund_ids.append(refund.refund_id)
    settled: dict[str, Any] = {"client_secret": "", "next_action": None}
    if refund_ids:
        settled.update(status=PaymentStatus.REFUNDED, amount_refunded=payment.amount)
    elif payment.status != PaymentStatus.DECLINED:
        settled.update(status=PaymentStatus.NOT_CHARGED)
    settled["refund_id"] = next((r for r in refund_ids if r), "")
    # Only these fields: a webhook may have recorded a dispute meanwhile. The refund, its
    # timeline entry and the shops' order.refunded commit together.
    with transaction.atomic():
        _settled_record(
            order=order,
            payment=payment,
            settled=settled,
            refund_ids=refund_ids,
            cancelled=cancelled,
            attempt=attempt,
        )


def _settled_record(
    *,
    order: Order,
    payment: Payment,
    settled: dict[str, Any],
    refund_ids: list[str],
    cancelled: list[str],
    attempt: int,
) -> None:
    Payment.objects.filter(pk=payment.pk).update(**settled, updated_at=timezone.now())
    payment.refresh_from_db()
    event_record(
        order=order,
        step=Step.COMPENSATE,
        outcome=Outcome.SUCCEEDED,
        attempt=attempt,
        reason_code="refunded" if refund_ids else "nothing_to_refund",
        data={
            "amount": str(payment.amount),
            "refund_ids": [r for r in refund_ids if r],
            "cancelled": cancelled,
        },
        detail=(
            f"refunded {payment.amount} {payment.currency}"
            if refund_ids
            else "no captured charge to refund"
            + (f"; cancelled {', '.join(cancelled)}" if cancelled else "")
        ),
    )
    if refund_ids:
        outbox.event_record(order=order, event_type="order.refunded")
