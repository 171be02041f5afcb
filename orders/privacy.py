"""Personal data: erased when it is no longer needed (ORDER_PERSONAL_DATA_RETENTION_DAYS after
the order ended) or when the customer asks, and re-encrypted under a new key.

Erasing keeps the financial record (country, totals, lines, the payment's and the
shipment's references, the timeline's steps and reason codes) and replaces the rest. Only
finished orders are erased: one still in flight needs its address to ship, and a failed
or cancelled one its email until the customer has been told."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from django.apps import apps
from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from . import crypto
from .errors import Conflict
from .models import (
    IdempotencyKey,
    Notification,
    Order,
    OrderEvent,
    OrderId,
    OrderStatus,
    Outcome,
    ProviderEvent,
    Step,
    WebhookAttempt,
    WebhookDelivery,
    WebhookDeliveryStatus,
)
from .state import SYSTEM, Actor, event_record, lock_order

logger = structlog.get_logger(__name__)

ERASED = "(erased)"


class Reason(models.TextChoices):
    RETENTION = "retention_expired"
    REQUEST = "erasure_requested"


def finished() -> Q:
    """Orders that need their personal data no more: completed, or failed or cancelled with
    the refund and the customer's email done."""
    return Q(status=OrderStatus.COMPLETED) | Q(
        status__in=[OrderStatus.FAILED, OrderStatus.CANCELLED], compensated_at__isnull=False
    )


def order_anonymize(*, order_id: OrderId, reason: str, actor: Actor = SYSTEM) -> bool:
    """Replace the order's personal data. False if it was erased before (nothing changes);
    Conflict if it is still in flight."""
    with transaction.atomic():
        order = lock_order(order_id)
        if order.anonymized_at is not None:
            return False
        if not Order.objects.filter(finished(), pk=order.pk).exists():
            raise Conflict(
                f"Order {order.id} is {order.status} and not finished: it still needs the "
                "customer's address and email (to ship, refund or tell them). Erase it once "
                "it has ended.",
                code="order_in_flight",
            )
        Order.objects.filter(pk=order.pk).update(
            email="",
            email_hash="",
            payment_token="",
            ship_name=ERASED,
            ship_line1=ERASED,
            ship_city=ERASED,
            ship_postal_code=ERASED,
            failure_reason=ERASED if order.failure_reason else "",
            anonymized_at=timezone.now(),
        )
        Notification.objects.filter(order=order).update(to="")
        # A provider's or the mail server's words may quote the address: the details go,
        # the steps, outcomes and reason codes (the story) stay.
        OrderEvent.objects.filter(order=order).exclude(detail="").update(detail="")
        _stored_responses(order).delete()
        # The providers' events about it carry the payment method and the parcel's addresses.
        ProviderEvent.objects.filter(order=order).update(payload={"erased": True})
        # The shops' webhooks carry the order as the API showed it: their bodies go, and one
        # not delivered yet is given up rather than sent with the data erased.
        WebhookDelivery.objects.filter(order=order, status=WebhookDeliveryStatus.PENDING).update(
            status=WebhookDeliveryStatus.FAILED,
            last_error="erased with the order's personal data",
            locked_until=None,
        )
        WebhookDelivery.objects.filter(order=order).exclude(body="").update(body="")
        WebhookAttempt.objects.filter(delivery__order=order).exclude(response="").update(
            response=""
        )
        event_record(
            order=order,
            step=Step.PRIVACY,
            outcome=Outcome.ANONYMIZED,
            reason_code=reason,
            actor=actor,
            detail="personal data erased: name, address, email, payment reference",
        )
    logger.info("order anonymized", order_id=str(order.id), reason=reason)
    return True


def _stored_responses(order: Order) -> QuerySet[IdempotencyKey]:
    """The Idempotency-Key records whose stored response is this order (within their TTL)."""
    ids = [
        record.pk
        for record in IdempotencyKey.objects.filter(user_id=order.user_id).exclude(
            response_body=None
        )
        if (record.response_body or {}).get("id") == str(order.id)
    ]
    return IdempotencyKey.objects.filter(pk__in=ids)


@dataclass
class Erasure:
    erased: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)


def customer_erase(*, email: str, actor: Actor = SYSTEM) -> Erasure:
    """Every finished order of the customer with this email (found by its blind index)."""
    result = Erasure()
    for order_id, status in Order.objects.filter(email_hash=crypto.blind_index(email)).values_list(
        "id", "status"
    ):
        try:
            erased = order_anonymize(order_id=order_id, reason=Reason.REQUEST, actor=actor)
        except Conflict:
            result.in_flight.append(f"{order_id} ({status})")
            continue
        (result.erased if erased else result.already).append(str(order_id))
    return result


def retention_sweep(*, batch: int = 500) -> int:
    """Beat's: finished orders whose last change is older than the retention period."""
    cutoff = timezone.now() - timedelta(days=settings.ORDER_PERSONAL_DATA_RETENTION_DAYS)
    due = Order.objects.filter(finished(), anonymized_at__isnull=True, updated_at__lt=cutoff)
    count = 0
    for order_id in due.values_list("id", flat=True)[:batch]:
        try:
            count += order_anonymize(order_id=order_id, reason=Reason.RETENTION)
        except Conflict:  # it moved since the query (a late webhook): the next sweep sees it
            continue
    return count


# --- Key rotation ---------------------------------------------------------------------------
def encrypted_models() -> list[type[models.Model]]:
    """Every model of ours with an encrypted field: read off the fields, so that a new one
    cannot be forgotten by the rotation."""
    return [m for m in apps.get_app_config("orders").get_models() if crypto.encrypted_fields(m)]


def keys_rotate(*, batch: int = 200, rehash: bool = False) -> dict[str, int]:
    """Re-encrypt, under the first of FIELD_ENCRYPTION_KEYS, every value that is not yet, in
    batches of rows locked for the time of their update, so that orders keep flowing: a step
    that wants a row waits a few milliseconds. With `rehash`, the blind index is recomputed
    too (after FIELD_HASH_KEY changed)."""
    rotated: dict[str, int] = {}
    for model in encrypted_models():
        fields = crypto.encrypted_fields(model)
        done, last = 0, None
        while True:
            with transaction.atomic():
                rows = model._default_manager.order_by("pk")
                if last is not None:
                    rows = rows.filter(pk__gt=last)
                page = list(rows.select_for_update().values_list("pk", flat=True)[:batch])
                if not page:
                    break
                last = page[-1]
                done += _rotate_rows(model, page, fields, rehash=rehash)
        rotated[model._meta.label] = done
    return rotated


def _rotate_rows(model: type[models.Model], pks: list, fields: list[str], *, rehash: bool) -> int:
    """The rows of `pks` with a value under an old key: decrypted and written back
    (get_prep_value encrypts with the first key). The stored values are read raw first, so
    that rows already under the first key are left alone."""
    quote = connection.ops.quote_name
    pk_column = quote(model._meta.pk.column)
    columns = [
        quote(f.column) for f in model._meta.concrete_fields if f.name in fields
    ]  # in the order of `fields`, which comes from the same list
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {pk_column}, {', '.join(columns)} FROM {quote(model._meta.db_table)} "
            f"WHERE {pk_column} IN ({', '.join(['%s'] * len(pks))})",
            [model._meta.pk.get_db_prep_value(pk, connection) for pk in pks],
        )
        stored = cursor.fetchall()
    done = 0
    for pk, *values in stored:
        stale = [
            name
            for name, value in zip(fields, values, strict=True)
            if value and not crypto.is_current(value)
        ]
        if not stale and not (rehash and model is Order):
            continue
        current = model._default_manager.filter(pk=pk).values(*fields).get()
        changes = {name: current[name] for name in stale}
        if rehash and model is Order:
            changes["email_hash"] = crypto.blind_index(str(current["email"] or ""))
        model._default_manager.filter(pk=pk).update(**changes)
        done += 1
    return done
