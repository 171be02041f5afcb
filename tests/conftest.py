import time

import pytest
import requests

from tests.services import ensure_services

ensure_services()

from tests.factories import ProductFactory, TokenFactory, UserFactory  # noqa: E402


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
    return TokenFactory(user=user)


@pytest.fixture
def api(token):
    """A DRF test client authenticated as `user`."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def product(db):
    return ProductFactory(sku="MUG-001", price="12.50", stock=100)


# --- The real pipeline: a Celery worker in this process, the sandbox over real HTTP ------------
@pytest.fixture(scope="session")
def celery_session_app(django_db_setup, django_db_blocker):
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
    settings.SANDBOX_URL = f"{live_server.url}/sandbox/"
    return live_server


@pytest.fixture
def pipeline(transactional_db, sandbox, pipeline_worker):
    """Everything a workflow test needs: committed data, a worker, the sandbox providers."""
    yield sandbox


@pytest.fixture
def live_api(pipeline, token):
    """A requests session against the live server, authenticated as `user`."""
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token.key}"
    session.base_url = pipeline.url
    return session


def wait_for_order(
    order_id,
    *,
    statuses=("completed", "failed", "cancelled"),
    timeout: float = 30.0,
    compensated: bool = True,
):
    """Poll the database until the order reaches one of `statuses` (and, for failed or
    cancelled orders, until its compensation has run). Returns the order."""
    from orders.models import Order

    deadline = time.monotonic() + timeout
    while True:
        order = Order.objects.get(pk=order_id)
        done = order.status in statuses
        if done and compensated and order.status in ("failed", "cancelled"):
            done = order.compensated_at is not None
        if done:
            return order
        if time.monotonic() > deadline:
            events = list(order.events.values_list("step", "outcome", "detail"))
            raise AssertionError(
                f"order {order_id} is {order.status} after {timeout}s; timeline: {events}"
            )
        time.sleep(0.1)


@pytest.fixture
def ledger(sandbox):
    """The sandbox gateway's ledger, read over HTTP as a client of the gateway would."""

    def charges(order_id) -> list[dict]:
        response = requests.get(
            f"{sandbox.url}/sandbox/payments/charges/", params={"order": str(order_id)}, timeout=5
        )
        response.raise_for_status()
        return response.json()["results"]

    return charges
