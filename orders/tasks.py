"""Celery tasks: a few lines each: load by id, call a step. What a step does is in steps.py,
how the steps are chained in workflow.py, and the locking in locks.py."""

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerUnavailable
from redis.exceptions import RedisError

from integrations.errors import TransientError

from . import recovery, steps
from .errors import StepNotReady
from .locks import StepBusy, UniqueStepTask
from .models import Order, Outcome, Step
from .services import event_record, order_fail

logger = logging.getLogger(__name__)

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
        return self.request.retries + 1

    def _event(self, order_id, outcome: str, detail: str) -> None:
        order = Order.objects.filter(pk=order_id).first()
        if order is not None:
            event_record(
                order=order, step=self.step, outcome=outcome, attempt=self.attempt, detail=detail
            )

    def on_lock_busy(self, kwargs: dict) -> None:
        self._event(kwargs["order_id"], Outcome.BUSY, "another copy of this step is running")

    def on_retry(self, exc, task_id, args, kwargs, einfo) -> None:
        if isinstance(exc, StepBusy):  # already in the timeline as `busy`
            return
        self._event(kwargs["order_id"], Outcome.RETRYING, f"{exc.__class__.__name__}: {exc}")

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        """Retries are used up, or the step hit a bug: the order cannot go on."""
        order_id = kwargs.get("order_id")
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
            self.give_up(
                order_id,
                f"{self.step} gave up after {self.attempt} attempt(s): "
                f"{exc.__class__.__name__}: {exc}",
            )
        except Exception:  # the sweep will find the order; the original error is what matters
            logger.exception("could not record the failure of order %s", order_id)

    def give_up(self, order_id, reason: str) -> None:
        order_fail(order_id=order_id, step=self.step, attempt=self.attempt, reason=reason)


STEP_OPTIONS = dict(
    bind=True,
    base=OrderStepTask,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=1,
    retry_backoff_max=settings.TASK_RETRY_BACKOFF_MAX,
    retry_jitter=True,
    max_retries=settings.TASK_MAX_RETRIES,
)


class ReserveTask(OrderStepTask):
    abstract = True

    def lock_name(self, args, kwargs) -> str:
        # One lock per line: the lines of one order reserve in parallel.
        return f"{self.name}:{kwargs['order_id']}:{kwargs['line_id']}"


# The only task whose result is stored: the chord counts its header's results.
@shared_task(
    name="orders.reserve_stock",
    step=Step.RESERVE_STOCK,
    ignore_result=False,
    **{**STEP_OPTIONS, "base": ReserveTask},
)
def reserve_stock(self, *, order_id: str, line_id: int) -> str:
    return steps.reserve_line(order_id=order_id, line_id=line_id, attempt=self.attempt)


@shared_task(name="orders.charge_payment", step=Step.CHARGE_PAYMENT, **STEP_OPTIONS)
def charge_payment(self, reservations=None, *, order_id: str) -> None:
    # `reservations` (the chord header's results) is only informative: the database says
    # which lines are reserved, also when this runs as a resumed step without a chord.
    steps.charge_payment(order_id=order_id, attempt=self.attempt)


@shared_task(name="orders.create_shipment", step=Step.CREATE_SHIPMENT, **STEP_OPTIONS)
def create_shipment(self, *, order_id: str) -> None:
    steps.create_shipment(order_id=order_id, attempt=self.attempt)


class ConfirmationTask(OrderStepTask):
    abstract = True

    def give_up(self, order_id, reason: str) -> None:
        # The shipment exists: the order is fulfilled even if its email never leaves.
        steps.order_complete(
            order_id=order_id,
            attempt=self.attempt,
            detail=f"completed without a confirmation email: {reason}",
        )


@shared_task(
    name="orders.send_confirmation_email",
    step=Step.SEND_CONFIRMATION_EMAIL,
    **{**STEP_OPTIONS, "base": ConfirmationTask},
)
def send_confirmation_email(self, *, order_id: str) -> None:
    steps.send_confirmation(order_id=order_id, attempt=self.attempt)


class CompensationTask(OrderStepTask):
    abstract = True

    def lock_name(self, args, kwargs) -> str:
        # The charge step's lock: a refund never runs beside a charge still in flight.
        return f"{charge_payment.name}:{kwargs['order_id']}"

    def give_up(self, order_id, reason: str) -> None:
        # The order has ended already; the recovery sweep runs compensation again later.
        self._event(order_id, Outcome.FAILED, reason)


@shared_task(
    name="orders.compensate_order",
    step=Step.COMPENSATE,
    **{**STEP_OPTIONS, "base": CompensationTask},
)
def compensate_order(self, *, order_id: str) -> None:
    steps.compensate(order_id=order_id, attempt=self.attempt)


@shared_task(name="orders.sweep_stalled_orders", ignore_result=True)
def sweep_stalled_orders() -> dict:
    return recovery.sweep()


@shared_task(name="orders.purge_idempotency_keys", ignore_result=True)
def purge_idempotency_keys() -> int:
    from .idempotency import purge_expired

    return purge_expired()
