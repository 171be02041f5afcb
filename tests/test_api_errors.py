"""Errors outside the validation path keep the API's error shape."""

from decimal import Decimal

import pytest

from orders.models import Order
from tests.factories import ProductFactory, order_payload


def test_a_bug_under_api_answers_json_500(client, token, monkeypatch, db):
    def boom(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("orders.selectors.product_list", boom)
    client.raise_request_exception = False

    response = client.get("/api/products/", HTTP_AUTHORIZATION=f"Bearer {token.key}")

    assert response.status_code == 500
    assert response.json() == {"code": "server_error", "detail": "Server error."}


def test_an_idempotency_key_with_a_control_character_is_400(api, db):
    ProductFactory(sku="MUG-001")
    response = api.post(
        "/api/orders/",
        order_payload(("MUG-001", 1)),
        format="json",
        HTTP_IDEMPOTENCY_KEY="abc\x00def",
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_idempotency_key"
    assert not Order.objects.exists()


@pytest.mark.django_db
def test_a_total_too_large_for_one_order_is_400_not_500(api):
    ProductFactory(sku="GOLD", price=Decimal("9999999999.99"), stock=10**6)

    response = api.post("/api/orders/", order_payload(("GOLD", 1000)), format="json")

    assert response.status_code == 400
    assert "lines" in response.json()["fields"]
    assert not Order.objects.exists()
