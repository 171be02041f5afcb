"""The hot path's SQL built once (orders/statements.py) reads and writes exactly what the
ORM's own calls do: encrypted fields encrypted on the way in and decrypted on the way out,
JSON as JSON, decimals, datetimes, auto_now and auto_now_add, the row lock taken."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from orders import crypto, statements
from orders.models import Order, OrderEvent, Product, WebhookEndpoint
from tests.factories import OrderFactory, ProductFactory, UserFactory


def _fields(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def test_the_locked_read_gives_what_the_orm_gives_and_takes_the_lock(db):
    order = OrderFactory(failure_reason="card declined", email="ada@example.com")
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        locked = statements.get(Order, lock=True, pk=order.pk)
    assert _fields(locked) == _fields(Order.objects.get(pk=order.pk))
    assert locked.ship_name == order.ship_name and locked.email == "ada@example.com"
    assert isinstance(locked.total, Decimal) and locked.created_at.tzinfo is not None
    assert len(queries) == 1 and queries[0]["sql"].endswith("FOR UPDATE")
    with pytest.raises(Order.DoesNotExist):
        statements.get(Order, pk="00000000-0000-0000-0000-000000000000")


@pytest.mark.django_db(transaction=True)
def test_a_second_locked_read_waits_for_the_first_transaction():
    order = OrderFactory()
    locked, released, seen = threading.Event(), threading.Event(), []

    def second():
        locked.wait(5)
        with transaction.atomic():
            seen.append(statements.get(Order, lock=True, pk=order.pk).status)
        connection.close()

    thread = threading.Thread(target=second)
    thread.start()
    with transaction.atomic():
        first = statements.get(Order, lock=True, pk=order.pk)
        locked.set()
        thread.join(0.5)
        assert thread.is_alive()  # waiting on the row lock
        first.status = "reserving"
        statements.update(first, ["status"])
    released.set()
    thread.join(5)
    assert seen == ["reserving"]  # it read the row as the first transaction left it


def test_an_update_writes_what_save_update_fields_writes(db):
    order = OrderFactory()
    before = order.updated_at
    order.status = "failed"
    order.failure_reason = "the carrier rejected the address"
    statements.update(order, ["status", "updated_at", "failure_reason"])
    stored = Order.objects.get(pk=order.pk)
    assert stored.status == "failed" and stored.updated_at > before
    assert stored.failure_reason == "the carrier rejected the address"
    with connection.cursor() as cursor:  # encrypted at rest, as the field's own save does
        cursor.execute("SELECT failure_reason FROM orders_order WHERE id = %s", [order.pk])
        assert "carrier" not in cursor.fetchone()[0]


def test_an_insert_writes_what_create_writes(db):
    order = OrderFactory()
    fields = {"order": order, "step": "charge_payment", "outcome": "failed", "data": {"a": [1]}}
    mine = OrderEvent(**fields, detail="declined: insufficient_funds")
    statements.insert(mine)
    theirs = OrderEvent.objects.create(**fields, detail="declined: insufficient_funds")
    mine_read, theirs_read = (
        OrderEvent.objects.get(pk=mine.pk),
        OrderEvent.objects.get(pk=theirs.pk),
    )
    ignore = {"id", "at"}
    assert {k: v for k, v in _fields(mine_read).items() if k not in ignore} == {
        k: v for k, v in _fields(theirs_read).items() if k not in ignore
    }
    assert mine_read.at == mine.at and mine_read.detail == "declined: insufficient_funds"


def test_an_insert_of_a_record_that_made_its_own_key_writes_what_create_writes(db):
    user = UserFactory()
    fields = {"user": user, "email": "ada@example.com", "currency": "EUR", "total": "12.50"}
    fields |= {"ship_name": "Ada", "ship_line1": "1 Analytical St", "ship_city": "London"}
    mine = Order(**fields, ship_postal_code="N1", ship_country="GB", payment_token="pm_x")
    chosen = mine.pk
    statements.insert(mine)
    theirs = Order.objects.create(
        **fields, ship_postal_code="N1", ship_country="GB", payment_token="pm_x"
    )
    assert type(mine.pk) is uuid.UUID and mine.pk == chosen  # as made, not as read back
    ignore = {"id", "created_at", "updated_at"}
    mine_read, theirs_read = Order.objects.get(pk=chosen), Order.objects.get(pk=theirs.pk)
    assert {k: v for k, v in _fields(mine_read).items() if k not in ignore} == {
        k: v for k, v in _fields(theirs_read).items() if k not in ignore
    }
    assert mine_read.created_at == mine.created_at and mine_read.ship_name == "Ada"
    with connection.cursor() as cursor:  # encrypted at rest, as create() stores it
        cursor.execute("SELECT ship_line1 FROM orders_order WHERE id = %s", [chosen])
        assert "Analytical" not in cursor.fetchone()[0]


def test_many_inserted_rows_get_their_keys_in_the_order_given(db):
    order = OrderFactory()
    events = [
        OrderEvent(order=order, step="order", outcome="created", detail=f"{n}") for n in "abcde"
    ]
    statements.insert_many(events, returning=True)
    stored = dict(OrderEvent.objects.filter(order=order).values_list("pk", "detail"))
    assert {e.pk: e.detail for e in events}.items() <= stored.items()  # each its own row's
    assert len({e.pk for e in events}) == 5


def test_an_update_where_changes_the_matching_rows_and_says_how_many(db):
    mine, other = OrderFactory(), OrderFactory()
    before = Order.objects.get(pk=mine.pk).updated_at
    values = {"status": "failed", "failure_reason": "the carrier rejected the address"}
    assert statements.update_where(Order, values, pk=mine.pk) == 1
    assert statements.update_where(Order, values, pk="00000000-0000-0000-0000-000000000000") == 0
    stored = Order.objects.get(pk=mine.pk)
    assert (stored.status, stored.failure_reason) == ("failed", values["failure_reason"])
    assert stored.updated_at == before  # no auto_now, as QuerySet.update() leaves it
    assert Order.objects.get(pk=other.pk).status == other.status
    with connection.cursor() as cursor:  # encrypted at rest, as update() stores it
        cursor.execute("SELECT failure_reason FROM orders_order WHERE id = %s", [mine.pk])
        assert "carrier" not in cursor.fetchone()[0]


def test_take_decrements_only_while_enough_is_left(db):
    product = ProductFactory(stock=5)
    assert statements.take(Product, "stock", 3, pk=product.pk)
    assert not statements.take(Product, "stock", 3, pk=product.pk)  # 2 left: refused whole
    assert statements.take(Product, "stock", 2, pk=product.pk)
    assert Product.objects.get(pk=product.pk).stock == 0


def test_a_loaded_orders_personal_data_is_decrypted_only_when_read(db, monkeypatch):
    order = OrderFactory(email="ada@example.com", ship_name="Ada Lovelace")
    with connection.cursor() as cursor:
        cursor.execute("SELECT ship_line1 FROM orders_order WHERE id = %s", [order.pk])
        stored_line1 = cursor.fetchone()[0]
    opened: list[str] = []
    real_decrypt = crypto.decrypt

    def counting(token: str, *, what: str = "a value") -> str:
        opened.append(what)
        return real_decrypt(token, what=what)

    monkeypatch.setattr(crypto, "decrypt", counting)
    with transaction.atomic():
        locked = statements.get(Order, lock=True, pk=order.pk)
        assert locked.status == order.status and opened == []  # a status read opens nothing
        assert locked.email == "ada@example.com" and opened == ["Order.email"]
        assert locked.email == "ada@example.com" and opened == ["Order.email"]  # opened once
        # Saved with the rest unread: the address is written back exactly as it was stored.
        locked.ship_name = "A. Lovelace"
        locked.save()
    assert Order.objects.get(pk=order.pk).ship_name == "A. Lovelace"
    with connection.cursor() as cursor:
        cursor.execute("SELECT ship_line1 FROM orders_order WHERE id = %s", [order.pk])
        assert cursor.fetchone()[0] == stored_line1
    # values_list and the ORM still give the plaintext at once.
    assert statements.values_list(Order, ["email"], pk=order.pk) == [["ada@example.com"]]
    assert Order.objects.values_list("ship_name", flat=True).get(pk=order.pk) == "A. Lovelace"


def test_filter_in_gives_what_the_orm_gives(db):
    for sku, active in (("MUG-1", True), ("MUG-2", True), ("MUG-3", False), ("TEE-1", True)):
        ProductFactory(sku=sku, is_active=active)
    skus = ["MUG-1", "MUG-2", "MUG-3", "NONE"]
    mine = statements.filter_in(Product, "sku", skus, is_active=True)
    theirs = Product.objects.filter(sku__in=skus, is_active=True)
    assert sorted(map(_fields, mine), key=str) == sorted(map(_fields, theirs), key=str)
    assert sorted(p.sku for p in mine) == ["MUG-1", "MUG-2"]
    assert statements.filter_in(Product, "sku", []) == []


def test_values_list_gives_what_the_orm_gives(db):
    user = UserFactory()
    for events, enabled in ((["*"], True), (["order.paid", "order.failed"], True), ([], False)):
        WebhookEndpoint.objects.create(
            user=user, url="https://shop.example/hook", events=events, enabled=enabled, secret="s"
        )
    mine = statements.values_list(WebhookEndpoint, ("id", "events"), user_id=user.pk, enabled=True)
    theirs = WebhookEndpoint.objects.filter(user_id=user.pk, enabled=True).values_list(
        "id", "events"
    )
    assert sorted(map(tuple, mine)) == sorted(theirs)
    assert sorted(events for _, events in mine) == [["*"], ["order.paid", "order.failed"]]


def test_the_bearer_token_loads_as_the_orm_loads_it(db):
    from oauth2_provider.models import AccessToken

    from orders.oauth import CLIENT_FIELDS, TOKEN_FIELDS, OAuth2Validator
    from tests.factories import token_for

    issued = token_for()
    with CaptureQueriesContext(connection) as queries:
        mine = OAuth2Validator()._load_access_token(issued.key)
        # the client, its owner and the account come with it, in the one query
        assert mine.application.client_id == issued.client.client_id
        assert mine.user == issued.user and mine.application.user is mine.user
    theirs = AccessToken.objects.get(pk=mine.pk)
    assert len(queries) == 1
    for name in TOKEN_FIELDS:
        field = AccessToken._meta.get_field(name)
        assert getattr(mine, field.attname) == getattr(theirs, field.attname), name
    for name in CLIENT_FIELDS:
        field = type(theirs.application)._meta.get_field(name)
        assert getattr(mine.application, field.attname) == getattr(
            theirs.application, field.attname
        )
    assert _fields(mine.user) == _fields(theirs.user)
    assert mine.is_valid(["orders:read"])
    assert OAuth2Validator()._load_access_token("not-a-token") is None


_PREPARED = """
import django
django.setup()
from django.db import connection
for _ in range(6):
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM orders_product WHERE sku = %s", ["MUG-001"])
with connection.cursor() as cursor:
    cursor.execute("SELECT statement FROM pg_prepared_statements")
    print([row[0] for row in cursor.fetchall()])
"""


@pytest.mark.parametrize(
    ("threshold", "prepared"),
    [
        ("5", ["SELECT id FROM orders_product WHERE sku = $1"]),
        (None, []),  # off unless set, as in Django
        ("", []),
    ],
)
def test_a_statement_run_again_on_a_connection_is_prepared_when_turned_on(db, threshold, prepared):
    """DATABASE_PREPARE_THRESHOLD=5: the sixth run of a statement on a connection finds it
    prepared in PostgreSQL, its parameter bound there; unset or empty, nothing is."""
    name = connection.settings_dict["NAME"]
    env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}"}
    env.pop("DATABASE_PREPARE_THRESHOLD", None)
    if threshold is not None:
        env["DATABASE_PREPARE_THRESHOLD"] = threshold
    done = subprocess.run(
        [sys.executable, "-c", _PREPARED], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr(prepared)


_ON_SQLITE = """
import uuid
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.auth.models import User
from orders import statements
from orders.models import Order, OrderLine, Product, Shipment
user = User.objects.create(username="ada")
order = Order(user=user, email="ada@example.com", currency="EUR", total="10.00",
              payment_token="pm_x", ship_name="Ada", ship_line1="1 Analytical St",
              ship_city="London", ship_postal_code="N1", ship_country="GB")
chosen = order.pk
statements.insert(order)
assert type(order.pk) is uuid.UUID and order.pk == chosen, repr(order.pk)
assert Order.objects.get(pk=chosen).ship_line1 == "1 Analytical St"
products = [Product.objects.create(sku=f"MUG-{n}", name="Mug", price="5.00", stock=3,
                                   weight_grams=300) for n in (1, 2)]
lines = [OrderLine(order=order, product=p, sku=p.sku, quantity=1, unit_price=p.price)
         for p in products]
statements.insert_many(lines, returning=True)
stored = dict(OrderLine.objects.values_list("pk", "sku"))
assert {line.pk: line.sku for line in lines} == stored, (lines, stored)
assert statements.insert_once(Shipment(order=order), conflict=["order"])
assert not statements.insert_once(Shipment(order=order), conflict=["order"])
assert statements.take(Product, "stock", 3, pk=products[0].pk)
assert not statements.take(Product, "stock", 1, pk=products[0].pk)
print("ok")
"""


def test_the_inserts_keep_their_keys_on_sqlite_too(tmp_path):
    """SQLite (the embedded default) gives a UUID back as 32 hex digits: an order's own key
    must stay the UUID it was made with, and the lines' keys must be the rows' own."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    done = subprocess.run(
        [sys.executable, "-c", _ON_SQLITE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
