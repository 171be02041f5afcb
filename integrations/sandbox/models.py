"""The sandbox providers' own books. They belong to the simulated third parties, not to the
order pipeline: the pipeline only reads them over HTTP."""

import uuid
from typing import Any

from django.db import models


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class SandboxPaymentIntent(models.Model):
    """A PaymentIntent of the sandbox's Stripe; `as_json` is its wire format."""

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    amount = models.PositiveBigIntegerField()  # in the currency's minor unit, as Stripe's
    currency = models.CharField(max_length=3)
    payment_method = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=32)
    metadata = models.JSONField(default=dict)
    client_secret = models.CharField(max_length=100)
    latest_charge = models.CharField(max_length=40, blank=True)
    last_payment_error = models.JSONField(null=True, blank=True)
    cancellation_reason = models.CharField(max_length=40, blank=True)
    created = models.PositiveBigIntegerField()  # seconds since the epoch, as Stripe's
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.id} {self.status} {self.amount} {self.currency}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.id:
            self.id = _new_id("pi")
            self.client_secret = f"{self.id}_secret_{uuid.uuid4().hex[:24]}"
        super().save(*args, **kwargs)


class SandboxStripeRefund(models.Model):
    id = models.CharField(primary_key=True, max_length=40, editable=False)
    payment_intent = models.ForeignKey(
        SandboxPaymentIntent, on_delete=models.CASCADE, related_name="refunds"
    )
    amount = models.PositiveBigIntegerField()
    currency = models.CharField(max_length=3)
    metadata = models.JSONField(default=dict)
    reason = models.CharField(max_length=40, blank=True)
    created = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.id} of {self.payment_intent_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.id:
            self.id = _new_id("re")
        super().save(*args, **kwargs)


class SandboxIdempotentRequest(models.Model):
    """Stripe's idempotency layer: the first answer to a key, replayed for the same
    parameters, refused (idempotency_error) for others."""

    key = models.CharField(max_length=255, unique=True)
    fingerprint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True)  # null: still being worked on
    body = models.JSONField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.key


class SandboxStripeEvent(models.Model):
    """An event the sandbox's Stripe sent (or tries to send) to the webhook endpoint."""

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    type = models.CharField(max_length=64)
    body = models.JSONField()
    url = models.CharField(max_length=500)
    attempts = models.PositiveIntegerField(default=0)  # 0 when the first attempt delivered it
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.id} {self.type}"


class SandboxShipment(models.Model):
    id = models.CharField(primary_key=True, max_length=40, editable=False)
    order = models.CharField(max_length=64, db_index=True)
    idempotency_key = models.CharField(max_length=255, unique=True)
    tracking_number = models.CharField(max_length=40)
    address = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.id} {self.tracking_number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.id:
            self.id = _new_id("shp")
            self.tracking_number = "SBX" + uuid.uuid4().hex[:12].upper()
        super().save(*args, **kwargs)


class SandboxCallCount(models.Model):
    """How often a scripted token was called with one idempotency key (tok_flaky)."""

    key = models.CharField(max_length=300, unique=True)
    count = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.key}: {self.count}"
