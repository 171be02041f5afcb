"""What staff see in the admin, and the demo data behind `make run`."""

import base64
import re
import shlex
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from orders import services
from orders.models import ApiClient, Order, Product
from tests.factories import ProductFactory, UserFactory


@pytest.fixture
def order(db, django_capture_on_commit_callbacks):
    product = ProductFactory(sku="MUG-001", stock=5)
    with django_capture_on_commit_callbacks(execute=False):
        return services.order_create(
            user=UserFactory(email="grace@example.com"),
            lines=[{"product": product, "quantity": 2}],
            shipping_address={
                "name": "G",
                "line1": "1",
                "city": "C",
                "postal_code": "1",
                "country": "US",
            },
            payment_token="tok_ok",
        )


def test_order_change_page_shows_lines_and_timeline(admin_client, order):
    page = admin_client.get(reverse("admin:orders_order_change", args=[order.pk]))

    assert page.status_code == 200
    html = page.content.decode()
    assert "MUG-001" in html  # the line inline
    assert "1 line(s), total 20.00 EUR" in html  # the timeline
    assert 'class="order-waterfall"' in html  # the story, drawn by the server
    for inline in ("Payment", "Shipment", "Timeline"):
        assert inline in html


@pytest.mark.parametrize("query", ["grace@example.com", "{id}"])
def test_orders_are_searchable_by_email_and_id(admin_client, order, query):
    page = admin_client.get(
        reverse("admin:orders_order_changelist"), {"q": query.format(id=order.pk)}
    )

    assert page.status_code == 200
    assert str(order.pk) in page.content.decode()


def test_orders_filter_by_status(admin_client, order):
    url = reverse("admin:orders_order_changelist")
    assert str(order.pk) in admin_client.get(url, {"status__exact": "pending"}).content.decode()
    assert (
        str(order.pk) not in admin_client.get(url, {"status__exact": "completed"}).content.decode()
    )


def test_admin_lists_celery_task_results(admin_client):
    assert (
        admin_client.get(reverse("admin:django_celery_results_taskresult_changelist")).status_code
        == 200
    )


def test_seed_demo_twice_creates_once_and_prints_working_curl_lines(
    db, client, django_capture_on_commit_callbacks
):
    first, second = StringIO(), StringIO()
    call_command("seed_demo", stdout=first)
    products_after_first = list(Product.objects.values_list("sku", "stock"))
    call_command("seed_demo", stdout=second)

    assert list(Product.objects.values_list("sku", "stock")) == products_after_first
    demo = ApiClient.objects.get(user__username="demo")  # one client, kept
    printed = [
        re.search(r"Demo API client: (\S+) / (\S+) ", out.getvalue()).groups()  # type: ignore[union-attr]
        for out in (first, second)
    ]
    assert [client_id for client_id, _ in printed] == [demo.client_id] * 2
    # Only a hash is kept, so each run prints a new secret; the first one no longer works.
    assert printed[0][1] != printed[1][1] and printed[1][1] not in demo.client_secret

    # The printed lines, run through the test client: a token, then an order with it.
    lines = second.getvalue().splitlines()
    token_curl = shlex.split(next(line for line in lines if "grant_type=" in line).split("$(")[1])
    user_pass = token_curl[token_curl.index("-u") + 1]
    assert user_pass == ":".join(printed[1])
    token_response = client.post(
        "/api/oauth/token/",
        dict(
            a.split("=", 1)
            for a in (token_curl[i + 1] for i, a in enumerate(token_curl) if a == "-d")
        ),
        HTTP_AUTHORIZATION="Basic " + base64.b64encode(user_pass.encode()).decode(),
    )
    assert token_response.status_code == 200, token_response.content
    access_token = token_response.json()["access_token"]

    curl = next(line for line in lines if "curl -s -X POST" in line and "/api/orders/" in line)
    argv = shlex.split(curl.replace("$TOKEN", access_token))
    headers = dict(h.split(": ", 1) for h in (argv[i + 1] for i, a in enumerate(argv) if a == "-H"))
    body = argv[argv.index("-d") + 1]
    assert re.search(r"/api/orders/$", argv[argv.index("-X") + 2])
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(
            "/api/orders/",
            body,
            content_type=headers["Content-Type"],
            HTTP_AUTHORIZATION=headers["Authorization"],
        )
    assert response.status_code == 201, response.content
    assert Order.objects.get().user.username == "demo"
    # The first run's secret gets no token any more.
    stale = client.post(
        "/api/oauth/token/",
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION="Basic " + base64.b64encode(":".join(printed[0]).encode()).decode(),
    )
    assert stale.status_code == 401, stale.content
