from django.contrib import admin

from .models import SandboxPaymentIntent, SandboxShipment, SandboxStripeEvent, SandboxStripeRefund


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


@admin.register(SandboxShipment)
class SandboxShipmentAdmin(admin.ModelAdmin):
    list_display = ("id", "order", "tracking_number", "created_at")
    search_fields = ("id", "order", "tracking_number")
