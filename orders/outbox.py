"""The webhooks' outbox: an order event becomes one WebhookDelivery row per subscribed
endpoint, written in the transaction of the change that caused it.

So a crash can neither lose an event nor send one for a change that rolled back: the rows
commit with the change or not at all, and orders/dispatch.py asks a worker to deliver them
once the transaction has committed (orders/webhook_delivery.py; beat's sweep finds any
whose message was lost).

The body is built here, at the moment of the event: the order exactly as GET
/api/orders/{id}/ showed it then, so an `order.paid` delivered late still says what was
true when it was paid. Without a subscribed endpoint an event costs one indexed query.

Imports only the models, the API's output serializer and the dispatcher: orders/state.py
builds on it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder

from . import dispatch, selectors, statements
from .api.serializers import order_shown
from .models import (
    WEBHOOK_ALL_EVENTS,
    Order,
    OrderStatus,
    WebhookDelivery,
    WebhookEndpoint,
)

# The event an order's arrival in a status tells the shop (orders/state.py's one hook).
STATUS_EVENTS: dict[str, str] = {
    OrderStatus.SHIPPING: "order.paid",
    OrderStatus.AWAITING_PAYMENT_ACTION: "order.awaiting_payment_action",
    OrderStatus.CONFIRMING: "order.shipped",
    OrderStatus.COMPLETED: "order.completed",
    OrderStatus.FAILED: "order.failed",
    OrderStatus.CANCELLED: "order.cancelled",
}


def new_event_id() -> str:
    """The webhook-id: unique per event, the same on every attempt and for every endpoint."""
    return f"msg_{uuid.uuid4().hex}"


def subscribers(*, user_id: int, event_type: str) -> list[int]:
    """The enabled endpoints of the order's shop that want this event (the hot path's one
    query, on the (user, enabled) index)."""
    found = statements.values_list(WebhookEndpoint, ("id", "events"), user_id=user_id, enabled=True)
    return [pk for pk, events in found if WEBHOOK_ALL_EVENTS in events or event_type in events]


def representation_of(order: Order) -> dict:
    """What OrderOutputSerializer(order).data gives, the API's detail view's body."""
    return order_shown(order)


def order_representation(order_id: uuid.UUID) -> dict:
    """The order as the API's detail view shows it (read in one query, for any user)."""
    return representation_of(selectors.order_whole(order_id))


def body_for(*, event_id: str, event_type: str, created: datetime, order: dict) -> str:
    """The JSON sent, compact, as the shop's signature check must see it byte for byte."""
    return json.dumps(
        {
            "id": event_id,
            "type": event_type,
            "created": created.isoformat().replace("+00:00", "Z"),
            "data": {"order": order},
        },
        cls=JSONEncoder,
        separators=(",", ":"),
    )


def event_record(
    *, order: Order, event_type: str, representation: Callable[[], dict] | None = None
) -> list[int]:
    """Write `event_type` about `order` for each subscribed endpoint of its shop, in the
    caller's transaction, and have it delivered after the commit. Returns the endpoints'
    ids. `representation`: makes the order's API representation from what the caller has
    in memory (a new order), saving its queries; called only if an endpoint wants it."""
    endpoint_ids = subscribers(user_id=order.user_id, event_type=event_type)
    if not endpoint_ids:
        return []
    now = timezone.now()
    expires_at = now + timedelta(hours=settings.WEBHOOK_RETRY_HOURS)
    event_id = new_event_id()
    body = body_for(
        event_id=event_id,
        event_type=event_type,
        created=now,
        order=representation() if representation is not None else order_representation(order.pk),
    )
    statements.insert_many(
        [
            WebhookDelivery(
                endpoint_id=endpoint_id,
                order_id=order.pk,
                event_id=event_id,
                type=event_type,
                body=body,
                next_attempt_at=now,
                expires_at=expires_at,
                created_at=now,
            )
            for endpoint_id in endpoint_ids
        ]
    )
    dispatch.webhooks_deliver(endpoint_ids=endpoint_ids)
    return endpoint_ids


def status_event_record(*, order: Order, status: str) -> None:
    """The event of the order's arrival in `status`, if that status has one."""
    event_type = STATUS_EVENTS.get(status)
    if event_type is not None:
        event_record(order=order, event_type=event_type)
