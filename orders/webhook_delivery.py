"""Delivering the webhooks' outbox (orders/outbox.py writes it): at least once, the same
webhook-id on every attempt, in order per order and endpoint, signed as the Standard
Webhooks specification says.

One task run (orders.deliver_webhooks) serves one endpoint: it takes one of the endpoint's
WEBHOOK_MAX_IN_FLIGHT slots (Redis locks), claims a batch of due rows (a lease in
`locked_until`, taken with SKIP LOCKED), posts them one after another and records the
outcomes. So one endpoint never has more than WEBHOOK_MAX_IN_FLIGHT attempts in flight, and
a slow or dead endpoint costs only its own slots: other endpoints' tasks find theirs free.

A row waits while an older row for the same order and endpoint is still pending: a shop
sees `order.paid` before `order.shipped`, also across retries. A failed attempt ends the
run (the endpoint is struggling; its other rows are not due for a hammering) and is
retried after an exponential backoff with jitter, until the row's `expires_at`. A worker
killed mid-post leaves its lease, which runs out; the row is then posted again by the next
run or beat's sweep (orders.retry_webhooks).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone
from redis.exceptions import LockError
from redis.lock import Lock

from integrations.webhook_sender import SendResult, send

from . import dispatch, metrics, notifications, statements, webhook_signing
from .locks import redis_client
from .models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
)

logger = logging.getLogger(__name__)

# A run stops claiming after this, so a busy endpoint hands its worker back now and then.
RUN_SECONDS = 20.0
# Rows claimed at once: one claim's two queries serve many posts.
BATCH = 20
# Beyond the time a post may take: what a lease and a slot allow for the rest.
MARGIN_SECONDS = 5.0
# Retries due within this long are queued with a countdown; later ones wait for beat's
# sweep (a countdown held for hours by a worker would outlive the broker's visibility
# timeout and come twice).
COUNTDOWN_MAX_SECONDS = 300.0


def time_limits() -> tuple[int, int]:
    """The delivery task's soft and hard time limits: a run's budget plus one post."""
    soft = math.ceil(RUN_SECONDS + settings.WEBHOOK_TIMEOUT_SECONDS + MARGIN_SECONDS)
    return soft, soft + math.ceil(MARGIN_SECONDS)


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: the schedule's step,
    the last one repeated, with up to 20 % jitter so that a shop coming back is not hit by
    every retry in the same second."""
    delays = settings.WEBHOOK_RETRY_DELAYS_SECONDS
    return float(delays[min(attempts, len(delays)) - 1]) * random.uniform(1.0, 1.2)


# --- Slots: at most WEBHOOK_MAX_IN_FLIGHT runs per endpoint --------------------------------
def _slot_acquire(endpoint_id: int) -> Lock | None:
    timeout = time_limits()[1] + MARGIN_SECONDS  # a killed run's slot frees itself
    for index in range(settings.WEBHOOK_MAX_IN_FLIGHT):
        lock = redis_client().lock(
            f"webhooks:slot:{endpoint_id}:{index}", timeout=timeout, blocking=False
        )
        if lock.acquire():
            return lock
    return None


def _slot_release(lock: Lock) -> None:
    try:
        lock.release()
    except (LockError, redis.RedisError):
        logger.warning("webhook slot %s had expired or Redis is away", lock.name)


# --- Claiming -------------------------------------------------------------------------------
def _free(now: datetime) -> Q:
    return Q(locked_until__isnull=True) | Q(locked_until__lt=now)


def heads(endpoint_id: int | None = None) -> QuerySet[WebhookDelivery]:
    """Pending rows (the endpoint's, or every endpoint's) with no older pending row of their
    order in front: the only ones that may be posted (the rest wait their turn)."""
    in_front = WebhookDelivery.objects.filter(
        endpoint_id=OuterRef("endpoint_id"),
        order_id=OuterRef("order_id"),
        status=WebhookDeliveryStatus.PENDING,
        pk__lt=OuterRef("pk"),
    )
    rows = WebhookDelivery.objects.filter(status=WebhookDeliveryStatus.PENDING)
    if endpoint_id is not None:
        rows = rows.filter(endpoint_id=endpoint_id)
    return rows.exclude(Exists(in_front))


# A pending row `d` with no older pending row of its order in front (heads() in SQL).
_HEAD_SQL = """NOT EXISTS (
    SELECT 1 FROM {deliveries} o
    WHERE o.endpoint_id = d.endpoint_id AND o.order_id = d.order_id
      AND o.status = %(pending)s AND o.id < d.id
)"""


@cache
def _sql(template: str) -> str:
    deliveries = WebhookDelivery._meta.db_table
    return template.format(
        deliveries=deliveries,
        attempts=WebhookAttempt._meta.db_table,
        head=_HEAD_SQL.format(deliveries=deliveries),
        returning=statements.columns(WebhookDelivery, "w"),
    )


# One statement, so one round trip and no transaction of its own: the due heads are picked
# under SKIP LOCKED (a concurrent run takes others) and leased, the n-th for the time the n
# posts before it may take. (Written as SQL: the ORM's select_for_update and bulk_update
# took three round trips and built a CASE per row, most of a run's time.)
_CLAIM_SQL = """
WITH picked AS (
    SELECT d.id FROM {deliveries} d
    WHERE d.endpoint_id = %(endpoint)s AND d.status = %(pending)s
      AND d.next_attempt_at <= %(now)s
      AND (d.locked_until IS NULL OR d.locked_until < %(now)s)
      AND {head}
    ORDER BY d.id
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
), numbered AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM picked
)
UPDATE {deliveries} w
SET locked_until = %(now)s + (numbered.n * %(post)s + %(margin)s) * interval '1 second'
FROM numbered WHERE w.id = numbered.id
RETURNING {returning}
"""


def _claim(endpoint: WebhookEndpoint, *, limit: int) -> list[WebhookDelivery]:
    """The endpoint's next due rows, oldest first, none behind an older pending row of its
    order (heads() says the same in the ORM), each leased for the time the posts before it
    may take."""
    sql = _sql(_CLAIM_SQL)
    params = {
        "endpoint": endpoint.pk,
        "pending": WebhookDeliveryStatus.PENDING.value,
        "now": timezone.now(),
        "limit": limit,
        "post": settings.WEBHOOK_TIMEOUT_SECONDS + 1,
        "margin": MARGIN_SECONDS,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return sorted(
        (statements.from_row(WebhookDelivery, row) for row in rows), key=lambda row: row.pk
    )


# --- One run ------------------------------------------------------------------------------
@dataclass
class Run:
    delivered: int = 0
    failed: int = 0
    drained: bool = False  # nothing more may go now
    started: float = 0.0  # time.monotonic()
    upcoming: datetime | None = None  # when the next row may go, as last asked
    batch_next: bool = False  # busy: the next run in WEBHOOK_BATCH_SECONDS takes what comes


def endpoint_deliver(*, endpoint_id: int) -> dict[str, Any]:
    """The task's work: deliver the endpoint's due rows, within one slot and RUN_SECONDS.

    The endpoint's "queued" flag (orders/dispatch.py) stays set while the run posts, so the
    events written meanwhile send no task of their own: the run takes them. A run that
    delivered something keeps the flag and sends the next run WEBHOOK_BATCH_SECONDS later,
    which takes what came in between in one batch: a busy endpoint costs one run per
    WEBHOOK_BATCH_SECONDS, not one per event. A run that found nothing clears the flag, then
    asks the outbox once more what may go and takes that too; what comes after that
    question sends a task of its own."""
    endpoint = statements.get_or_none(WebhookEndpoint, pk=endpoint_id, enabled=True)
    if endpoint is None:
        dispatch.webhook_queued_clear(endpoint_id)
        return {"skipped": "disabled or deleted"}
    slot = _slot_acquire(endpoint_id)
    if slot is None:
        # Every slot is taken: their runs drain what is due, this event included.
        return {"busy": True}
    try:
        run = _drain(endpoint)
    finally:
        _slot_release(slot)
    if run.batch_next:
        dispatch.webhook_batch_send(endpoint_id)
        return {"delivered": run.delivered, "failed": run.failed}
    dispatch.webhook_queued_clear(endpoint_id)
    if not endpoint.enabled:
        # Disabled during this run (a 410, or failing too long). If the shop enabled it
        # again meanwhile, the enabling found this run's flag set and queued nothing, and
        # this run still held the rows: asked now, with the rows and the flag let go, an
        # enabled endpoint is followed up here, and an enabling after this queues its own run.
        endpoint.enabled = bool(
            statements.values_list(WebhookEndpoint, ("id",), pk=endpoint_id, enabled=True)
        )
    if run.failed or not run.drained:
        # Retries to schedule (this run's failures), or rows left when its time was up.
        follow_up(endpoint_id, enabled=endpoint.enabled)
    elif run.upcoming is not None:
        # A row still backing off: its retry was scheduled by the run it failed in, but that
        # run's task may have come while this one held the slot, or a moment early.
        _retry_at(endpoint_id, run.upcoming)
    return {"delivered": run.delivered, "failed": run.failed}


_UPCOMING_SQL = """
SELECT d.next_attempt_at FROM {deliveries} d
WHERE d.endpoint_id = %(endpoint)s AND d.status = %(pending)s
  AND (d.locked_until IS NULL OR d.locked_until < %(now)s)
  AND {head}
ORDER BY d.next_attempt_at
LIMIT 1
"""


def _upcoming(endpoint_id: int, now: datetime) -> datetime | None:
    """When the endpoint's next row may go (one that waits behind an older row of its order
    does not count, nor one leased to a run); None if nothing is pending. Asked after every
    batch, so in SQL (heads() says the same in the ORM)."""
    sql = _sql(_UPCOMING_SQL)
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {"endpoint": endpoint_id, "pending": WebhookDeliveryStatus.PENDING.value, "now": now},
        )
        found = cursor.fetchone()
    return found[0] if found else None


def _drain(endpoint: WebhookEndpoint) -> Run:
    run = Run(started=time.monotonic())
    deadline = run.started + RUN_SECONDS
    asked = False  # the outbox was asked after an empty claim: another empty one ends the run
    while time.monotonic() < deadline and endpoint.enabled:
        rows = _claim(endpoint, limit=BATCH)
        if rows:
            _post(endpoint, rows, run, deadline)
            if run.failed:
                break
            continue
        if run.delivered:
            # Busy: the flag stays set and the next run comes WEBHOOK_BATCH_SECONDS from now
            # (endpoint_deliver sends it); what is written meanwhile waits for it.
            run.drained = run.batch_next = True
            break
        if asked:
            run.drained = True
            break
        # Idle: once the flag is cleared, one question: may anything go now? Rows committed
        # before the clearing are seen by it; those after it queue a run of their own.
        dispatch.webhook_queued_clear(endpoint.pk)
        now = timezone.now()
        run.upcoming, asked = _upcoming(endpoint.pk, now), True
        if run.upcoming is None or run.upcoming > now:
            run.drained = True
            break
    return run


def _post(
    endpoint: WebhookEndpoint, rows: list[WebhookDelivery], run: Run, deadline: float
) -> None:
    """Post the claimed rows one after another, until one fails or the run's time is up,
    and record the outcomes."""
    posted: list[Posted] = []
    for row in rows:
        if run.failed or not endpoint.enabled or time.monotonic() >= deadline:
            break
        at = timezone.now()
        result = send(
            endpoint.url,
            row.body.encode(),
            webhook_signing.headers_for(endpoint, event_id=row.event_id, body=row.body),
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
            allow_private=settings.WEBHOOK_ALLOW_PRIVATE_URLS,
        )
        _outcome(endpoint, row, result, run)
        posted.append(Posted(row, at, result))
    _record(rows, posted)


def _outcome(endpoint: WebhookEndpoint, row: WebhookDelivery, result: SendResult, run: Run) -> None:
    """Set what the attempt means on the row (written by _record) and the endpoint."""
    now = timezone.now()
    row.attempts += 1
    row.last_status_code = result.status_code
    row.last_error = result.error[:500]
    row.locked_until = None
    if result.delivered:
        row.status, row.delivered_at = WebhookDeliveryStatus.DELIVERED, now
        run.delivered += 1
        metrics.webhook_delivered(latency=(now - row.created_at).total_seconds())
        if endpoint.failing_since is not None:
            endpoint_recovered(endpoint)
        return
    run.failed += 1
    if result.status_code == 410:
        # "Gone": the shop says this URL will never take events again.
        metrics.webhook_attempt_failed("gone")
        row.next_attempt_at = now + timedelta(seconds=retry_delay(row.attempts))
        endpoint_disable(endpoint, reason="gone")
        return
    if now >= row.expires_at:
        row.status = WebhookDeliveryStatus.FAILED
        metrics.webhook_attempt_failed("failed")
    else:
        row.next_attempt_at = now + timedelta(seconds=retry_delay(row.attempts))
        metrics.webhook_attempt_failed("retrying")
    endpoint_failed(endpoint, now=now)


# The batch's outcomes and its attempt log in one statement: each posted row updated, and an
# attempt written for each row the update found (a row the shop's deleting its endpoint took
# away meanwhile has nothing to record, and no foreign key to break).
_RECORD_SQL = """
WITH v AS (
    SELECT * FROM unnest(
        %(id)s::bigint[], %(status)s::varchar[], %(attempts)s::integer[],
        %(next_attempt_at)s::timestamptz[], %(status_code)s::integer[], %(error)s::varchar[],
        %(delivered_at)s::timestamptz[], %(at)s::timestamptz[], %(elapsed_ms)s::float8[],
        %(response)s::text[]
    ) AS v(id, status, attempts, next_attempt_at, status_code, error, delivered_at, at,
           elapsed_ms, response)
), updated AS (
    UPDATE {deliveries} d
    SET status = v.status, attempts = v.attempts, next_attempt_at = v.next_attempt_at,
        locked_until = NULL, last_status_code = v.status_code, last_error = v.error,
        delivered_at = v.delivered_at
    FROM v WHERE d.id = v.id
    RETURNING d.id
)
INSERT INTO {attempts} (delivery_id, at, status_code, elapsed_ms, error, response)
SELECT v.id, v.at, v.status_code, v.elapsed_ms, v.error, v.response
FROM v JOIN updated ON updated.id = v.id
"""


@dataclass
class Posted:
    """A posted row and its attempt: what _record writes."""

    row: WebhookDelivery
    at: datetime
    result: SendResult


def _record(claimed: list[WebhookDelivery], posted: list[Posted]) -> None:
    """The batch's outcomes (_outcome set them on the rows) and attempts; rows claimed but
    not posted (the run ended early) are given back at once."""
    if posted:
        response = WebhookAttempt._meta.get_field("response")
        rows = [p.row for p in posted]
        params: dict[str, Any] = {
            "id": [row.pk for row in rows],
            "status": [row.status for row in rows],
            "attempts": [row.attempts for row in rows],
            "next_attempt_at": [row.next_attempt_at for row in rows],
            "status_code": [row.last_status_code for row in rows],
            "error": [row.last_error for row in rows],
            "delivered_at": [row.delivered_at for row in rows],
            "at": [p.at for p in posted],
            "elapsed_ms": [p.result.elapsed_ms for p in posted],
            # Encrypted as the field encrypts it: it may echo the payload.
            "response": [response.get_prep_value(p.result.body[:2000]) for p in posted],
        }
        sql = _sql(_RECORD_SQL)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
    done = {p.row.pk for p in posted}
    rest = [row.pk for row in claimed if row.pk not in done]
    if rest:
        WebhookDelivery.objects.filter(pk__in=rest).update(locked_until=None)


# --- The endpoint's health ------------------------------------------------------------------
def endpoint_recovered(endpoint: WebhookEndpoint) -> None:
    endpoint.failing_since = None
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=None)


def endpoint_failed(endpoint: WebhookEndpoint, *, now: datetime) -> None:
    """Note the failure; an endpoint failing for WEBHOOK_DISABLE_AFTER_HOURS is disabled."""
    if endpoint.failing_since is None:
        endpoint.failing_since = now
        WebhookEndpoint.objects.filter(pk=endpoint.pk, failing_since__isnull=True).update(
            failing_since=now
        )
        return
    if now - endpoint.failing_since >= timedelta(hours=settings.WEBHOOK_DISABLE_AFTER_HOURS):
        endpoint_disable(endpoint, reason="failing")


def endpoint_disable(endpoint: WebhookEndpoint, *, reason: str) -> None:
    """Stop delivering to the endpoint (its rows stay pending until they expire: enabling
    it again delivers them) and tell the shop by email."""
    changed = WebhookEndpoint.objects.filter(pk=endpoint.pk, enabled=True).update(
        enabled=False, disabled_reason=reason, disabled_at=timezone.now()
    )
    endpoint.enabled = False
    if changed:
        logger.warning("webhook endpoint %s disabled: %s", endpoint.pk, reason)
        notifications.webhook_endpoint_disabled_send(endpoint=endpoint, reason=reason)


# --- After a run, beat's sweep, the log's purge ------------------------------------------------
def follow_up(endpoint_id: int, *, enabled: bool) -> None:
    """What is left after a run: rows that may go now get a new run at once; the next retry
    within COUNTDOWN_MAX_SECONDS gets a run with a countdown (once per endpoint and moment)."""
    if enabled:
        upcoming = _upcoming(endpoint_id, timezone.now())
        if upcoming is not None:
            _retry_at(endpoint_id, upcoming)


def _retry_at(endpoint_id: int, at: datetime) -> None:
    countdown = (at - timezone.now()).total_seconds()
    if countdown <= 0:
        dispatch.webhook_delivery_send(endpoint_id)
    elif countdown <= COUNTDOWN_MAX_SECONDS:
        dispatch.webhook_retry_send(endpoint_id, countdown=max(countdown, 0.5))


def sweep() -> dict[str, int]:
    """Beat's: a run for every endpoint with due rows (retries, rows of a crashed worker
    whose lease ran out, a message lost with the broker), and the rows of disabled
    endpoints whose retry window passed are given up."""
    now = timezone.now()
    expired = WebhookDelivery.objects.filter(
        status=WebhookDeliveryStatus.PENDING, expires_at__lt=now, endpoint__enabled=False
    ).update(
        status=WebhookDeliveryStatus.FAILED,
        last_error="the retry window passed while the endpoint was disabled",
        locked_until=None,
    )
    endpoint_ids = list(
        heads()
        .filter(_free(now), next_attempt_at__lte=now, endpoint__enabled=True)
        .order_by()
        .values_list("endpoint_id", flat=True)
        .distinct()
    )
    for endpoint_id in endpoint_ids:
        dispatch.webhook_delivery_send(endpoint_id, force=True)
    return {"endpoints": len(endpoint_ids), "expired": expired}


def log_purge() -> int:
    """Beat's: deliveries (and their attempts) older than WEBHOOK_LOG_DAYS that are done,
    and older attempts of any delivery."""
    cutoff = timezone.now() - timedelta(days=settings.WEBHOOK_LOG_DAYS)
    attempts, _ = WebhookAttempt.objects.filter(at__lt=cutoff).delete()
    deliveries, _ = (
        WebhookDelivery.objects.filter(created_at__lt=cutoff)
        .exclude(status=WebhookDeliveryStatus.PENDING)
        .delete()
    )
    return attempts + deliveries
