"""RabbitMQ as the broker, on real processes: a broker restart in the middle of a run loses no
message and fails no order."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from config.broker import queue_depths
from orders.models import Order, OrderStatus
from tests.factories import ProductFactory, order_payload
from tests.helpers import (
    FAST_TIMINGS,
    gateway_ledger,
    place_as_new_customer,
    timeline,
    wait_for,
    wait_for_orders,
)
from tests.procs import timing_errors_under

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ORDERS = 60
# Every provider call takes a while, so that the restart finds steps running and publishing.
ENV = {**FAST_TIMINGS, "SANDBOX_LATENCY_MS": "200", "ORDER_SWEEP_INTERVAL_SECONDS": "2"}
FRONT_QUEUES = "orders.stock,orders.payments,orders.shipping,orders.maintenance"


def test_the_timing_of_this_test_is_in_order():
    assert timing_errors_under(ENV) == []


def test_a_rabbitmq_restart_loses_no_message_and_fails_no_order(stack_factory):
    """60 one-line `tok_ok` orders; their emails wait in `orders.email` (no worker takes that
    queue yet). RabbitMQ stops (every connection closed, new ones refused) while orders are
    reserved, charged and shipped, and starts again 3 s later.

    Expected: the emails queued before the restart are all still queued after it (quorum
    queues keep their messages); the workers reconnect by themselves (no supervisor: none may
    exit) and go on; a step caught mid-run is redelivered, and its second run changes nothing
    it had done. Once an email worker starts, every order completes: one capture each, no
    refund, one confirmation email each, none failed."""
    ProductFactory(sku="MUG-001", price="12.50", stock=ORDERS)
    stack = stack_factory(env=ENV, workers=0, beat=True, broker="rabbitmq")
    front = [stack.start_worker(queues=FRONT_QUEUES) for _ in range(2)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        first = list(
            pool.map(
                lambda _: place_as_new_customer(stack.web_url, order_payload(("MUG-001", 1))),
                range(ORDERS // 2),
            )
        )
        wait_for(
            lambda: stack.queue_depths()["orders.email"] >= 10,
            timeout=60,
            interval=0.2,
            what="emails to queue up",
        )
        # The second half is placed while the broker goes away and comes back: orders whose
        # dispatch fails are kept for the relay.
        second = pool.map(
            lambda _: place_as_new_customer(stack.web_url, order_payload(("MUG-001", 1))),
            range(ORDERS - ORDERS // 2),
        )
        queued_before = stack.queue_depths()["orders.email"]
        restarted = threading.Event()

        def restart() -> None:
            stack.restart_broker(down_for=3)
            restarted.set()

        threading.Thread(target=restart, daemon=True).start()
        ids = first + list(second)
        wait_for(restarted.is_set, timeout=120, what="RabbitMQ to restart")
    # A quorum queue answers once its leader is elected again, a moment after the restart.
    queued_after = wait_for(
        lambda: queue_depths(stack.broker_url, ["orders.email"]).get("orders.email"),
        timeout=30,
        interval=0.5,
        what="the email queue to answer with its messages after the restart",
    )

    assert queued_after >= queued_before > 0
    wait_for(
        lambda: Order.objects.filter(pk__in=ids, status=OrderStatus.CONFIRMING).count() == ORDERS,
        timeout=120,
        interval=0.5,
        what="every order to be shipped",
    )
    assert all(worker.alive for worker in front), stack.logs()
    stack.start_worker(queues="orders.email")
    orders = wait_for_orders(ids, timeout=120)

    assert [o.status for o in orders] == [OrderStatus.COMPLETED] * ORDERS, [
        (o.id, o.status, timeline(o)) for o in orders if o.status != OrderStatus.COMPLETED
    ]
    assert not stack.crashed_workers
    for order in orders:
        charges = gateway_ledger(stack.web_url, order.id)
        assert [(c["status"], c["refunded"]) for c in charges] == [("succeeded", False)], charges
    subjects = sorted(stack.smtp.subjects())
    assert subjects == sorted(f"Your order {o.id} is confirmed" for o in orders)
