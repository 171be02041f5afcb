"""The staff groups made by orders/migrations/0011_staff_groups.py, as their members meet
them in the admin: each staff user here is in one group only, never a superuser, and does
a day's work (support cancels, operations resumes and fails, inventory counts stock) and
nothing more."""

import importlib
from types import SimpleNamespace

import pytest
from django.apps import apps as global_apps
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.urls import reverse
from django_celery_results.models import TaskResult

from orders.models import (
    Notification,
    Order,
    OrderStatus,
    Payment,
    Product,
    ProviderEvent,
    Shipment,
    StockAdjustment,
)
from tests.factories import OrderFactory, OrderLineFactory, ProductFactory, UserFactory
from tests.helpers import assert_cancelled_by_staff, dispatched

ORDERS = reverse("admin:orders_order_changelist")
PRODUCTS = reverse("admin:orders_product_changelist")
TASK_RESULTS = reverse("admin:django_celery_results_taskresult_changelist")
PROVIDER_EVENTS = reverse("admin:orders_providerevent_changelist")
PAYMENTS = reverse("admin:orders_payment_changelist")


def _order_page(order: Order) -> str:
    return reverse("admin:orders_order_change", args=[order.pk])


def _product_page(product: Product) -> str:
    return reverse("admin:orders_product_change", args=[product.pk])


@pytest.fixture
def staff_in(client, db):
    """Log in a new staff user (not a superuser) who is in the one group named."""

    def login(group: str):
        user = UserFactory(is_staff=True)
        user.groups.add(Group.objects.get(name=group))
        client.force_login(user)
        return user

    return login


@pytest.fixture
def shipped_order(db):
    """An order on its way, with what support and operations look up: the charge, the
    parcel, the email sent to the customer."""
    order = OrderFactory(status=OrderStatus.CONFIRMING, email="grace@example.com")
    OrderLineFactory(order=order, product=ProductFactory(sku="TEE-001"))
    Payment.objects.create(
        order=order,
        status="captured",
        amount=order.total,
        currency="EUR",
        idempotency_key=f"pay-{order.pk}",
        charge_id="pi_groups_charge",
    )
    Shipment.objects.create(
        order=order, label_status="purchased", carrier="USPS", tracking_number="9400GROUPS"
    )
    Notification.objects.create(order=order, kind="shipped", to=order.email)
    return order


def _act(client, action: str, *orders: Order) -> str:
    response = client.post(
        ORDERS, {"action": action, "_selected_action": [str(o.pk) for o in orders]}, follow=True
    )
    assert response.status_code == 200
    return response.content.decode()


def _offered_actions(client) -> set[str]:
    html = client.get(ORDERS).content.decode()
    return {a for a in ("cancel_orders", "resume_orders", "fail_orders") if f'value="{a}"' in html}


def _save_product(client, url: str, **fields: str):
    """Post a product's page as a browser would: its fields, and the management form of the
    stock history shown below them."""
    form = {
        "currency": "EUR",
        "price": "10.00",
        "weight_grams": "500",
        "is_active": "on",
        "adjustments-TOTAL_FORMS": "0",
        "adjustments-INITIAL_FORMS": "0",
        **fields,
    }
    return client.post(url, form, follow=True)


def _adjust_stock(client, product: Product, delta: str):
    return _save_product(
        client,
        _product_page(product),
        sku=product.sku,
        name=product.name,
        adjust_stock=delta,
        adjust_reason="delivery",
    )


# --- support: reads orders, cancels ------------------------------------------------------------
def test_support_reads_an_order_with_its_payment_shipment_and_emails(
    client, staff_in, shipped_order
):
    staff_in("support")

    listed = client.get(ORDERS, {"q": "grace@example.com"})
    page = client.get(_order_page(shipped_order))

    assert listed.status_code == 200 and str(shipped_order.pk) in listed.content.decode()
    assert page.status_code == 200
    html = page.content.decode()
    for shown in ("TEE-001", "pi_groups_charge", "9400GROUPS", "grace@example.com", "shipped"):
        assert shown in html


def test_support_cancels_an_order_and_the_timeline_names_them(
    client, staff_in, reserved_order, django_capture_on_commit_callbacks
):
    agent = staff_in("support")

    assert _offered_actions(client) == {"cancel_orders"}
    with django_capture_on_commit_callbacks() as sent:
        page = _act(client, "cancel_orders", reserved_order)

    assert_cancelled_by_staff(reserved_order, agent, page, sent)


def test_support_cannot_resume_or_fail_an_order(client, staff_in, reserved_order):
    staff_in("support")

    _act(client, "resume_orders", reserved_order)
    _act(client, "fail_orders", reserved_order)

    order = Order.objects.get(pk=reserved_order.pk)
    assert order.status == "paying"
    assert not order.events.filter(actor_kind="staff").exists()


def test_support_cannot_touch_products_stock_or_the_task_pages(client, staff_in, db):
    staff_in("support")
    product = ProductFactory(sku="CAP-001", stock=10)

    assert client.get(PRODUCTS).status_code == 403
    assert client.get(_product_page(product)).status_code == 403
    assert _adjust_stock(client, product, "+5").status_code == 403
    assert client.get(TASK_RESULTS).status_code == 403
    assert client.get(PROVIDER_EVENTS).status_code == 403
    assert Product.objects.get(pk=product.pk).stock == 10
    assert not StockAdjustment.objects.exists()


# --- operations: reads orders and what the workers did, resumes, fails --------------------------
def test_operations_reads_an_order_its_task_results_and_provider_events(
    client, staff_in, shipped_order
):
    staff_in("operations")
    TaskResult.objects.create(
        task_id="task-groups-1", task_name="orders.tasks.charge_payment", status="FAILURE"
    )
    ProviderEvent.objects.create(
        provider="stripe",
        event_id="evt_groups_1",
        type="charge.refunded",
        payload={},
        order=shipped_order,
    )

    page = client.get(_order_page(shipped_order))
    results = client.get(TASK_RESULTS)
    events = client.get(PROVIDER_EVENTS)

    assert page.status_code == 200
    assert "pi_groups_charge" in page.content.decode()
    assert "9400GROUPS" in page.content.decode()
    assert results.status_code == 200 and "task-groups-1" in results.content.decode()
    assert events.status_code == 200 and "evt_groups_1" in events.content.decode()


def test_operations_resumes_a_reserved_order_and_the_timeline_names_them(
    client, staff_in, reserved_order, django_capture_on_commit_callbacks
):
    operator = staff_in("operations")

    assert _offered_actions(client) == {"resume_orders", "fail_orders"}
    with django_capture_on_commit_callbacks() as sent:
        page = _act(client, "resume_orders", reserved_order)

    assert "Resumed 1 order(s)" in page
    event = Order.objects.get(pk=reserved_order.pk).events.latest("id")
    assert (event.step, event.outcome, event.actor) == ("recovery", "resumed", operator)
    assert operator.username in event.detail
    assert len(dispatched(sent)) == 1  # the rest of its workflow, from `paying`


def test_operations_fails_a_reserved_order_and_the_timeline_names_them(
    client, staff_in, reserved_order, django_capture_on_commit_callbacks
):
    operator = staff_in("operations")

    with django_capture_on_commit_callbacks():
        page = _act(client, "fail_orders", reserved_order)

    order = Order.objects.get(pk=reserved_order.pk)
    assert "Failed 1 order(s)" in page
    assert order.status == "failed"
    assert order.failure_reason == f"failed by {operator.username}"
    assert order.events.latest("id").actor == operator
    assert Product.objects.get(sku="MUG-001").stock == 10


def test_operations_cannot_cancel_or_change_products(client, staff_in, reserved_order):
    staff_in("operations")
    product = Product.objects.get(sku="MUG-001")

    _act(client, "cancel_orders", reserved_order)
    adjusted = _adjust_stock(client, product, "+5")

    assert Order.objects.get(pk=reserved_order.pk).status == "paying"
    assert not Order.objects.get(pk=reserved_order.pk).events.filter(actor_kind="staff").exists()
    assert client.get(PRODUCTS).status_code == 403
    assert adjusted.status_code == 403
    assert Product.objects.get(pk=product.pk).stock == 8


def test_operations_cannot_delete_task_results(client, staff_in, db):
    staff_in("operations")
    result = TaskResult.objects.create(task_id="task-groups-2", status="FAILURE")
    delete = reverse("admin:django_celery_results_taskresult_delete", args=[result.pk])

    assert 'value="delete_selected"' not in client.get(TASK_RESULTS).content.decode()
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert TaskResult.objects.filter(pk=result.pk).exists()


# --- inventory: products and stock, no orders ---------------------------------------------------
def test_inventory_adjusts_stock_and_the_history_names_them(client, staff_in, db):
    clerk = staff_in("inventory")
    product = ProductFactory(sku="CAP-001", stock=10)

    page = _adjust_stock(client, product, "+5")

    assert page.status_code == 200
    assert "Stock of CAP-001 adjusted by +5: now 15." in page.content.decode()
    assert Product.objects.get(pk=product.pk).stock == 15
    [adjustment] = StockAdjustment.objects.filter(product=product)
    assert (adjustment.delta, adjustment.user, adjustment.reason) == (5, clerk, "delivery")
    # The product's history shows who counted.
    assert clerk.username in client.get(_product_page(product)).content.decode()


def test_inventory_edits_and_adds_products_but_deletes_none(client, staff_in, db):
    staff_in("inventory")
    product = ProductFactory(sku="CAP-001", name="Cap", stock=10)

    edited = _save_product(
        client, _product_page(product), sku="CAP-001", name="Blue cap", price="11.00"
    )
    added = _save_product(client, reverse("admin:orders_product_add"), sku="HAT-001", name="Hat")
    delete = reverse("admin:orders_product_delete", args=[product.pk])

    product.refresh_from_db()
    assert edited.redirect_chain and added.redirect_chain  # saved, not sent back with errors
    assert (product.name, str(product.price), product.stock) == ("Blue cap", "11.00", 10)
    assert Product.objects.filter(sku="HAT-001").exists()
    assert 'value="delete_selected"' not in client.get(PRODUCTS).content.decode()
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert Product.objects.filter(pk=product.pk).exists()


def test_inventory_sees_no_order_and_so_no_customer_data(client, staff_in, shipped_order):
    staff_in("inventory")

    index = client.get(reverse("admin:index")).content.decode()

    assert ORDERS not in index and PRODUCTS in index
    for page in (ORDERS, _order_page(shipped_order), PAYMENTS, PROVIDER_EVENTS, TASK_RESULTS):
        assert client.get(page).status_code == 403, page


# --- every group -------------------------------------------------------------------------------
@pytest.mark.parametrize("group", ["support", "operations", "inventory"])
def test_no_group_manages_users_or_groups(client, staff_in, group):
    staff_in(group)
    someone = UserFactory()

    assert client.get(reverse("admin:index")).status_code == 200  # no superuser needed
    for page in (
        reverse("admin:auth_user_changelist"),
        reverse("admin:auth_user_change", args=[someone.pk]),
        reverse("admin:auth_group_changelist"),
        reverse("admin:auth_group_add"),
    ):
        assert client.get(page).status_code == 403, page


@pytest.mark.parametrize("group", ["support", "operations", "inventory"])
def test_no_group_may_delete_anything(db, group):
    granted = Permission.objects.filter(group__name=group)

    assert granted.exists()
    assert not granted.filter(codename__startswith="delete_").exists()
    assert not granted.filter(content_type__app_label="auth").exists()


def test_the_migration_can_be_reversed_and_run_again(db):
    migration = importlib.import_module("orders.migrations.0011_staff_groups")
    # 0014 gives operations the webhooks' log and resend: the groups as they are now are
    # 0011's, then 0014's.
    webhooks = importlib.import_module("orders.migrations.0014_webhooks")
    editor = SimpleNamespace(connection=connection)

    def table():
        return {
            g.name: sorted(g.permissions.values_list("codename", flat=True))
            for g in Group.objects.all()
        }

    before, permissions = table(), Permission.objects.count()
    migration.delete_groups(global_apps, editor)
    gone = table()
    migration.create_groups(global_apps, editor)
    migration.create_groups(global_apps, editor)
    webhooks.operations_see_webhooks(global_apps, editor)

    assert set(before) == {"support", "operations", "inventory"}
    assert gone == {}
    assert table() == before
    assert Permission.objects.count() == permissions  # no duplicates made
