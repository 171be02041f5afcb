from django.contrib import admin

from .models import SandboxCharge, SandboxRefund, SandboxShipment


@admin.register(SandboxCharge)
class SandboxChargeAdmin(admin.ModelAdmin):
    list_display = ("id", "order", "status", "amount", "currency", "token", "created_at")
    list_filter = ("status", "token")
    search_fields = ("id", "order", "idempotency_key")


@admin.register(SandboxRefund)
class SandboxRefundAdmin(admin.ModelAdmin):
    list_display = ("id", "charge", "amount", "created_at")


@admin.register(SandboxShipment)
class SandboxShipmentAdmin(admin.ModelAdmin):
    list_display = ("id", "order", "tracking_number", "created_at")
    search_fields = ("id", "order", "tracking_number")
