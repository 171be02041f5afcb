"""One order's story across processes: the client's X-Request-ID is echoed, and every log
line the web server and the worker processes write for the order carries it, with the
order's id and, in workers, the task's id and name (JSON lines, LOG_FORMAT=json)."""

import json

import pytest

from tests.factories import ProductFactory, UserFactory, order_payload, token_for
from tests.helpers import api_session, wait_for_orders


def _json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


@pytest.mark.slow
def test_the_request_id_is_on_every_line_of_the_orders_story(stack_factory):
    ProductFactory(sku="MUG-001", price="12.50", stock=10)
    stack = stack_factory(env={"LOG_FORMAT": "json"}, workers=1)
    api = api_session(token_for(user=UserFactory()).key)

    response = api.post(
        f"{stack.web_url}/api/orders/",
        json=order_payload(("MUG-001", 1)),
        headers={"X-Request-ID": "trace-me-42"},
        timeout=15,
    )
    order_id = response.json()["id"]
    [order] = wait_for_orders([order_id], timeout=60)

    assert response.headers["X-Request-ID"] == "trace-me-42"
    assert order.status == "completed"
    worker = [line for line in _json_lines(stack.workers[0].log()) if "task_id" in line]
    ours = [line for line in worker if line.get("order_id") == order_id]
    assert ours and all(line["request_id"] == "trace-me-42" for line in ours)
    assert {line.get("task_name") for line in ours} >= {
        "orders.reserve_stock",
        "orders.charge_payment",
        "orders.create_shipment",
        "orders.send_confirmation_email",
    }
    web = [line for line in _json_lines(stack.web.log()) if line.get("request_id") == "trace-me-42"]
    assert any(line["event"] == "request_finished" for line in web)


@pytest.mark.parametrize("sent", ["x" * 201, "bad\nline", ""])
def test_an_unusable_request_id_is_replaced(client, db, sent):
    headers = {"HTTP_X_REQUEST_ID": sent} if sent else {}

    response = client.get("/healthz", **headers)

    assert response["X-Request-ID"] not in ("", sent)
    assert len(response["X-Request-ID"]) == 32


def test_a_usable_request_id_is_echoed(client, db):
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
