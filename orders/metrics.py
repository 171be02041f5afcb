"""Prometheus metrics of every process on the host: gunicorn's workers and Celery's prefork
pool processes write their samples to files in PROMETHEUS_MULTIPROC_DIR (prometheus-client's
multiprocess mode; config/__init__.py gives it a default), and `/metrics` on the web server
adds them up, with the gauges it reads from the database and the broker at scrape time.

Counters move when what they count has committed: the timeline is the source, so a rolled
back step counts nothing.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Any

from django.db import transaction
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from .models import TERMINAL_STATUSES, OrderStatus, Outcome, Step

logger = logging.getLogger(__name__)

ORDERS_CREATED = Counter("orders_created_total", "Orders accepted by the API")
ORDERS_FINISHED = Counter("orders_finished_total", "Orders that ended, by status", ["status"])
STEP_DURATION = Histogram(
    "order_step_duration_seconds",
    "One attempt of a workflow step, from the task's start to its timeline entry",
    ["step", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STEP_RETRIES = Counter("order_step_retries_total", "Step attempts that will be retried", ["step"])
COMPENSATIONS = Counter(
    "order_compensations_total", "What was undone: release, refund, email", ["action"]
)
RECOVERIES = Counter(
    "order_recoveries_total", "What the sweep did: resumed, expired, recompensated", ["kind"]
)
EMAILS_ABANDONED = Counter(
    "order_confirmation_emails_abandoned_total",
    "Shipped orders completed without their confirmation email (ORDER_EMAIL_DEADLINE_SECONDS)",
)
PAYMENT_DISPUTES = Counter(
    "payment_disputes_total",
    "Charges disputed by the card holder (Stripe's charge.dispute.created)",
)
PAYMENTS_REFUNDED_OUTSIDE = Counter(
    "payments_refunded_outside_total", "Refunds made at Stripe outside the backend (its dashboard)"
)
DELIVERY_PROBLEMS = Counter(
    "shipment_delivery_problems_total",
    "Parcels returned to sender or lost (EasyPost's return_to_sender, failure)",
)
SIGN_IN_LOCKOUTS = Counter(
    "sign_in_lockouts_total",
    "Failed sign-ins at or past the lock-out limit, by where: admin (username), token (client)",
    ["surface"],
)
THROTTLE_FAIL_OPEN = Counter(
    "throttle_fail_open_total",
    "Requests let through unthrottled because the throttle's cache was unreachable",
    ["scope"],
)
WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries_total",
    "Webhook attempts by outcome: delivered, retrying, failed (given up), gone (410)",
    ["outcome"],
)
WEBHOOK_LATENCY = Histogram(
    "webhook_delivery_latency_seconds",
    "From the order event to its delivery to the shop's endpoint",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600),
)


def webhook_delivered(*, latency: float) -> None:
    WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
    WEBHOOK_LATENCY.observe(max(latency, 0.0))


def webhook_attempt_failed(outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()


def _count(
    *,
    step: str,
    outcome: str,
    status: str,
    reason_code: str,
    started_at: datetime | None,
    at: datetime,
    data: dict,
) -> None:
    if outcome == Outcome.CREATED and step == Step.ORDER:
        ORDERS_CREATED.inc()
    if status in TERMINAL_STATUSES:
        ORDERS_FINISHED.labels(status=status).inc()
    if started_at is not None:
        STEP_DURATION.labels(step=step, outcome=outcome).observe(
            max((at - started_at).total_seconds(), 0.0)
        )
    if outcome == Outcome.RETRYING:
        STEP_RETRIES.labels(step=step).inc()
    if data.get("released_units"):
        COMPENSATIONS.labels(action="release").inc()
    if step == Step.COMPENSATE and reason_code == "refunded":
        COMPENSATIONS.labels(action="refund").inc()
    if step == Step.COMPENSATE and reason_code == "email_sent":
        COMPENSATIONS.labels(action="email").inc()
    if reason_code == "delivery_problem":
        DELIVERY_PROBLEMS.inc()
    if reason_code == "disputed":
        PAYMENT_DISPUTES.inc()
    if reason_code == "refunded_outside":
        PAYMENTS_REFUNDED_OUTSIDE.inc()
    if reason_code == "completed_without_email":
        EMAILS_ABANDONED.inc()
    if step == Step.RECOVERY and reason_code == "deadline":
        RECOVERIES.labels(kind="expired").inc()
    if step == Step.RECOVERY and reason_code == "resumed":
        ended = data.get("status") in (OrderStatus.FAILED, OrderStatus.CANCELLED)
        RECOVERIES.labels(kind="recompensated" if ended else "resumed").inc()


def event_recorded(**entry: Any) -> None:
    """Count a timeline entry (the arguments of `_count`) once its transaction has
    committed."""
    transaction.on_commit(lambda: _count(**entry))


def registry() -> CollectorRegistry:
    """Every process's samples, added up (multiprocess mode), or this process's own."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return collected
    from prometheus_client import REGISTRY

    return REGISTRY


def exposition(*, extra: CollectorRegistry) -> bytes:
    return generate_latest(registry()) + generate_latest(extra)
