from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import factory
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from oauth2_provider.models import AccessToken, set_token_value
from oauthlib.common import generate_token

from orders.crypto import blind_index
from orders.models import API_SCOPES, ApiClient, Order, OrderLine, Product


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"customer{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("secret-pass-123")


class ApiClientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ApiClient

    user = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"shop server {n}")
    client_type = ApiClient.CLIENT_CONFIDENTIAL
    authorization_grant_type = ApiClient.GRANT_CLIENT_CREDENTIALS
    client_secret = "client-secret-for-tests"  # hashed on save, as every secret is
    scope = " ".join(API_SCOPES)


@dataclass(frozen=True)
class IssuedToken:
    key: str  # what goes after "Bearer "
    user: Any
    client: ApiClient


def token_for(
    user: Any = None, scopes: list[str] | None = None, seconds: int | None = None
) -> IssuedToken:
    """An access token of a new client of `user`'s (a new user without one), stored as the
    token endpoint stores it: its digest only. The endpoint itself is tested in
    test_oauth.py; the other tests need a token, not the round trip."""
    client = ApiClientFactory(user=user or UserFactory())
    key = generate_token()
    token = AccessToken(
        user=client.user,
        application=client,
        scope=" ".join(API_SCOPES if scopes is None else scopes),
        expires=timezone.now()
        + timedelta(seconds=settings.OAUTH_ACCESS_TOKEN_SECONDS if seconds is None else seconds),
    )
    set_token_value(token, key)
    token.save()
    return IssuedToken(key=key, user=client.user, client=client)


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
    email_hash = factory.LazyAttribute(lambda o: blind_index(o.email))
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
