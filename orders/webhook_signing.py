"""Signing the shops' webhooks as the Standard Webhooks specification says: `webhook-id`,
`webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256>` of
"{id}.{timestamp}.{body}"), so that any library that follows it verifies them."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from .models import WebhookEndpoint


def signature(endpoint: WebhookEndpoint, *, event_id: str, at: datetime, body: str) -> str:
    """`v1,<sig>`; during the 24 hours after a rotation also the previous secret's, space
    separated (the specification allows several), so a shop can switch at its own pace."""
    signatures = [Webhook(endpoint.secret).sign(event_id, at, body)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and timezone.now() < expires:
        signatures.append(Webhook(endpoint.previous_secret).sign(event_id, at, body))
    return " ".join(signatures)


def headers_for(endpoint: WebhookEndpoint, *, event_id: str, body: str) -> dict[str, str]:
    # The timestamp is the attempt's: a receiver refuses one older than five minutes.
    at = timezone.now().replace(microsecond=0)
    return {
        "Content-Type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature(endpoint, event_id=event_id, at=at, body=body),
    }
