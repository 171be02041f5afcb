"""The engine's ceiling for `make bench`: bare Celery running the order canvas's shape with
no-op tasks, on the pipeline's own settings (broker, result backend, acks, prefetch, database
connection reuse), in a queue of its own.

    chain(chord([noop, noop], noop), noop, noop)     # a chord of 2, then 3

The last task of each canvas counts itself in Redis; the benchmark waits for the count.
`CEILING_RESULT_BACKEND=redis` stores the chord's results in Redis instead of PostgreSQL
(django-celery-results), for the figure beside it; `CEILING_SETTINGS=bare` runs on Celery's
defaults instead of the pipeline's settings (acks_late, prefetch 1, extended results...).
"""

import os

import redis
from celery import Celery, chain, chord

from config.broker import queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

QUEUE = "ceiling"
DONE_KEY = "bench:ceiling:done"

app = Celery("ceiling")
if os.environ.get("CEILING_SETTINGS") == "bare":
    # Celery's defaults (no acks_late, prefetch 4, no extended results, no deduplication),
    # with only the broker, the result backend and the database connection reuse of the
    # pipeline: what the engine does before the pipeline's delivery guarantees.
    from django.conf import settings

    app.conf.update(broker_url=settings.CELERY_BROKER_URL, result_backend="django-db")
    app.conf["CELERY_DB_REUSE_MAX"] = settings.CELERY_DB_REUSE_MAX
else:
    app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    # One queue, declared as the pipeline's are (a quorum queue on RabbitMQ).
    task_queues=[
        queue(QUEUE, app.conf.broker_url, delivery_limit=20, exchange=QUEUE),
    ],
    task_routes=None,
    task_default_queue=QUEUE,
    beat_schedule={},
    worker_send_task_events=False,  # as the bare engine runs without Flower
    task_send_sent_event=False,
)
if os.environ.get("CEILING_RESULT_BACKEND") == "redis":
    app.conf.result_backend = os.environ["REDIS_URL"]


@app.task(name="ceiling.noop", ignore_result=False)
def noop(*args: object, **kwargs: object) -> None:
    """A chord's header task (its result is stored: the chord counts them)."""


@app.task(name="ceiling.last")
def last(*args: object, **kwargs: object) -> None:
    redis.Redis.from_url(os.environ["REDIS_URL"]).incr(DONE_KEY)


def canvas():
    return chain(chord([noop.si(), noop.si()], noop.si()), noop.si(), last.si())
