from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from rest_framework.authtoken.models import Token

from orders.models import Product

DEMO_PRODUCTS = [
    ("MUG-001", "Enamel mug", Decimal("12.50"), 100, 350),
    ("TEE-001", "Cotton T-shirt", Decimal("19.90"), 100, 180),
    ("CAP-001", "Baseball cap", Decimal("15.00"), 50, 120),
    ("BAG-001", "Canvas tote bag", Decimal("9.99"), 200, 150),
    ("PEN-001", "Fountain pen", Decimal("34.00"), 10, 40),
]
DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"


class Command(BaseCommand):
    help = "Create the demo products and the demo user (a second run leaves them as they are)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    @transaction.atomic
    def handle(self, *args: Any, base_url: str, **options: Any) -> None:
        for sku, name, price, stock, grams in DEMO_PRODUCTS:
            Product.objects.get_or_create(
                sku=sku,
                defaults={
                    "name": name,
                    "price": price,
                    "currency": "EUR",
                    "stock": stock,
                    "weight_grams": grams,
                },
            )
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=DEMO_USERNAME, defaults={"email": "demo@example.com"}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        # A known admin password only where DEBUG says this is a developer's machine.
        if settings.DEBUG and not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.com", "admin")
            self.stdout.write("Admin: http://127.0.0.1:8000/admin/  (admin / admin - change it)")
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(f"Demo user: {DEMO_USERNAME} / {DEMO_PASSWORD}")
        self.stdout.write(f"Demo token: {token.key}")
        self.stdout.write("Place an order:")
        self.stdout.write(
            f"  curl -s -X POST {base_url}/api/orders/ "
            f"-H 'Authorization: Token {token.key}' -H 'Content-Type: application/json' "
            '-d \'{"lines": [{"sku": "MUG-001", "quantity": 2}], '
            '"shipping_address": {"name": "Ada Lovelace", "line1": "1 Main St", '
            '"city": "London", "postal_code": "N1 9GU", "country": "GB"}, '
            '"payment_token": "pm_card_visa"}\''
        )
        self.stdout.write(
            "It pays with Stripe's test card pm_card_visa through the sandbox's Stripe; "
            "pm_card_authenticationRequired asks for 3-D Secure, which you pass with:"
        )
        self.stdout.write(
            f"  curl -s -X POST {base_url}/sandbox/stripe/test/payment_intents/<pi_id>/"
            "authenticate -H 'Content-Type: application/json' -d '{\"outcome\": \"succeed\"}'"
        )
        self.stdout.write("Then follow it (use the id from the answer):")
        self.stdout.write(
            f"  curl -s {base_url}/api/orders/<id>/ -H 'Authorization: Token {token.key}'"
        )
