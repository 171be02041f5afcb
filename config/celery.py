"""The Celery application: `celery -A config worker` and `celery -A config beat`."""

import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("config")
# Every Celery setting lives in Django settings as CELERY_<NAME>.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def refuse_bad_timing(**kwargs) -> None:
    """Django runs its checks for the web server; a worker must refuse to start too when the
    timing settings are in an order that lets one step run twice (orders/checks.py)."""
    from orders.checks import timing_errors

    if errors := timing_errors():
        raise SystemExit("Refusing to start: " + "; ".join(errors))
