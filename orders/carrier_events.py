"""EasyPost's tracking events: recorded once by the view (a repeat is answered 200 and does
nothing), processed by a task on the shipping queue.

Events come at least once and in any order: a parcel's status only moves forward (a late
`in_transit` never undoes `delivered`), each move is one timeline entry with the actor
`easypost`, and the first `in_transit` sends the customer the "shipped" email, once per
order. `return_to_sender` and `failure` mark a delivery problem for staff (an admin filter,
a metric); the order's own status does not change after `completed`: the parcel's story is
the shipment's.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from easypost.errors import SignatureVerificationError
from easypost.util import validate_webhook

from integrations.errors import PermanentError

from . import outbox, provider_events
from .errors import ApplicationError
from .models import (
    DELIVERY_PROBLEMS,
    TRACKING_RANK,
    ActorKind,
    NotificationKind,
    Order,
    Outcome,
    ProviderEvent,
    Shipment,
    Step,
    TrackingStatus,
)
from .notifications import notification_send
from .state import Actor, event_record

logger = logging.getLogger(__name__)

EASYPOST = "easypost"
EASYPOST_ACTOR = Actor(kind=ActorKind.EASYPOST)
HANDLED = frozenset({"tracker.updated"})


class InvalidSignature(ApplicationError):
    code = "invalid_signature"


def easypost_event_receive(
    *, payload: bytes, headers: dict[str, str]
) -> tuple[ProviderEvent, bool]:
    """Verify an event with the SDK's own helper (X-Hmac-Signature and the webhook's
    secret), record it once, and queue its processing. Raises InvalidSignature."""
    try:
        event = validate_webhook(payload, headers, settings.EASYPOST_WEBHOOK_SECRET)
        event_id, event_type = str(event["id"]), str(event["description"])
    except (SignatureVerificationError, ValueError, KeyError, TypeError) as exc:
        raise InvalidSignature(f"The X-Hmac-Signature does not verify: {exc}") from exc
    return provider_events.receive(
        provider=EASYPOST,
        event_id=event_id,
        event_type=event_type,
        payload=event,
        handled=HANDLED,
        carrier=True,
    )


def easypost_event_process(*, event_pk: int) -> str:
    """Move the parcel on, once. Returns what was done (kept on the record)."""
    return provider_events.process_once(event_pk=event_pk, handle=_handle)


def _handle(record: ProviderEvent) -> tuple[Order | None, str]:
    tracker = record.payload.get("result") or {}
    shipment = _shipment_of(tracker)
    if shipment is None:
        return None, "unknown_shipment"
    return shipment.order, _tracker_update(record, shipment, tracker)


def _shipment_of(tracker: dict[str, Any]) -> Shipment | None:
    """Our shipment for a tracker: by the tracker's id, its shipment's id or its code."""
    for field, value in (
        ("tracker_id", tracker.get("id")),
        ("carrier_reference", tracker.get("shipment_id")),
        ("tracking_number", tracker.get("tracking_code")),
    ):
        if value:
            found = next(
                iter(Shipment.objects.filter(**{field: value}).select_related("order")[:1]),
                None,
            )
            if found is not None:
                return found
    return None


def _tracker_update(record: ProviderEvent, shipment: Shipment, tracker: dict[str, Any]) -> str:
    status = tracker.get("status")
    if status not in TRACKING_RANK:
        return "ignored"  # `unknown`, `available_for_pickup` and the like: nothing to tell
    order = shipment.order
    with transaction.atomic():
        # The parcel's own row lock orders two events of one tracker; the order's row is
        # not locked: a parcel's status never changes the order's, and the steps that hold
        # the order's lock (a cancel, a charge) need not wait for a carrier's scan.
        shipment = Shipment.objects.select_for_update().get(pk=shipment.pk)
        moved = TRACKING_RANK[status] > TRACKING_RANK.get(shipment.tracking_status, 0)
        if moved:
            _status_record(record, order, shipment, status)
    if status in (
        TrackingStatus.IN_TRANSIT,
        TrackingStatus.OUT_FOR_DELIVERY,
        TrackingStatus.DELIVERED,
    ):
        # The "shipped" email, once per order: also when `in_transit` came late or never.
        # A mail server that refuses raises, and the event is processed again.
        try:
            notification_send(
                order=order,
                kind=NotificationKind.SHIPPED,
                step=Step.TRACKING,
                attempt=1,
                shipment=shipment,
            )
        except PermanentError as exc:
            event_record(
                order=order,
                step=Step.TRACKING,
                outcome=Outcome.FAILED,
                reason_code="email_refused",
                detail=str(exc),
            )
    return status if moved else "not_newer"


def _status_record(record: ProviderEvent, order: Order, shipment: Shipment, status: str) -> None:
    previous = shipment.tracking_status
    shipment.tracking_status = status
    shipment.tracking_updated_at = timezone.now()
    problem = status in DELIVERY_PROBLEMS
    if problem:
        shipment.delivery_problem_at = shipment.tracking_updated_at
    shipment.save(update_fields=["tracking_status", "tracking_updated_at", "delivery_problem_at"])
    event_record(
        order=order,
        step=Step.TRACKING,
        outcome=Outcome.FAILED if problem else Outcome.SUCCEEDED,
        actor=EASYPOST_ACTOR,
        reason_code="delivery_problem" if problem else status,
        data={"tracking_status": status, "from": previous, "event_id": record.event_id},
        detail=f"{shipment.carrier} {shipment.tracking_number}: {status.replace('_', ' ')}"
        + ("; staff decide what happens next" if problem else ""),
    )
    if problem:
        outbox.event_record(order=order, event_type="shipment.delivery_problem")
    elif status == TrackingStatus.DELIVERED:
        outbox.event_record(order=order, event_type="shipment.delivered")
