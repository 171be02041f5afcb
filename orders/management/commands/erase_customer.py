from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orders.privacy import customer_erase


class Command(BaseCommand):
    help = (
        "Erase a customer's personal data (name, address, email, payment reference) from each "
        "of their finished orders, found by the email's blind index; orders still in flight "
        "are refused and listed. Running it again changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", required=True)

    def handle(self, *args: Any, email: str, **options: Any) -> None:
        result = customer_erase(email=email)
        self.stdout.write(f"erased: {len(result.erased)} order(s) {' '.join(result.erased)}")
        if result.already:
            self.stdout.write(f"erased before: {len(result.already)} order(s)")
        if result.in_flight:
            raise CommandError(
                "Not erased, still in flight (they need the address to ship, refund or tell "
                "the customer; run this again once they have ended): " + ", ".join(result.in_flight)
            )
        if not (result.erased or result.already):
            self.stdout.write("no order has this email")
