"""The sandbox speaks Stripe: Stripe's official SDK, pointed at the sandbox over real HTTP,
parses every object it answers with, raises Stripe's own errors for its refusals, and
accepts the sandbox's webhook signatures with its own check. Then the adapter
(StripeGateway) against the same sandbox: the ledger it asks when an answer was lost."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe

from integrations.errors import TransientError
from integrations.payments import StripeGateway, to_minor_units
from tests.helpers import gateway_ledger, wait_for
from tests.services import free_port

KEY = "sk_test_sandbox"


@pytest.fixture
def client(live_server, settings, transactional_db, receiver):
    """The SDK against the sandbox; the sandbox's events go to `receiver`."""
    settings.STRIPE_API_BASE = f"{live_server.url}/sandbox/stripe"
    settings.STRIPE_SANDBOX_SEARCH_LAG_SECONDS = 0
    return stripe.StripeClient(
        KEY,
        base_addresses={"api": settings.STRIPE_API_BASE},
        max_network_retries=0,
    )


@pytest.fixture
def receiver(settings):
    """A webhook endpoint of our own on 127.0.0.1 that keeps what the sandbox sends it."""
    received: list[tuple[bytes, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, self.headers.get("Stripe-Signature", "")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.STRIPE_SANDBOX_WEBHOOK_URL = f"http://127.0.0.1:{server.server_port}/hook"
    settings.STRIPE_SANDBOX_WEBHOOK_DUPLICATE_RATE = 0.0
    yield received
    server.shutdown()
    server.server_close()


def create(client, method="pm_card_visa", key="k1", amount=1250, **extra):
    params = {
        "amount": amount,
        "currency": "eur",
        "payment_method": method,
        "payment_method_types": ["card"],
        "confirm": True,
        "metadata": {"order_id": "order-1"},
        **extra,
    }
    return client.v1.payment_intents.create(params, {"idempotency_key": key})


def test_a_payment_intent_is_created_confirmed_replayed_and_retrieved(client, live_server):
    intent = create(client)
    again = create(client)

    assert isinstance(intent, stripe.PaymentIntent)
    assert (intent.status, intent.amount, intent.currency) == ("succeeded", 1250, "eur")
    assert intent.metadata["order_id"] == "order-1" and intent.id.startswith("pi_")
    assert again.id == intent.id  # the same key: the first answer, nothing charged twice
    assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"
    assert [c["id"] for c in gateway_ledger(live_server.url)] == [intent.id]


def test_a_decline_is_a_card_error_with_its_decline_code(client):
    with pytest.raises(stripe.CardError) as caught:
        create(client, "pm_card_chargeDeclinedInsufficientFunds")

    assert caught.value.code == "card_declined"
    assert caught.value.error.decline_code == "insufficient_funds"
    assert caught.value.http_status == 402
    declined = client.v1.payment_intents.retrieve(caught.value.error.payment_intent.id)
    assert declined.status == "requires_payment_method"


def test_the_same_key_with_other_parameters_is_an_idempotency_error(client):
    create(client, key="same")
    with pytest.raises(stripe.IdempotencyError):
        create(client, key="same", amount=999)


def test_an_unknown_payment_method_and_a_missing_key_are_refused(client, settings):
    with pytest.raises(stripe.InvalidRequestError) as caught:
        create(client, "pm_card_nonsense")
    assert caught.value.code == "resource_missing"
    anonymous = stripe.StripeClient(
        "pk_not_a_secret", base_addresses={"api": settings.STRIPE_API_BASE}
    )
    with pytest.raises(stripe.AuthenticationError):
        anonymous.v1.payment_intents.retrieve("pi_x")


def test_tok_flaky_fails_twice_with_api_errors_then_succeeds(client):
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            create(client, "tok_flaky", key="flaky")
    assert create(client, "tok_flaky", key="flaky").status == "succeeded"


def test_a_refund_is_a_refund_object_listed_by_payment_intent_and_made_once(client):
    intent = create(client)
    refund = client.v1.refunds.create({"payment_intent": intent.id}, {"idempotency_key": "r1"})

    assert isinstance(refund, stripe.Refund)
    assert (refund.amount, refund.status, refund.payment_intent) == (1250, "succeeded", intent.id)
    listed = client.v1.refunds.list({"payment_intent": intent.id})
    assert [r.id for r in listed.data] == [refund.id]
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.refunds.create({"payment_intent": intent.id}, {"idempotency_key": "r2"})
    assert caught.value.code == "charge_already_refunded"


def test_3d_secure_requires_action_until_the_customer_authenticates(client, live_server):
    import requests

    intent = create(client, "pm_card_authenticationRequired")
    assert intent.status == "requires_action"
    assert intent.next_action.type == "use_stripe_sdk" and intent.client_secret

    response = requests.post(
        f"{live_server.url}/sandbox/stripe/test/payment_intents/{intent.id}/authenticate",
        json={"outcome": "succeed"},
        timeout=10,
    )
    assert response.status_code == 200
    assert client.v1.payment_intents.retrieve(intent.id).status == "succeeded"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.payment_intents.cancel(intent.id)
    assert caught.value.code == "payment_intent_unexpected_state"


def test_search_finds_by_metadata(client):
    intent = create(client)
    found = client.v1.payment_intents.search({"query": "metadata['order_id']:'order-1'"})

    assert isinstance(found, stripe.SearchResultObject)
    assert [i.id for i in found.data] == [intent.id]


def test_events_are_stripe_events_signed_as_stripe_signs_them(client, receiver, settings):
    intent = create(client)

    [(payload, signature)] = wait_for(lambda: list(receiver), timeout=10, what="a webhook")
    event = stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    assert isinstance(event, stripe.Event)
    assert (event.type, event.data.object.id) == ("payment_intent.succeeded", intent.id)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, signature, "whsec_someone_else")
    listed = client.v1.events.list({"type": "payment_intent.succeeded"})
    assert isinstance(listed.data[0], stripe.Event) and listed.data[0].id == event.id
    assert client.v1.events.retrieve(event.id).type == "payment_intent.succeeded"


def test_a_failed_delivery_is_retried(client, receiver, settings):
    from integrations.sandbox.models import SandboxStripeEvent

    # Sent first where nothing listens (refused); the event's endpoint then moves to the
    # receiver, and a later attempt reaches it.
    url = settings.STRIPE_SANDBOX_WEBHOOK_URL
    settings.STRIPE_SANDBOX_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/nobody"
    create(client)
    wait_for(lambda: SandboxStripeEvent.objects.filter(attempts__gte=1).exists(), timeout=5)
    SandboxStripeEvent.objects.update(url=url)
    [(payload, _)] = wait_for(lambda: list(receiver), timeout=15, what="a retried webhook")
    assert json.loads(payload)["type"] == "payment_intent.succeeded"
    # Noted once the receiver has answered: a moment after the receiver has the event.
    wait_for(
        lambda: SandboxStripeEvent.objects.get().attempts >= 2,
        timeout=5,
        what="the retried delivery noted",
    )


# --- The adapter's ledger --------------------------------------------------------------------
def test_minor_units_follow_stripes_currency_table():
    assert to_minor_units(Decimal("12.50"), "EUR") == 1250
    assert to_minor_units(Decimal("1500"), "JPY") == 1500
    assert to_minor_units(Decimal("1.25"), "KWD") == 1250
    with pytest.raises(ValueError):
        to_minor_units(Decimal("1500.50"), "JPY")


def test_the_ledger_probe_proves_no_charge_when_the_key_was_never_used(client):
    gateway = StripeGateway()

    found = gateway.find_charges(
        order_id="order-2", idempotency_key="never-used", amount=Decimal("5"), currency="EUR"
    )

    assert found == []
    [probe] = client.v1.payment_intents.search({"query": "metadata['order_id']:'order-2'"}).data
    assert probe.status == "canceled"  # it could never take money, and now never will


def test_the_ledger_does_not_say_none_while_search_lags_behind_a_charge(client, settings):
    gateway = StripeGateway()
    result = gateway.charge(
        order_id="order-3",
        amount=Decimal("5"),
        currency="EUR",
        token="pm_card_visa",
        idempotency_key="charged",
    )
    settings.STRIPE_SANDBOX_SEARCH_LAG_SECONDS = 3600  # the charge is not indexed yet

    with pytest.raises(TransientError, match="search does not show it yet"):
        gateway.find_charges(
            order_id="order-3", idempotency_key="charged", amount=Decimal("5"), currency="EUR"
        )
    settings.STRIPE_SANDBOX_SEARCH_LAG_SECONDS = 0
    [charge] = gateway.find_charges(
        order_id="order-3", idempotency_key="charged", amount=Decimal("5"), currency="EUR"
    )
    assert (charge.charge_id, charge.status, charge.amount) == (
        result.charge_id,
        "captured",
        Decimal("5"),
    )
