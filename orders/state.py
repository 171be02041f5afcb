"""The one place where an order's status changes.

The allowed moves are the table `ORDER_TRANSITIONS` in orders/models.py. `order_transition`
locks the order's row, checks the move against the table, saves, and writes the timeline
entry with who acted and why. Steps, services, the recovery sweep, the API and the admin's
actions all change a status through it; an illegal move raises `IllegalTransition` and
changes nothing.

This module imports only the models, the hot path's SQL (orders/statements.py) and the
webhooks' outbox (which writes the event a status change tells the shop, in the same
transaction): anything may build on it.
"""

from __future__ import annotations

from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction

from . import metrics, outbox, statements
from .errors import Conflict
from .models import (
    ORDER_TRANSITIONS,
    ActorKind,
    Order,
    OrderEvent,
    OrderId,
    OrderStatus,
    Step,
)

# The step whose provider call may be in flight while an order is in this status. Whoever
# ends such an order from outside the step (the sweep, staff) takes that step's lock first,
# so that the order is never failed beside a charge or a shipment that is being made.
STEP_IN_FLIGHT: dict[str, str] = {
    OrderStatus.PAYING: Step.CHARGE_PAYMENT,
    # The charge step asks Stripe for the PaymentIntent and may cancel it at the deadline.
    OrderStatus.AWAITING_PAYMENT_ACTION: Step.CHARGE_PAYMENT,
    OrderStatus.SHIPPING: Step.CREATE_SHIPMENT,
}


# The statuses in which each step has work to do. A step whose retries run out fails the
# order only while the order is still here: if it moved on, the step's work was recorded
# (and what went wrong came after it, e.g. publishing the next step).
STEP_STATUSES: dict[str, frozenset[str]] = {
    Step.RESERVE_STOCK: frozenset({OrderStatus.PENDING, OrderStatus.RESERVING}),
    Step.CHARGE_PAYMENT: frozenset(
        {OrderStatus.PENDING, OrderStatus.RESERVING, OrderStatus.PAYING}
    ),
    Step.CREATE_SHIPMENT: frozenset({OrderStatus.SHIPPING}),
    Step.SEND_CONFIRMATION_EMAIL: frozenset({OrderStatus.CONFIRMING}),
}


class IllegalTransition(Conflict):
    """A move the state machine does not allow (a bug in the caller, or a lost race that the
    caller did not check for)."""

    code = "illegal_transition"


@dataclass(frozen=True)
class Actor:
    """Who made a change: the customer, a staff user, or the system."""

    kind: str
    user: User | None = None

    @classmethod
    def for_user(cls, user: User | AnonymousUser) -> Actor:
        if isinstance(user, AnonymousUser) or not user.is_authenticated:
            return SYSTEM
        kind = ActorKind.STAFF if getattr(user, "is_staff", False) else ActorKind.CUSTOMER
        return cls(kind=kind, user=user)

    def describe(self) -> str:
        if self.user is None:
            return str(self.kind)
        return f"{self.kind} {self.user.get_username()}"


SYSTEM = Actor(kind=ActorKind.SYSTEM)


@dataclass(frozen=True)
class TaskRun:
    """The Celery task attempt running in this thread, if any (set by orders/locks.py)."""

    task_id: str
    started_at: datetime


current_task_run: ContextVar[TaskRun | None] = ContextVar("current_task_run", default=None)


def lock_order(order_id: OrderId) -> Order:
    """The order, with its row locked until the surrounding transaction ends. Every write to
    an order's workflow state happens under this lock, so two writers queue up instead of
    overwriting each other."""
    order = statements.get(Order, lock=True, pk=order_id)
    order._row_locked = True  # type: ignore[attr-defined]  # read by order_transition
    return order


def event_record(
    *,
    order: Order,
    step: str,
    outcome: str,
    attempt: int = 1,
    detail: str = "",
    reason_code: str = "",
    actor: Actor = SYSTEM,
    data: dict[str, Any] | None = None,
    status: str = "",
) -> OrderEvent:
    """Append one entry to the order's timeline, with the task attempt that wrote it."""
    run = current_task_run.get()
    event = OrderEvent(
        task_id=run.task_id if run else "",
        started_at=run.started_at if run else None,
        order=order,
        step=step,
        outcome=outcome,
        attempt=attempt,
        status=status,
        actor_kind=actor.kind,
        actor=actor.user,
        reason_code=reason_code,
        data=data or {},
        detail=detail[:2000],
    )
    statements.insert(event)
    metrics.event_recorded(
        step=step,
        outcome=outcome,
        status=status,
        reason_code=reason_code,
        started_at=event.started_at,
        at=event.at,
        data=event.data,
    )
    return event


def can_move(status: str, to: str) -> bool:
    return to in ORDER_TRANSITIONS[status]


def order_transition(
    *,
    order: Order,
    to: str,
    step: str,
    outcome: str,
    reason_code: str,
    detail: str = "",
    attempt: int = 1,
    actor: Actor = SYSTEM,
    data: dict[str, Any] | None = None,
    failure_reason: str = "",
) -> Order:
    """Move the order to `to`: lock its row (unless the caller holds it already), check the
    move, save, and record it in the timeline. Returns the locked, updated order.

    Raises IllegalTransition when the table does not allow the move from the status the
    order has now; nothing is written then."""
    # A row lock lives as long as its transaction: an order locked in a transaction that has
    # ended is locked again.
    held = transaction.get_connection().in_atomic_block and getattr(order, "_row_locked", False)
    # Inside the caller's transaction no savepoint is needed (two round trips per move, on
    # every step): an illegal move raises before anything is written, and a failed write
    # ends the caller's transaction anyway.
    with nullcontext() if held else transaction.atomic():
        if not held:
            order = lock_order(order.pk)
        if not can_move(order.status, to):
            raise IllegalTransition(
                f"An order that is {order.status} cannot become {to}.",
                fields={"status": [f"{order.status} -> {to} is not allowed"]},
            )
        previous = order.status
        order.status = to
        fields = ["status", "updated_at"]
        if to == OrderStatus.FAILED:
            # What the customer's email and the API show: the reason alone.
            order.failure_reason = failure_reason or detail
            fields.append("failure_reason")
        statements.update(order, fields)
        event_record(
            order=order,
            step=step,
            outcome=outcome,
            attempt=attempt,
            detail=detail,
            reason_code=reason_code,
            actor=actor,
            data={"from": previous, **(data or {})},
            status=to,
        )
        # The shop's webhook (order.paid, order.failed, ...), committed with the move or not
        # at all; with no endpoint subscribed it costs one indexed query.
        outbox.status_event_record(order=order, status=to)
    return order
