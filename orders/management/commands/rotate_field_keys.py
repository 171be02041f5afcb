from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from orders.privacy import keys_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored personal value under the first of FIELD_ENCRYPTION_KEYS, in "
        "batches, while orders keep flowing. Then the old keys can leave the list."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch", type=int, default=200, help="rows per transaction")
        parser.add_argument(
            "--rehash",
            action="store_true",
            help="recompute the email's blind index too (after FIELD_HASH_KEY changed)",
        )

    def handle(self, *args: Any, batch: int, rehash: bool, **options: Any) -> None:
        for model, count in keys_rotate(batch=batch, rehash=rehash).items():
            self.stdout.write(f"{model}: {count} row(s) re-encrypted")
