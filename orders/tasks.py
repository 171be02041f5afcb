"""Celery tasks: a few lines each: take the order id from the message, call a step or a
service. What a step does is in steps.py, how the steps are chained in workflow.py (which
names these tasks), and the locking in locks.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.dispatch import receiver
from django.utils import timezone
from django_structlog.celery.signals import bind_extra_task_metadata
from kombu.exceptions import OperationalError as BrokerUnavailable
from redis.exceptions import RedisError

from integrations.errors import TransientError

from . import (
    carrier_events,
    dispatch,
    idempotency,
    oauth,
    payment_events,
    privacy,
    recovery,
    services,
    steps,
    webhook_delivery,
)
from .errors import StepNotReady
from .locks import StepBusy, UniqueStepTask
from .models import Order, OrderId, Outcome, Step
from .state import STEP_STATUSES, TaskRun, current_task_run, event_record
from .workflow import TaskName

logger = logging.getLogger(__name__)


@receiver(bind_extra_task_metadata)
def bind_order_to_task_logs(task: Any = None, **kwargs: Any) -> None:
    """Every log line of a task carries its name and, for a step, the order's id."""
    structlog.contextvars.bind_contextvars(task_name=task.name)
    if order_id := (task.request.kwargs or {}).get("order_id"):
        structlog.contextvars.bind_contextvars(order_id=str(order_id))


# What a retry may cure: a provider's timeout or 5xx, a step that ran too long, the database
# or Redis restarting under us, a chord callback that came before its header finished.
TRANSIENT_ERRORS = (
    TransientError,
    SoftTimeLimitExceeded,
    OperationalError,
    InterfaceError,
    RedisError,
    StepNotReady,
)


class OrderStepTask(UniqueStepTask):
    abstract = True
    step: str = ""

    @property
    def attempt(self) -> int:
        return int(self.request.retries) + 1

    @property
    def lock_step(self) -> str:  # type: ignore[override]
        return self.step

    @contextmanager
    def _this_run(self) -> Iterator[None]:
        """Timeline entries written by the retry and failure handlers, which Celery calls
        after the run, still name this task attempt."""
        started_at = getattr(self.request, "step_started_at", None) or timezone.now()
        run = current_task_run.set(TaskRun(task_id=self.request.id or "", started_at=started_at))
        try:
            yield
        finally:
            current_task_run.reset(run)

    def _event(self, order_id: OrderId, outcome: str, detail: str, reason_code: str) -> None:
        order = Order.objects.filter(pk=order_id).first()
        if order is None:
            return
        with self._this_run():
            event_record(
                order=order,
                step=self.step,
                outcome=outcome,
                attempt=self.attempt,
                detail=detail,
                reason_code=reason_code,
            )

    def on_lock_busy(self, kwargs: dict[str, Any]) -> None:
        self._event(
            OrderId(kwargs["order_id"]),
            Outcome.BUSY,
            "another copy of this step is running",
            "busy",
        )

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        # In the timeline before the retry is published, not in on_retry (which Celery calls
        # afterwards): a retry due at once may otherwise run, and write its own outcome,
        # before this attempt's `retrying`, and the timeline would tell it backwards.
        # (If the publish itself fails, the broker being down, the entry stays and the
        # recovery sweep resumes the order: the timeline then shows the resume next.)
        kwargs = self.with_retry_budget(kwargs)
        exc = kwargs.get("exc")
        max_retries = kwargs.get("max_retries", self.max_retries)  # as Celery decides
        will_retry = max_retries is None or self.request.retries < max_retries
        if will_retry and exc is not None and not isinstance(exc, StepBusy):  # busy: recorded
            try:
                self._event(
                    OrderId((self.request.kwargs or {})["order_id"]),
                    Outcome.RETRYING,
                    f"{exc.__class__.__name__}: {exc}",
                    "transient_error",
                )
            except Exception:
                # Whatever failed here (the database that caused the retry, a soft time
                # limit) must not cost the step its retry: Celery would take an exception
                # from retry() as the step's failure and give the order up.
                logger.warning(
                    "%s: could not record the retry in the timeline", self.name, exc_info=True
                )
        return super().retry(*args, **kwargs)

    def on_failure(
        self, exc: Exception, task_id: str, args: Any, kwargs: dict[str, Any], einfo: Any
    ) -> None:
        """Retries are used up, or the step hit a bug: the order cannot go on."""
        order_id = kwargs.get("order_id")  # as the message has it: perhaps the bug itself
        if isinstance(exc, BrokerUnavailable):
            # Celery could not publish what follows the step (the chain's next task) because
            # the broker was unreachable: the step did its work and the order is fine. It has
            # no message to go on with now, so the recovery sweep resumes it.
            logger.warning(
                "%s: order %s is done with this step, but its next step could not be "
                "queued (%r); the recovery sweep resumes it",
                self.name,
                order_id,
                exc,
            )
            return
        logger.error("%s gave up on order %s: %r", self.name, order_id, exc)
        try:
            with self._this_run():
                self.give_up(
                    OrderId(order_id),
                    f"{self.step} gave up after {self.attempt} attempt(s): "
                    f"{exc.__class__.__name__}: {exc}",
                )
        except Exception:
            # logger.exception keeps the error; the sweep finds the order later.
            logger.exception("could not record the failure of order %s", order_id)

    def give_up(self, order_id: OrderId, reason: str) -> None:
        # Only while the order still waits for this step: if the step's work is recorded
        # and what failed came after it (publishing the next step), the order goes on.
        services.order_fail(
            order_id=order_id,
            step=self.step,
            attempt=self.attempt,
            reason_code="gave_up",
            reason=reason,
            only_from=STEP_STATUSES[self.step],
        )


STEP_OPTIONS: dict[str, Any] = {
    "bind": True,
    "base": OrderStepTask,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": settings.TASK_RETRY_BACKOFF_MAX,
    "retry_jitter": True,
    "max_retries": settings.TASK_MAX_RETRIES,
}


class ReserveTask(OrderStepTask):
    abstract = True
    # One lock per line: the lines of one order reserve in parallel.
    lock_per_line = True


# The only task whose result is stored: the chord counts its header's results.
@shared_task(
    name=TaskName.RESERVE_STOCK,
    step=Step.RESERVE_STOCK,
    ignore_result=False,
    **{**STEP_OPTIONS, "base": ReserveTask},
)
def reserve_stock(self: OrderStepTask, *, order_id: str, line_id: int) -> str:
    return steps.reserve_line(order_id=OrderId(order_id), line_id=line_id, attempt=self.attempt)


@shared_task(name=TaskName.CHARGE_PAYMENT, step=Step.CHARGE_PAYMENT, **STEP_OPTIONS)
def charge_payment(self: OrderStepTask, reservations: Any = None, *, order_id: str) -> None:
    # `reservations` (the chord header's results) is only informative: the database says
    # which lines are reserved, also when this runs as a resumed step without a chord.
    steps.charge_payment(order_id=OrderId(order_id), attempt=self.attempt)


class ShipmentTask(OrderStepTask):
    abstract = True

    def give_up(self, order_id: OrderId, reason: str) -> None:
        # The last create may have timed out after the carrier acted: its ledger decides.
        steps.shipment_fail(
            order_id=order_id,
            step=self.step,
            attempt=self.attempt,
            reason_code="gave_up",
            reason=reason,
        )


@shared_task(
    name=TaskName.CREATE_SHIPMENT,
    step=Step.CREATE_SHIPMENT,
    **{**STEP_OPTIONS, "base": ShipmentTask},
)
def create_shipment(self: OrderStepTask, *, order_id: str) -> None:
    steps.create_shipment(order_id=OrderId(order_id), attempt=self.attempt)


class ConfirmationTask(OrderStepTask):
    abstract = True

    def give_up(self, order_id: OrderId, reason: str) -> None:
        # The shipment exists, so the order is never failed; it waits for the mail server.
        steps.confirmation_give_up(order_id=order_id, attempt=self.attempt, reason=reason)


@shared_task(
    name=TaskName.SEND_CONFIRMATION_EMAIL,
    step=Step.SEND_CONFIRMATION_EMAIL,
    **{**STEP_OPTIONS, "base": ConfirmationTask},
)
def send_confirmation_email(self: OrderStepTask, *, order_id: str) -> None:
    steps.send_confirmation(order_id=OrderId(order_id), attempt=self.attempt)


class CompensationTask(OrderStepTask):
    abstract = True

    @property
    def lock_step(self) -> str:  # type: ignore[override]
        # The charge step's lock: a refund never runs beside a charge still in flight.
        return Step.CHARGE_PAYMENT

    def give_up(self, order_id: OrderId, reason: str) -> None:
        # The order has ended already; the recovery sweep runs compensation again later.
        self._event(order_id, Outcome.FAILED, reason, "gave_up")


@shared_task(
    name=TaskName.COMPENSATE_ORDER,
    step=Step.COMPENSATE,
    **{**STEP_OPTIONS, "base": CompensationTask},
)
def compensate_order(self: OrderStepTask, *, order_id: str) -> None:
    steps.compensate(order_id=OrderId(order_id), attempt=self.attempt)


@shared_task(name=TaskName.SWEEP_STALLED_ORDERS, ignore_result=True)
def sweep_stalled_orders() -> dict[str, Any]:
    return recovery.sweep()


@shared_task(name=TaskName.RELAY_DISPATCHES, ignore_result=True)
def relay_dispatches() -> int:
    return dispatch.relay_pending()


@shared_task(name=TaskName.PURGE_IDEMPOTENCY_KEYS, ignore_result=True)
def purge_idempotency_keys() -> int:
    return idempotency.purge_expired()


@shared_task(name=TaskName.CLEAR_EXPIRED_TOKENS, ignore_result=True)
def clear_expired_tokens() -> None:
    oauth.expired_tokens_clear()


@shared_task(name=TaskName.ANONYMIZE_EXPIRED_ORDERS, ignore_result=True)
def anonymize_expired_orders() -> int:
    return privacy.retention_sweep()


# Webhook events: retried as the steps are; once the retries are used up the event stays
# unprocessed and the recovery sweep sends it again.
EVENT_TASK_OPTIONS: dict[str, Any] = {
    key: STEP_OPTIONS[key]
    for key in (
        "autoretry_for",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "max_retries",
    )
}


@shared_task(name=TaskName.PROCESS_PROVIDER_EVENT, ignore_result=True, **EVENT_TASK_OPTIONS)
def process_provider_event(*, event_pk: int) -> str:
    return payment_events.stripe_event_process(event_pk=event_pk)


@shared_task(name=TaskName.PROCESS_CARRIER_EVENT, ignore_result=True, **EVENT_TASK_OPTIONS)
def process_carrier_event(*, event_pk: int) -> str:
    return carrier_events.easypost_event_process(event_pk=event_pk)


# The shops' webhooks (orders/webhook_delivery.py). A run that hits a database or Redis
# error is tried again; one that dies leaves leases that run out, and beat's sweep sends
# the endpoint a new run.
WEBHOOK_SOFT_LIMIT, WEBHOOK_HARD_LIMIT = webhook_delivery.time_limits()


@shared_task(
    name=TaskName.DELIVER_WEBHOOKS,
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError, RedisError),
    retry_backoff=1,
    retry_backoff_max=settings.TASK_RETRY_BACKOFF_MAX,
    retry_jitter=True,
    max_retries=3,
    soft_time_limit=WEBHOOK_SOFT_LIMIT,
    time_limit=WEBHOOK_HARD_LIMIT,
    # Frequent and short: no monitoring events (three Redis publishes a run); the attempts
    # are in the admin's webhook log.
    send_events=False,
)
def deliver_webhooks(*, endpoint_id: int) -> dict[str, Any]:
    return webhook_delivery.endpoint_deliver(endpoint_id=endpoint_id)


@shared_task(name=TaskName.RETRY_WEBHOOKS, ignore_result=True)
def retry_webhooks() -> dict[str, int]:
    return webhook_delivery.sweep()


@shared_task(name=TaskName.PURGE_WEBHOOK_LOG, ignore_result=True)
def purge_webhook_log() -> int:
    return webhook_delivery.log_purge()
