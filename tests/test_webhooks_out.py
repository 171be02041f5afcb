"""Webhooks to the shops, on real processes: a receiver on 127.0.0.1 verifies every
signature with standardwebhooks, as a shop would. Every event type of a pipeline run, in
order per order; the receiver down for 30 s; a worker killed mid-delivery; 410; a slow
endpoint beside a healthy one; redirects and addresses refused at delivery; the rotated
secret. (The outbox without a worker: tests/test_webhooks_outbox.py.)"""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import requests
import stripe
from django.core import mail
from django.db import transaction
from django.utils import timezone

from orders import outbox, webhook_delivery, webhooks
from orders.models import (
    WEBHOOK_EVENT_TYPES,
    Order,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from tests.factories import OrderFactory, ProductFactory, order_payload, token_for
from tests.helpers import STRIPE_TEST_KEY, gateway_ledger, place, wait_for, wait_for_order
from tests.webhook_receiver import Receiver

LIST = "/api/webhook-endpoints/"


@pytest.fixture
def receiver():
    started = Receiver().start()
    yield started
    started.stop()


def register(session, base_url: str, url: str, events: list[str] | None = None) -> tuple[int, str]:
    response = session.post(
        f"{base_url}{LIST}", json={"url": url, "events": events or ["*"]}, timeout=10
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["secret"]


def rows_of(order_id) -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(order_id=order_id).order_by("pk"))


def emit(order: Order, *types: str) -> None:
    """Events about `order`, each in its own transaction, as the pipeline writes them."""
    for event_type in types:
        with transaction.atomic():
            outbox.event_record(order=order, event_type=event_type)


@pytest.fixture
def webhooks_quiet(pipeline_worker):
    """Endpoints deleted before the tables are flushed, so that no retry is still running."""
    yield
    WebhookEndpoint.objects.all().delete()
    from tests.conftest import _wait_until_idle

    _wait_until_idle(timeout=5)


# --- Every event type, in order per order ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.brokers
def test_every_event_type_of_a_pipeline_run_arrives_in_order(
    live_api, mug, receiver, settings, webhooks_quiet
):
    settings.EASYPOST_SANDBOX_TRACKING_STEP_SECONDS = 0.3  # the parcels move on in seconds
    _, secret = register(live_api, live_api.base_url, receiver.url)
    receiver.secrets = [secret]
    base = live_api.base_url

    completed = place(live_api, order_payload(("MUG-001", 1)))["id"]
    returned = place(live_api, order_payload(("MUG-001", 1), postal_code="00002"))["id"]
    declined = place(
        live_api, order_payload(("MUG-001", 1), token="pm_card_authenticationRequired")
    )
    cancelled = place(
        live_api, order_payload(("MUG-001", 1), token="pm_card_authenticationRequired")
    )
    for waiting in (declined, cancelled):
        wait_for_order(waiting["id"], statuses=["awaiting_payment_action"], timeout=30)
    intent = live_api.get(f"{base}/api/orders/{declined['id']}/", timeout=5).json()
    intent_id = intent["payment"]["client_secret"].split("_secret_")[0]
    requests.post(
        f"{base}/sandbox/stripe/test/payment_intents/{intent_id}/authenticate",
        json={"outcome": "fail"},
        timeout=10,
    ).raise_for_status()
    assert live_api.post(f"{base}/api/orders/{cancelled['id']}/cancel/", timeout=10).ok
    wait_for_order(completed, timeout=30)
    wait_for(
        lambda: "shipment.delivered" in receiver.types_by_order().get(completed, []),
        timeout=30,
        what="the parcel's delivery",
    )
    [charge] = gateway_ledger(base, completed)
    stripe.StripeClient(
        STRIPE_TEST_KEY, base_addresses={"api": settings.STRIPE_API_BASE}
    ).v1.refunds.create(
        {"payment_intent": charge["id"], "amount": 500}
    )  # made in Stripe's dashboard: the backend hears of it by Stripe's webhook

    expected = {
        completed: [
            "order.created",
            "order.paid",
            "order.shipped",
            "order.completed",
            "shipment.delivered",
            "order.refunded",
        ],
        returned: [
            "order.created",
            "order.paid",
            "order.shipped",
            "order.completed",
            "shipment.delivery_problem",
        ],
        declined["id"]: ["order.created", "order.awaiting_payment_action", "order.failed"],
        cancelled["id"]: ["order.created", "order.awaiting_payment_action", "order.cancelled"],
    }

    def all_arrived() -> bool:
        got = receiver.types_by_order()
        return all(sorted(got.get(o, [])) == sorted(types) for o, types in expected.items())

    wait_for(all_arrived, timeout=45, what=lambda: f"every event; got {receiver.types_by_order()}")

    got = receiver.types_by_order()
    for order_id in expected:
        # In the order the events happened: the outbox's order, which is the state machine's.
        assert got[order_id] == [row.type for row in rows_of(order_id)], order_id
        assert got[order_id].index("order.created") == 0
    assert got[completed][:4] == expected[completed][:4]
    assert {t for types in got.values() for t in types} == set(WEBHOOK_EVENT_TYPES)
    assert receiver.unverified() == []
    assert all(r.status == "delivered" for r in WebhookDelivery.objects.all())
    # The payload is the order as GET /api/orders/{id}/ shows it, as it was at the event.
    final = live_api.get(f"{base}/api/orders/{cancelled['id']}/", timeout=5).json()
    [event] = [r for r in receiver.delivered() if r.type == "order.cancelled"]
    assert event.body["data"]["order"].keys() == final.keys()
    assert event.body["data"]["order"]["status"] == "cancelled"
    assert event.body["id"] == event.webhook_id and event.body["type"] == "order.cancelled"
    [paid] = [r for r in receiver.delivered() if r.type == "order.paid" and r.order_id == completed]
    assert paid.body["data"]["order"]["status"] == "shipping"  # a snapshot, not today's order
    print(f"\nevents per order: { {o[:8]: len(t) for o, t in got.items()} }")


# --- The receiver down for 30 s ----------------------------------------------------------------
@pytest.mark.slow
def test_the_receiver_down_for_30_seconds_then_everything_arrives(
    live_api, mug, receiver, webhooks_quiet
):
    endpoint_id, secret = register(live_api, live_api.base_url, receiver.url)
    receiver.secrets = [secret]
    receiver.stop()
    down_at = time.monotonic()

    order_ids = [place(live_api, order_payload(("MUG-001", 1)))["id"] for _ in range(3)]
    for order_id in order_ids:
        wait_for_order(order_id, timeout=30)
    wait_for(
        lambda: WebhookAttempt.objects.filter(delivery__endpoint_id=endpoint_id).count() >= 6,
        timeout=20,
        what="failed attempts",
    )
    time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    failed_attempts = WebhookAttempt.objects.count()
    receiver.start()  # the same port
    up_at = time.monotonic()

    wait_for(
        lambda: not WebhookDelivery.objects.exclude(status="delivered").exists(),
        timeout=30,
        what=lambda: list(WebhookDelivery.objects.values_list("type", "status", "attempts")),
    )
    recovered_in = time.monotonic() - up_at

    ids = set(WebhookDelivery.objects.values_list("event_id", flat=True))
    assert len(ids) == 12  # created, paid, shipped, completed for each of 3 orders
    assert {r.webhook_id for r in receiver.delivered()} == ids  # no webhook-id missing
    assert receiver.unverified() == []
    for order_id in order_ids:
        assert receiver.types_by_order()[order_id] == [
            "order.created",
            "order.paid",
            "order.shipped",
            "order.completed",
        ]
    # The same webhook-id on every attempt: every attempt is of a row with one id.
    assert WebhookDelivery.objects.filter(attempts__gt=1).exists()
    print(
        f"\n{failed_attempts} failed attempts while down; all 12 delivered "
        f"{recovered_in:.1f} s after the receiver came back"
    )


# --- A worker killed mid-delivery ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.brokers
def test_a_worker_killed_mid_delivery_loses_no_event(stack_factory, receiver):
    env = {"WEBHOOK_TIMEOUT_SECONDS": "4", "WEBHOOK_SWEEP_SECONDS": "1"}
    stack = stack_factory(env=env, workers=0, beat=True)
    stack.start_worker(queues="orders.stock,orders.payments,orders.shipping,orders.email")
    postman = stack.start_worker(queues="orders.webhooks", concurrency=1)
    ProductFactory(sku="MUG-001", stock=10)
    token = token_for()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token.key}"
    _, secret = register(session, stack.web_url, receiver.url)
    receiver.secrets, receiver.delay = [secret], 3.0  # answers, slowly

    order_id = place_at(session, stack.web_url)
    wait_for(lambda: receiver.started, timeout=20, what="the first post to begin")
    first = receiver.started[0]
    stack.kill_worker(postman)  # mid-post: the receiver is still composing its answer
    killed_at = time.monotonic()
    receiver.delay = 0.0
    stack.start_worker(queues="orders.webhooks", concurrency=1)

    wait_for(
        lambda: (
            receiver.types_by_order().get(order_id)
            == [
                "order.created",
                "order.paid",
                "order.shipped",
                "order.completed",
            ]
        ),
        timeout=60,
        what=lambda: f"the events; got {receiver.types_by_order()}; {stack.logs()[-3000:]}",
    )
    row = WebhookDelivery.objects.get(event_id=first)
    assert row.type == "order.created" and row.status == "delivered"
    assert receiver.started.count(first) >= 2  # posted again after the kill
    assert receiver.unverified() == []
    print(
        f"\nthe killed post's event arrived {row.delivered_at:%H:%M:%S}, "
        f"{time.monotonic() - killed_at:.1f} s after the kill (lease and sweep); "
        f"posts of it: {receiver.started.count(first)}"
    )


def place_at(session: requests.Session, base_url: str) -> str:
    response = session.post(
        f"{base_url}/api/orders/", json=order_payload(("MUG-001", 1)), timeout=10
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


# --- 410, slow endpoints, redirects, rotation: events written straight into the outbox ---------
@pytest.fixture
def shop(transactional_db, pipeline_worker, webhooks_quiet):
    from rest_framework.test import APIClient

    token = token_for()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.key}")
    return client, token.user


def register_in(client, url: str) -> tuple[int, str]:
    response = client.post(LIST, {"url": url, "events": ["*"]}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"], response.json()["secret"]


@pytest.mark.slow
def test_410_disables_the_endpoint_tells_the_shop_and_enabling_delivers_the_rest(shop, receiver):
    client, user = shop
    endpoint_id, secret = register_in(client, receiver.url)
    receiver.secrets, receiver.status = [secret], 410
    order = OrderFactory(user=user)

    emit(order, "order.created", "order.paid", "order.shipped")

    wait_for(
        lambda: not WebhookEndpoint.objects.get(pk=endpoint_id).enabled,
        timeout=15,
        what="the endpoint to be disabled",
    )
    endpoint = WebhookEndpoint.objects.get(pk=endpoint_id)
    assert endpoint.disabled_reason == "gone"
    assert len(receiver.requests) == 1  # at once, after the first 410
    [notice] = [m for m in mail.outbox if "webhook" in m.subject.lower()]
    assert notice.to == [user.email] and receiver.url in notice.body
    assert client.get(f"{LIST}{endpoint_id}/").json()["disabled_reason"] == "gone"

    receiver.status = 204
    response = client.patch(f"{LIST}{endpoint_id}/", {"enabled": True}, format="json")
    assert response.status_code == 200 and response.json()["enabled"] is True

    wait_for(lambda: len(receiver.delivered()) == 3, timeout=15, what="the three events")
    assert [r.type for r in receiver.delivered()] == [
        "order.created",
        "order.paid",
        "order.shipped",
    ]
    assert receiver.requests[0].webhook_id == receiver.delivered()[0].webhook_id  # same id


@pytest.mark.slow
def test_enabled_again_while_the_run_that_disabled_it_still_holds_the_rest(
    shop, receiver, monkeypatch
):
    """The shop enables the endpoint at once, while the run that met its 410 still holds the
    other rows and the endpoint's queued flag (so the enabling queues no run of its own):
    that run, once it lets them go, sees the endpoint enabled and sends the next one. No
    beat runs here, so without that the rows would wait for its sweep."""
    client, user = shop
    endpoint_id, secret = register_in(client, receiver.url)
    receiver.secrets, receiver.status = [secret], 410
    disable = webhook_delivery.endpoint_disable

    def disabled_then_enabled_again(endpoint, *, reason):
        disable(endpoint, reason=reason)
        receiver.status = 204
        webhooks.endpoint_update(endpoint=WebhookEndpoint.objects.get(pk=endpoint.pk), enabled=True)

    monkeypatch.setattr(webhook_delivery, "endpoint_disable", disabled_then_enabled_again)
    order = OrderFactory(user=user)

    emit(order, "order.created", "order.paid", "order.shipped")

    wait_for(lambda: len(receiver.delivered()) == 3, timeout=15, what="the three events")
    assert [r.type for r in receiver.delivered()] == [
        "order.created",
        "order.paid",
        "order.shipped",
    ]
    assert receiver.requests[0].answered == 410 and len(receiver.requests) == 4
    assert WebhookEndpoint.objects.get(pk=endpoint_id).enabled


@pytest.mark.slow
def test_a_slow_endpoint_never_delays_a_healthy_one(shop, settings):
    settings.WEBHOOK_TIMEOUT_SECONDS = 1.0
    settings.WEBHOOK_MAX_IN_FLIGHT = 2
    client, user = shop
    healthy, slow = Receiver().start(), Receiver(delay=30.0).start()
    try:
        _, healthy_secret = register_in(client, healthy.url)
        slow_id, slow_secret = register_in(client, slow.url)
        healthy.secrets, slow.secrets = [healthy_secret], [slow_secret]
        orders = [OrderFactory(user=user) for _ in range(10)]
        started = time.monotonic()

        for round_ in range(10):  # 100 events, about 30 a second, interleaved over 10 orders
            for order in orders:
                emit(order, list(WEBHOOK_EVENT_TYPES)[round_])
                time.sleep(0.01)

        wait_for(lambda: len(healthy.delivered()) == 100, timeout=30, what="100 events")
        took = time.monotonic() - started
        late = [
            r.at - datetime.fromisoformat(r.created.replace("Z", "+00:00")).timestamp()
            for r in healthy.delivered()
        ]
        slow_rows = WebhookDelivery.objects.filter(endpoint_id=slow_id)
        slow_attempts = WebhookAttempt.objects.filter(delivery__endpoint_id=slow_id)
        # Meanwhile the slow endpoint kept being tried: one timeout after another.
        wait_for(lambda: slow_attempts.count() >= 3, timeout=10, what="three slow attempts")
        assert max(late) < 5.0, f"slowest healthy delivery {max(late):.1f} s after its event"
        assert healthy.unverified() == []
        for order in orders:  # in order per order on the healthy endpoint too
            assert healthy.types_by_order()[str(order.id)] == list(WEBHOOK_EVENT_TYPES)
        assert not slow_rows.filter(status="delivered").exists()
        assert all("timeout" in a.error or "timed out" in a.error for a in slow_attempts)
        # Each attempt waits out the 1 s timeout: WEBHOOK_MAX_IN_FLIGHT=2 allows at most two
        # to begin within any 0.9 s.
        in_flight = slow.most_begun_within(0.9)
        assert in_flight <= 2, sorted(slow.started_at)
        print(
            f"\n100 events to the healthy endpoint in {took:.1f} s, slowest "
            f"{max(late):.2f} s after its event, median {sorted(late)[50]:.2f} s; the slow one: "
            f"{slow_attempts.count()} attempts, all timeouts, at most {in_flight} at once"
        )
    finally:
        WebhookEndpoint.objects.filter(pk=slow_id).delete()
        healthy.stop()
        slow.stop()


@pytest.mark.slow
def test_a_redirect_is_not_followed_and_a_private_address_is_refused_at_delivery(
    shop, receiver, settings
):
    client, user = shop
    elsewhere = Receiver().start()
    try:
        endpoint_id, secret = register_in(client, receiver.url)
        receiver.secrets, receiver.status, receiver.location = [secret], 302, elsewhere.url
        order = OrderFactory(user=user)

        emit(order, "order.created")

        wait_for(lambda: WebhookAttempt.objects.exists(), timeout=15, what="an attempt")
        attempt = WebhookAttempt.objects.get()
        assert attempt.status_code == 302
        assert WebhookDelivery.objects.get().status == "pending"  # a 3xx is not delivered
        time.sleep(0.5)
        assert elsewhere.requests == []  # not followed

        # Production's rule at delivery time: the address connected to is checked again.
        WebhookEndpoint.objects.filter(pk=endpoint_id).delete()
        settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
        endpoint = WebhookEndpoint.objects.create(
            user=user, url=elsewhere.url, events=["*"], secret=secret
        )
        emit(order, "order.paid")
        wait_for(
            lambda: WebhookAttempt.objects.filter(delivery__endpoint=endpoint).exists(),
            timeout=15,
            what="the refused attempt",
        )
        refused = WebhookAttempt.objects.get(delivery__endpoint=endpoint)
        assert refused.status_code is None and refused.error
        assert elsewhere.requests == []
    finally:
        elsewhere.stop()


@pytest.mark.slow
def test_after_a_rotation_both_secrets_verify_every_event_for_a_day(shop, receiver):
    client, user = shop
    endpoint_id, old = register_in(client, receiver.url)
    new = client.post(f"{LIST}{endpoint_id}/rotate-secret/").json()["secret"]
    receiver.secrets = [old, new]

    emit(OrderFactory(user=user), "order.created")

    wait_for(lambda: receiver.delivered(), timeout=15, what="the event")
    [event] = receiver.delivered()
    assert event.verified_by == [0, 1]  # the shop verifies with either secret
    assert len(event.headers["webhook-signature"].split(" ")) == 2

    # A day later only the new one signs.
    WebhookEndpoint.objects.filter(pk=endpoint_id).update(previous_secret_expires_at=timezone.now())
    emit(OrderFactory(user=user), "order.created")
    wait_for(lambda: len(receiver.delivered()) == 2, timeout=15, what="the second event")
    assert receiver.delivered()[1].verified_by == [1]
