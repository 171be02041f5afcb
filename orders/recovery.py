"""The recovery sweep (Celery beat, every ORDER_SWEEP_INTERVAL_SECONDS).

Redis keeps nothing on disk here, a worker can die between two steps, and the web process
can die between the commit and the dispatch: messages get lost. The database does not lose
orders, so the sweep finds those that have shown no sign of life (no status change, no
timeline entry) for ORDER_STALL_SECONDS and resumes each from the step it reached. Resuming
an order that is in fact still moving is harmless: the steps hold locks and are idempotent.
An order past ORDER_DEADLINE_SECONDS that has not shipped is failed and compensated instead.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Max, Q, QuerySet
from django.utils import timezone
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from . import carrier_events, dispatch, payment_events, provider_events, services, steps
from .locks import lock_key, step_lock
from .models import (
    COMPENSATED_STATUSES,
    FAILABLE_STATUSES,
    TERMINAL_STATUSES,
    Order,
    OrderStatus,
    Step,
)
from .state import STEP_IN_FLIGHT, SYSTEM, Actor

logger = logging.getLogger(__name__)

# Orders handled per sweep: keeps one sweep well inside its time limit; the rest wait for
# the next sweep.
SWEEP_BATCH = 500
# The longest wait between two rounds of the confirmation email for an order whose mail
# server keeps refusing: an outage of hours still gets a try every hour.
EMAIL_RETRY_MAX_SECONDS = 3600


def stalled_orders(*, now: datetime | None = None) -> QuerySet[Order]:
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.ORDER_STALL_SECONDS)
    unfinished = ~Q(status__in=TERMINAL_STATUSES)
    uncompensated = Q(status__in=COMPENSATED_STATUSES, compensated_at__isnull=True)
    return (
        Order.objects.filter(unfinished | uncompensated, updated_at__lt=cutoff)
        .annotate(last_event_at=Max("events__at"))
        .filter(Q(last_event_at__lt=cutoff) | Q(last_event_at__isnull=True))
        .order_by("updated_at")[:SWEEP_BATCH]
    )


def sweep() -> dict[str, Any]:
    lock = step_lock("lock:sweep")
    if not lock.acquire():
        return {"skipped": "another sweep is running"}
    resumed = expired = 0
    try:
        now = timezone.now()
        deadline = now - timedelta(seconds=settings.ORDER_DEADLINE_SECONDS)
        for order in stalled_orders(now=now):
            last_event_at = getattr(order, "last_event_at", None)  # annotated by stalled_orders
            idle = int((now - (last_event_at or order.updated_at)).total_seconds())
            # An order waiting for the customer's authentication has a deadline of its own
            # (ORDER_PAYMENT_ACTION_DEADLINE_SECONDS), which its charge step applies.
            waits_for_customer = order.status == OrderStatus.AWAITING_PAYMENT_ACTION
            if (
                order.status in FAILABLE_STATUSES
                and not waits_for_customer
                and order.created_at < deadline
            ):
                expired += _expire(order)
                continue
            if order.status == OrderStatus.CONFIRMING and _email_waits(order, idle):
                continue
            services.order_resume(
                order=order, detail=f"resumed at {order.status} after {idle}s without progress"
            )
            resumed += 1
        events = _provider_events_resend()
    finally:
        _release_quietly(lock)
    if resumed or expired or events:
        logger.info(
            "recovery sweep: resumed %s, expired %s, webhook events resent %s",
            resumed,
            expired,
            events,
        )
    return {"resumed": resumed, "expired": expired, "events": events}


def _provider_events_resend() -> int:
    """Webhook events recorded while the broker was down (or whose task gave up) are sent
    to their queue again; processing is idempotent."""
    sent = 0
    for provider, types, carrier in (
        (payment_events.STRIPE, payment_events.HANDLERS, False),
        (carrier_events.EASYPOST, carrier_events.HANDLED, True),
    ):
        pending = provider_events.unprocessed(
            provider=provider, types=types, older_than_seconds=settings.ORDER_STALL_SECONDS
        )
        for event_pk in pending:
            dispatch.provider_event_process(event_pk=event_pk, carrier=carrier)
        sent += len(pending)
    return sent


def _email_waits(order: Order, idle: int) -> bool:
    """For a shipped order whose confirmation email keeps failing: True while it should wait
    longer (the wait doubles with every round the mail server refused), or once it has been
    completed without the email past ORDER_EMAIL_DEADLINE_SECONDS."""
    if steps.email_deadline_passed(order=order):
        steps.confirmation_abandon(
            order_id=order.id, attempt=1, reason="the mail server did not accept the email"
        )
        return True
    rounds = order.events.filter(reason_code="email_waiting").count()
    wait = min(settings.ORDER_STALL_SECONDS * 2 ** max(rounds - 1, 0), EMAIL_RETRY_MAX_SECONDS)
    return idle < wait


def _expire(order: Order) -> int:
    reason = f"deadline of {settings.ORDER_DEADLINE_SECONDS}s passed at {order.status}"
    verdict = order_give_up(order=order, reason=reason, reason_code="deadline", step=Step.RECOVERY)
    return int(verdict == GiveUp.FAILED)


class GiveUp:
    FAILED = "failed"
    SHIPPED = "shipped"  # the carrier's ledger held a shipment: the order goes on
    BUSY = "busy"  # its step is running now: decide later
    UNKNOWN = "unknown"  # the carrier could not be asked
    REFUSED = "refused"  # ended, or shipped: it cannot be failed


def order_give_up(
    *, order: Order, reason: str, reason_code: str, step: str = Step.ORDER, actor: Actor = SYSTEM
) -> str:
    """Fail an order from outside its workflow (the sweep at the deadline, staff in the
    admin): under the lock of the step that may be in flight, so it never races a charge or
    a shipment being made, and for a shipping order only after the carrier's ledger was
    asked. Returns a GiveUp verdict."""
    if order.status not in FAILABLE_STATUSES:
        return GiveUp.REFUSED
    in_flight = STEP_IN_FLIGHT.get(order.status)
    lock = step_lock(lock_key(step=in_flight, order_id=order.id)) if in_flight else None
    if lock is not None and not lock.acquire():
        return GiveUp.BUSY
    try:
        # Re-read under the lock: the order may have moved on since it was read.
        status = Order.objects.filter(pk=order.pk).values_list("status", flat=True).first()
        if status != order.status:
            return GiveUp.BUSY
        if status == OrderStatus.SHIPPING:
            verdict = steps.shipment_fail(
                order_id=order.id, step=step, reason_code=reason_code, reason=reason, actor=actor
            )
            if verdict == steps.ShipmentVerdict.FAILED:
                return GiveUp.FAILED
            return GiveUp.SHIPPED if verdict == steps.ShipmentVerdict.SHIPPED else GiveUp.UNKNOWN
        failed = services.order_fail(
            order_id=order.id, step=step, reason_code=reason_code, reason=reason, actor=actor
        )
        return GiveUp.FAILED if failed else GiveUp.REFUSED
    finally:
        if lock is not None:
            _release_quietly(lock)


def _release_quietly(lock: Lock) -> None:
    try:
        lock.release()
    except (LockError, RedisError):  # expired or Redis gone: nothing left to release
        logger.warning("sweep: lock %s was gone before release", lock.name)
