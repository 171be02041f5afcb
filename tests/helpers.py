"""Helpers shared by the test modules, each in one place: waiting for a condition or for
orders to end, placing an order over HTTP, reading an order's timeline and the sandbox
providers' ledgers as their clients would."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import requests

TERMINAL = ("completed", "failed", "cancelled")
# The fields of an order's `payment` that stay empty for a plain captured charge.
NO_PAYMENT_EXTRAS = {
    "amount_refunded": "0.00",
    "decline_code": "",
    "disputed": False,
    "client_secret": None,
    "next_action": None,
}

# Timings for real-process tests: seconds instead of minutes, in the order orders/checks.py
# requires (each test asserts it with tests.procs.timing_errors_under).
FAST_TIMINGS = {
    "PROVIDER_CONNECT_TIMEOUT_SECONDS": "1",
    "PROVIDER_TIMEOUT_SECONDS": "1.5",
    "CELERY_TASK_SOFT_TIME_LIMIT": "8",
    "CELERY_TASK_TIME_LIMIT": "10",
    "TASK_LOCK_TIMEOUT": "12",
    "TASK_RETRY_BACKOFF_MAX": "2",
    "CELERY_VISIBILITY_TIMEOUT": "30",
    "ORDER_STALL_SECONDS": "15",
    "ORDER_SWEEP_INTERVAL_SECONDS": "2",
    "ORDER_DEADLINE_SECONDS": "600",
}


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> Any:
    """Poll `predicate` until it returns something truthy (returned), at most `timeout` seconds.
    `what` may be a callable, evaluated only on timeout (e.g. to show a timeline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            description = what() if callable(what) else what
            raise TimeoutError(f"timed out after {timeout}s waiting for {description}")
        time.sleep(interval)


def _done(order: Any, statuses: Iterable[str], compensated: bool) -> bool:
    if order.status not in statuses:
        return False
    return not (
        compensated and order.status in ("failed", "cancelled") and not order.compensated_at
    )


def _story(order: Any) -> str:
    events = list(order.events.values_list("step", "outcome", "detail"))
    return f"{order.id} {order.status} compensated_at={order.compensated_at}: {events}"


def wait_for_orders(
    order_ids: Iterable[Any],
    *,
    timeout: float,
    interval: float = 0.5,
    statuses: Iterable[str] = TERMINAL,
    compensated: bool = True,
) -> list[Any]:
    """Wait until every order is in one of `statuses` (terminal by default) and, if failed or
    cancelled, compensated. Returns the orders; raises with the stragglers' timelines."""
    from orders.models import Order

    ids = [str(i) for i in order_ids]
    statuses = tuple(statuses)

    def all_done() -> list[Any] | None:
        orders = list(Order.objects.filter(pk__in=ids))
        if len(orders) == len(ids) and all(_done(o, statuses, compensated) for o in orders):
            return orders
        return None

    def stragglers() -> str:
        waiting = [
            o for o in Order.objects.filter(pk__in=ids) if not _done(o, statuses, compensated)
        ]
        lines = [f"{len(waiting)} of {len(ids)} orders to end"]
        lines += [f"  {_story(o)}" for o in waiting[:5]]
        return "\n".join(lines)

    try:
        return wait_for(all_done, timeout=timeout, interval=interval, what=stragglers)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def wait_for_order(
    order_id: Any,
    *,
    statuses: Iterable[str] = TERMINAL,
    timeout: float = 30.0,
    compensated: bool = True,
) -> Any:
    """One order: poll until it reaches one of `statuses` (compensated if it ended failed or
    cancelled). Returns the order."""
    [order] = wait_for_orders(
        [order_id], timeout=timeout, interval=0.1, statuses=statuses, compensated=compensated
    )
    return order


def timeline(order: Any) -> list[tuple[str, str]]:
    return list(order.events.order_by("at", "id").values_list("step", "outcome"))


def reason_codes(order: Any) -> list[str]:
    return list(order.events.order_by("at", "id").values_list("reason_code", flat=True))


def client_credentials_token(base_url: str, client_id: str, client_secret: str) -> str:
    """An access token from the token endpoint, the way a shop's server gets one."""
    response = requests.post(
        f"{base_url}/api/oauth/token/",
        data={"grant_type": "client_credentials"},
        auth=(client_id, client_secret),
        timeout=15,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def api_session(token: str, base_url: str = "") -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    session.base_url = base_url  # type: ignore[attr-defined]
    return session


def place(session: requests.Session, payload: dict, **headers: str) -> dict:
    """POST the order with an authenticated session (its `base_url`); asserts 201."""
    response = session.post(
        f"{session.base_url}/api/orders/",  # type: ignore[attr-defined]
        json=payload,
        headers=headers,
        timeout=15,
    )
    assert response.status_code == 201, response.text
    return response.json()


def place_as_new_customer(base_url: str, payload: dict) -> str:
    """Place an order as a customer of its own (so no throttle is shared); returns its id."""
    from django.db import connection

    from tests.factories import UserFactory, token_for

    try:
        session = api_session(token_for(user=UserFactory()).key, base_url)
        return place(session, payload)["id"]
    finally:
        if threading.current_thread() is not threading.main_thread():
            # A pool thread's own connection: left open, it keeps the test database from
            # being dropped.
            connection.close()


def _sandbox_list(base_url: str, path: str, order_id: Any = None) -> list[dict]:
    params = {"order": str(order_id)} if order_id else {}
    response = requests.get(f"{base_url}/sandbox/{path}", params=params, timeout=30)
    response.raise_for_status()
    return response.json()["results"]


STRIPE_TEST_KEY = "sk_test_sandbox"


def _sandbox_read(url: str, *, params: dict, headers: dict, attempts: int = 20) -> Any:
    """A GET of the sandbox's API, tried again on a 5xx: a test that sets
    SANDBOX_FAILURE_RATE makes the providers fail reads too, as real ones may."""
    for attempt in range(attempts):
        response = requests.get(url, params=params, headers=headers, timeout=30)
        if response.status_code < 500 or attempt == attempts - 1:
            response.raise_for_status()
            return response.json()
        time.sleep(0.1)
    raise AssertionError("unreachable")


def stripe_list(base_url: str, path: str, **params: Any) -> list[dict]:
    """Every object of a list endpoint of the sandbox's Stripe, page by page, as a client of
    Stripe's API reads them."""
    found: list[dict] = []
    while True:
        page = _sandbox_read(
            f"{base_url}/sandbox/stripe/v1/{path}",
            params={"limit": 100, **params},
            headers={"Authorization": f"Bearer {STRIPE_TEST_KEY}"},
        )
        found += page["data"]
        if not page["has_more"]:
            return found
        params["starting_after"] = page["data"][-1]["id"]


def gateway_ledger(base_url: str, order_id: Any = None) -> list[dict]:
    """The sandbox Stripe's PaymentIntents (of one order, or all), oldest first, read over its
    API: {"id", "order", "status" (Stripe's: succeeded, requires_action, canceled, ...),
    "amount" (in the currency's units, as "12.50"), "refunded", "refunds"}. The empty
    PaymentIntents the gateway creates to probe an idempotency key (never confirmed, so they
    can take no money) are left out."""
    from integrations.payments import minor_unit_exponent

    refunds: dict[str, list[dict]] = {}
    for refund in stripe_list(base_url, "refunds"):
        refunds.setdefault(refund["payment_intent"], []).append(refund)
    ledger = []
    for intent in reversed(stripe_list(base_url, "payment_intents")):
        order = intent["metadata"].get("order_id")
        if intent["metadata"].get("probe") or (order_id and order != str(order_id)):
            continue
        exponent = minor_unit_exponent(intent["currency"])
        own = refunds.get(intent["id"], [])
        ledger.append(
            {
                "id": intent["id"],
                "order": order,
                "status": intent["status"],
                "amount": f"{intent['amount'] / 10**exponent:.{exponent}f}",
                "currency": intent["currency"],
                "refunded": sum(r["amount"] for r in own) >= intent["amount"],
                "refunds": own,
            }
        )
    return ledger


EASYPOST_TEST_KEY = "EZTK_sandbox"


def carrier_shipments(base_url: str) -> list[dict]:
    """Every shipment of the sandbox's EasyPost, read over its API page by page."""
    found: list[dict] = []
    params: dict[str, Any] = {"page_size": 100}
    while True:
        page = _sandbox_read(
            f"{base_url}/sandbox/easypost/v2/shipments",
            params=params,
            headers={"Authorization": f"Bearer {EASYPOST_TEST_KEY}"},
        )
        found += page["shipments"]
        if not page["has_more"] or not page["shipments"]:
            return found
        params["before_id"] = page["shipments"][-1]["id"]


def carrier_ledger(base_url: str, order_id: Any = None) -> list[dict]:
    """The labels the sandbox's EasyPost sold (of one order, or all): {"id", "order" (the
    shipment's reference), "tracking_number", "status" (the tracker's)}. Shipments created
    and never bought cost nothing and ship nothing, and are left out."""
    return [
        {
            "id": s["id"],
            "order": s.get("reference"),
            "tracking_number": s.get("tracking_code"),
            "status": (s.get("tracker") or {}).get("status"),
        }
        for s in carrier_shipments(base_url)
        if s.get("postage_label") and (order_id is None or s.get("reference") == str(order_id))
    ]


def dispatched(callbacks: list[Callable[[], Any]]) -> list[Callable[[], Any]]:
    """Of the callbacks a transaction scheduled for after its commit, the sends to Celery
    (orders/dispatch.py), not the metrics that count its timeline entries."""
    return [c for c in callbacks if getattr(c, "__module__", "") == "orders.dispatch"]


def assert_cancelled_by_staff(order: Any, agent: Any, page: str, sent: list) -> None:
    """What an admin cancel of the conftest's `reserved_order` leaves: the order cancelled,
    its 2 units back (10 again), a timeline entry naming the staff member, and the
    compensation (refund, email) sent once, after the commit."""
    from orders.models import Order, Product

    order = Order.objects.get(pk=order.pk)
    assert "Cancelled 1 order(s)" in page
    assert order.status == "cancelled"
    assert Product.objects.get(sku="MUG-001").stock == 10  # released
    event = order.events.latest("id")
    assert (event.actor, event.actor_kind, event.reason_code) == (agent, "staff", "cancelled")
    assert agent.username in event.detail
    assert len(dispatched(sent)) == 1
