"""The shops' webhook endpoints: register, change, delete, rotate the signing secret; and
staff's resend of a delivery. The API and the admin act through these.

A URL is checked when it is registered or changed (integrations/webhook_sender.py's
check_url: https only, and every address it resolves to public, unless
WEBHOOK_ALLOW_PRIVATE_URLS), and again at every delivery against the address connected to.
"""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from integrations.webhook_sender import UnsafeURL, check_url

from . import dispatch
from .errors import ApplicationError, Conflict
from .models import WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint

# Random bytes in a secret (Standard Webhooks: 24 to 64).
SECRET_BYTES = 32
# After a rotation the previous secret signs too, for this long.
ROTATION_OVERLAP = timedelta(hours=24)
# Endpoints per shop: each event is written and posted once per endpoint.
MAX_ENDPOINTS_PER_SHOP = 10


def secret_new() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def url_check(url: str) -> None:
    """ApplicationError (400, on `url`) for a URL that may not receive webhooks."""
    try:
        check_url(url, allow_private=settings.WEBHOOK_ALLOW_PRIVATE_URLS)
    except UnsafeURL as exc:
        raise ApplicationError(
            "This URL cannot receive webhooks.", fields={"url": [str(exc)]}
        ) from None


def endpoint_create(*, user: User, url: str, events: list[str]) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint. Returns it and its secret, which is not shown again."""
    url_check(url)
    with transaction.atomic():
        # The shop's endpoints locked: two registrations at once cannot pass the limit.
        count = len(WebhookEndpoint.objects.select_for_update().filter(user=user).values_list("pk"))
        if count >= MAX_ENDPOINTS_PER_SHOP:
            raise ApplicationError(
                f"A shop may have at most {MAX_ENDPOINTS_PER_SHOP} webhook endpoints.",
                code="too_many_endpoints",
            )
        secret = secret_new()
        endpoint = WebhookEndpoint.objects.create(
            user=user, url=url, events=_unique(events), secret=secret
        )
    return endpoint, secret


def _unique(events: list[str]) -> list[str]:
    return list(dict.fromkeys(events))


def endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    events: list[str] | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    """Change the URL, the events, or enable/disable. Enabling clears the reason it was
    disabled and delivers what waited meanwhile (within its retry window)."""
    if url is not None and url != endpoint.url:
        url_check(url)
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        if url is not None:
            endpoint.url = url
        if events is not None:
            endpoint.events = _unique(events)
        if enabled is True and not endpoint.enabled:
            endpoint.enabled, endpoint.disabled_reason, endpoint.disabled_at = True, "", None
            endpoint.failing_since = None
            dispatch.webhooks_deliver(endpoint_ids=[endpoint.pk])
        elif enabled is False and endpoint.enabled:
            endpoint.enabled, endpoint.disabled_reason = False, "shop"
            endpoint.disabled_at = timezone.now()
        endpoint.save()
    return endpoint


def endpoint_delete(*, endpoint: WebhookEndpoint) -> None:
    """Delete the endpoint with its deliveries and their log."""
    endpoint.delete()


def endpoint_secret_rotate(*, endpoint: WebhookEndpoint) -> tuple[WebhookEndpoint, str]:
    """A new secret, returned once; the current one keeps signing beside it for
    ROTATION_OVERLAP, so the shop can switch its verification without losing an event."""
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        secret = secret_new()
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = timezone.now() + ROTATION_OVERLAP
        endpoint.secret = secret
        endpoint.save()
    return endpoint, secret


def delivery_resend(*, delivery_id: int) -> WebhookDelivery:
    """Post a delivery again (staff's admin action), as it was: the same webhook-id and
    body, retried for a new WEBHOOK_RETRY_HOURS. Conflict if its endpoint is disabled or
    its body was erased with its order's personal data."""
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(of=("self",))
            .select_related("endpoint")
            .get(pk=delivery_id)
        )
        if not delivery.endpoint.enabled:
            raise Conflict("The endpoint is disabled: enable it first.", code="endpoint_disabled")
        if not delivery.body:
            raise Conflict("The event's data was erased: it cannot be sent.", code="erased")
        now = timezone.now()
        delivery.status = WebhookDeliveryStatus.PENDING
        delivery.next_attempt_at, delivery.locked_until = now, None
        delivery.expires_at = now + timedelta(hours=settings.WEBHOOK_RETRY_HOURS)
        delivery.save(update_fields=["status", "next_attempt_at", "locked_until", "expires_at"])
        dispatch.webhooks_deliver(endpoint_ids=[delivery.endpoint_id])
    return delivery
