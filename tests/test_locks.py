"""The unique-step lock, against the real Redis: a busy step backs off (never past the
lock's expiry) instead of running twice, an expired lock is never released by its former
holder, and a Redis that cannot be reached makes the step retry, never run unlocked.

The task under test lives on a Celery app of its own with an in-memory broker: a retry is
published there (and dropped), so no worker of the suite ever runs it."""

import time
import uuid

import pytest
from celery import Celery
from celery.exceptions import Retry
from redis.exceptions import LockError

from orders import locks
from orders.locks import StepBusy, UniqueStepTask, lock_key, step_lock

app = Celery("lock-tests", broker="memory://", set_as_current=False)
ran: list[str] = []


@app.task(bind=True, base=UniqueStepTask, lock_step="charge_payment", max_retries=4, name="t.step")
def step(self, *, order_id: str) -> str:
    ran.append(order_id)
    return "done"


@app.task(
    bind=True,
    base=UniqueStepTask,
    lock_step="create_shipment",
    max_retries=4,
    autoretry_for=(ConnectionError,),
    name="t.flaky",
)
def flaky(self, *, order_id: str) -> str:
    raise ConnectionError("the provider hiccuped")


@pytest.fixture
def order_id():
    ran.clear()
    return str(uuid.uuid4())


def _as_worker(task, call, order_id: str, retries: int = 0, task_id: str = ""):
    """`call()` inside `task`'s request as the worker makes it: not a direct call, with
    this task id (a retry keeps its task's id) and this many retries behind it."""
    task.push_request(
        id=task_id or f"task-{uuid.uuid4()}",
        args=[],
        kwargs={"order_id": order_id},
        retries=retries,
        is_eager=False,
        called_directly=False,
    )
    try:
        return call()
    finally:
        task.pop_request()


def _run(order_id: str, retries: int = 0, task_id: str = ""):
    return _as_worker(step, lambda: step(order_id=order_id), order_id, retries, task_id)


def test_the_lock_key_names_the_step_the_order_and_the_line():
    order = uuid.UUID(int=1)
    assert lock_key(step="charge_payment", order_id=order) == f"lock:charge_payment:{order}"
    assert lock_key(step="reserve_stock", order_id=order, line_id=7).endswith(f"{order}:7")


def test_a_free_step_runs_and_frees_its_lock(order_id):
    assert _run(order_id) == "done"

    assert ran == [order_id]
    assert step_lock(lock_key(step="charge_payment", order_id=uuid.UUID(order_id))).acquire()


def test_a_busy_step_retries_after_a_backoff_capped_at_the_locks_expiry(order_id):
    held = step_lock(lock_key(step="charge_payment", order_id=uuid.UUID(order_id)))
    assert held.acquire()

    with pytest.raises(Retry) as first:
        _run(order_id, retries=0)
    locks.redis_client().pexpire(held.name, 2000)  # the holder's lock frees itself in 2 s
    with pytest.raises(Retry) as late:
        _run(order_id, retries=3)  # 2**3 = 8 s of backoff, but the lock is free sooner

    assert ran == []  # never ran beside the holder
    assert isinstance(first.value.exc, StepBusy)
    assert 1 <= first.value.when <= 1.5  # 2**0 s plus jitter
    assert 1 <= late.value.when <= 2.5  # capped at the lock's expiry, plus jitter
    held.release()


def test_a_busy_step_out_of_retries_is_dropped_not_run(order_id):
    held = step_lock(lock_key(step="charge_payment", order_id=uuid.UUID(order_id)))
    assert held.acquire()

    assert _run(order_id, retries=4) is None

    assert ran == []
    held.release()


def _fail_transiently(order_id: str, retries: int, task_id: str) -> None:
    """The step's attempt after `retries` retries meets a provider's passing failure, as
    autoretry_for hands it to retry()."""
    exc = ConnectionError("the provider hiccuped")
    _as_worker(step, lambda: step.retry(exc=exc, countdown=1), order_id, retries, task_id)


def _wait_three_times(step_name: str, run, order_id: str, task_id: str) -> None:
    """Three tries of a task that find its step's lock held (another copy runs it)."""
    held = step_lock(lock_key(step=step_name, order_id=uuid.UUID(order_id)))
    assert held.acquire()
    for retries in range(3):
        with pytest.raises(Retry):
            run(order_id, retries=retries, task_id=task_id)
    held.release()


def test_waiting_for_a_held_lock_does_not_use_up_the_retries_for_failures(order_id):
    """A copy that found the lock held 3 times (a killed worker's lock, waited out) still has
    its 4 retries for failures: it retries a failure at its 8th try, and gives up at its 9th."""
    task_id = f"task-{uuid.uuid4()}"
    _wait_three_times("charge_payment", _run, order_id, task_id)

    with pytest.raises(Retry):
        _fail_transiently(order_id, retries=6, task_id=task_id)  # 4 + 3 waits: one left
    with pytest.raises(ConnectionError):
        _fail_transiently(order_id, retries=7, task_id=task_id)  # used up: the failure stands
    # Another task of the same step, which never waited, has its 4 and no more.
    with pytest.raises(ConnectionError):
        _fail_transiently(order_id, retries=4, task_id=f"task-{uuid.uuid4()}")


def _run_flaky(order_id: str, retries: int, task_id: str) -> None:
    _as_worker(flaky, lambda: flaky(order_id=order_id), order_id, retries, task_id)


def test_one_tasks_waits_do_not_lend_retries_to_the_next_task_of_the_step(order_id):
    """Through autoretry_for, as the workers run the steps: a copy that waited 3 times
    retries its failure at the 7th retry; the next task of the step, which never waited,
    gives up at its 5th try as max_retries says (Celery keeps a retry's explicit limit on
    the task object, shared by every task of the name in the process)."""
    waited = f"task-{uuid.uuid4()}"
    _wait_three_times("create_shipment", _run_flaky, order_id, waited)

    with pytest.raises(Retry):
        _run_flaky(order_id, retries=6, task_id=waited)
    with pytest.raises(ConnectionError):
        _run_flaky(order_id, retries=4, task_id=f"task-{uuid.uuid4()}")


def test_an_expired_lock_is_not_released_by_its_former_holder(order_id, settings):
    settings.TASK_LOCK_TIMEOUT = 1
    name = lock_key(step="charge_payment", order_id=uuid.UUID(order_id))
    first = step_lock(name)
    assert first.acquire()
    locks.redis_client().pexpire(name, 1)  # the holder stalled past the expiry
    time.sleep(0.05)
    second = step_lock(name)
    assert second.acquire()  # another copy took the step over

    with pytest.raises(LockError):
        first.release()

    assert locks.redis_client().get(name) == second.local.token
    second.release()


def test_without_redis_the_step_retries_and_never_runs_unlocked(order_id, settings):
    settings.LOCK_REDIS_URL = "redis://127.0.0.1:9/0"  # the discard port: refused
    locks.redis_client.cache_clear()
    try:
        with pytest.raises(Retry) as caught:
            _run(order_id)
    finally:
        locks.redis_client.cache_clear()

    assert ran == []
    assert "Connection" in type(caught.value.exc).__name__
