"""Stripe's webhook events: recorded once by the view (a repeat is answered 200 and does
nothing), processed by a task on the payments queue.

Events come at least once and in any order, so nothing here trusts an event's copy of an
object where the order of events matters: a PaymentIntent event only wakes the charge step,
which asks Stripe for the PaymentIntent as it is now; a refund re-reads the refunds from
Stripe. What Stripe tells of money moved outside the backend (a refund in its dashboard, a
dispute) is recorded on the Payment and in the timeline with the actor `stripe`; it never
cancels or fails an order by itself.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import stripe
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from integrations.errors import PermanentError
from integrations.payments import get_payment_gateway

from . import dispatch, outbox, provider_events, services, statements
from .errors import ApplicationError
from .models import (
    COMPENSATED_STATUSES,
    ActorKind,
    Order,
    OrderStatus,
    Outcome,
    Payment,
    PaymentStatus,
    ProviderEvent,
    Step,
)
from .state import Actor, event_record, lock_order

logger = logging.getLogger(__name__)

STRIPE = "stripe"
STRIPE_ACTOR = Actor(kind=ActorKind.STRIPE)
PAYMENT_INTENT_EVENTS = frozenset(
    {"payment_intent.succeeded", "payment_intent.payment_failed", "payment_intent.canceled"}
)


class InvalidSignature(ApplicationError):
    code = "invalid_signature"


def stripe_event_receive(*, payload: bytes, signature: str | None) -> tuple[ProviderEvent, bool]:
    """Verify an event with the SDK's own check (the endpoint's secret, Stripe's default
    tolerance of 300 s), record it once, and queue its processing if it may need any.
    Returns the record and whether it is new. Raises InvalidSignature."""
    try:
        stripe.WebhookSignature.verify_header(
            payload.decode("utf-8"),
            signature or "",
            settings.STRIPE_WEBHOOK_SECRET,
            stripe.Webhook.DEFAULT_TOLERANCE,
        )
        event = json.loads(payload)
        event_id, event_type = str(event["id"]), str(event["type"])
    except (stripe.SignatureVerificationError, ValueError, KeyError, TypeError) as exc:
        raise InvalidSignature(f"The Stripe-Signature does not verify: {exc}") from exc
    return provider_events.receive(
        provider=STRIPE,
        event_id=event_id,
        event_type=event_type,
        payload=event,
        handled=HANDLERS,
        **_triage(event_type, event),
    )


def _triage(event_type: str, event: dict[str, Any]) -> dict[str, Any]:
    """What a PaymentIntent event needs, told from one indexed read: nothing while its order
    is not waiting for it (the usual case: Stripe tells of the charge the step is recording
    at this moment), so no task is queued for it; otherwise the task does the work."""
    if event_type not in PAYMENT_INTENT_EVENTS:
        return {}
    obj = (event.get("data") or {}).get("object") or {}
    order_id = _metadata_order_id(obj.get("metadata"))
    if order_id is None:
        return {"processed_at": timezone.now(), "result": "unknown_order"}
    # On every payment, so its SQL is built once (orders/statements.py).
    found = statements.values_list(Order, ["status"], pk=order_id)
    status = found[0][0] if found else None
    if status in (OrderStatus.AWAITING_PAYMENT_ACTION, *COMPENSATED_STATUSES):
        return {}
    result = "unknown_order" if status is None else "noted"
    return {
        "processed_at": timezone.now(),
        "result": result,
        "order_id": order_id if status else None,
    }


def stripe_event_process(*, event_pk: int) -> str:
    """Do what the event asks, once. Returns what was done (kept on the record)."""
    return provider_events.process_once(event_pk=event_pk, handle=_handle)


def _handle(record: ProviderEvent) -> tuple[Order | None, str]:
    handler = HANDLERS.get(record.type)
    obj = record.payload.get("data", {}).get("object", {})
    try:
        return handler(record, obj) if handler else (None, "ignored")
    except PermanentError as exc:
        # Stripe refuses to tell (e.g. the object is gone): retrying cannot help, and the
        # sweep would send it forever. Kept with the error, for staff to read in the admin.
        logger.error("stripe event %s could not be processed: %s", record.event_id, exc)
        return None, f"error: {exc.code}"


def _metadata_order_id(metadata: dict[str, Any] | None) -> uuid.UUID | None:
    """The order a Stripe object names in its metadata, or None (absent, not a UUID: not
    one of ours)."""
    try:
        return uuid.UUID(str((metadata or {}).get("order_id")))
    except ValueError:
        return None


def _order_of(intent_id: str, metadata: dict[str, Any] | None) -> Order | None:
    """Our order for a PaymentIntent, or None (a charge of another system on the same
    Stripe account, or one without a PaymentIntent)."""
    if not intent_id:
        return None
    # Sliced, not .first(): ordering by id made PostgreSQL walk the primary key over every
    # payment for an id not recorded yet (measured: ~1,000 rows read per event).
    payment = next(
        iter(Payment.objects.filter(charge_id=intent_id).select_related("order")[:1]), None
    )
    if payment is not None:
        return payment.order
    order_id = _metadata_order_id(metadata)
    return Order.objects.filter(pk=order_id).first() if order_id else None


def _payment_intent_changed(record: ProviderEvent, obj: dict) -> tuple[Order | None, str]:
    order = _order_of(obj.get("id", ""), obj.get("metadata"))
    if order is None:
        return None, "unknown_order"
    if order.status not in (OrderStatus.AWAITING_PAYMENT_ACTION, *COMPENSATED_STATUSES):
        # The usual case: the charge step is recording this very PaymentIntent (or has).
        # Nothing to do, and no row lock taken beside the step's.
        return order, "noted"
    with transaction.atomic():
        order = lock_order(order.pk)
        if order.status == OrderStatus.AWAITING_PAYMENT_ACTION:
            event_record(
                order=order,
                step=Step.PAYMENT_EVENT,
                outcome=Outcome.RESUMED,
                actor=STRIPE_ACTOR,
                reason_code="stripe_event",
                data={"event_id": record.event_id, "type": record.type},
                detail=f"{record.type}: asking Stripe for the payment",
            )
            dispatch.workflow_resume(order=order)  # the charge step asks Stripe
            return order, "resumed"
        if record.type == "payment_intent.succeeded" and order.status in COMPENSATED_STATUSES:
            # Taken after the order ended (e.g. authenticated as it was cancelled): the
            # compensation asks the ledger again and refunds it.
            services.compensation_reopen(order_id=order.id)
            return order, "recompensated"
    return order, "noted"  # the charge step records what it is doing itself


def _charge_refunded(record: ProviderEvent, obj: dict) -> tuple[Order | None, str]:
    intent_id = obj.get("payment_intent") or ""
    order = _order_of(intent_id, obj.get("metadata"))
    if order is None:
        return None, "unknown_order"
    charge = get_payment_gateway().retrieve(charge_id=intent_id)  # the refunds as they are now
    with transaction.atomic():
        order = lock_order(order.pk)
        payment = Payment.objects.select_for_update().get(order=order)
        known = set(
            order.events.filter(reason_code="refunded_outside").values_list(
                "data__refund_id", flat=True
            )
        )
        outside = [(rid, amount) for rid, amount, ours in charge.refunds if not ours]
        new = [(rid, amount) for rid, amount in outside if rid not in known]
        payment.amount_refunded = sum((amount for _, amount, _ in charge.refunds), Decimal("0"))
        if charge.refunded:
            payment.status = PaymentStatus.REFUNDED
            payment.refund_id = payment.refund_id or (
                charge.refunds[0][0] if charge.refunds else ""
            )
        payment.save(update_fields=["amount_refunded", "status", "refund_id", "updated_at"])
        for refund_id, amount in new:
            event_record(
                order=order,
                step=Step.PAYMENT_EVENT,
                outcome=Outcome.SUCCEEDED,
                actor=STRIPE_ACTOR,
                reason_code="refunded_outside",
                data={"refund_id": refund_id, "amount": str(amount), "event_id": record.event_id},
                detail=f"refunded {amount} {payment.currency} at Stripe, outside the backend "
                f"({refund_id}); the order is left as it is",
            )
        if new:  # our own refunds were told when compensation recorded them
            outbox.event_record(order=order, event_type="order.refunded")
    return order, "recorded" if new else "ours"


def _dispute_created(record: ProviderEvent, obj: dict) -> tuple[Order | None, str]:
    order = _order_of(obj.get("payment_intent") or "", obj.get("metadata"))
    if order is None:
        return None, "unknown_order"
    with transaction.atomic():
        order = lock_order(order.pk)
        if order.events.filter(reason_code="disputed", data__dispute_id=obj.get("id")).exists():
            return order, "noted"
        Payment.objects.filter(order=order, disputed_at__isnull=True).update(
            disputed_at=timezone.now()
        )
        event_record(
            order=order,
            step=Step.PAYMENT_EVENT,
            outcome=Outcome.FAILED,
            actor=STRIPE_ACTOR,
            reason_code="disputed",
            data={
                "dispute_id": obj.get("id"),
                "reason": obj.get("reason"),
                "event_id": record.event_id,
            },
            detail=f"the card holder disputes the charge ({obj.get('reason')}); answer it in "
            "Stripe's dashboard",
        )
    return order, "recorded"


HANDLERS: dict[str, Callable[[ProviderEvent, dict], tuple[Order | None, str]]] = {
    **dict.fromkeys(PAYMENT_INTENT_EVENTS, _payment_intent_changed),
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
}
