from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps  # a module: its AdminConfig is not ours


class OrdersConfig(AppConfig):
    default = True  # "orders" in INSTALLED_APPS; the admin's config below is named in full
    name = "orders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, signin  # noqa: F401  registers the checks and the lock-out receiver


class OrdersAdminConfig(admin_apps.AdminConfig):
    """The admin, on the site that asks staff for a second factor where settings require it."""

    default = False
    default_site = "orders.admin_site.AdminSite"
