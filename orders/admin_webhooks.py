"""The shops' webhooks in the admin: every endpoint and every delivery with its attempts,
read-only (secrets never shown); staff with orders.resend_webhook resend a delivery through
the same service the API's world uses (orders/webhooks.py). Imported by orders/admin.py."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import webhooks
from .admin_site import ReadOnlyMixin
from .errors import ApplicationError
from .models import WebhookAttempt, WebhookDelivery, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "user", "url", "enabled", "disabled_reason", "failing_since"]
    list_filter = ["enabled", "disabled_reason"]
    search_fields = ["url", "user__username"]
    # The secrets are never shown, not even encrypted.
    fields = (
        "user",
        "url",
        "events",
        "enabled",
        "disabled_reason",
        "disabled_at",
        "failing_since",
        "previous_secret_expires_at",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields


class WebhookAttemptInline(ReadOnlyMixin, admin.TabularInline):
    model = WebhookAttempt
    fields = ("at", "status_code", "elapsed_ms", "error")
    readonly_fields = fields
    extra = 0


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "event_id",
        "type",
        "endpoint",
        "order",
        "status",
        "attempts",
        "last_status_code",
        "created_at",
        "delivered_at",
    ]
    list_filter = ["status", "type"]
    search_fields = ["event_id", "order__id"]
    list_select_related = ["endpoint"]
    fields = (
        "event_id",
        "type",
        "endpoint",
        "order",
        "status",
        "attempts",
        "next_attempt_at",
        "expires_at",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
        "body",
    )
    readonly_fields = fields
    inlines = [WebhookAttemptInline]
    actions = ["resend"]

    def has_resend_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("orders.resend_webhook"))

    @admin.action(description="Resend selected deliveries", permissions=["resend"])
    def resend(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        done, refused = 0, []
        for delivery in queryset:
            try:
                webhooks.delivery_resend(delivery_id=delivery.pk)
            except ApplicationError as exc:
                refused.append(f"{delivery.event_id}: {exc.message}")
            else:
                done += 1
        if done:
            self.message_user(request, f"Resending {done} delivery(ies).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not resent: " + "; ".join(refused), messages.WARNING)
