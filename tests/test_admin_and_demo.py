"""What staff see in the admin, and the demo data behind `make run`."""

import re
import shlex
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from rest_framework.authtoken.models import Token

from orders import services
from orders.models import Order, Product
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


def test_seed_demo_twice_creates_once_and_prints_a_working_curl_line(
    db, client, django_capture_on_commit_callbacks
):
    first, second = StringIO(), StringIO()
    call_command("seed_demo", stdout=first)
    products_after_first = list(Product.objects.values_list("sku", "stock"))
    call_command("seed_demo", stdout=second)

    assert list(Product.objects.values_list("sku", "stock")) == products_after_first
    token = Token.objects.get(user__username="demo").key
    assert (
        f"Demo token: {token}" in first.getvalue() and f"Demo token: {token}" in second.getvalue()
    )

    # The printed curl line, run through the test client: it places an order.
    curl = next(line for line in first.getvalue().splitlines() if "curl -s -X POST" in line)
    argv = shlex.split(curl)
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
