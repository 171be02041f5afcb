"""The sandbox providers' own books. They belong to the simulated third parties, not to the
order pipeline: the pipeline only reads them over HTTP."""

import uuid
from typing import Any

from django.db import models


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class SandboxCharge(models.Model):
    id = models.CharField(primary_key=True, max_length=40, editable=False)
    order = models.CharField(max_length=64, db_index=True)
    idempotency_key = models.CharField(max_length=255, unique=True)
    token = models.CharField(max_length=100)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16)  # captured or declined
    decline_code = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.id} {self.status} {self.amount} {self.currency}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.id:
            self.id = _new_id("ch")
        super().save(*args, **kwargs)


class SandboxRefund(models.Model):
    id = models.CharField(primary_key=True, max_length=40, editable=False)
    charge = models.OneToOneField(SandboxCharge, on_delete=models.CASCADE, related_name="refund")
    idempotency_key = models.CharField(max_length=255, unique=True)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.id} of {self.charge_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.id:
            self.id = _new_id("re")
        super().save(*args, **kwargs)


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
