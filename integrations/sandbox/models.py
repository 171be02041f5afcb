"""The sandbox providers' own books. They belong to the simulated third parties, not to the
order pipeline: the pipeline only reads them over HTTP."""

import uuid
from typing import Any

from django.db import models


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class _ProviderObject(models.Model):
    """An object whose id the provider makes, when it is first saved (`new_id`)."""

    id = models.CharField(primary_key=True, max_length=40, editable=False)

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.id:
            self.id = self.new_id()
            # A new id is a new row, and save() says so: left to guess, Django first tries an
            # UPDATE of that id, as for every primary key without a default, then inserts.
            kwargs.setdefault("force_insert", True)
        super().save(*args, **kwargs)

    def new_id(self) -> str:
        raise NotImplementedError


class SandboxPaymentIntent(_ProviderObject):
    """A PaymentIntent of the sandbox's Stripe; `as_json` is its wire format."""

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

    def new_id(self) -> str:
        made = _new_id("pi")
        self.client_secret = f"{made}_secret_{uuid.uuid4().hex[:24]}"  # made with its id
        return made


class SandboxStripeRefund(_ProviderObject):
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

    def new_id(self) -> str:
        return _new_id("re")


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


class SandboxCallCount(models.Model):
    """How often a scripted token was called with one idempotency key (tok_flaky)."""

    key = models.CharField(max_length=300, unique=True)
    count = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.key}: {self.count}"


# --- The sandbox's EasyPost (integrations/sandbox/easypost.py) ------------------------------
def hex_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"  # EasyPost's ids: a prefix and 32 hex digits


class SandboxEasyPostShipment(_ProviderObject):
    """A Shipment of the sandbox's EasyPost. The nested objects it was created with (its
    addresses, parcel, rates) are kept as their wire format: they never change."""

    reference = models.CharField(max_length=255, blank=True, db_index=True)
    to_address = models.JSONField()
    from_address = models.JSONField()
    parcel = models.JSONField()
    rates = models.JSONField(default=list)
    selected_rate = models.JSONField(null=True, blank=True)
    postage_label = models.JSONField(null=True, blank=True)
    tracking_code = models.CharField(max_length=40, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # The list's order and its `before_id` cursor: newest first, ties broken by id.
        indexes = [models.Index(fields=["-created_at", "-id"], name="sandbox_ep_shp_newest")]

    def __str__(self) -> str:
        return f"{self.id} {self.reference} {self.tracking_code or 'unbought'}"

    def new_id(self) -> str:
        return hex_id("shp")


class SandboxEasyPostTracker(_ProviderObject):
    """The Tracker of a bought shipment; `route` is what its status is still to become."""

    shipment = models.OneToOneField(
        SandboxEasyPostShipment, on_delete=models.CASCADE, related_name="tracker"
    )
    tracking_code = models.CharField(max_length=40, unique=True)
    carrier = models.CharField(max_length=40)
    status = models.CharField(max_length=32)
    route = models.JSONField(default=list)
    tracking_details = models.JSONField(default=list)
    webhook_url = models.CharField(max_length=500)  # the buy request's own, if none is set
    public_url = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.id} {self.tracking_code} {self.status}"

    def new_id(self) -> str:
        return hex_id("trk")


class SandboxEasyPostEvent(models.Model):
    """An event the sandbox's EasyPost sent (or tries to send) to the webhook endpoint."""

    id = models.CharField(primary_key=True, max_length=40, editable=False)
    tracker = models.ForeignKey(
        SandboxEasyPostTracker, on_delete=models.CASCADE, related_name="events"
    )
    description = models.CharField(max_length=64)
    body = models.JSONField()
    url = models.CharField(max_length=500)
    attempts = models.PositiveIntegerField(default=0)  # 0 when the first attempt delivered it
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.id} {self.description}"
