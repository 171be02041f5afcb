from django.contrib import admin

from .models import (
    IdempotencyKey,
    Notification,
    Order,
    OrderEvent,
    OrderLine,
    Payment,
    Product,
    Shipment,
)


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "price", "currency", "stock", "is_active")
    list_editable = ("stock", "is_active")
    list_filter = ("is_active", "currency")
    search_fields = ("sku", "name")


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    fields = ("sku", "product", "quantity", "unit_price", "reservation")
    readonly_fields = ("sku", "product", "unit_price", "reservation")


class PaymentInline(admin.StackedInline):
    model = Payment
    extra = 0
    readonly_fields = ("idempotency_key", "charge_id", "refund_id", "created_at", "updated_at")


class ShipmentInline(admin.StackedInline):
    model = Shipment
    extra = 0
    readonly_fields = ("created_at",)


class NotificationInline(admin.TabularInline):
    model = Notification
    extra = 0
    readonly_fields = ("kind", "to", "sent_at", "created_at")


class OrderEventInline(admin.TabularInline):
    """The timeline, oldest first. Written by the workflow only."""

    model = OrderEvent
    extra = 0
    fields = ("at", "step", "outcome", "attempt", "detail")
    readonly_fields = fields
    can_delete = False
    ordering = ("at", "id")

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "email", "status", "total", "currency", "created_at", "updated_at")
    list_filter = ("status", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("=id", "email", "user__email", "user__username")
    list_select_related = ("user",)
    readonly_fields = (
        "id",
        "user",
        "total",
        "currency",
        "created_at",
        "updated_at",
        "compensated_at",
    )
    inlines = [OrderLineInline, PaymentInline, ShipmentInline, NotificationInline, OrderEventInline]
    fieldsets = (
        (None, {"fields": ("id", "user", "email", "status", "failure_reason")}),
        ("Amount", {"fields": ("total", "currency", "payment_token")}),
        (
            "Ship to",
            {
                "fields": (
                    "ship_name",
                    "ship_line1",
                    "ship_city",
                    "ship_postal_code",
                    "ship_country",
                )
            },
        ),
        ("Times", {"fields": ("created_at", "updated_at", "compensated_at")}),
    )


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ("order", "status", "amount", "currency", "charge_id", "updated_at")
    list_filter = ("status",)
    search_fields = ("=order__id", "charge_id", "idempotency_key")
    readonly_fields = ("order", "idempotency_key")


@admin.register(Shipment)
class ShipmentAdmin(admin.ModelAdmin):
    list_display = ("order", "carrier", "tracking_number", "created_at")
    search_fields = ("=order__id", "tracking_number")
    readonly_fields = ("order",)


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(admin.ModelAdmin):
    list_display = ("key", "user", "response_status", "created_at")
    search_fields = ("key",)
    readonly_fields = (
        "user",
        "key",
        "request_fingerprint",
        "response_status",
        "response_body",
        "response_headers",
        "created_at",
    )
