"""Reads."""

import json
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, models
from django.db.models import Count, Exists, OuterRef, Prefetch, QuerySet
from django.utils import timezone

from . import statements
from .crypto import EncryptedJSONField, EncryptedTextField
from .models import (
    TERMINAL_STATUSES,
    Order,
    OrderEvent,
    OrderLine,
    Payment,
    Product,
    Shipment,
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


def order_whole(order_id: UUID | str) -> Order:
    """The order with its payment, shipment, lines and timeline (ordered as order_list has
    them), for any user, in one query whose SQL is built once per process: the payment and
    the shipment come as JSON objects, the lines and the timeline as JSON arrays, built by
    PostgreSQL and turned into model instances here. The webhooks' outbox reads an order
    this way at every event, inside the transaction of the change: order_list's prefetches
    took three round trips, and building the ORM's query most of what was left."""
    with connection.cursor() as cursor:
        cursor.execute(_order_whole_sql(), [order_id])
        row = cursor.fetchone()
    if row is None:
        raise Order.DoesNotExist(f"no order {order_id}")
    order = statements.from_row(Order, row)
    payment_json, shipment_json, lines_json, events_json = row[-4:]
    for name, one, text in (
        ("payment", Payment, payment_json),
        ("shipment", Shipment, shipment_json),
    ):
        # What select_related leaves: the object (None: none exists) both ways round.
        related = None if text is None else _from_json_row(one, json.loads(text))
        if related is not None:
            related._state.fields_cache["order"] = order
        order._state.fields_cache[name] = related
    for name, many, rows in (
        ("lines", OrderLine, lines_json),
        ("events", OrderEvent, events_json),
    ):
        found = [_from_json_row(many, row) for row in _json_rows(rows)]
        cached = getattr(order, name).all()
        # What prefetch_related leaves: the related manager answers from this list.
        cached._result_cache, cached._prefetch_done = found, True
        order.__dict__.setdefault("_prefetched_objects_cache", {})[name] = cached
    return order


@cache
def _order_whole_sql() -> str:
    order = Order._meta.db_table
    tables = {m: m._meta.db_table for m in (Payment, Shipment, OrderLine, OrderEvent)}
    return (
        f"SELECT {statements.columns(Order)}, "
        f"(SELECT row_to_json(p)::text FROM {tables[Payment]} p WHERE p.order_id = {order}.id), "
        f"(SELECT row_to_json(s)::text FROM {tables[Shipment]} s WHERE s.order_id = {order}.id), "
        f"(SELECT json_agg(l ORDER BY l.id)::text FROM {tables[OrderLine]} l "
        f"WHERE l.order_id = {order}.id), "
        f"(SELECT json_agg(e ORDER BY e.at, e.id)::text FROM {tables[OrderEvent]} e "
        f"WHERE e.order_id = {order}.id) "
        f"FROM {order} WHERE {order}.id = %s"
    )


def _json_rows(rows: Any) -> list[dict]:
    """json_agg's array, none for an order without lines or events. Parsed as Django's
    JSONField parses a jsonb column's text (so a JSONField's numbers come out alike); a
    numeric column's number becomes a float on the way, exact for the digits a
    DecimalField holds (at most 15), and _from_json_row turns it back."""
    return [] if rows is None else json.loads(rows)


def _from_json_row(model: type[models.Model], row: dict) -> Any:
    """A model instance from row_to_json's object: each column turned back into what the
    database driver and the field's from_db_value would have given."""
    fields = model._meta.concrete_fields
    values = []
    for field in fields:
        value = row.get(field.column)
        if value is not None:
            if isinstance(field, EncryptedTextField | EncryptedJSONField):
                value = field.from_db_value(value, None, connection)
            elif isinstance(field, models.DecimalField):
                value = Decimal(repr(value))  # the shortest digits that are this float
            elif not isinstance(field, models.JSONField):  # jsonb comes parsed
                value = field.to_python(value)
        values.append(value)
    return model.from_db(connection.alias, [f.attname for f in fields], values)


def order_weight_grams(order_id: UUID | str) -> int:
    """The order's parcel: each line's quantity times its product's weight, summed in one
    statement (read on every shipment)."""
    line, product = OrderLine._meta, Product._meta
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COALESCE(SUM(line.quantity * product.weight_grams), 0) "
            f"FROM {line.db_table} line JOIN {product.db_table} product "
            f"ON product.id = line.product_id WHERE line.order_id = %s",
            [Order._meta.pk.get_db_prep_value(order_id, connection)],
        )
        return int(cursor.fetchone()[0])


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
