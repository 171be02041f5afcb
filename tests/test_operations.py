"""What an on-call engineer relies on: /metrics (every process's figures, closed in
production), /api/health/ (each component, 503 naming the one that is down), and the API
under outages: Redis down (throttling fails open, orders are accepted and start once the
broker is back) and PostgreSQL down (503 with Retry-After, never a 500)."""

import json
import re
import time

import pytest
import requests
from django.db import OperationalError
from django.test import RequestFactory

from orders.middleware import DatabaseUnavailableMiddleware
from orders.models import Order, PendingDispatch
from tests.factories import ProductFactory, UserFactory, order_payload, token_for
from tests.helpers import (
    api_session,
    gateway_ledger,
    place,
    wait_for,
    wait_for_order,
    wait_for_orders,
)


def _sample(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 if absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = ",".join(sorted(filter(None, (match.group(2) or "").split(","))))
        if got == wanted:
            return float(match.group(3))
    return 0.0


# --- /metrics -------------------------------------------------------------------------------
def test_metrics_count_what_the_pipeline_did(live_api, mug):
    before = requests.get(f"{live_api.base_url}/metrics", timeout=10).text

    order = wait_for_order(place(live_api, order_payload(("MUG-001", 1)))["id"])
    assert order.status == "completed"
    after = wait_for(
        lambda: (
            (text := requests.get(f"{live_api.base_url}/metrics", timeout=10).text)
            and _sample(text, "orders_finished_total", status="completed")
            > _sample(before, "orders_finished_total", status="completed")
            and text
        ),
        timeout=10,
        what="the completion to be counted",
    )

    def grew(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert grew("orders_created_total") == 1
    assert grew("orders_finished_total", status="completed") == 1
    for step in ("reserve_stock", "charge_payment", "create_shipment", "send_confirmation_email"):
        assert grew("order_step_duration_seconds_count", step=step, outcome="succeeded") == 1
    assert "orders_stalled 0.0" in after
    for queue in ("orders.stock", "orders.payments", "orders.shipping", "orders.email"):
        assert f'celery_queue_length{{queue="{queue}"}}' in after


@pytest.mark.parametrize(
    ("token", "sent", "status"),
    [
        ("", "", 404),
        ("", "Bearer ", 404),
        ("s3cret", "", 404),
        ("s3cret", "Bearer nope", 404),
        ("s3cret", "Bearer s3cret", 200),
    ],
)
def test_metrics_in_production_need_the_bearer_token(client, db, settings, token, sent, status):
    settings.METRICS_REQUIRE_TOKEN = True
    settings.METRICS_TOKEN = token
    headers = {"HTTP_AUTHORIZATION": sent} if sent else {}

    assert client.get("/metrics", **headers).status_code == status


# --- /api/health/ -----------------------------------------------------------------------------
def test_health_is_200_when_every_component_answers(pipeline, client):
    response = client.get("/api/health/")

    body = response.json()
    assert response.status_code == 200, body
    assert body["down"] == []
    assert set(body["components"]) == {"database", "broker", "locks", "workers"}
    assert all(c["up"] and c["latency_ms"] >= 0 for c in body["components"].values())
    assert body["components"]["workers"]["workers"]


def test_health_is_503_naming_what_is_down(client, db, settings):
    settings.LOCK_REDIS_URL = "redis://127.0.0.1:9/0"  # the discard port: refused

    response = client.get("/api/health/")

    assert response.status_code == 503
    assert "locks" in response.json()["down"]
    assert response["Retry-After"]


# --- The database down -----------------------------------------------------------------------
def test_a_request_that_cannot_reach_the_database_is_a_503_in_the_error_shape():
    def view(request):
        raise OperationalError("connection to server at 127.0.0.1:5432 failed")

    middleware = DatabaseUnavailableMiddleware(view)
    request = RequestFactory().post("/api/orders/")

    response = middleware.process_exception(request, OperationalError("down"))

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert json.loads(response.content)["code"] == "service_unavailable"
    assert middleware.process_exception(request, ValueError("a bug")) is None  # still a 500


# --- Redis down under the API, on real processes ----------------------------------------------
@pytest.mark.slow
def test_orders_placed_while_redis_is_down_are_accepted_and_start_when_it_is_back(stack_factory):
    """Redis (broker, locks, throttle counters) stops. Expected: 20 orders placed over HTTP
    are all accepted (201), the throttle lets them through, /api/health/ answers 503 naming
    the broker, and the dispatch each could not send is kept; once Redis is back the relay
    sends them (long before the 300 s stall sweep could), and every one completes once."""
    ProductFactory(sku="MUG-001", price="12.50", stock=100)
    stack = stack_factory(
        env={"ORDER_DISPATCH_RELAY_SECONDS": "1", "THROTTLE_ORDER_CREATE_RATE": "1000/min"},
        workers=1,
        beat=True,
        broker="redis",  # Redis as broker too: everything it serves goes down at once
    )
    api = api_session(token_for(user=UserFactory()).key, stack.web_url)

    stack.redis.stop()
    responses = [
        api.post(
            f"{stack.web_url}/api/orders/",
            json=order_payload(("MUG-001", 1)),
            headers={"Idempotency-Key": f"down-{i}"},
            timeout=30,
        )
        for i in range(20)
    ]
    health = requests.get(f"{stack.web_url}/api/health/", timeout=30)
    pending = PendingDispatch.objects.count()
    replay = api.post(
        f"{stack.web_url}/api/orders/",
        json=order_payload(("MUG-001", 1)),
        headers={"Idempotency-Key": "down-0"},
        timeout=30,
    )
    stack.redis.start()
    back = time.monotonic()
    ids = [r.json()["id"] for r in responses]
    with stack.supervising():  # celery 5.7: a worker may exit when its broker goes away
        orders = wait_for_orders(ids, timeout=120)
    took = time.monotonic() - back

    assert [r.status_code for r in responses] == [201] * 20
    assert health.status_code == 503 and "broker" in health.json()["down"]
    assert pending == 20
    assert replay.status_code == 201 and replay.json()["id"] == ids[0]  # kept in PostgreSQL
    assert [o.status for o in orders] == ["completed"] * 20
    assert took < 60  # the relay, not the 300 s stall sweep
    assert Order.objects.count() == 20
    for order_id in ids:
        assert [c["status"] for c in gateway_ledger(stack.web_url, order_id)] == ["succeeded"]
    assert sorted(stack.smtp.subjects()) == sorted(f"Your order {i} is confirmed" for i in ids)
    assert PendingDispatch.objects.count() == 0
    assert "not throttling" in stack.web.log()
    # The figures of every gunicorn and prefork pool process, added up on /metrics.
    metrics = requests.get(f"{stack.web_url}/metrics", timeout=10).text
    assert _sample(metrics, "orders_created_total") == 20  # counted in the web processes
    assert _sample(metrics, "orders_finished_total", status="completed") == 20  # in the pool's
    assert _sample(metrics, "throttle_fail_open_total", scope="order_create") >= 20


# --- The dashboard and the alerts ---------------------------------------------------------
def test_every_metric_the_dashboard_and_the_alerts_name_is_exported(client, db):
    from pathlib import Path

    import yaml

    from orders import metrics as order_metrics

    deploy = Path(__file__).resolve().parent.parent / "deploy"
    dashboard = json.loads((deploy / "grafana" / "orders.json").read_text())
    alerts = yaml.safe_load((deploy / "prometheus" / "alerts.yml").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    named = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for expr in expressions
        for name in re.findall(r"\b((?:orders?|celery|throttle|sign_in|webhook)_[a-z_]+)\b", expr)
    }
    exported = {
        m._name for m in vars(order_metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")
    }
    exported |= set(re.findall(r"^# HELP (\S+)", client.get("/metrics").content.decode(), re.M))
    exported = {re.sub(r"_total$", "", name) for name in exported}

    assert len(named) >= 8
    assert {re.sub(r"_total$", "", name) for name in named} <= exported
    assert {a["alert"] for g in alerts["groups"] for a in g["rules"]} == {
        "OrdersStalled",
        "OrderFailureRatioHigh",
        "CeleryQueueGrowing",
        "NoWorkerConsuming",
        "SignInLockouts",
        "WebhookBacklogGrowing",
        "WebhookDeliveriesFailing",
    }
