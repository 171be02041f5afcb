"""Reads."""

from datetime import datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Count, Exists, OuterRef, Prefetch, QuerySet
from django.utils import timezone

from .models import (
    TERMINAL_STATUSES,
    Order,
    OrderEvent,
    Product,
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
)


def product_list() -> QuerySet[Product]:
    return Product.objects.filter(is_active=True).order_by("sku")


def order_list(*, user: User) -> QuerySet[Order]:
    """The user's own orders, newest first; staff see everyone's."""
    qs = Order.objects.select_related("payment", "shipment").prefetch_related(
        "lines", Prefetch("events", queryset=OrderEvent.objects.order_by("at", "id"))
    )
    if not user.is_staff:
        qs = qs.filter(user=user)
    return qs.order_by("-created_at")


def order_get(*, user: User, order_id: UUID | str) -> Order | None:
    """None both when the order does not exist and when it is someone else's: the API must
    not reveal which."""
    return order_list(user=user).filter(pk=order_id).first()


def orders_stalled(*, now: datetime | None = None) -> QuerySet[Order]:
    """Unfinished orders with no progress (no status change, no timeline entry) for longer
    than ORDER_STALL_SECONDS: what the admin's "stalled" filter and the `orders_stalled`
    gauge show. Uses the (status, updated_at) index, then checks the timeline of the few."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.ORDER_STALL_SECONDS)
    recent = OrderEvent.objects.filter(order=OuterRef("pk"), at__gte=cutoff)
    return (
        Order.objects.exclude(status__in=TERMINAL_STATUSES)
        .filter(updated_at__lt=cutoff)
        .exclude(Exists(recent))
    )


def webhook_endpoint_list(*, user: User) -> QuerySet[WebhookEndpoint]:
    """The shop's own endpoints (staff too see only their own here: the admin shows all)."""
    return WebhookEndpoint.objects.filter(user=user).order_by("created_at", "id")


def webhook_endpoint_get(*, user: User, endpoint_id: int) -> WebhookEndpoint | None:
    """None both when it does not exist and when it is another shop's."""
    return webhook_endpoint_list(user=user).filter(pk=endpoint_id).first()


def webhook_waiting_by_endpoint() -> dict[int, int]:
    """Webhook events not delivered yet, per endpoint (the pending rows' partial index)."""
    return dict(
        WebhookDelivery.objects.filter(status=WebhookDeliveryStatus.PENDING)
        .order_by()
        .values_list("endpoint_id")
        .annotate(n=Count("id"))
        .values_list("endpoint_id", "n")
    )
