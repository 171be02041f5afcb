"""The staff groups of least privilege: daily work in the admin needs no superuser.

support     reads orders (with their lines, payment, shipment, emails) and cancels them;
operations  reads the same plus provider events and task results, and resumes or fails
            stuck orders;
inventory   edits products and adjusts their stock; sees no order, so no customer data.

No group may delete anything or manage users and groups. README.md ("Staff groups") says
the same for people.
"""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

ORDER_READING = [
    ("orders", "view_order"),
    ("orders", "view_orderline"),
    ("orders", "view_payment"),
    ("orders", "view_shipment"),
    ("orders", "view_notification"),
]

GROUPS = {
    "support": [*ORDER_READING, ("orders", "cancel_order")],
    "operations": [
        *ORDER_READING,
        ("orders", "resume_order"),
        ("orders", "fail_order"),
        ("orders", "view_providerevent"),
        ("django_celery_results", "view_taskresult"),
    ],
    "inventory": [
        ("orders", "view_product"),
        ("orders", "add_product"),
        ("orders", "change_product"),
        ("orders", "view_stockadjustment"),
        ("orders", "add_stockadjustment"),
    ],
}


def create_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    using = schema_editor.connection.alias
    # Permissions are made by post_migrate, after every migration has run: on a fresh
    # database none exists yet here. create_permissions skips those that do, so a rerun
    # (or post_migrate afterwards) makes no duplicates.
    for label in {app for codenames in GROUPS.values() for app, _ in codenames}:
        create_permissions(global_apps.get_app_config(label), apps=apps, verbosity=0, using=using)

    for name, wanted in GROUPS.items():
        permissions = [
            Permission.objects.using(using).get(content_type__app_label=app, codename=codename)
            for app, codename in wanted
        ]
        group, _ = Group.objects.using(using).get_or_create(name=name)
        # `set`, not `add`: the group is exactly what README.md documents, also if a group of
        # that name existed before.
        group.permissions.set(permissions)


def delete_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0010_remove_authtoken"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        # TaskResult's permissions: the model exists from the first migration on.
        ("django_celery_results", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_groups, delete_groups)]
