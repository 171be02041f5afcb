"""Helpers for the hostile-input tests: what the database holds, and the one error shape."""

from oauth2_provider.models import AccessToken

from orders.models import IdempotencyKey, Order, OrderEvent, OrderLine, Payment, Product


def db_state() -> dict:
    """Everything a request could have changed: compare before and after an attack."""
    return {
        "orders": list(
            Order.objects.order_by("pk").values_list("pk", "status", "total", "user_id")
        ),
        "lines": OrderLine.objects.count(),
        "events": OrderEvent.objects.count(),
        "payments": Payment.objects.count(),
        "idempotency_keys": IdempotencyKey.objects.count(),
        "stock": dict(Product.objects.values_list("sku", "stock")),
        "tokens": sorted(AccessToken.objects.values_list("token_checksum", flat=True)),
    }


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The answer has the status and the API's one error shape: {"code", "detail", "fields"?}."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) in ({"code", "detail"}, {"code", "detail", "fields"}), body
    assert isinstance(body["code"], str) and body["code"]
    assert isinstance(body["detail"], str) and body["detail"]
    if "fields" in body:
        assert isinstance(body["fields"], dict) and body["fields"]
    if code is not None:
        assert body["code"] == code, body
    return body
