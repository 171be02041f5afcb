#!/usr/bin/env python
import os
import sys

# The commands that create, alter or drop tables. They run as the tables' owner,
# MIGRATION_DATABASE_URL, when it is set: web, workers and beat connect with DATABASE_URL as a
# role that may only read and write rows (README, "Least privilege"), so that nothing they run
# can change the schema. Without it, DATABASE_URL serves both, as `make run` wants (SQLite has
# no roles).
SCHEMA_COMMANDS = {"migrate"}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    migration_url = os.environ.get("MIGRATION_DATABASE_URL")
    if migration_url and len(sys.argv) > 1 and sys.argv[1] in SCHEMA_COMMANDS:
        # Before the settings are read: they take DATABASES from DATABASE_URL.
        os.environ["DATABASE_URL"] = migration_url
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
