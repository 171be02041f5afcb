"""Reads."""

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Prefetch, QuerySet

from .models import Order, OrderEvent, Product


def product_list() -> QuerySet[Product]:
    return Product.objects.filter(is_active=True).order_by("sku")


def order_list(*, user: AbstractBaseUser) -> QuerySet[Order]:
    """The user's own orders, newest first; staff see everyone's."""
    qs = Order.objects.select_related("payment", "shipment").prefetch_related(
        "lines", Prefetch("events", queryset=OrderEvent.objects.order_by("at", "id"))
    )
    if not user.is_staff:
        qs = qs.filter(user=user)
    return qs.order_by("-created_at")


def order_get(*, user: AbstractBaseUser, order_id) -> Order | None:
    """None both when the order does not exist and when it is someone else's: the API must
    not reveal which."""
    return order_list(user=user).filter(pk=order_id).first()
