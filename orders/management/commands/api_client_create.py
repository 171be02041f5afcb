import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from orders.errors import ApplicationError
from orders.models import API_SCOPES
from orders.oauth import api_client_create


class Command(BaseCommand):
    help = (
        "Create an OAuth 2.0 client (client credentials) for a user account and print, once, "
        'its {"client_id", "client_secret"} as JSON. Only a hash of the secret is stored.'
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", required=True, help="the shop's user account")
        parser.add_argument(
            "--scopes",
            required=True,
            help=f"space-separated, of: {' '.join(API_SCOPES)}",
        )
        parser.add_argument("--name", default="", help="shown in the admin")

    def handle(self, *args: Any, username: str, scopes: str, name: str, **options: Any) -> None:
        try:
            user = get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user {username!r}.") from None
        try:
            issued = api_client_create(user=user, scopes=scopes.split(), name=name)
        except ApplicationError as error:
            raise CommandError(error.message) from None
        self.stdout.write(
            json.dumps(
                {"client_id": issued.client.client_id, "client_secret": issued.client_secret}
            )
        )
