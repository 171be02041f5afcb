"""Idempotency-Key on POST /api/orders/, as Stripe does it.

Scoped to the user. Once the endpoint has begun to work, the first response (status and
body) is stored for IDEMPOTENCY_KEY_TTL_SECONDS and replayed for the same key; a request
that fails validation stores nothing and may be retried with the same key; the same key
with a different body answers 422; the same key while the first request is in flight
answers 409. The order and its stored response commit in one transaction, so a key has
a response exactly when its order exists.
"""

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import crypto
from .errors import ApplicationError, Conflict
from .models import IdempotencyKey

MAX_KEY_LENGTH = 255
# A record still in flight after this long belongs to a request whose process died before
# it committed (its order does not exist): a new request may take the key over.
IN_FLIGHT_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict
    headers: dict


def validate_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ApplicationError(
            f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} characters.",
            code="invalid_idempotency_key",
            fields={
                "Idempotency-Key": [f"Ensure this header has 1 to {MAX_KEY_LENGTH} characters."]
            },
        )


def fingerprint(data: Any) -> str:
    """A keyed hash of the request (it holds the address): tells a repeat from a different
    body, and tells nobody with the table what the body was."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)
    return crypto.keyed_hash(canonical)


def begin(*, user: User, key: str, request_fingerprint: str) -> IdempotencyKey | Replay:
    """Claim the key for this request, or answer with what an earlier request stored."""
    now = timezone.now()
    ttl = timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS)
    IdempotencyKey.objects.filter(user=user, key=key, created_at__lt=now - ttl).delete()
    IdempotencyKey.objects.filter(
        user=user, key=key, response_status__isnull=True, created_at__lt=now - IN_FLIGHT_TIMEOUT
    ).delete()
    try:
        with transaction.atomic():
            return IdempotencyKey.objects.create(
                user=user, key=key, request_fingerprint=request_fingerprint
            )
    except IntegrityError:
        pass
    existing = IdempotencyKey.objects.filter(user=user, key=key).first()
    if existing is None:  # its owner gave it up a moment ago
        raise Conflict(
            "A request with this Idempotency-Key was just in progress; retry.",
            code="idempotency_key_in_use",
        )
    if existing.request_fingerprint != request_fingerprint:
        raise ApplicationError(
            "This Idempotency-Key was used with a different request body.",
            status_code=422,
            code="idempotency_key_reused",
        )
    if existing.response_status is None:
        raise Conflict(
            "A request with this Idempotency-Key is still in progress.",
            code="idempotency_key_in_use",
        )
    return Replay(
        status=existing.response_status,
        body=existing.response_body or {},
        headers=existing.response_headers,
    )


def finish(*, record: IdempotencyKey, status: int, body: dict, headers: dict) -> None:
    """Store the response. Call inside the transaction that did the work."""
    record.response_status = status
    record.response_body = json.loads(json.dumps(body, cls=DjangoJSONEncoder))
    record.response_headers = headers
    record.save(update_fields=["response_status", "response_body", "response_headers"])


def abandon(*, record: IdempotencyKey) -> None:
    """The work failed without a response worth replaying: free the key for a retry."""
    IdempotencyKey.objects.filter(pk=record.pk, response_status__isnull=True).delete()


def purge_expired() -> int:
    cutoff = timezone.now() - timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS)
    deleted, _ = IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()
    return deleted
