"""The recovery sweep (Celery beat, every ORDER_SWEEP_INTERVAL_SECONDS).

Redis keeps nothing on disk here, a worker can die between two steps, and the web process
can die between the commit and the dispatch: messages get lost. The database does not lose
orders, so the sweep finds those that have shown no sign of life (no status change, no
timeline entry) for ORDER_STALL_SECONDS and resumes each from the step it reached. Resuming
an order that is in fact still moving is harmless: the steps hold locks and are idempotent.
An order past ORDER_DEADLINE_SECONDS that has not shipped is failed and compensated instead.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Max, Q
from django.utils import timezone
from redis.exceptions import LockError, RedisError

from . import workflow
from .locks import step_lock
from .models import Order, OrderStatus, Outcome, Step
from .services import event_record, order_fail

logger = logging.getLogger(__name__)

# Orders handled per sweep: keeps one sweep well inside its time limit; the rest wait for
# the next sweep.
SWEEP_BATCH = 500
# Statuses whose orders are failed at the deadline; a shipped order is finished instead.
EXPIRABLE = (OrderStatus.PENDING, OrderStatus.RESERVING, OrderStatus.PAYING, OrderStatus.SHIPPING)
# The lock of the step an expiring order is in: failing it must not race that step's
# provider call (a charge or a shipment in flight).
STEP_TASK_OF_STATUS = {
    OrderStatus.PAYING: "orders.charge_payment",
    OrderStatus.SHIPPING: "orders.create_shipment",
}


def stalled_orders(*, now=None):
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.ORDER_STALL_SECONDS)
    unfinished = Q(
        status__in=[
            s
            for s in OrderStatus.values
            if s not in (OrderStatus.COMPLETED, OrderStatus.FAILED, OrderStatus.CANCELLED)
        ]
    )
    uncompensated = Q(
        status__in=[OrderStatus.FAILED, OrderStatus.CANCELLED], compensated_at__isnull=True
    )
    return (
        Order.objects.filter(unfinished | uncompensated, updated_at__lt=cutoff)
        .annotate(last_event_at=Max("events__at"))
        .filter(Q(last_event_at__lt=cutoff) | Q(last_event_at__isnull=True))
        .order_by("updated_at")[:SWEEP_BATCH]
    )


def sweep() -> dict:
    lock = step_lock("sweep")
    if not lock.acquire():
        return {"skipped": "another sweep is running"}
    resumed = expired = 0
    try:
        now = timezone.now()
        deadline = now - timedelta(seconds=settings.ORDER_DEADLINE_SECONDS)
        for order in stalled_orders(now=now):
            idle = int((now - (order.last_event_at or order.updated_at)).total_seconds())
            if order.status in EXPIRABLE and order.created_at < deadline:
                expired += _expire(order)
                continue
            event_record(
                order=order,
                step=Step.RECOVERY,
                outcome=Outcome.RESUMED,
                detail=f"resumed at {order.status} after {idle}s without progress",
            )
            workflow.resume(order=order)
            resumed += 1
    finally:
        _release_quietly(lock)
    if resumed or expired:
        logger.info("recovery sweep: resumed %s, expired %s", resumed, expired)
    return {"resumed": resumed, "expired": expired}


def _expire(order: Order) -> int:
    task_name = STEP_TASK_OF_STATUS.get(order.status)
    lock = step_lock(f"{task_name}:{order.id}") if task_name else None
    if lock is not None and not lock.acquire():
        return 0  # the step is running right now; the next sweep decides
    try:
        # Re-read under the lock: the order may have moved on since the sweep's query.
        status = Order.objects.filter(pk=order.pk).values_list("status", flat=True).first()
        if status != order.status:
            return 0
        reason = f"deadline of {settings.ORDER_DEADLINE_SECONDS}s passed at {order.status}"
        return int(order_fail(order_id=order.id, step=Step.RECOVERY, reason=reason))
    finally:
        if lock is not None:
            _release_quietly(lock)


def _release_quietly(lock) -> None:
    try:
        lock.release()
    except (LockError, RedisError):  # expired or Redis gone: nothing left to release
        logger.warning("sweep: lock %s was gone before release", lock.name)
