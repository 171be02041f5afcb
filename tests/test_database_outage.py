"""PostgreSQL down under the API and the workers, on real processes: a private PostgreSQL
server (started by the test as the postgres user, on a free port) behind gunicorn, a prefork
worker and beat; a client places 50 orders and retries on 503 with the same
Idempotency-Key; PostgreSQL stops for 10 seconds in the middle of the run."""

import glob
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
import requests

from tests.factories import order_payload
from tests.helpers import FAST_TIMINGS, gateway_ledger, wait_for
from tests.procs import ROOT, timing_errors_under
from tests.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BIN = Path((sorted(glob.glob("/usr/lib/postgresql/*/bin")) or ["/nonexistent"])[-1])
ORDERS = 50
ENV = FAST_TIMINGS


class PrivatePostgres:
    """A PostgreSQL server of the test's own: it can be stopped without touching the suite's."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.dir / "data"
        shutil.chown(self.dir, "postgres", "postgres")
        self._as_postgres(BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres")

    def _as_postgres(self, *argv: object) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *map(str, argv)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._as_postgres(
            BIN / "pg_ctl", "-D", self.data, "-o", options, "-l", self.dir / "log", "-w", "start"
        )

    def stop(self) -> None:
        self._as_postgres(BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def url(self, database: str = "orders") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)


SETUP = """
import django; django.setup()
from decimal import Decimal
from django.contrib.auth.models import User
from tests.factories import token_for
from orders.models import Product
Product.objects.create(
    sku="MUG-001", name="Mug", price=Decimal("12.50"), stock=1000, weight_grams=350
)
user = User.objects.create_user("buyer", "buyer@example.com", "pw-123456789")
print(token_for(user).key)
"""


@pytest.fixture
def postgres():
    if not (BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.fail("PostgreSQL's server binaries and runuser are needed for this test")
    server = PrivatePostgres()
    try:
        server.start()
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE orders")
        yield server
    finally:
        server.destroy()


def _manage(env: dict[str, str], *args: str, code: str | None = None) -> str:
    argv = [sys.executable, "manage.py", *args] if code is None else [sys.executable, "-c", code]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class Client:
    """Places orders one after another; on a 503 or a refused connection it retries the same
    order with the same Idempotency-Key, as a well-behaved client does."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.session = url, requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.accepted: dict[str, str] = {}  # key -> order id
        self.statuses: list[int] = []

    def place(self, key: str) -> None:
        body = order_payload(("MUG-001", 1))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                response = self.session.post(
                    f"{self.url}/api/orders/",
                    json=body,
                    headers={"Idempotency-Key": key},
                    timeout=15,
                )
            except requests.ConnectionError:
                time.sleep(0.5)
                continue
            self.statuses.append(response.status_code)
            if response.status_code in (201, 200):
                self.accepted[key] = response.json()["id"]
                return
            assert response.status_code in (503, 409), response.text  # 409: the first is in flight
            time.sleep(float(response.headers.get("Retry-After", "1")) / 5)
        raise AssertionError(f"order {key} was never accepted")


def test_orders_survive_postgresql_stopping_for_ten_seconds(stack_factory, postgres):
    """Expected: while PostgreSQL is down the API answers 503 with Retry-After (never 500);
    the client's retries with the same Idempotency-Key create each order once; workers retry
    their steps; afterwards every accepted order is terminal (completed: nothing here fails
    for its own reasons), charged once, shipped once, emailed once, and the stock adds up."""
    assert timing_errors_under(ENV) == []
    env = {**ENV, "DATABASE_URL": postgres.url(), "THROTTLE_ORDER_CREATE_RATE": "100000/min"}
    stack = stack_factory(env=env, start=False)
    base = stack.env()
    _manage(base, "migrate", "--noinput")
    token = _manage(base, code=SETUP).splitlines()[-1]
    stack.start(workers=1, beat=True)
    client = Client(stack.web_url, token)

    def run() -> None:
        for i in range(ORDERS):
            client.place(f"pg-{i}")

    placing = threading.Thread(target=run)
    placing.start()
    wait_for(lambda: len(client.accepted) >= 10, timeout=60, what="the first orders")
    postgres.stop()
    down = client.session.post(f"{stack.web_url}/api/orders/", json={}, timeout=15)
    health = requests.get(f"{stack.web_url}/api/health/", timeout=15)
    time.sleep(10)
    postgres.start()
    placing.join(timeout=180)
    assert not placing.is_alive()

    def orders() -> list[tuple]:
        with psycopg.connect(postgres.url()) as conn:
            return conn.execute(
                "SELECT id::text, status, compensated_at FROM orders_order"
            ).fetchall()

    def all_done() -> list[tuple] | None:
        rows = orders()
        return rows if all(status == "completed" for _, status, _ in rows) else None

    rows = wait_for(all_done, timeout=180, interval=1, what=lambda: orders())

    assert down.status_code == 503 and down.headers["Retry-After"]
    assert down.json()["code"] == "service_unavailable"
    assert health.status_code == 503 and "database" in health.json()["down"]
    assert 500 not in client.statuses
    assert 503 in client.statuses  # the outage was seen by the client
    assert len(client.accepted) == ORDERS
    assert sorted(client.accepted.values()) == sorted(r[0] for r in rows)  # one order per key
    with psycopg.connect(postgres.url()) as conn:
        stock = conn.execute("SELECT stock FROM orders_product").fetchone()[0]
        shipments = conn.execute("SELECT count(*) FROM orders_shipment").fetchone()[0]
    assert stock == 1000 - ORDERS  # no unit sold twice
    assert shipments == ORDERS
    for order_id in client.accepted.values():
        charges = gateway_ledger(stack.web_url, order_id)
        assert [(c["status"], c["refunded"]) for c in charges] == [("succeeded", False)]
    assert sorted(stack.smtp.subjects()) == sorted(
        f"Your order {i} is confirmed" for i in client.accepted.values()
    )
    print(
        f"\ndatabase outage: {ORDERS} orders, statuses seen {sorted(set(client.statuses))}, "
        f"{client.statuses.count(503)} answers 503"
    )
