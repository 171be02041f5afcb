"""Operational endpoints: liveness, health of every component, Prometheus metrics."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge

from config.broker import queue_depths
from config.celery import app as celery_app

from . import metrics as order_metrics
from .models import TERMINAL_STATUSES, Order
from .selectors import orders_stalled, webhook_waiting_by_endpoint


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers and reaches its database. Cheap enough for a load
    balancer to call every second."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


def _timed(check: Callable[[], Any]) -> dict[str, Any]:
    started = time.monotonic()
    try:
        detail = check()
    except Exception as exc:  # noqa: BLE001 - any failure of a component means it is down
        return {"up": False, "error": f"{exc.__class__.__name__}: {exc}"[:300]}
    result: dict[str, Any] = {
        "up": True,
        "latency_ms": round((time.monotonic() - started) * 1000, 1),
    }
    if isinstance(detail, dict):
        result.update(detail)
    return result


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis(url: str) -> Callable[[], None]:
    def ping() -> None:
        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()

    return ping


def _broker(url: str) -> Callable[[], None]:
    def connect() -> None:
        # One attempt with a short timeout: a health check must answer, not wait for the broker.
        # The workers' TLS settings: an amqps:// broker is checked against the same CA.
        with Connection(url, connect_timeout=1, ssl=settings.CELERY_BROKER_USE_SSL) as conn:
            conn.connect()

    return connect


def _workers() -> dict[str, Any]:
    replies = celery_app.control.ping(timeout=1.0)
    if not replies:
        raise RuntimeError("no Celery worker answered a ping within 1 s")
    return {"workers": sorted(name for reply in replies for name in reply)}


def api_health(request: HttpRequest) -> JsonResponse:
    """Readiness of the whole pipeline: PostgreSQL, the broker, the locks' Redis, and at
    least one Celery worker answering a ping within a second. 200 with each component's
    state and latency; 503 naming what is down."""
    components = {"database": _timed(_database)}
    components["broker"] = _timed(_broker(settings.CELERY_BROKER_URL))
    components["locks"] = _timed(_redis(settings.LOCK_REDIS_URL))
    components["workers"] = _timed(_workers)
    down = sorted(name for name, state in components.items() if not state["up"])
    body = {"status": "down" if down else "ok", "down": down, "components": components}
    response = JsonResponse(body, status=503 if down else 200)
    if down:
        response["Retry-After"] = "5"
    return response


def _authorized(request: HttpRequest) -> bool:
    if not settings.METRICS_REQUIRE_TOKEN:
        return True
    token = settings.METRICS_TOKEN
    sent = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


def metrics(request: HttpRequest) -> HttpResponse:
    """Every process's counters and histograms (orders/metrics.py), and gauges read now: the
    unfinished orders by status and the stalled ones (both through the status index), and
    the depth of each Celery queue. In production only with `Authorization: Bearer
    <METRICS_TOKEN>`; anyone else, and everyone while METRICS_TOKEN is unset, gets a 404."""
    if not _authorized(request):
        raise Http404
    gauges = CollectorRegistry()
    in_progress = Gauge(
        "orders_in_progress", "Unfinished orders by status", ["status"], registry=gauges
    )
    counts = dict(
        Order.objects.exclude(status__in=TERMINAL_STATUSES)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    for status, count in counts.items():
        in_progress.labels(status=status).set(count)
    Gauge(
        "orders_stalled",
        f"Unfinished orders without progress for {settings.ORDER_STALL_SECONDS} s",
        registry=gauges,
    ).set(orders_stalled().count())
    depth = Gauge(
        "celery_queue_length", "Messages waiting in a Celery queue", ["queue"], registry=gauges
    )
    for queue, count in queue_depths(
        settings.CELERY_BROKER_URL, settings.ORDER_QUEUES, use_ssl=settings.CELERY_BROKER_USE_SSL
    ).items():
        depth.labels(queue=queue).set(count)
    waiting = Gauge(
        "webhook_events_waiting",
        "Webhook events not delivered yet (pending), per endpoint",
        ["endpoint"],
        registry=gauges,
    )
    for endpoint_id, count in webhook_waiting_by_endpoint().items():
        waiting.labels(endpoint=str(endpoint_id)).set(count)
    return HttpResponse(order_metrics.exposition(extra=gauges), content_type=CONTENT_TYPE_LATEST)
