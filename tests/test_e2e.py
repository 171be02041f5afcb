"""The whole product as it runs in production: the web server and a worker as real
processes, a real SMTP server, and an order taken to `completed` over HTTP."""

import time

import pytest

from orders.models import Product
from orders.oauth import api_client_create
from tests.factories import ProductFactory, UserFactory, order_payload
from tests.helpers import (
    NO_PAYMENT_EXTRAS,
    api_session,
    client_credentials_token,
    gateway_ledger,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_an_order_placed_over_http_is_completed_by_a_worker_process(stack_factory):
    ProductFactory(sku="MUG-001", price="12.50", stock=10)
    ada = UserFactory(username="ada", email="ada@example.com")
    issued = api_client_create(user=ada, scopes=["orders:read", "orders:write"])
    stack = stack_factory(workers=1)

    api = api_session(
        client_credentials_token(stack.web_url, issued.client.client_id, issued.client_secret)
    )

    response = api.post(
        f"{stack.web_url}/api/orders/", json=order_payload(("MUG-001", 2)), timeout=10
    )
    assert response.status_code == 201, response.text
    order_id = response.json()["id"]
    assert response.json()["status"] == "pending"

    def completed():
        body = api.get(f"{stack.web_url}/api/orders/{order_id}/", timeout=10).json()
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    body = wait_for(completed, timeout=60, interval=0.25, what=f"order {order_id} to end")

    assert body["status"] == "completed", body
    steps = [(e["step"], e["outcome"]) for e in body["events"]]
    assert steps == [
        ("order", "created"),
        ("reserve_stock", "succeeded"),
        ("charge_payment", "succeeded"),
        ("create_shipment", "succeeded"),
        ("send_confirmation_email", "succeeded"),
        ("order", "succeeded"),
    ], stack.logs()
    assert body["payment"] == {
        "status": "captured",
        "amount": "25.00",
        "currency": "EUR",
        **NO_PAYMENT_EXTRAS,
    }
    assert body["shipment"]["carrier"] and body["shipment"]["label_url"]
    assert Product.objects.get(sku="MUG-001").stock == 8
    assert [(c["status"], c["refunded"]) for c in gateway_ledger(stack.web_url, order_id)] == [
        ("succeeded", False)
    ]

    time.sleep(1)  # a duplicate would arrive right behind the first message
    [message] = stack.smtp.messages
    assert message["Subject"] == f"Your order {order_id} is confirmed"
    assert message["To"] == "ada@example.com"
    assert message["Message-ID"] == f"<{order_id}.confirmation@orders.invalid>"
    assert body["shipment"]["tracking_number"] in message.get_payload()
