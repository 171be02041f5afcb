from decimal import Decimal

import pytest

from tests.services import ensure_services

ensure_services()

from orders import steps  # noqa: E402
from orders.models import OrderStatus, Product  # noqa: E402
from tests.factories import (  # noqa: E402
    OrderFactory,
    OrderLineFactory,
    ProductFactory,
    UserFactory,
    token_for,
)
from tests.helpers import api_session, gateway_ledger  # noqa: E402

# The real-process harness (stack_factory) is a plugin: fixtures, not imports.
pytest_plugins = ["tests.procs"]


@pytest.fixture(autouse=True)
def _clear_cache():
    """Throttle counters live in the (Redis) cache; each test starts with none."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def token(user):
    """An access token of a client of `user`'s with every scope."""
    return token_for(user=user)


@pytest.fixture
def api(token):
    """A DRF test client authenticated as `user`."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.key}")
    return client


@pytest.fixture
def reserved_order(db):
    """An order in `paying` whose line holds 2 of the product's 10 units."""
    product = ProductFactory(sku="MUG-001", stock=10)
    order = OrderFactory(status=OrderStatus.PENDING)
    line = OrderLineFactory(order=order, product=product, quantity=2)
    steps.reserve_line(order_id=order.id, line_id=line.id, attempt=1)
    order.refresh_from_db()
    assert order.status == "paying" and Product.objects.get(pk=product.pk).stock == 8
    return order


@pytest.fixture
def product(db):
    return ProductFactory(sku="MUG-001", price="12.50", stock=100)


# --- The real pipeline: a Celery worker in this process, the sandbox over real HTTP ------------
@pytest.fixture(scope="session")
def broker_url():
    """The run's broker: Redis, or with BROKER_UNDER_TEST=rabbitmq a virtual host of the run's own
    on the local RabbitMQ, created here and deleted when the run ends."""
    from django.conf import settings

    from config.broker import is_amqp
    from tests import rabbitmq

    url = settings.CELERY_BROKER_URL
    if not is_amqp(url):
        yield url
        return
    vhost = rabbitmq.vhost_of(url)
    rabbitmq.vhost_create(vhost)
    yield url
    rabbitmq.vhost_delete(vhost)


@pytest.fixture(scope="session")
def celery_session_app(broker_url, django_db_setup, django_db_blocker):
    from config.celery import app

    app.control.purge()
    return app


@pytest.fixture(scope="session")
def pipeline_worker(celery_session_app, django_db_blocker):
    """A real worker (thread pool, 4 threads) consuming from the test Redis. Not eager mode:
    chords, retries and acks behave as in production."""
    from celery.contrib.testing.worker import start_worker

    with django_db_blocker.unblock():
        with start_worker(
            celery_session_app,
            pool="threads",
            concurrency=4,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30,
        ) as worker:
            yield worker
        _close_other_connections()


@pytest.fixture(scope="session", autouse=True)
def _no_connection_outlives_the_run(django_db_setup, django_db_blocker):
    """Threads of the sandbox (its webhook deliveries) and of the live server may still hold
    a connection when the run ends; the test database can only be dropped without them."""
    yield
    with django_db_blocker.unblock():
        _close_other_connections()


def _close_other_connections() -> None:
    """Worker and live-server threads leave connections open; the test database can only be
    dropped without them."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture
def sandbox(live_server, settings):
    """Point the adapters at the sandbox providers served by the live test server."""
    settings.STRIPE_API_BASE = f"{live_server.url}/sandbox/stripe"
    settings.EASYPOST_API_BASE = f"{live_server.url}/sandbox/easypost/v2"
    return live_server


@pytest.fixture
def pipeline(transactional_db, sandbox, pipeline_worker):
    """Everything a workflow test needs: committed data, a worker, the sandbox providers."""
    yield sandbox
    _wait_until_idle()


def _wait_until_idle(*, timeout: float = 10) -> None:
    """Let the worker finish what the test set going (a failed order's compensation runs on
    after the order is `failed`) before the tables are flushed: a step holding a row lock
    deadlocks the flush's TRUNCATE. Idle: nothing queued, running or waiting for its
    countdown, three looks in a row."""
    import time

    from celery.worker import state
    from django.conf import settings

    from config.broker import queue_depths

    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 3 and time.monotonic() < deadline:
        depths = queue_depths(settings.CELERY_BROKER_URL, settings.ORDER_QUEUES)
        busy = state.active_requests or state.reserved_requests or any(depths.values())
        quiet = 0 if busy else quiet + 1
        time.sleep(0.1)


@pytest.fixture
def live_api(pipeline, token):
    """A requests session against the live server, authenticated as `user`."""
    return api_session(token.key, pipeline.url)


@pytest.fixture
def ledger(sandbox):
    """The sandbox gateway's ledger of an order, read over HTTP as its clients would."""
    return lambda order_id: gateway_ledger(sandbox.url, order_id)


@pytest.fixture
def mug(db):
    """The product most tests order: 10 mugs at 12.50 EUR."""
    return ProductFactory(sku="MUG-001", price=Decimal("12.50"), stock=10)
