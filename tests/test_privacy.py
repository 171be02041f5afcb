"""Personal data at rest: encrypted in every table we keep (a dump finds no name, address,
email or payment reference), shown in plain to those allowed, re-encrypted under a new key
while orders flow, refused loudly under a wrong key, and erased on time and on request."""

import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from orders import crypto, privacy
from orders.models import Notification, Order, OrderEvent, OrderStatus, ProviderEvent
from orders.tasks import anonymize_expired_orders
from tests.factories import OrderFactory, ProductFactory, UserFactory, order_payload, token_for
from tests.helpers import api_session, wait_for_orders
from tests.procs import ROOT

NAME = "Zelda Quixotic-Pseudonym"
LINE1 = "742 Evergreen Terrace Unique"
CITY = "Springfieldtown"
POSTAL_CODE = "99999-PII"
EMAIL = "zelda.pii@example.org"
PERSONAL = (NAME, LINE1, CITY, POSTAL_CODE, EMAIL)


def payload(*lines, **extra) -> dict:
    body = order_payload(*lines, **extra)
    body["shipping_address"].update(
        name=NAME, line1=LINE1, city=CITY, postal_code=POSTAL_CODE, country="DE"
    )
    return body


def dump() -> str:
    """Every row of every table, as text, the providers' sandbox tables aside (they stand for
    the providers' side). The account table's own login email is account data, not the
    order's copy, and is left out too."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        tables = [t for (t,) in cursor.fetchall() if not t.startswith("sandbox")]
        text = []
        for table in tables:
            if table == "auth_user":
                cursor.execute("SELECT to_jsonb(t) - 'email' FROM auth_user t")
            else:
                cursor.execute(f'SELECT t::text FROM "{table}" t')
            text += [str(row[0]) for row in cursor.fetchall()]
    return "\n".join(text).lower()


@pytest.fixture
def customer(db):
    return UserFactory(email=EMAIL)


@pytest.mark.slow
def test_no_personal_data_in_the_database_yet_all_of_it_for_those_allowed(
    pipeline, customer, admin_client
):
    ProductFactory(sku="MUG-001", stock=10)
    api = api_session(token_for(user=customer).key, pipeline.url)
    ids = [
        api.post(f"{pipeline.url}/api/orders/", json=payload(("MUG-001", 1)), timeout=15).json()[
            "id"
        ],
        api.post(
            f"{pipeline.url}/api/orders/",
            json=payload(("MUG-001", 1)),
            headers={"Idempotency-Key": "privacy-1"},
            timeout=15,
        ).json()["id"],
        # An order that fails: its refusal and the failure email are kept as well.
        api.post(f"{pipeline.url}/api/orders/", json=payload(("MUG-001", 50)), timeout=15).json()[
            "id"
        ],
    ]
    orders = sorted(wait_for_orders(ids, timeout=60), key=lambda o: ids.index(str(o.id)))
    assert [o.status for o in orders] == ["completed", "completed", "failed"]
    replay = api.post(
        f"{pipeline.url}/api/orders/",
        json=payload(("MUG-001", 1)),
        headers={"Idempotency-Key": "privacy-1"},
        timeout=15,
    )
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["shipping_address"]["name"] == NAME  # the stored answer, decrypted

    stored = dump()
    for value in (*PERSONAL, "tok_ok"):
        assert value.lower() not in stored, value
    assert str(orders[0].id) in stored  # the dump is of the right database

    # Those allowed see the plaintext: the shop through the API, staff in the admin.
    body = api.get(f"{pipeline.url}/api/orders/{ids[0]}/", timeout=15).json()
    assert body["shipping_address"] == {
        "name": NAME,
        "line1": LINE1,
        "city": CITY,
        "postal_code": POSTAL_CODE,
        "country": "DE",
    }
    page = admin_client.get(f"/admin/orders/order/{ids[0]}/change/").content.decode()
    assert all(value in page for value in (NAME, LINE1, CITY, POSTAL_CODE, EMAIL))
    listed = admin_client.get("/admin/orders/order/", {"q": EMAIL.upper()}).content.decode()
    assert all(str(i) in listed for i in ids)  # found by the email's blind index


def test_an_encrypted_field_cannot_be_searched_by_value(customer):
    from django.core.exceptions import FieldError

    with pytest.raises(FieldError, match="encrypted"):
        list(Order.objects.filter(ship_name=NAME))
    with pytest.raises(FieldError, match="encrypted"):
        list(Order.objects.filter(email__icontains="zelda"))
    assert list(Order.objects.filter(email="")) == []  # empty stays empty, and is findable


# --- Keys ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_keys_rotate_under_a_running_pipeline_and_every_order_reads_back(
    pipeline, customer, settings
):
    ProductFactory(sku="MUG-001", stock=1000)
    api = api_session(token_for(user=customer).key, pipeline.url)
    old = settings.FIELD_ENCRYPTION_KEYS[0]
    new = Fernet.generate_key().decode()
    ids: list[str] = []
    stop = threading.Event()

    def keep_ordering():
        while not stop.is_set():
            response = api.post(
                f"{pipeline.url}/api/orders/", json=payload(("MUG-001", 1)), timeout=15
            )
            ids.append(response.json()["id"])

    for _ in range(5):
        ids.append(
            api.post(
                f"{pipeline.url}/api/orders/", json=payload(("MUG-001", 1)), timeout=15
            ).json()["id"]
        )
    wait_for_orders(ids, timeout=60)
    placer = threading.Thread(target=keep_ordering)
    placer.start()
    try:
        time.sleep(1)
        settings.FIELD_ENCRYPTION_KEYS = [new, old]  # the new key first: it encrypts from now
        rotated = privacy.keys_rotate(batch=7)
        time.sleep(1)
    finally:
        stop.set()
        placer.join(timeout=30)
    orders = wait_for_orders(ids, timeout=90)
    out = StringIO()  # what was written while the first pass ran, as an operator runs it
    call_command("rotate_field_keys", "--batch", "50", stdout=out)
    assert "orders.Order:" in out.getvalue()

    assert rotated["orders.Order"] >= 5 and rotated["orders.OrderEvent"] > 0
    settings.FIELD_ENCRYPTION_KEYS = [new]  # the old key is gone
    assert {o.status for o in orders} == {OrderStatus.COMPLETED}
    for order in Order.objects.filter(pk__in=ids):
        assert (order.ship_name, order.email) == (NAME, EMAIL)
        assert all(e.detail is not None for e in order.events.all())
        body = api.get(f"{pipeline.url}/api/orders/{order.pk}/", timeout=15).json()
        assert body["shipping_address"]["line1"] == LINE1
    with connection.cursor() as cursor:
        cursor.execute("SELECT ship_name FROM orders_order")
        assert all(crypto.is_current(value) for (value,) in cursor.fetchall())


def test_a_wrong_key_is_a_clear_error_at_start_up_not_ciphertext(transactional_db, customer):
    OrderFactory(user=customer, ship_name=NAME)
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/{db['NAME']}",
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "orders.E004" in result.stderr
    assert "None of FIELD_ENCRYPTION_KEYS decrypts Order.ship_name" in result.stderr
    assert NAME not in result.stderr + result.stdout


# --- Erasure ------------------------------------------------------------------------------
@pytest.fixture
def finished(customer, django_capture_on_commit_callbacks):
    """A completed order of the customer, with a notification and a timeline."""
    order = OrderFactory(
        user=customer,
        status=OrderStatus.COMPLETED,
        ship_name=NAME,
        ship_line1=LINE1,
        ship_city=CITY,
        ship_postal_code=POSTAL_CODE,
        payment_token="pm_zelda_card",
    )
    Notification.objects.create(order=order, kind="confirmation", to=EMAIL)
    ProviderEvent.objects.create(
        provider="stripe",
        event_id="evt_zelda",
        type="payment_intent.succeeded",
        order=order,
        payload={"data": {"object": {"payment_method": "pm_zelda_card"}}},
    )
    OrderEvent.objects.create(order=order, step="order", outcome="created", detail=f"{LINE1}")
    return order


def _personal(order: Order) -> tuple:
    order.refresh_from_db()
    return (
        order.email,
        order.payment_token,
        order.ship_name,
        order.ship_line1,
        order.ship_city,
        order.ship_postal_code,
    )


def test_staff_with_the_permission_erase_a_finished_order_and_it_stays_readable(
    client, finished, customer
):
    in_flight = OrderFactory(user=customer, status=OrderStatus.SHIPPING)
    staff = UserFactory(is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_order", "erase_personal_data"])
    )
    client.force_login(staff)

    page = client.post(
        "/admin/orders/order/",
        {"action": "erase_personal_data", "_selected_action": [finished.pk, in_flight.pk]},
        follow=True,
    ).content.decode()

    assert _personal(finished) == ("", "", "(erased)", "(erased)", "(erased)", "(erased)")
    assert finished.ship_country == "DE" and finished.total and finished.anonymized_at
    assert finished.events.filter(
        step="privacy", outcome="anonymized", reason_code="erasure_requested", actor=staff
    ).exists()
    assert not finished.events.exclude(step="privacy").exclude(detail="").exists()
    assert Notification.objects.get(order=finished).to == ""
    assert [e.payload for e in ProviderEvent.objects.filter(order=finished)] == [{"erased": True}]
    assert "still needs the customer&#x27;s address" in page
    assert _personal(in_flight)[2] == "Ada Lovelace"  # untouched
    assert client.get(f"/admin/orders/order/{finished.pk}/change/").status_code == 200
    dumped = dump()
    assert LINE1.lower() not in dumped and "pm_zelda_card" not in dumped

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token_for(user=customer).key}")
    assert api.get(f"/api/orders/{finished.pk}/").json()["shipping_address"]["name"] == "(erased)"


def test_staff_without_the_permission_are_not_offered_erasure(client, finished):
    staff = UserFactory(is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename="view_order"))
    client.force_login(staff)
    page = client.get("/admin/orders/order/").content.decode()
    assert "erase_personal_data" not in page
    client.post(
        "/admin/orders/order/",
        {"action": "erase_personal_data", "_selected_action": [finished.pk]},
    )
    assert _personal(finished)[2] == NAME


def test_erase_customer_erases_every_finished_order_once_and_refuses_those_in_flight(
    finished, customer
):
    other = OrderFactory(user=customer, status=OrderStatus.FAILED, compensated_at=timezone.now())
    out = StringIO()
    call_command("erase_customer", "--email", EMAIL.upper(), stdout=out)
    assert "erased: 2 order(s)" in out.getvalue()
    assert _personal(finished)[2] == _personal(other)[2] == "(erased)"

    out = StringIO()
    call_command("erase_customer", "--email", EMAIL, stdout=out)  # idempotent
    # Erased orders keep no trace of the email, its hash included: nothing to find again.
    assert "no order has this email" in out.getvalue()
    assert finished.events.filter(outcome="anonymized").count() == 1

    busy = OrderFactory(user=UserFactory(email="busy@example.org"), status=OrderStatus.PAYING)
    with pytest.raises(CommandError, match=f"{busy.pk} \\(paying\\)"):
        call_command("erase_customer", "--email", "busy@example.org", stdout=StringIO())
    assert _personal(busy)[2] == "Ada Lovelace"


def test_beat_anonymizes_finished_orders_past_the_retention_period(finished, customer, settings):
    recent = OrderFactory(user=customer, status=OrderStatus.COMPLETED)
    old_in_flight = OrderFactory(user=customer, status=OrderStatus.SHIPPING)
    past = timezone.now() - timedelta(days=settings.ORDER_PERSONAL_DATA_RETENTION_DAYS + 1)
    Order.objects.filter(pk__in=[finished.pk, old_in_flight.pk]).update(updated_at=past)

    assert anonymize_expired_orders() == 1
    assert anonymize_expired_orders() == 0  # once

    assert _personal(finished)[2] == "(erased)"
    assert finished.events.filter(outcome="anonymized", reason_code="retention_expired").exists()
    assert _personal(recent)[2] == "Ada Lovelace" and _personal(old_in_flight)[2] == "Ada Lovelace"
