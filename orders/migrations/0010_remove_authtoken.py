"""The API's keys were DRF authtoken keys, stored in the clear and valid forever. The app is
gone (OAuth 2.0 clients replaced it); its table goes too, so that no old key is left in the
database or its backups from now on, and none can authenticate: nothing reads that table."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("orders", "0009_api_client")]

    operations = [
        migrations.RunSQL(
            sql=[
                "DROP TABLE IF EXISTS authtoken_token",
                "DELETE FROM django_migrations WHERE app = 'authtoken'",
            ],
            reverse_sql=migrations.RunSQL.noop,  # the keys are not coming back
        ),
    ]
