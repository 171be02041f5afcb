"""Webhook events from the providers (Stripe's, orders/payment_events.py; EasyPost's,
orders/carrier_events.py): recorded once by their id, processed by a task, sent again by
the recovery sweep while unprocessed."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.utils import timezone

from . import dispatch, statements
from .models import Order, ProviderEvent


def receive(
    *,
    provider: str,
    event_id: str,
    event_type: str,
    payload: dict[str, Any],
    handled: Iterable[str],
    carrier: bool = False,
    **triaged: Any,
) -> tuple[ProviderEvent, bool]:
    """Record a verified event once, and queue its processing if it is of a handled type
    and was not settled on arrival (`triaged` may mark it processed). Returns the record and
    whether it is new."""
    record = ProviderEvent(
        provider=provider,
        event_id=event_id,
        type=event_type,
        payload=payload,
        received_at=timezone.now(),
        **triaged,
    )
    created = statements.insert_once(record, conflict=["provider", "event_id"])
    if created and record.processed_at is None and record.type in handled:
        dispatch.provider_event_process(event_pk=record.pk, carrier=carrier)
    return record, created


def process_once(
    *, event_pk: int, handle: Callable[[ProviderEvent], tuple[Order | None, str]]
) -> str:
    """Do what a recorded event asks, once: `handle` returns its order (if any) and what
    was done, which is kept on the record. Returns that."""
    record = ProviderEvent.objects.filter(pk=event_pk).first()
    if record is None:  # deleted since (by a purge, or a test's flush)
        return "missing"
    if record.processed_at is not None:
        return record.result
    order, result = handle(record)
    ProviderEvent.objects.filter(pk=event_pk).update(
        processed_at=timezone.now(), result=result, order=order
    )
    return result


def unprocessed(*, provider: str, types: Iterable[str], older_than_seconds: float) -> list[int]:
    """Events of a provider recorded but never processed (the broker was down when they
    came, or their task gave up)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    return list(
        ProviderEvent.objects.filter(
            provider=provider,
            processed_at__isnull=True,
            received_at__lt=cutoff,
            type__in=list(types),
        ).values_list("pk", flat=True)[:500]
    )
