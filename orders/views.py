"""Operational endpoints: health and Prometheus metrics."""

from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from .models import Order, OrderStatus


def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


def metrics(request: HttpRequest) -> HttpResponse:
    """Orders by status, read from the database at scrape time, so every web process
    reports the same numbers."""
    registry = CollectorRegistry()
    gauge = Gauge("orders_by_status", "Orders in each status", ["status"], registry=registry)
    counts = dict(
        Order.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n")
    )
    for status in OrderStatus.values:
        gauge.labels(status=status).set(counts.get(status, 0))
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
