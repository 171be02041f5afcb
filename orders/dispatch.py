"""The one point where the app sends work to Celery.

Services decide *that* something must run (start an order's workflow, resume it,
compensate it); this module sends it once the deciding transaction has committed, so a
worker never sees an order that is not in the database yet.

A send that fails (the broker is down) is remembered in PostgreSQL as a PendingDispatch,
and the relay (`relay_pending`, run by beat every ORDER_DISPATCH_RELAY_SECONDS) sends the
order's workflow from the status it has reached once the broker is back: an order accepted
during a broker outage starts seconds after the broker returns. Only failed sends are
written, so the happy path costs no extra write. A process that dies between the commit and
the send leaves no record; the recovery sweep (ORDER_STALL_SECONDS) covers that rarer case.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import redis
import structlog
from celery import current_task
from celery.canvas import Signature
from django.conf import settings
from django.db import DatabaseError, transaction

from . import workflow
from .models import COMPENSATED_STATUSES, Order, OrderId, OrderStatus, PendingDispatch

logger = logging.getLogger(__name__)

# Orders the relay sends per run: one run stays short, the next takes the rest.
RELAY_BATCH = 200


def _line_ids(order_id: OrderId) -> list[int]:
    return list(
        Order.objects.filter(pk=order_id).order_by("lines__id").values_list("lines__id", flat=True)
    )


def _continuation(order_id: OrderId, status: str, line_ids: list[int] | None = None) -> Signature:
    """What an order in `status` needs next: its remaining steps, or its compensation."""
    if status in COMPENSATED_STATUSES:
        return workflow.compensation(order_id=order_id)
    if line_ids is None:
        line_ids = _line_ids(order_id)
    return workflow.build(order_id=order_id, line_ids=line_ids, from_status=status)


def _on_commit(
    action: str, order_id: OrderId, send: Callable[[], object], request_id: str | None = None
) -> None:
    def run() -> None:
        try:
            with _order_log_context(order_id, request_id):
                send()
        except Exception:  # any broker library's error: the send is retried below
            logger.warning(
                "could not %s order %s: the broker is unreachable; it is sent when it is back",
                action,
                order_id,
                exc_info=True,
            )
            _remember(order_id)

    transaction.on_commit(run)


@contextmanager
def _order_log_context(order_id: OrderId, request_id: str | None) -> Iterator[None]:
    """The order's id and the request that placed it, bound while a message is published:
    django-structlog copies request_id into the message's headers, so the worker's log lines
    for this order carry it, also when the sweep or the relay sends it long afterwards."""
    bound = structlog.contextvars.get_contextvars()
    if request_id is None:
        request_id = bound.get("request_id") or (
            Order.objects.filter(pk=order_id).values_list("request_id", flat=True).first() or ""
        )
    with structlog.contextvars.bound_contextvars(order_id=str(order_id), request_id=request_id):
        yield


def _remember(order_id: OrderId) -> None:
    try:
        PendingDispatch.objects.get_or_create(order_id=order_id)
    except DatabaseError:
        logger.warning("could not remember order %s for the relay; the sweep resumes it", order_id)


def workflow_start(*, order_id: OrderId, line_ids: list[int]) -> None:
    """Start a new order's workflow once the current transaction commits. The caller has
    just created the lines: their ids come with it rather than being read back."""
    _on_commit(
        "start",
        order_id,
        lambda: _continuation(order_id, OrderStatus.PENDING, line_ids).apply_async(),
    )


def workflow_resume(*, order: Order) -> None:
    """Send the rest of the order's workflow from the status it reached (its compensation if
    it ended) once the current transaction commits."""
    order_id, status = order.id, order.status
    _on_commit(
        "resume",
        order_id,
        lambda: _continuation(order_id, status).apply_async(),
        request_id=order.request_id,
    )


def compensation_start(*, order_id: OrderId) -> None:
    """Refund and notify a failed or cancelled order once the current transaction commits."""
    _on_commit("compensate", order_id, lambda: workflow.compensation(order_id=order_id).delay())


def relay_pending() -> int:
    """Send the workflow of every order whose send failed, from the status it has reached.
    Stops at the first failure (the broker is still down). Returns how many were sent."""
    # Claim the rows and commit before publishing: a chord's counter row is written when the
    # chord is sent, and a worker must be able to read it; the claim (a delete under SKIP
    # LOCKED) also keeps a second relay from sending the same order.
    with transaction.atomic():
        claimed = list(
            PendingDispatch.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("order")
            .order_by("created_at")[:RELAY_BATCH]
        )
        PendingDispatch.objects.filter(pk__in=[row.pk for row in claimed]).delete()
    sent = 0
    for index, row in enumerate(claimed):
        order = row.order
        finished = order.status == OrderStatus.COMPLETED or (
            order.status in COMPENSATED_STATUSES and order.compensated_at is not None
        )
        if finished:
            continue
        try:
            with _order_log_context(order.id, order.request_id):
                _continuation(order.id, order.status).apply_async()
        except Exception:  # still unreachable: give the rest back for the next run
            logger.warning("relay: the broker is still unreachable", exc_info=True)
            for rest in claimed[index:]:
                _remember(rest.order_id)
            break
        sent += 1
    if sent:
        logger.info("relay: sent %s order(s) whose dispatch had failed", sent)
    return sent


def provider_event_process(*, event_pk: int, carrier: bool = False) -> None:
    """Process a webhook event (the gateway's, or the carrier's) once the transaction that
    recorded it commits. If the broker is down the event stays unprocessed and the recovery
    sweep sends it again."""

    def send() -> None:
        try:
            workflow.provider_event(event_pk=event_pk, carrier=carrier).apply_async()
        except Exception:  # any broker library's error: the sweep sends it later
            logger.warning(
                "could not queue provider event %s; the sweep sends it", event_pk, exc_info=True
            )

    transaction.on_commit(send)


# An endpoint with a delivery task queued or running needs no second one: that run drains
# every due row, and clears the flag only when it found nothing more (then it looks once
# again, so a row committed in between is not missed). The flag expires, so a task lost
# with the broker or a worker does not silence the endpoint for long, and beat's sweep
# (orders.retry_webhooks) sends a run regardless of it.
WEBHOOK_QUEUED_TTL_SECONDS = 30
# A run starts this long after the event that queued it, so that the events of the next
# moments (an order's next steps, other orders of the shop) ride along in the same run
# instead of a message and a run each.
WEBHOOK_GATHER_SECONDS = 1.0


def webhook_queued_key(endpoint_id: int) -> str:
    return f"webhooks:queued:{endpoint_id}"


@lru_cache(maxsize=1)
def _flags() -> redis.Redis:
    # orders/locks.py's Redis (the locks'), its own client: locks.py builds on orders/state.py,
    # which builds on this module.
    return redis.Redis.from_url(settings.LOCK_REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def webhook_delivery_send(endpoint_id: int, *, gather: bool = False, force: bool = False) -> None:
    """Queue the endpoint's delivery task, unless one is queued or running already (`force`:
    even then, for beat's sweep, which must not wait out the flag of a run that died); with
    `gather`, to start WEBHOOK_GATHER_SECONDS from now."""
    try:
        flagged = _flags().set(
            webhook_queued_key(endpoint_id), 1, nx=True, ex=WEBHOOK_QUEUED_TTL_SECONDS
        )
        if not flagged and not force:
            return
    except redis.RedisError:
        pass  # without the flag a task more is sent: harmless, it finds nothing or drains
    _webhook_run_send(endpoint_id, countdown=WEBHOOK_GATHER_SECONDS if gather else 0)


def webhook_batch_send(endpoint_id: int) -> None:
    """The next run of a busy endpoint, WEBHOOK_BATCH_SECONDS from now, its flag held until
    then: the events written meanwhile queue no run of their own, this one takes them."""
    countdown = settings.WEBHOOK_BATCH_SECONDS
    try:
        _flags().set(
            webhook_queued_key(endpoint_id), 1, ex=int(countdown) + WEBHOOK_QUEUED_TTL_SECONDS
        )
    except redis.RedisError:
        pass  # without the flag the events queue runs of their own: more runs, nothing lost
    _webhook_run_send(endpoint_id, countdown=countdown)


def _webhook_run_send(endpoint_id: int, *, countdown: float) -> None:
    """Publish the endpoint's delivery run; if the broker refuses, the flag goes (the next
    event tries again) and the rows wait for beat's sweep."""
    try:
        workflow.webhook_delivery(endpoint_id=endpoint_id).apply_async(countdown=countdown)
    except Exception:  # any broker library's error: the rows wait for beat's sweep
        logger.warning(
            "could not queue the webhook delivery of endpoint %s; the sweep sends it",
            endpoint_id,
            exc_info=True,
        )
        webhook_queued_clear(endpoint_id)


def webhook_queued_clear(endpoint_id: int) -> None:
    """The task has started (or was never sent): the next event queues a new one."""
    try:
        _flags().delete(webhook_queued_key(endpoint_id))
    except redis.RedisError:
        pass  # it expires by itself


def webhooks_deliver(*, endpoint_ids: list[int]) -> None:
    """Deliver the endpoints' new webhook events once the current transaction commits; the
    rows were written in it (orders/outbox.py)."""

    # Gathered in a worker (the steps' events come in quick succession); sent at once from
    # the web, whose broker account may not publish delayed messages (RabbitMQ's delayed
    # delivery exchanges are the workers' only: deploy/rabbitmq/definitions.json).
    gather = bool(current_task)

    def send() -> None:
        for endpoint_id in endpoint_ids:
            webhook_delivery_send(endpoint_id, gather=gather)

    transaction.on_commit(send)


def webhook_retry_send(endpoint_id: int, *, countdown: float) -> None:
    """A run of the endpoint's deliveries in `countdown` seconds (its next retry), unless one
    is scheduled already for about then."""
    try:
        if not _flags().set(
            f"webhooks:retry:{endpoint_id}", 1, nx=True, px=max(int(countdown * 1000), 1)
        ):
            return
    except redis.RedisError:
        pass
    try:
        workflow.webhook_delivery(endpoint_id=endpoint_id).apply_async(countdown=countdown)
    except Exception:  # any broker library's error: beat's sweep sends it
        logger.warning("could not schedule the webhook retry of %s", endpoint_id, exc_info=True)
