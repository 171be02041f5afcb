import os
from pathlib import Path

# prometheus-client's multiprocess mode: every gunicorn and Celery pool process writes its
# samples under this directory and /metrics adds them up (orders/metrics.py). It must be
# set before prometheus_client is first imported, so here, before anything else loads.
os.makedirs(
    os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", str(Path(__file__).resolve().parent.parent / ".prometheus")
    ),
    exist_ok=True,
)

# Load the Celery app whenever Django starts, so that shared_task binds to it.
from .celery import app as celery_app  # noqa: E402

__all__ = ("celery_app",)
