from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from orders.models import Order, OrderLine, Product


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"customer{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("secret-pass-123")


class TokenFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Token

    user = factory.SubFactory(UserFactory)


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product

    sku = factory.Sequence(lambda n: f"SKU-{n:04d}")
    name = factory.Faker("word")
    price = Decimal("10.00")
    currency = "EUR"
    stock = 100
    weight_grams = 500


def order_payload(
    *lines: tuple[str, int], token: str = "tok_ok", postal_code: str = "10115", **extra
) -> dict:
    return {
        "lines": [{"sku": sku, "quantity": qty} for sku, qty in lines],
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "1 Main St",
            "city": "Berlin",
            "postal_code": postal_code,
            "country": "DE",
        },
        "payment_token": token,
        **extra,
    }


class OrderFactory(factory.django.DjangoModelFactory):
    """An order written straight to the database, with no workflow started: for tests of
    the state machine and of the steps, which then drive it themselves."""

    class Meta:
        model = Order

    user = factory.SubFactory(UserFactory)
    email = factory.LazyAttribute(lambda o: o.user.email)
    status = "pending"
    currency = "EUR"
    total = Decimal("25.00")
    payment_token = "tok_ok"
    ship_name = "Ada Lovelace"
    ship_line1 = "1 Main St"
    ship_city = "Berlin"
    ship_postal_code = "10115"
    ship_country = "DE"


class OrderLineFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OrderLine

    order = factory.SubFactory(OrderFactory)
    product = factory.SubFactory(ProductFactory)
    sku = factory.LazyAttribute(lambda line: line.product.sku)
    quantity = 1
    unit_price = factory.LazyAttribute(lambda line: line.product.price)
