"""Unique-task locks: the same step of the same order never runs twice at once.

Celery delivers at least once: a message can be dispatched twice, redelivered after a worker
died, or redelivered by Redis while its first copy still runs (visibility timeout). Each
workflow step therefore takes a Redis lock named after the step and the order before it runs.
redis-py's Lock stores a random token and releases only if the token still matches, so a
copy whose lock expired cannot release the lock of the copy that took it over.
"""

from __future__ import annotations

import logging
import random
import threading
from functools import lru_cache
from typing import Any

import redis
from celery import Task
from django.conf import settings
from django.utils import timezone
from redis.exceptions import LockError
from redis.lock import Lock

from .models import OrderId
from .state import TaskRun, current_task_run

logger = logging.getLogger(__name__)

# The lock held by the task running in this thread (a worker thread or process runs one task
# at a time). Not on the task's request: Celery copies and serializes the request on retry.
_held = threading.local()


@lru_cache(maxsize=1)
def redis_client() -> redis.Redis:
    # The pool is fork-safe (it resets in a child process) and thread-safe.
    return redis.Redis.from_url(settings.LOCK_REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def lock_key(*, step: str, order_id: OrderId, line_id: int | None = None) -> str:
    """The one name of the lock of a step of an order (and of a line, for reservations, so
    that an order's lines reserve in parallel). The task, the compensation (which takes the
    charge step's lock) and the sweep (which takes the lock of the step in flight before it
    fails an order) all build it here."""
    key = f"lock:{step}:{order_id}"
    return key if line_id is None else f"{key}:{line_id}"


def step_lock(name: str) -> Lock:
    # Outlives the hard time limit (checked at start-up, orders/checks.py): a task that is
    # still running always still holds its lock, and a task killed with its worker leaves a
    # lock that frees itself after at most TASK_LOCK_TIMEOUT.
    return redis_client().lock(name, timeout=settings.TASK_LOCK_TIMEOUT, blocking=False)


class StepBusy(Exception):
    """Another copy of this step holds its lock."""


# How many times a task's copies found its step's lock held, by task id (a retry and a
# redelivered message keep the id). Kept a day: far longer than any step's retries.
BUSY_KEY = "step-busy:{task_id}"
BUSY_KEY_SECONDS = 24 * 3600


class UniqueStepTask(Task):
    """Base class for the workflow's tasks.

    A copy that finds the step's lock held does not run the step. It retries with an
    exponential backoff capped at the lock's expiry, rather than dropping: the holder may be
    a worker that was killed mid-task, whose redelivered message is this very copy, and
    dropping it would leave the order waiting for the recovery sweep. The retry is cheap
    because every step is idempotent: if the holder finished the work, the retry finds
    nothing to do. After max_retries busy tries the copy is dropped (the sweep remains).
    """

    abstract = True
    # The step whose lock this task takes (orders.models.Step); lock_per_line for one lock
    # per order line.
    lock_step: str = ""
    lock_per_line: bool = False

    def lock_name(self, kwargs: dict[str, Any]) -> str:
        line_id = kwargs["line_id"] if self.lock_per_line else None
        # Messages carry the order id as a string.
        return lock_key(step=self.lock_step, order_id=OrderId(kwargs["order_id"]), line_id=line_id)

    def on_lock_busy(self, kwargs: dict[str, Any]) -> None:
        """Hook for the timeline."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.is_eager:
            raise RuntimeError("workflow steps must run on a worker, never eagerly")
        # The attempt's start, for the timeline's bars; kept on the request, which the
        # retry and failure handlers still see after the run.
        self.request.step_started_at = timezone.now()  # type: ignore[attr-defined]
        run = current_task_run.set(
            TaskRun(task_id=self.request.id or "", started_at=self.request.step_started_at)  # type: ignore[attr-defined]
        )
        try:
            return self._run_locked(*args, **kwargs)
        finally:
            current_task_run.reset(run)

    def _run_locked(self, *args: Any, **kwargs: Any) -> Any:
        lock = step_lock(self.lock_name(kwargs))
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            # Without the lock the step must not run; Redis is back in seconds, usually.
            raise self.retry(exc=exc, countdown=random.uniform(1, 3)) from exc
        if not acquired:
            self.on_lock_busy(kwargs)
            if self.max_retries is not None and self.request.retries >= self.max_retries:
                logger.warning(
                    "%s: lock %s still held after %s tries; dropping this copy "
                    "(the recovery sweep resumes the order if it stalls)",
                    self.name,
                    lock.name,
                    self.request.retries,
                )
                return None
            self._count_busy()
            # Back off exponentially, but never past the lock's expiry: a live holder is
            # usually done in seconds, a dead one's lock frees itself at expiry.
            remaining = max(redis_client().pttl(lock.name), 0) / 1000
            countdown = min(2**self.request.retries, max(remaining, 1.0))
            raise self.retry(exc=StepBusy(lock.name), countdown=countdown + random.uniform(0, 0.5))
        _held.lock = lock
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._release_step_lock()

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        # The attempt is over: free the step before its retry is published, or a retry with a
        # short countdown would find this attempt's lock still held.
        self._release_step_lock()
        try:
            return super().retry(*args, **self.with_retry_budget(kwargs))
        finally:
            # Celery keeps an explicit max_retries on the task object, shared by every task
            # of this name in the process, and autoretry hands it to the next retry: this
            # copy's limit would become the next one's.
            self.__dict__.pop("override_max_retries", None)

    def with_retry_budget(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """retry()'s arguments with the step's limit for a failure: max_retries, plus the
        tries that only waited for the lock. Celery counts every retry alike, so a copy that
        waited out a killed worker's lock had used up its retries before its first failure,
        and a provider's passing hiccup then failed the order."""
        exc = kwargs.get("exc")
        if kwargs.get("max_retries") is not None or self.max_retries is None:
            return kwargs
        if exc is None or isinstance(exc, StepBusy):
            return kwargs
        return {**kwargs, "max_retries": self.max_retries + self._busy_tries()}

    def _busy_key(self) -> str:
        return BUSY_KEY.format(task_id=self.request.id)

    def _count_busy(self) -> None:
        try:
            pipe = redis_client().pipeline(transaction=False)
            pipe.incr(self._busy_key())
            pipe.expire(self._busy_key(), BUSY_KEY_SECONDS)
            pipe.execute()
        except redis.RedisError:
            logger.warning("%s: could not count a busy try", self.name, exc_info=True)

    def _busy_tries(self) -> int:
        try:
            return int(redis_client().get(self._busy_key()) or 0)
        except redis.RedisError:  # not known: the failures' limit is max_retries, as before
            return 0

    def _release_step_lock(self) -> None:
        lock = getattr(_held, "lock", None)
        if lock is None:
            return
        _held.lock = None
        try:
            lock.release()
        except LockError:
            # Expired and possibly taken over: the other copy's lock stays untouched.
            logger.warning("%s: lock %s had expired before release", self.name, lock.name)
        except redis.RedisError:
            # Redis went away (and with it the lock, or it expires by itself).
            logger.warning("%s: could not release lock %s", self.name, lock.name)
