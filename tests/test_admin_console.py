"""The admin as a safe console: orders are read-only and change only through actions that
call the same services as the API and the sweep, each with its own permission and a
timeline entry naming the staff user; stock changes only by adjustment."""

from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from orders import steps
from orders.models import Order, OrderStatus, Product, StockAdjustment
from tests.factories import OrderFactory, OrderLineFactory, ProductFactory, UserFactory
from tests.helpers import assert_cancelled_by_staff, dispatched

CHANGELIST = "admin:orders_order_changelist"


def _staff(client, *perms: str):
    user = UserFactory(is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="orders", codename__in=perms)
    )
    client.force_login(user)
    return user


def _act(client, action: str, *orders) -> str:
    response = client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [str(o.pk) for o in orders]},
        follow=True,
    )
    assert response.status_code == 200
    return response.content.decode()


def test_the_order_page_is_read_only_for_superusers_too(admin_client, reserved_order):
    url = reverse("admin:orders_order_change", args=[reserved_order.pk])

    html = admin_client.get(url).content.decode()
    response = admin_client.post(url, {"status": "completed"})

    assert 'name="status"' not in html and 'name="_save"' not in html
    assert response.status_code == 403
    assert Order.objects.get(pk=reserved_order.pk).status == "paying"


def test_cancel_action_goes_through_the_service_and_names_the_staff_user(
    client, reserved_order, django_capture_on_commit_callbacks
):
    agent = _staff(client, "cancel_order")

    with django_capture_on_commit_callbacks() as sent:
        page = _act(client, "cancel_orders", reserved_order)

    assert_cancelled_by_staff(reserved_order, agent, page, sent)


def test_an_order_that_cannot_be_cancelled_is_reported_not_changed(client, db):
    _staff(client, "cancel_order")
    shipped = OrderFactory(status=OrderStatus.CONFIRMING)
    done = OrderFactory(status=OrderStatus.COMPLETED)

    page = _act(client, "cancel_orders", shipped, done)

    assert "Not cancelled 2 order(s)" in page
    assert Order.objects.get(pk=shipped.pk).status == "confirming"
    assert Order.objects.get(pk=done.pk).status == "completed"


def test_each_action_needs_its_own_permission(client, reserved_order):
    _staff(client, "cancel_order")  # a support agent: may cancel, not fail or resume

    _act(client, "fail_orders", reserved_order)
    _act(client, "resume_orders", reserved_order)

    order = Order.objects.get(pk=reserved_order.pk)
    assert order.status == "paying"
    assert not order.events.filter(actor_kind="staff").exists()


def test_fail_action_fails_with_the_staff_user_as_reason(
    client, reserved_order, django_capture_on_commit_callbacks
):
    lead = _staff(client, "fail_order")
    shipped = OrderFactory(status=OrderStatus.CONFIRMING)

    with django_capture_on_commit_callbacks():
        page = _act(client, "fail_orders", reserved_order, shipped)

    order = Order.objects.get(pk=reserved_order.pk)
    assert "Failed 1 order(s)" in page and "Not failed 1 order(s)" in page
    assert order.status == "failed"
    assert order.failure_reason == f"failed by {lead.username}"
    assert order.events.latest("id").actor == lead
    assert Product.objects.get(sku="MUG-001").stock == 10
    assert Order.objects.get(pk=shipped.pk).status == "confirming"  # never failed once shipped


def test_resume_action_resumes_unfinished_orders_now(
    client, reserved_order, django_capture_on_commit_callbacks
):
    operator = _staff(client, "resume_order")
    done = OrderFactory(status=OrderStatus.FAILED)

    with django_capture_on_commit_callbacks() as sent:
        page = _act(client, "resume_orders", reserved_order, done)

    assert "Resumed 1 order(s)" in page and "Not resumed 1 order(s)" in page
    event = Order.objects.get(pk=reserved_order.pk).events.latest("id")
    assert (event.step, event.outcome, event.actor) == ("recovery", "resumed", operator)
    assert len(dispatched(sent)) == 1  # the rest of its workflow, from `paying`
    assert Order.objects.get(pk=done.pk).status == "failed"  # terminal stays terminal


def test_a_list_save_keeps_reservations_made_after_the_page_loaded(admin_client, db):
    """The page showed 10 units; an order reserves 3 before staff save the list (toggling
    is_active). The save must not write the 10 back."""
    product = ProductFactory(sku="CAP-001", stock=10)
    url = reverse("admin:orders_product_changelist")
    assert "CAP-001" in admin_client.get(url).content.decode()
    order = OrderFactory()
    line = OrderLineFactory(order=order, product=product, quantity=3)
    steps.reserve_line(order_id=order.id, line_id=line.id, attempt=1)

    response = admin_client.post(
        url,
        {
            "form-TOTAL_FORMS": "1",
            "form-INITIAL_FORMS": "1",
            "form-0-id": str(product.pk),
            "form-0-stock": "10",  # what an old form would send back
            "_save": "Save",  # is_active unticked
        },
    )

    assert response.status_code == 302
    product.refresh_from_db()
    assert (product.stock, product.is_active) == (7, False)


def test_stock_is_adjusted_by_a_delta_and_recorded(client, db):
    staff = _staff(client, "view_product", "change_product", "add_stockadjustment")
    product = ProductFactory(sku="CAP-001", stock=10)
    url = reverse("admin:orders_product_change", args=[product.pk])
    fields = {
        "sku": "CAP-001",
        "name": product.name,
        "price": "10.00",
        "currency": "EUR",
        "weight_grams": "120",
    }
    fields["is_active"] = "on"
    Product.objects.filter(pk=product.pk).update(stock=7)  # reservations meanwhile

    client.post(url, {**fields, "adjust_stock": "+5", "adjust_reason": "delivery"})
    page = client.post(url, {**fields, "adjust_stock": "-20"}, follow=True).content.decode()

    assert Product.objects.get(pk=product.pk).stock == 12
    [adjustment] = StockAdjustment.objects.filter(product=product)
    assert (adjustment.delta, adjustment.stock_after, adjustment.user) == (5, 12, staff)
    assert "Cannot take 20 unit(s): only 12 in stock." in page


def test_a_catalogue_editor_without_the_adjustment_permission_cannot_adjust_stock(client, db):
    _staff(client, "view_product", "change_product")
    product = ProductFactory(sku="CAP-001", name="Cap", stock=10)
    url = reverse("admin:orders_product_change", args=[product.pk])

    html = client.get(url).content.decode()
    # A hand-made post: the page offers no such field.
    response = client.post(
        url,
        {
            "sku": "CAP-001",
            "name": "Blue cap",
            "price": "10.00",
            "currency": "EUR",
            "weight_grams": "120",
            "is_active": "on",
            "adjust_stock": "+5",
        },
    )

    assert 'name="adjust_stock"' not in html
    assert response.status_code == 302
    product.refresh_from_db()
    assert (product.name, product.stock) == ("Blue cap", 10)
    assert not StockAdjustment.objects.exists()


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as context:
        assert client.get(url).status_code == 200
    return len(context.captured_queries)


def test_order_pages_cost_the_same_queries_with_10_or_10000_orders(admin_client, reserved_order):
    OrderFactory.create_batch(9)
    changelist = reverse(CHANGELIST)
    page = reverse("admin:orders_order_change", args=[reserved_order.pk])
    stalled = f"{changelist}?progress=stalled"
    few = [_queries(admin_client, u) for u in (changelist, page, stalled)]

    user = reserved_order.user
    Order.objects.bulk_create(
        OrderFactory.build(user=user, status=OrderStatus.COMPLETED) for _ in range(9_990)
    )
    many = [_queries(admin_client, u) for u in (changelist, page, stalled)]

    assert Order.objects.count() == 10_000
    assert many == few
