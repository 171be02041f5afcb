"""Hostile input on POST /api/orders/: every bad request is a 4xx in the one error shape, and
changes nothing (no order, line, event, Idempotency-Key record, nor a unit of stock)."""

import copy
import json
from decimal import Decimal

import pytest
from django.conf import settings

from orders.models import Order, OrderLine, Product
from tests.api_fixtures import assert_error, db_state
from tests.factories import ProductFactory, UserFactory, order_payload

URL = "/api/orders/"


@pytest.fixture
def catalogue(db):
    ProductFactory(sku="MUG-001", price="12.50", stock=100)
    ProductFactory(sku="TEE-001", price="19.90", stock=100)
    ProductFactory(sku="OLD-001", price="1.00", stock=100, is_active=False)


@pytest.fixture
def refused(api, catalogue):
    """Post a body (a dict as JSON, or raw bytes); assert a 4xx in the error shape, and that the
    database is as it was. Every attempt carries an Idempotency-Key, which must not be stored."""

    def post(
        body,
        status: int = 400,
        code: str | None = "invalid",
        content_type="application/json",
        **extra,
    ) -> dict:
        before = db_state()
        if not isinstance(body, bytes):
            body = json.dumps(body)
        response = api.generic(
            "POST", URL, body, content_type=content_type, HTTP_IDEMPOTENCY_KEY="attack-1", **extra
        )
        error = assert_error(response, status, code)
        assert db_state() == before
        return error

    return post


def with_line(**line) -> dict:
    payload = order_payload(("MUG-001", 1))
    payload["lines"][0] = {"sku": "MUG-001", "quantity": 1, **line}
    return payload


# --- quantity: a JSON integer from 1 to 1,000 -----------------------------------------------------
@pytest.mark.parametrize(
    "quantity", [0, -1, 1001, 10**30, "2", 2.5, 2.0, True, None, [], {}, "1e2"]
)
def test_a_quantity_that_is_not_an_integer_from_1_to_1000_is_refused(refused, quantity):
    error = refused(with_line(quantity=quantity))
    assert "quantity" in error["fields"]["lines"]["0"]


def test_a_line_without_quantity_is_refused(refused):
    payload = order_payload(("MUG-001", 1))
    del payload["lines"][0]["quantity"]
    assert "quantity" in refused(payload)["fields"]["lines"]["0"]


@pytest.mark.parametrize("quantity", [1, 1000])
def test_quantities_1_and_1000_are_accepted(
    api, catalogue, quantity, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        response = api.post(URL, with_line(quantity=quantity), format="json")
    assert response.status_code == 201, response.content
    assert Order.objects.get().lines.get().quantity == quantity


# --- lines: 1 to 100, known active SKUs, each once ------------------------------------------------
def test_no_lines_is_refused(refused):
    payload = order_payload()
    assert payload["lines"] == []
    assert "lines" in refused(payload)["fields"]


def test_101_lines_are_refused_and_100_accepted(api, refused, django_capture_on_commit_callbacks):
    skus = [f"BULK-{n:03d}" for n in range(101)]
    Product.objects.bulk_create(
        Product(sku=sku, name=sku, price="1.00", stock=10, weight_grams=100) for sku in skus
    )

    error = refused(order_payload(*[(sku, 1) for sku in skus]))
    assert "lines" in error["fields"]

    with django_capture_on_commit_callbacks(execute=False):
        response = api.post(URL, order_payload(*[(sku, 1) for sku in skus[:100]]), format="json")
    assert response.status_code == 201, response.content
    assert OrderLine.objects.count() == 100


@pytest.mark.parametrize(
    "lines", ["MUG-001", {"sku": "MUG-001", "quantity": 1}, None, [None], ["MUG-001"], [[]]]
)
def test_lines_of_the_wrong_type_are_refused(refused, lines):
    assert "lines" in refused({**order_payload(), "lines": lines})["fields"]


def test_an_unknown_sku_is_refused_with_the_error_on_its_line(refused):
    error = refused(order_payload(("MUG-001", 1), ("NOPE-404", 1)))
    assert set(error["fields"]["lines"]) == {"1"}  # keyed by the line's index; line 0 is fine
    assert "NOPE-404" in error["fields"]["lines"]["1"]["sku"][0]


def test_an_inactive_sku_is_refused(refused):
    error = refused(order_payload(("OLD-001", 1)))
    assert "OLD-001" in error["fields"]["lines"]["0"]["sku"][0]


@pytest.mark.parametrize("sku", [42, None, "", "X" * 65, ["MUG-001"], "MUG\x00001", "\ud800"])
def test_a_sku_of_the_wrong_type_or_size_is_refused(refused, sku):
    assert "sku" in refused(with_line(sku=sku))["fields"]["lines"]["0"]


def test_the_same_sku_twice_is_refused_not_merged(refused):
    """Documented choice (README, schema): one line per SKU; a repeat is a 400."""
    error = refused(order_payload(("MUG-001", 1), ("MUG-001", 2)))
    assert "more than once" in error["fields"]["lines"]["1"]["sku"][0]


# --- the shipping address -------------------------------------------------------------------------
ADDRESS_FIELDS = ["name", "line1", "city", "postal_code", "country"]


@pytest.mark.parametrize("field", ADDRESS_FIELDS)
def test_a_missing_address_field_is_refused(refused, field):
    payload = order_payload(("MUG-001", 1))
    del payload["shipping_address"][field]
    assert field in refused(payload)["fields"]["shipping_address"]


@pytest.mark.parametrize("field", ADDRESS_FIELDS)
@pytest.mark.parametrize("value", ["", None, 12345, ["x"]])
def test_an_empty_or_mistyped_address_field_is_refused(refused, field, value):
    payload = order_payload(("MUG-001", 1))
    payload["shipping_address"][field] = value
    assert field in refused(payload)["fields"]["shipping_address"]


@pytest.mark.parametrize("address", [None, "Berlin", [], {}])
def test_a_missing_or_mistyped_address_is_refused(refused, address):
    payload = order_payload(("MUG-001", 1))
    payload["shipping_address"] = address
    assert "shipping_address" in refused(payload)["fields"]


@pytest.mark.parametrize("country", ["DEU", "D", "de", "D1", "D E", "DE\x00"])
def test_a_country_that_is_not_two_capital_letters_is_refused(refused, country):
    payload = order_payload(("MUG-001", 1))
    payload["shipping_address"]["country"] = country
    assert "country" in refused(payload)["fields"]["shipping_address"]


def test_whitespace_around_a_country_code_is_trimmed_not_stored(
    api, catalogue, django_capture_on_commit_callbacks
):
    payload = order_payload(("MUG-001", 1))
    payload["shipping_address"]["country"] = " DE\n"
    with django_capture_on_commit_callbacks(execute=False):
        response = api.post(URL, payload, format="json")
    assert response.status_code == 201, response.content
    assert Order.objects.get().ship_country == "DE"


def test_an_overlong_address_field_is_refused(refused):
    payload = order_payload(("MUG-001", 1))
    payload["shipping_address"]["line1"] = "x" * 201
    assert "line1" in refused(payload)["fields"]["shipping_address"]


# --- payment_token --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payment_token",
    [
        "4242424242424242",
        "tok_",
        "TOK_OK",
        "tok_ok!",
        "tok_" + "a" * 65,
        "pm_card-visa",
        "card_visa",
        "",
        None,
        4242424242424242,
        ["tok_ok"],
    ],
)
def test_an_unknown_payment_token_format_is_refused(refused, payment_token):
    payload = order_payload(("MUG-001", 1), token=payment_token)
    assert "payment_token" in refused(payload)["fields"]


@pytest.mark.parametrize("payment_token", ["pm_card_visa", "pm_1MqLiJLkdIwHu7ixUEgbFdYF", "tok_ok"])
def test_stripe_payment_method_ids_are_accepted(api, product, payment_token):
    response = api.post(URL, order_payload(("MUG-001", 1), token=payment_token))
    assert response.status_code == 201, response.content


def test_a_missing_payment_token_is_refused(refused):
    payload = order_payload(("MUG-001", 1))
    del payload["payment_token"]
    assert "payment_token" in refused(payload)["fields"]


# --- the body as a whole --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body", [b"{", b'{"lines": [}', b"\xff\xfe", b"NaN", b'{"a": Infinity}', b"{}{}"]
)
def test_malformed_json_is_a_400(refused, body):
    refused(body, code="parse_error")


@pytest.mark.parametrize(
    "depth", [33, 900, 100_000]
)  # 100,000 levels: well under API_MAX_BODY_BYTES
def test_json_nested_too_deep_is_a_400_not_a_crash(refused, depth):
    refused(b"[" * depth + b"]" * depth, code="parse_error")


def test_a_deep_document_in_an_ignored_field_is_a_400_too(refused):
    body = json.dumps(order_payload(("MUG-001", 1), extra=0)).replace(
        "0}", "[" * 900 + "]" * 900 + "}"
    )
    refused(body.encode(), code="parse_error")


def test_a_quantity_too_large_for_a_float_is_refused(refused):
    body = json.dumps(with_line(quantity=1)).replace('"quantity": 1', '"quantity": 1e999')
    assert "quantity" in refused(body.encode())["fields"]["lines"]["0"]


def test_a_quantity_with_more_digits_than_python_converts_is_a_400(refused):
    body = json.dumps(with_line(quantity=1)).replace('"quantity": 1', '"quantity": ' + "9" * 5000)
    refused(body.encode(), code="parse_error")


@pytest.mark.parametrize("body", [None, [], "order", 42, [order_payload(("MUG-001", 1))]])
def test_a_body_that_is_not_an_object_is_refused(refused, body):
    assert refused(body)["fields"]


def test_an_empty_body_is_refused(refused):
    assert set(refused(b"")["fields"]) == {"lines", "shipping_address", "payment_token"}


def test_a_body_over_the_limit_is_a_413(refused):
    payload = order_payload(("MUG-001", 1))
    payload["padding"] = "x" * settings.API_MAX_BODY_BYTES
    refused(payload, status=413, code="request_too_large")


def test_the_body_limit_holds_on_every_api_endpoint(client, db):
    before = db_state()
    body = f"grant_type=client_credentials&client_id={'x' * settings.API_MAX_BODY_BYTES}"
    response = client.post(
        "/api/oauth/token/", body, content_type="application/x-www-form-urlencoded"
    )
    assert_error(response, 413, "request_too_large")
    assert db_state() == before


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
    ],
)
def test_a_body_that_is_not_json_is_a_415(refused, content_type):
    body = {
        "text/plain": json.dumps(order_payload(("MUG-001", 1))),
        "application/x-www-form-urlencoded": "payment_token=tok_ok&lines=MUG-001",
        "multipart/form-data; boundary=xyz": (
            "--xyz\r\nContent-Disposition: form-data; "
            'name="payment_token"\r\n\r\ntok_ok\r\n--xyz--\r\n'
        ),
        "application/xml": "<order/>",
    }[content_type]
    refused(body.encode(), status=415, code="unsupported_media_type", content_type=content_type)


def test_a_logged_in_browser_cannot_be_made_to_order(catalogue):
    """A staff member's admin session does not open the API: only bearer tokens do. A signed-in
    browser is not authenticated there (401), with or without the CSRF token, so no page can
    make it order."""
    from django.test import Client

    browser = Client(enforce_csrf_checks=True)
    browser.force_login(UserFactory(is_staff=True))
    browser.get("/admin/")  # the CSRF cookie is set (the page's sign-out form needs it)
    before = db_state()
    body = json.dumps(order_payload(("MUG-001", 1)))
    assert_error(browser.post(URL, body, content_type="application/json"), 401)
    assert_error(
        browser.post(
            URL,
            body,
            content_type="application/json",
            HTTP_X_CSRFTOKEN=browser.cookies["csrftoken"].value,
        ),
        401,
        "not_authenticated",
    )
    assert_error(browser.get(URL), 401, "not_authenticated")
    assert db_state() == before


# --- prices come from the database ----------------------------------------------------------------
def test_a_client_sent_price_total_status_or_owner_is_ignored(
    api, user, catalogue, django_capture_on_commit_callbacks
):
    someone_else = UserFactory()
    payload = order_payload(("MUG-001", 2), ("TEE-001", 1))
    payload["lines"][0].update(unit_price="0.01", price="0.01", total="0.01")
    payload.update(
        total="0.01",
        currency="USD",
        status="completed",
        user=someone_else.pk,
        id="00000000-0000-0000-0000-000000000001",
        payment={"status": "captured"},
    )

    with django_capture_on_commit_callbacks(execute=False):
        response = api.post(URL, payload, format="json")

    assert response.status_code == 201, response.content
    order = Order.objects.get()
    assert order.total == Decimal("44.90") and order.currency == "EUR"
    assert order.status == "pending" and order.user == user
    assert str(order.pk) != payload["id"]
    assert sorted(order.lines.values_list("sku", "unit_price")) == [
        ("MUG-001", Decimal("12.50")),
        ("TEE-001", Decimal("19.90")),
    ]
    body = response.json()
    assert body["total"] == "44.90" and body["payment"] is None
    assert Product.objects.get(sku="MUG-001").stock == 100  # reserved later, by the workflow


def test_errors_mirror_the_request_structure(refused):
    payload = order_payload(("MUG-001", 0), ("NOPE", 1))
    payload["shipping_address"]["country"] = "Germany"
    payload["payment_token"] = "4242"
    fields = refused(copy.deepcopy(payload))["fields"]
    assert set(fields) == {"lines", "shipping_address", "payment_token"}
    assert set(fields["lines"]) == {"0"} and "quantity" in fields["lines"]["0"]
    assert set(fields["shipping_address"]) == {"country"}


# --- query parameters -----------------------------------------------------------------------------
@pytest.mark.parametrize("page", ["", "last", "0", "-1", "1.0", " 1", "\u0661", "abc", "99"])
def test_a_page_that_is_not_an_existing_positive_integer_is_a_404(api, catalogue, page):
    for url in ("/api/products/", URL):
        assert_error(api.get(url, {"page": page}), 404, "not_found")


def test_page_1_and_no_page_are_the_first_page(api, catalogue):
    assert api.get("/api/products/", {"page": "1"}).json() == api.get("/api/products/").json()


def test_an_order_in_two_currencies_is_refused_and_nothing_is_written(api, db):
    ProductFactory(sku="MUG-EUR", currency="EUR")
    ProductFactory(sku="MUG-USD", currency="USD")
    before = Order.objects.count()

    response = api.post(
        "/api/orders/", order_payload(("MUG-EUR", 1), ("MUG-USD", 1)), format="json"
    )

    assert response.status_code == 400
    assert response.json()["fields"] == {"lines": ["Mixed currencies: EUR, USD."]}
    assert Order.objects.count() == before


def test_the_201_answers_what_reading_the_order_back_answers(
    api, mug, django_capture_on_commit_callbacks
):
    """The POST answers from the rows it has just written, not from a re-read: it must say
    exactly what a GET of the same order says (lines in order, the timeline, no payment)."""
    ProductFactory(sku="TEA-001", price="4.20", stock=10)
    with django_capture_on_commit_callbacks(execute=False):
        created = api.post(
            "/api/orders/", order_payload(("TEA-001", 3), ("MUG-001", 2)), format="json"
        )

    assert created.status_code == 201
    read = api.get(created["Location"])
    assert created.json() == read.json()
    assert [line["sku"] for line in created.json()["lines"]] == ["TEA-001", "MUG-001"]
    assert created.json()["payment"] is None and created.json()["shipment"] is None
    assert [event["reason_code"] for event in created.json()["events"]] == ["created"]
