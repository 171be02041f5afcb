"""The embedded default (SQLite, `make run`) loses nothing under two worker processes.
At SQLite's defaults it did: `database is locked` errors and about a fifth of the chords
never finished. WAL, IMMEDIATE transactions and a busy timeout (config/settings/base.py)."""

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.factories import order_payload
from tests.helpers import api_session, client_credentials_token, wait_for
from tests.procs import ROOT

ORDERS = 40


@pytest.mark.slow
def test_two_workers_on_sqlite_finish_every_order(stack_factory, tmp_path):
    sqlite_env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    env = {"DJANGO_SETTINGS_MODULE": "config.settings.test", "PATH": "/usr/bin:/bin", **sqlite_env}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    seeded = subprocess.run(
        [sys.executable, "manage.py", "seed_demo"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    client_id, secret = re.search(r"Demo API client: (\S+) / (\S+) ", seeded).groups()
    stack = stack_factory(env=sqlite_env, workers=2, concurrency=2)
    api = api_session(client_credentials_token(stack.web_url, client_id, secret))
    stock_before = _stock(api, stack.web_url)

    def place(i):
        payload = order_payload(("MUG-001", 1), ("TEE-001", 1), ("BAG-001", 1))
        response = api.post(f"{stack.web_url}/api/orders/", json=payload, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(place, range(ORDERS)))

    def all_terminal():
        statuses = [
            api.get(f"{stack.web_url}/api/orders/{i}/", timeout=30).json()["status"] for i in ids
        ]
        return (
            statuses if all(s in ("completed", "failed", "cancelled") for s in statuses) else None
        )

    final = wait_for(all_terminal, timeout=180, interval=1, what=f"{ORDERS} orders terminal")
    assert final == ["completed"] * ORDERS, stack.logs()
    stock_after = _stock(api, stack.web_url)
    for sku in ("MUG-001", "TEE-001", "BAG-001"):
        assert stock_before[sku] - stock_after[sku] == ORDERS
    worker_logs = "\n".join(proc.log() for proc in stack.workers)
    assert "database is locked" not in worker_logs


def _stock(api: requests.Session, base_url: str) -> dict[str, int]:
    products = api.get(f"{base_url}/api/products/", timeout=30).json()["results"]
    return {p["sku"]: p["stock_available"] for p in products}
