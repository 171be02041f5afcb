"""The Celery application: `celery -A config worker` and `celery -A config beat`."""

import logging.config
import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_prerun, worker_init
from django_structlog.celery.steps import DjangoStructLogInitStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("config")
# Every Celery setting lives in Django settings as CELERY_<NAME>.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# django-structlog: request_id travels in every task's headers and is bound in the worker.
app.steps["worker"].add(DjangoStructLogInitStep)


@setup_logging.connect
def configure_logging(**kwargs: Any) -> None:
    """Workers and beat log through Django's LOGGING, in the web server's format, instead of
    Celery's own handlers (as cookiecutter-django does)."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@worker_init.connect
def refuse_bad_settings(**kwargs: Any) -> None:
    """Django runs its checks for the web server; a worker must refuse to start too when the
    timing settings are in an order that lets one step run twice (orders.E001), when the
    providers are not real where the sandbox is off (orders.E002), or when a backing service
    would be reached without verified TLS there (orders.E003): orders/checks.py."""
    from orders.checks import startup_errors

    if errors := startup_errors():
        raise SystemExit("Refusing to start: " + "; ".join(errors))


@task_prerun.connect
def drop_broken_db_connections(**kwargs: Any) -> None:
    """What Django does at the start of every web request, done before every task: close a
    connection that errored (e.g. PostgreSQL restarted) or outlived CONN_MAX_AGE. Without it a
    worker process keeps its dead connection until CELERY_DB_REUSE_MAX tasks have passed, and
    every retry in the meantime fails on it."""
    from django.db import close_old_connections

    close_old_connections()
