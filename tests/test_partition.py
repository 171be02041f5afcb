"""A network partition: one of three workers loses its links to the broker, Redis and
PostgreSQL in the middle of a run, for longer than a lock lives and a message stays with it,
and then gets them back. Runs on the suite's broker (BROKER_UNDER_TEST: Redis, then RabbitMQ
in CI)."""

import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

from orders.models import Order, OrderStatus, Product
from tests.factories import ProductFactory, order_payload
from tests.helpers import (
    FAST_TIMINGS,
    carrier_ledger,
    gateway_ledger,
    place_as_new_customer,
    timeline,
    wait_for,
    wait_for_orders,
)
from tests.netproxy import TcpProxy
from tests.procs import timing_errors_under

pytestmark = [pytest.mark.slow, pytest.mark.brokers, pytest.mark.timeout(900)]

ORDERS = 150
LATE_ORDERS = 30  # placed after the links are back: the cut-off worker must take some
LATE_BATCHES = 4
STOCK = 1000
ENV = {
    **FAST_TIMINGS,
    # Provider calls take a while, so that the cut finds the worker in the middle of steps.
    "SANDBOX_LATENCY_MS": "300",
    # Redis hands a cut-off worker's unacknowledged messages to the others after 30 s,
    # looked for every 2 s (RabbitMQ does it as soon as the connection drops).
    "CELERY_UNACKED_RESTORE_INTERVAL": "2",
    "CELERY_UNACKED_RESTORE_THROTTLE": "1",
}
# Longer than a step's lock lives (TASK_LOCK_TIMEOUT, 12 s) and than Redis keeps a message
# with a worker that went silent (CELERY_VISIBILITY_TIMEOUT, 30 s).
CUT_SECONDS = 36


def test_the_timing_of_this_test_is_in_order():
    assert timing_errors_under(ENV) == []
    assert CUT_SECONDS > int(ENV["TASK_LOCK_TIMEOUT"])
    assert CUT_SECONDS > int(ENV["CELERY_VISIBILITY_TIMEOUT"])


def test_a_worker_cut_off_mid_run_does_nothing_twice_and_rejoins(stack_factory, capsys):
    """Three workers; the third reaches the broker, Redis and PostgreSQL only through proxies.
    While 150 `tok_ok` orders run, and the third worker runs steps, every one of its links is
    cut (connections dropped, new ones refused) for 36 s, then restored.

    Expected: the other two finish the orders the cut-off worker held (its messages come back
    to the queue); nothing is done twice (one capture and no refund per order, one shipment,
    one confirmation email, stock down by exactly the orders' units); the cut-off worker's
    late writes change nothing another worker did (the fence: the order's state decides, not
    an expired lock); and once its links are back it takes work again (batches of 30 more
    orders, until it has run some)."""
    ProductFactory(sku="MUG-001", price="12.50", stock=STOCK)
    stack = stack_factory(env=ENV, workers=2, beat=True, web_workers=2, web_threads=12)
    env = stack.env()
    proxies = {
        "postgres": TcpProxy(upstream_port=5432).start(),
        "redis": TcpProxy(upstream_port=stack.redis.port).start(),
    }
    links = {
        "DATABASE_URL": proxies["postgres"].route(env["DATABASE_URL"]),
        "REDIS_URL": proxies["redis"].route(env["REDIS_URL"]),
        "CELERY_BROKER_URL": proxies["redis"].route(env["CELERY_BROKER_URL"]),
    }
    if stack.vhost:
        proxies["rabbitmq"] = TcpProxy(upstream_port=5672).start()
        links["CELERY_BROKER_URL"] = proxies["rabbitmq"].route(env["CELERY_BROKER_URL"])
    try:
        cut_off = stack.start_worker(env=links)
        _run(stack, cut_off, proxies, capsys)
    finally:
        for proxy in proxies.values():
            proxy.stop()


def _run(stack, cut_off, proxies, capsys) -> None:
    log: list[str] = []
    started = time.monotonic()

    def note(what: str) -> None:
        log.append(f"{time.monotonic() - started:5.1f}s {what}")

    def place(_) -> str:
        return place_as_new_customer(stack.web_url, order_payload(("MUG-001", 1)))

    cut_done = threading.Event()
    ran_at_cut: list[dict] = []

    def partition() -> None:
        running: list[dict] = []
        for _ in range(100):  # cut while the worker is in the middle of steps, if at all possible
            if running := stack.active_tasks(cut_off):
                break
            time.sleep(0.1)
        for proxy in proxies.values():
            proxy.cut()
        ran_at_cut.extend(running)
        note(f"cut {cut_off.name} off while it ran {[t['name'] for t in running]}")
        time.sleep(CUT_SECONDS)
        for proxy in proxies.values():
            proxy.restore()
        note("links restored")
        cut_done.set()

    with ThreadPoolExecutor(max_workers=12) as pool:
        first = list(pool.map(place, range(ORDERS // 3)))
        cutter = threading.Thread(target=partition, daemon=True)
        cutter.start()
        rest = list(pool.map(place, range(ORDERS - ORDERS // 3)))
    ids = first + rest
    wait_for(cut_done.is_set, timeout=120, what="the links to be restored")
    log_mark = len(cut_off.log())

    def took() -> int:
        """Tasks the cut-off worker (or the one started in its place) ran since the cut."""
        rejoined = [w for w in stack.workers if w.spec.get("env")]
        return sum(
            w.log()[log_mark if w is cut_off else 0 :].count(" succeeded in ") for w in rejoined
        )

    with stack.supervising():  # a worker that cannot go on must exit, and is started again
        # Its consumer reconnects on its own schedule (Celery backs off up to 30 s between
        # tries); the late orders come once it is back, so that it can take some.
        wait_for(
            lambda: any(
                " Connected to " in w.log()[log_mark if w is cut_off else 0 :]
                for w in stack.workers
                if w.spec.get("env")
            ),
            timeout=60,
            interval=0.5,
            what="the cut-off worker to reconnect",
        )
        time.sleep(2)  # mingle and gossip, then it consumes
        # The two healthy workers may take a whole batch before the third asks for work:
        # send batches until it has run something, or until it plainly never will.
        for batch in range(LATE_BATCHES):
            with ThreadPoolExecutor(max_workers=6) as pool:
                ids += list(pool.map(place, range(LATE_ORDERS)))
            orders = wait_for_orders(ids, timeout=300)
            note(f"late batch {batch + 1}: the rejoined worker ran {took()} tasks")
            if took():
                break

    with capsys.disabled():
        statuses = Counter(o.status for o in orders)
        print(
            f"\npartition on {stack.broker}: {len(orders)} orders {dict(statuses)}, "
            f"running at the cut {len(ran_at_cut)}, crashed workers {len(stack.crashed_workers)}"
        )
        print("\n".join(log))

    assert ran_at_cut, "the cut found the worker idle: the test proved nothing"
    assert [o.status for o in orders] == [OrderStatus.COMPLETED] * len(ids), [
        (o.id, o.status, timeline(o)) for o in orders if o.status != OrderStatus.COMPLETED
    ]
    # Nothing twice: the providers' ledgers, the stock, the emails.
    charges = defaultdict(list)
    for charge in gateway_ledger(stack.web_url):
        charges[charge["order"]].append((charge["status"], charge["refunded"]))
    assert {str(o.id): charges[str(o.id)] for o in orders} == {
        str(o.id): [("succeeded", False)] for o in orders
    }
    shipments = Counter(s["order"] for s in carrier_ledger(stack.web_url))
    assert shipments == Counter({str(o.id): 1 for o in orders})
    assert Product.objects.get(sku="MUG-001").stock == STOCK - len(ids)
    subjects = Counter(stack.smtp.subjects())
    assert subjects == Counter({f"Your order {o.id} is confirmed": 1 for o in orders})
    assert not Order.objects.exclude(failure_reason="").exists()
    # The cut-off worker (or, had it exited, the one started in its place with the same
    # links) took work again once its links were back.
    rejoined = [w for w in stack.workers if w.spec.get("env")]
    assert rejoined and all(w.alive for w in rejoined), stack.logs()
    assert took() > 0, f"the cut-off worker ran nothing after the links came back:\n{stack.logs()}"
