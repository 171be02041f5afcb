from django.contrib import admin

from .models import (
    SandboxEasyPostEvent,
    SandboxEasyPostShipment,
    SandboxEasyPostTracker,
    SandboxPaymentIntent,
    SandboxStripeEvent,
    SandboxStripeRefund,
)


@admin.register(SandboxPaymentIntent)
class SandboxPaymentIntentAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "amount", "currency", "payment_method", "created_at")
    list_filter = ("status", "payment_method")
    search_fields = ("id", "metadata")


@admin.register(SandboxStripeRefund)
class SandboxStripeRefundAdmin(admin.ModelAdmin):
    list_display = ("id", "payment_intent", "amount", "currency", "created_at")


@admin.register(SandboxStripeEvent)
class SandboxStripeEventAdmin(admin.ModelAdmin):
    list_display = ("id", "type", "attempts", "delivered_at", "created_at")
    list_filter = ("type",)


@admin.register(SandboxEasyPostShipment)
class SandboxEasyPostShipmentAdmin(admin.ModelAdmin):
    list_display = ("id", "reference", "tracking_code", "created_at")
    search_fields = ("id", "reference", "tracking_code")


@admin.register(SandboxEasyPostTracker)
class SandboxEasyPostTrackerAdmin(admin.ModelAdmin):
    list_display = ("id", "tracking_code", "carrier", "status", "updated_at")
    list_filter = ("status",)
    search_fields = ("id", "tracking_code", "shipment__id")


@admin.register(SandboxEasyPostEvent)
class SandboxEasyPostEventAdmin(admin.ModelAdmin):
    list_display = ("id", "description", "tracker", "attempts", "delivered_at", "created_at")
    list_select_related = ("tracker",)
