"""The broker-dependent Celery settings: the orders' queues and the transport options.

Redis is the embedded default (`make run`, the tests); RabbitMQ is the production broker
once one machine is not enough. `CELERY_BROKER_URL` decides, and these functions turn it into
the settings that differ between the two. config/settings/base.py calls them, and
config/settings/test.py again after choosing its own broker. The README's "Brokers" section
gives the reasons at length.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
from amqp.exceptions import AMQPError, NotFound
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})

# The step queues: a backlog of emails or a slow carrier never delays a charge.
ORDER_QUEUES = (
    "orders.stock",
    "orders.payments",
    "orders.shipping",
    "orders.email",
    "orders.maintenance",
    # The shops' webhooks: a dead or slow shop endpoint never holds up a step.
    "orders.webhooks",
)


# What either broker's client raises when the broker is down or refuses a request.
BROKER_ERRORS = (redis.RedisError, OSError, OperationalError, AMQPError)


def is_amqp(broker_url: str) -> bool:
    return broker_url.split("://", 1)[0].lower() in AMQP_SCHEMES


def order_queues(broker_url: str, *, delivery_limit: int) -> list[Queue]:
    """The step queues (and the webhooks' own), each bound under its own name as routing key.

    On RabbitMQ they are quorum queues (replicated and durable, and they survive a broker
    restart with their messages), on a topic exchange: Celery's native delayed delivery,
    which countdown retries need on quorum queues, re-routes a delayed message through its
    own topic exchanges and cannot reach a queue bound to a direct one. `x-delivery-limit`
    drops a message that has been handed out `delivery_limit` times without being
    acknowledged (a poison message that kills every worker that takes it); its order is
    stalled, and the recovery sweep sends it again as a new message. On Redis these
    arguments mean nothing, so the queues stay plain.
    """
    return [queue(name, broker_url, delivery_limit=delivery_limit) for name in ORDER_QUEUES]


def queue(name: str, broker_url: str, *, delivery_limit: int, exchange: str = "orders") -> Queue:
    """One queue, declared as order_queues() says."""
    if not is_amqp(broker_url):
        return Queue(name, routing_key=name)
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": delivery_limit}
    return Queue(
        name,
        Exchange(exchange, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments=arguments,
    )


def transport_options(broker_url: str, *, redis: dict[str, Any]) -> dict[str, Any]:
    """kombu's transport options for the broker: `redis` on Redis, the AMQP ones otherwise.

    On RabbitMQ every publish waits for the broker's confirm (publisher confirms): a message
    the broker did not take raises instead of vanishing, so the dispatcher remembers the
    order for the relay. Redis has no visibility timeout's counterpart to configure on
    RabbitMQ: an unacknowledged message comes back as soon as its consumer's connection
    closes (a killed worker), not after an hour.
    """
    if is_amqp(broker_url):
        return {"confirm_publish": True}
    return dict(redis)


def queue_depths(
    broker_url: str, queues: Iterable[str], *, use_ssl: dict[str, Any] | bool = False
) -> dict[str, int]:
    """Messages waiting in each queue, asked of the broker now: Redis's list lengths, or
    RabbitMQ's ready-message counts (a passive declare, which changes nothing; the management
    statistics lag by seconds). Empty when the broker is down: no figure rather than a wrong
    one. `use_ssl`: CELERY_BROKER_USE_SSL, for an amqps:// broker (a rediss:// URL carries its
    own)."""
    try:
        if not is_amqp(broker_url):
            client = redis.Redis.from_url(broker_url, socket_timeout=1, socket_connect_timeout=1)
            return {queue: int(client.llen(queue)) for queue in queues}
        with Connection(broker_url, connect_timeout=1, ssl=use_ssl) as conn:
            return {queue: _ready_messages(conn, queue) for queue in queues}
    except BROKER_ERRORS:
        return {}


def _ready_messages(conn: Connection, queue: str) -> int:
    channel: Any = conn.channel()  # its own: a passive declare of a missing queue closes it
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except NotFound:
        return 0  # not declared yet: nothing was ever sent to it
    finally:
        if channel.is_open:
            channel.close()
