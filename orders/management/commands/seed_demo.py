from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from orders.models import API_SCOPES, ApiClient, Product
from orders.oauth import api_client_create, api_client_secret_reset

DEMO_PRODUCTS = [
    ("MUG-001", "Enamel mug", Decimal("12.50"), 100, 350),
    ("TEE-001", "Cotton T-shirt", Decimal("19.90"), 100, 180),
    ("CAP-001", "Baseball cap", Decimal("15.00"), 50, 120),
    ("BAG-001", "Canvas tote bag", Decimal("9.99"), 200, 150),
    ("PEN-001", "Fountain pen", Decimal("34.00"), 10, 40),
]
DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"
DEMO_CLIENT_NAME = "demo shop server"


class Command(BaseCommand):
    help = (
        "Create the demo products, the demo user and its API client (a second run leaves them "
        "as they are, but gives the client a new secret: only a hash of it is kept)."
    )

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
        client = ApiClient.objects.filter(user=user, name=DEMO_CLIENT_NAME).first()
        if client is None:
            issued = api_client_create(user=user, scopes=list(API_SCOPES), name=DEMO_CLIENT_NAME)
        else:
            issued = api_client_secret_reset(client=client)
        self.stdout.write(f"Demo user: {DEMO_USERNAME} / {DEMO_PASSWORD}")
        self.stdout.write(
            f"Demo API client: {issued.client.client_id} / {issued.client_secret} "
            "(scopes: " + " ".join(issued.client.scopes) + ")"
        )
        self.stdout.write("Get a token (it lives OAUTH_ACCESS_TOKEN_SECONDS):")
        self.stdout.write(
            f"  TOKEN=$(curl -s -u {issued.client.client_id}:{issued.client_secret} "
            f"-d grant_type=client_credentials {base_url}/api/oauth/token/ "
            "| python3 -c 'import json, sys; print(json.load(sys.stdin)[\"access_token\"])')"
        )
        self.stdout.write("Place an order:")
        self.stdout.write(
            f"  curl -s -X POST {base_url}/api/orders/ "
            "-H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' "
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
            f'  curl -s {base_url}/api/orders/<id>/ -H "Authorization: Bearer $TOKEN"'
        )
