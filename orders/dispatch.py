"""The one point where the app sends work to Celery.

Services decide *that* something must run (start an order's workflow, compensate it);
this module sends it, only once the deciding transaction has committed, so a worker never
sees an order that is not in the database yet. A send that fails (the broker is down) is
logged and dropped: the order is in the database, and the recovery sweep
(orders/recovery.py) finds and resumes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import transaction

from . import workflow
from .models import COMPENSATED_STATUSES, Order, OrderId

logger = logging.getLogger(__name__)


def _line_ids(order_id: OrderId) -> list[int]:
    return list(
        Order.objects.filter(pk=order_id).order_by("lines__id").values_list("lines__id", flat=True)
    )


def _on_commit(action: str, order_id: OrderId, send: Callable[[], object]) -> None:
    def run() -> None:
        try:
            send()
        except Exception:
            logger.warning(
                "could not %s order %s now; the recovery sweep will",
                action,
                order_id,
                exc_info=True,
            )

    transaction.on_commit(run)


def workflow_start(*, order_id: OrderId) -> None:
    """Start a new order's workflow once the current transaction commits."""

    def send() -> None:
        workflow.build(order_id=order_id, line_ids=_line_ids(order_id)).apply_async()

    _on_commit("start", order_id, send)


def workflow_resume(*, order: Order) -> None:
    """Send the rest of the order's workflow from the status it reached (compensation for an
    ended order) once the current transaction commits."""
    if order.status in COMPENSATED_STATUSES:
        compensation_start(order_id=order.id)
        return
    status, order_id = order.status, order.id

    def send() -> None:
        line_ids = _line_ids(order_id)
        workflow.build(order_id=order_id, line_ids=line_ids, from_status=status).apply_async()

    _on_commit("resume", order_id, send)


def compensation_start(*, order_id: OrderId) -> None:
    """Refund and notify a failed or cancelled order once the current transaction commits."""
    _on_commit("compensate", order_id, lambda: workflow.compensation(order_id=order_id).delay())
