"""Least privilege on RabbitMQ: docker-compose's broker has one user per component, with the
permissions of deploy/rabbitmq/definitions.json. Here that file is imported into the local
RabbitMQ (its virtual host and users renamed for this run) and the whole stack runs on it:
web and beat publish, the worker consumes and publishes, Flower reads the events. Nothing may
be refused to them, and each is refused what it does not need."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import requests
from amqp.exceptions import AccessRefused
from kombu import Connection, Exchange, Queue

from tests import rabbitmq
from tests.factories import ProductFactory, order_payload
from tests.helpers import place_as_new_customer, wait_for, wait_for_orders

pytestmark = pytest.mark.slow

DEFINITIONS = Path(__file__).resolve().parent.parent / "deploy" / "rabbitmq" / "definitions.json"


@pytest.fixture
def broker_users():
    """definitions.json, imported under names of this run's own (users belong to the whole
    broker); {component: amqp URL}. Its virtual host and users are deleted afterwards."""
    from django.conf import settings

    suffix = uuid.uuid4().hex[:8]
    definitions = json.loads(DEFINITIONS.read_text())
    [vhost] = definitions["vhosts"]
    vhost_name = f"perm-{suffix}"
    vhost["name"] = vhost_name
    for user in definitions["users"]:
        user["name"] = f"{user['name']}_{suffix}"
        user["password"] = uuid.uuid4().hex
    for permission in definitions["permissions"]:
        permission["user"] = f"{permission['user']}_{suffix}"
        permission["vhost"] = vhost_name
    host = settings.RABBITMQ_URL.rsplit("@", 1)[1]
    urls = {
        user["name"].removeprefix("orders_").removesuffix(f"_{suffix}"): (
            f"amqp://{user['name']}:{user['password']}@{host}/{vhost_name}"
        )
        for user in definitions["users"]
    }
    try:
        rabbitmq.import_definitions(json.dumps(definitions))
        wait_for(
            lambda: all(u["name"] in rabbitmq.user_names() for u in definitions["users"]),
            timeout=30,
            what="the imported users",
        )
        yield urls
    finally:
        for user in definitions["users"]:
            rabbitmq.user_delete(user["name"])
        rabbitmq.vhost_delete(vhost_name)


def refused(url: str, action) -> bool:
    """Whether the broker refuses `action(channel)`."""
    with Connection(url, connect_timeout=5) as conn:
        try:
            action(conn.channel())
        except AccessRefused:
            return True
    return False


def publish_to(exchange: str, routing_key: str):
    """A publish that waits for the broker's confirm: a refusal arrives before it returns."""

    def publish(channel) -> None:
        channel.basic_publish_confirm(
            channel.prepare_message(b"{}"), exchange=exchange, routing_key=routing_key
        )

    return publish


def test_each_component_runs_with_its_own_broker_user(stack_factory, broker_users):
    ProductFactory(sku="MUG-001", price="12.50", stock=10)
    # Web and beat publish (beat's user has the web's permissions); the stack's Redis keeps
    # the locks and the cache.
    stack = stack_factory(start=False, broker="redis")
    stack.overrides["CELERY_BROKER_URL"] = broker_users["web"]
    stack.start(workers=0, beat=True)
    worker = stack.start_worker(env={"CELERY_BROKER_URL": broker_users["worker"]})
    flower = stack.start_flower(env={"CELERY_BROKER_URL": broker_users["flower"]})

    # tok_flaky: two 500s from the gateway, so the worker sends the charge again (a retry).
    tokens = ["tok_ok", "tok_flaky", "tok_ok"]
    ids = [
        place_as_new_customer(stack.web_url, order_payload(("MUG-001", 1), token=token))
        for token in tokens
    ]
    orders = wait_for_orders(ids, timeout=90)
    assert [o.status for o in orders] == ["completed"] * 3, stack.logs()

    # The web server pings the workers (its health check) and counts the queues (/metrics).
    health = requests.get(f"{stack.web_url}/api/health/", timeout=10)
    assert health.status_code == 200, health.text
    metrics = requests.get(f"{stack.web_url}/metrics", timeout=10).text
    assert 'celery_queue_length{queue="orders.payments"}' in metrics
    # Flower saw every task from its events: three charges among them.
    tasks = wait_for(
        lambda: [
            t
            for t in requests.get(f"{flower}/api/tasks", auth=("user", "pass"), timeout=10)
            .json()
            .values()
            if t["name"] == "orders.charge_payment" and t["state"] == "SUCCESS"
        ],
        timeout=30,
        what="Flower to see the charges",
    )
    assert len(tasks) == 3
    logs = {p.name: p.log() for p in [stack.web, stack.beat, worker, *stack.flower] if p}
    assert not [name for name, log in logs.items() if "ACCESS_REFUSED" in log], logs

    # And what each does not need, it cannot do.
    payments = Queue("orders.payments", Exchange("orders", type="topic"), "orders.payments")
    # The web publishes tasks and cannot take them off a queue (read); the worker can.
    assert not refused(broker_users["worker"], lambda ch: ch.basic_get("orders.payments"))
    # A retry with a countdown goes through Celery's delayed-delivery exchanges (unroutable
    # here: dropped).
    assert not refused(broker_users["worker"], publish_to("celery_delayed_27", "nothing"))
    assert refused(broker_users["web"], lambda ch: ch.basic_get("orders.payments"))
    # Nor can the web or the worker use a name outside the application's.
    assert refused(broker_users["web"], lambda ch: ch.queue_declare("intruder"))
    assert refused(broker_users["worker"], lambda ch: ch.queue_declare("intruder"))
    # Flower reads the events and wakes the workers (a broadcast, as the web server's ping
    # is); it can neither send a task, nor take one, nor forge an event.
    assert refused(broker_users["flower"], lambda ch: payments(ch).declare())
    assert refused(broker_users["flower"], lambda ch: ch.basic_get("orders.payments"))
    assert refused(broker_users["flower"], publish_to("celeryev", "task-succeeded"))
