"""The admin: a console, not a table editor.

Orders, their payment, shipment, reservations and timeline are read-only for every staff
user, superusers included. Staff change orders only through the actions below, which call
the same services as the API and the sweep and write a timeline entry naming the staff user;
each action needs its own permission (orders.cancel_order, orders.resume_order,
orders.fail_order). Stock changes only by adjustment (+n / -n), applied with an F() update,
by staff with orders.add_stockadjustment.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from . import (
    admin_clients,  # noqa: F401  registers the API clients' pages
    admin_webhooks,  # noqa: F401  registers the webhooks' pages
    crypto,
    privacy,
    recovery,
    services,
)
from .admin_site import ReadOnlyMixin
from .errors import ApplicationError, Conflict
from .models import (
    TERMINAL_STATUSES,
    IdempotencyKey,
    Notification,
    Order,
    OrderEvent,
    OrderLine,
    Payment,
    Product,
    ProviderEvent,
    Shipment,
    StockAdjustment,
)
from .selectors import orders_stalled
from .state import Actor
from .waterfall import waterfall_svg


# --- Products: stock only by adjustment ------------------------------------------------------
class ProductForm(forms.ModelForm):
    adjust_stock = forms.IntegerField(
        required=False,
        help_text="Units to add (+n, goods received) or take (-n, damaged or counted short). "
        "Applied to the stock as it is when you save, so reservations made meanwhile are kept.",
    )
    adjust_reason = forms.CharField(required=False, max_length=200)

    class Meta:
        model = Product
        fields = ["sku", "name", "price", "currency", "weight_grams", "is_active"]


class StockAdjustmentInline(ReadOnlyMixin, admin.TabularInline):
    model = StockAdjustment
    extra = 0
    fields = ("at", "delta", "stock_after", "user", "reason")
    readonly_fields = fields
    ordering = ("-at",)


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    form = ProductForm
    list_display = ("sku", "name", "price", "currency", "stock", "is_active")
    # Not `stock`: a list save writes back the number the page showed and would silently
    # undo every reservation made since the page loaded.
    list_editable = ("is_active",)
    list_filter = ("is_active", "currency")
    search_fields = ("sku", "name")
    readonly_fields = ("stock", "created_at", "updated_at")
    fields = (
        "sku",
        "name",
        "price",
        "currency",
        "weight_grams",
        "is_active",
        "stock",
        "adjust_stock",
        "adjust_reason",
        "created_at",
        "updated_at",
    )
    inlines = [StockAdjustmentInline]

    @staticmethod
    def _may_adjust(request: HttpRequest) -> bool:
        # Editing the catalogue (names, prices) and counting stock are different jobs: the
        # adjustment needs its own permission, not just change_product.
        return bool(request.user.has_perm("orders.add_stockadjustment"))

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = super().get_fields(request, obj)
        if self._may_adjust(request):
            return fields
        return [f for f in fields if f not in ("adjust_stock", "adjust_reason")]

    def save_model(
        self, request: HttpRequest, obj: Product, form: forms.ModelForm, change: bool
    ) -> None:
        if not change:
            obj.save()
        else:
            # Only the fields the form changed: `stock` is never written from a page.
            changed = [f for f in form.changed_data if f in ProductForm.Meta.fields]
            if changed:
                obj.save(update_fields=[*changed, "updated_at"])
        # The form class keeps its declared fields when the page hides them: a posted
        # adjustment is ignored, not applied, without the permission.
        delta = form.cleaned_data.get("adjust_stock") if self._may_adjust(request) else None
        if delta:
            try:
                adjustment = services.product_stock_adjust(
                    product_id=obj.pk,
                    delta=delta,
                    user=request.user if isinstance(request.user, User) else None,
                    reason=form.cleaned_data.get("adjust_reason") or "",
                )
            except ApplicationError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                return
            obj.stock = adjustment.stock_after
            self.message_user(
                request, f"Stock of {obj.sku} adjusted by {delta:+d}: now {adjustment.stock_after}."
            )


# --- Orders: read-only, changed through actions ---------------------------------------------
class StalledFilter(admin.SimpleListFilter):
    title = "progress"
    parameter_name = "progress"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("stalled", f"Stalled (no progress for {settings.ORDER_STALL_SECONDS}s)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Order]) -> QuerySet[Order]:
        if self.value() == "stalled":
            return queryset.filter(pk__in=orders_stalled().values("pk"))
        return queryset


class DisputedFilter(admin.SimpleListFilter):
    title = "payment"
    parameter_name = "payment"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("disputed", "Disputed"), ("refunded_outside", "Refunded at Stripe")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Order]) -> QuerySet[Order]:
        if self.value() == "disputed":
            return queryset.filter(payment__disputed_at__isnull=False)
        if self.value() == "refunded_outside":
            return queryset.filter(events__reason_code="refunded_outside").distinct()
        return queryset


class DeliveryProblemFilter(admin.SimpleListFilter):
    title = "delivery"
    parameter_name = "delivery"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("problem", "Delivery problem (returned, lost)"), ("delivered", "Delivered")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Order]) -> QuerySet[Order]:
        if self.value() == "problem":
            return queryset.filter(shipment__delivery_problem_at__isnull=False)
        if self.value() == "delivered":
            return queryset.filter(shipment__tracking_status="delivered")
        return queryset


class OrderLineInline(ReadOnlyMixin, admin.TabularInline):
    model = OrderLine
    extra = 0
    fields = ("sku", "product", "quantity", "unit_price", "reservation")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[OrderLine]:
        return super().get_queryset(request).select_related("product")


class PaymentInline(ReadOnlyMixin, admin.StackedInline):
    model = Payment
    extra = 0
    fields = (
        "status",
        "amount",
        "currency",
        "charge_id",
        "decline_code",
        "action_required_at",
        "amount_refunded",
        "refund_id",
        "disputed_at",
        "idempotency_key",
    )
    readonly_fields = fields


class ShipmentInline(ReadOnlyMixin, admin.StackedInline):
    model = Shipment
    extra = 0
    fields = (
        "label_status",
        "carrier",
        "service",
        "rate",
        "rate_currency",
        "tracking_number",
        "tracking_status",
        "tracking_updated_at",
        "delivery_problem_at",
        "label",
        "tracking_page",
        "carrier_reference",
        "tracker_id",
        "purchased_at",
        "created_at",
    )
    readonly_fields = fields

    @admin.display(description="label")
    def label(self, obj: Shipment) -> SafeString | str:
        return format_html('<a href="{}">label</a>', obj.label_url) if obj.label_url else "-"

    @admin.display(description="tracking page")
    def tracking_page(self, obj: Shipment) -> SafeString | str:
        if not obj.tracking_url:
            return "-"
        return format_html('<a href="{}">{}</a>', obj.tracking_url, obj.tracking_url)


class NotificationInline(ReadOnlyMixin, admin.TabularInline):
    model = Notification
    extra = 0
    fields = ("kind", "to", "sent_at", "created_at")
    readonly_fields = fields


def _task_links(event: OrderEvent) -> SafeString:
    if not event.task_id:
        return SafeString("")
    results = reverse("admin:django_celery_results_taskresult_changelist")
    return format_html(
        '<a href="{}?{}">result</a> · <a href="{}/task/{}">flower</a>',
        results,
        urlencode({"q": event.task_id}),
        settings.FLOWER_URL.rstrip("/"),
        event.task_id,
    )


def _actor(event: OrderEvent) -> str:
    return f"{event.actor_kind} {event.actor.get_username()}" if event.actor else event.actor_kind


@admin.register(Order)
class OrderAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "email", "status", "total", "currency", "created_at", "updated_at")
    list_filter = (StalledFilter, DisputedFilter, DeliveryProblemFilter, "status", "created_at")
    date_hierarchy = "created_at"
    # The order's own email is encrypted: a search for an address finds it by its blind
    # index (get_search_results), not by comparing ciphertext.
    search_fields = ("=id", "user__email", "user__username")
    search_help_text = "An order id, a customer's email (exact), or the account's email or name."
    list_select_related = ("user",)
    actions = ["cancel_orders", "resume_orders", "fail_orders", "erase_personal_data"]
    fieldsets = (
        ("Story", {"fields": ("story",)}),
        (None, {"fields": ("id", "user", "email", "status", "failure_reason", "anonymized_at")}),
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
        ("Timeline", {"fields": ("timeline",)}),
    )
    readonly_fields = (
        "story",
        "timeline",
        "id",
        "user",
        "email",
        "status",
        "failure_reason",
        "total",
        "currency",
        "payment_token",
        "ship_name",
        "ship_line1",
        "ship_city",
        "ship_postal_code",
        "ship_country",
        "created_at",
        "updated_at",
        "compensated_at",
        "anonymized_at",
    )
    inlines = [OrderLineInline, PaymentInline, ShipmentInline, NotificationInline]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff) and (
            super().has_view_permission(request, obj)
            or any(self._may(request, action) for action in ("cancel", "resume", "fail"))
        )

    def _events(self, obj: Order) -> list[OrderEvent]:
        if not hasattr(obj, "_admin_events"):
            obj._admin_events = list(  # type: ignore[attr-defined]
                obj.events.select_related("actor").order_by("at", "id")
            )
        return obj._admin_events  # type: ignore[attr-defined]

    @admin.display(description="Waterfall")
    def story(self, obj: Order) -> SafeString:
        return waterfall_svg(order=obj, events=self._events(obj))

    @admin.display(description="Timeline")
    def timeline(self, obj: Order) -> SafeString:
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>#{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{}</td><td>{}</td></tr>",
            (
                (
                    e.at.strftime("%H:%M:%S.%f")[:-3],
                    e.step,
                    e.outcome,
                    e.attempt,
                    e.status or "",
                    _actor(e),
                    e.reason_code,
                    e.detail,
                    _task_links(e),
                )
                for e in self._events(obj)
            ),
        )
        return format_html(
            '<div style="overflow-x:auto;max-width:100%"><table class="order-timeline">'
            "<thead><tr><th>at</th><th>step</th><th>outcome</th>"
            "<th>attempt</th><th>status</th><th>actor</th><th>reason</th><th>detail</th>"
            "<th>task</th></tr></thead><tbody>{}</tbody></table></div>",
            rows,
        )

    # --- actions ---------------------------------------------------------------------------
    @staticmethod
    def _may(request: HttpRequest, action: str) -> bool:
        return bool(request.user.has_perm(f"orders.{action}_order"))

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return self._may(request, "cancel")

    def has_resume_permission(self, request: HttpRequest) -> bool:
        return self._may(request, "resume")

    def has_fail_permission(self, request: HttpRequest) -> bool:
        return self._may(request, "fail")

    def has_erase_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("orders.erase_personal_data"))

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Order], search_term: str
    ) -> tuple[QuerySet[Order], bool]:
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        if "@" in search_term:
            found |= queryset.filter(email_hash=crypto.blind_index(search_term))
        return found, may_have_duplicates

    def _report(self, request: HttpRequest, verb: str, done: list[str], refused: list[str]) -> None:
        if done:
            self.message_user(request, f"{verb} {len(done)} order(s).", messages.SUCCESS)
        if refused:
            self.message_user(
                request,
                f"Not {verb.lower()} {len(refused)} order(s): " + "; ".join(refused),
                messages.WARNING,
            )

    @admin.action(description="Cancel selected orders", permissions=["cancel"])
    def cancel_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        actor = Actor.for_user(request.user)
        done, refused = [], []
        for order in queryset:
            if order.is_terminal:
                refused.append(f"{order.id} is {order.status}")
                continue
            try:
                services.order_cancel(order_id=order.id, actor=actor)
            except Conflict as exc:
                refused.append(f"{order.id}: {exc.message}")
            else:
                done.append(str(order.id))
        self._report(request, "Cancelled", done, refused)

    @admin.action(description="Resume selected orders", permissions=["resume"])
    def resume_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        actor = Actor.for_user(request.user)
        done, refused = [], []
        for order in queryset:
            if order.status in TERMINAL_STATUSES:
                refused.append(f"{order.id} is {order.status}")
                continue
            services.order_resume(
                order=order, actor=actor, detail=f"resumed at {order.status} by {actor.describe()}"
            )
            done.append(str(order.id))
        self._report(request, "Resumed", done, refused)

    @admin.action(description="Fail selected orders", permissions=["fail"])
    def fail_orders(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        actor = Actor.for_user(request.user)
        reason = f"failed by {request.user.get_username()}"
        done, refused = [], []
        for order in queryset:
            verdict = recovery.order_give_up(
                order=order, reason=reason, reason_code="failed_by_staff", actor=actor
            )
            if verdict == recovery.GiveUp.FAILED:
                done.append(str(order.id))
            else:
                refused.append(f"{order.id} ({order.status}): {GIVE_UP_WORDS[verdict]}")
        self._report(request, "Failed", done, refused)

    @admin.action(
        description="Erase personal data of selected orders (finished orders only)",
        permissions=["erase"],
    )
    def erase_personal_data(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        actor = Actor.for_user(request.user)
        done: list[str] = []
        refused: list[str] = []
        for order in queryset:
            try:
                erased = privacy.order_anonymize(
                    order_id=order.id, reason=privacy.Reason.REQUEST, actor=actor
                )
            except Conflict as exc:
                refused.append(exc.message)
            else:
                (done if erased else refused).append(
                    str(order.id) if erased else f"{order.id} was erased before"
                )
        self._report(request, "Erased", done, refused)


GIVE_UP_WORDS = {
    recovery.GiveUp.REFUSED: "it has ended or shipped, and a shipped order is never failed",
    recovery.GiveUp.BUSY: "its step is running right now; try again in a moment",
    recovery.GiveUp.SHIPPED: "the carrier holds its shipment, so it goes on to confirmation",
    recovery.GiveUp.UNKNOWN: "the carrier could not be asked whether it shipped; try again later",
}


@admin.register(Payment)
class PaymentAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "order",
        "status",
        "amount",
        "currency",
        "charge_id",
        "disputed_at",
        "updated_at",
    )
    list_filter = ("status", ("disputed_at", admin.EmptyFieldListFilter))
    search_fields = ("=order__id", "charge_id", "idempotency_key")


@admin.register(Shipment)
class ShipmentAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "order",
        "carrier",
        "service",
        "tracking_number",
        "tracking_status",
        "delivery_problem_at",
        "created_at",
    )
    list_filter = (
        "label_status",
        "tracking_status",
        ("delivery_problem_at", admin.EmptyFieldListFilter),
    )
    search_fields = ("=order__id", "tracking_number")


@admin.register(ProviderEvent)
class ProviderEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "event_id",
        "provider",
        "type",
        "order",
        "result",
        "received_at",
        "processed_at",
    )
    list_filter = ("provider", "type", "result")
    search_fields = ("=event_id", "=order__id")
    readonly_fields = (
        "provider",
        "event_id",
        "type",
        "order",
        "result",
        "received_at",
        "processed_at",
        "payload",
    )


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("key", "user", "response_status", "created_at")
    search_fields = ("key",)
