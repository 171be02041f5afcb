from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django_otp.plugins.otp_totp.models import TOTPDevice


class Command(BaseCommand):
    help = (
        "Give a staff member a TOTP device for the admin's second factor (ADMIN_REQUIRE_OTP) "
        "and print, once, the otpauth:// URL to add to an authenticator app."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", required=True)
        parser.add_argument("--name", default="authenticator app")

    def handle(self, *args: Any, username: str, name: str, **options: Any) -> None:
        try:
            user = get_user_model().objects.get(username=username, is_staff=True)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No staff user {username!r}.") from None
        device = TOTPDevice.objects.create(user=user, name=name, confirmed=True)
        self.stdout.write(device.config_url)
