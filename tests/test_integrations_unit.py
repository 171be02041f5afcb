"""The provider adapters' error mapping: what a retry may cure is a TransientError, what it
cannot is a PermanentError with the provider's code. HTTP through `responses`; SMTP against
a real SMTP server (aiosmtpd) that answers with chosen codes."""

import asyncio
import socket
import time
from decimal import Decimal
from urllib.parse import parse_qsl

import pytest
import requests
import responses
from aiosmtpd.controller import Controller

from integrations.email import send_email
from integrations.errors import PermanentError, TransientError
from integrations.payments import StripeGateway
from tests.services import free_port


@pytest.fixture
def mocked(settings):
    settings.PROVIDER_TIMEOUT_SECONDS = 4.0
    settings.PROVIDER_CONNECT_TIMEOUT_SECONDS = 1.5
    with responses.RequestsMock() as rsps:
        yield rsps


STRIPE = "https://stripe.invalid"
INTENTS = f"{STRIPE}/v1/payment_intents"


@pytest.fixture
def gateway(mocked, settings):
    settings.STRIPE_API_BASE = STRIPE
    settings.STRIPE_API_KEY = "sk_test_unit"
    return StripeGateway()


def charge(gateway, amount="12.50", currency="EUR"):
    return gateway.charge(
        order_id="o-1",
        amount=Decimal(amount),
        currency=currency,
        token="pm_card_visa",
        idempotency_key="order-o-1-charge",
    )


def test_the_charge_is_one_confirmed_payment_intent_with_the_orders_key(mocked, gateway):
    mocked.post(
        INTENTS,
        json={
            "id": "pi_1",
            "object": "payment_intent",
            "status": "succeeded",
            "amount": 1500,
            "currency": "jpy",
        },
    )

    result = charge(gateway, amount="1500", currency="JPY")

    request = mocked.calls[0].request
    assert request.headers["Idempotency-Key"] == "order-o-1-charge"
    assert request.headers["Authorization"] == "Bearer sk_test_unit"
    sent = dict(parse_qsl(request.body))  # Stripe's form encoding, bracketed keys
    assert sent["amount"] == "1500"  # JPY has no minor unit
    assert sent["currency"] == "jpy" and sent["confirm"] == "true"
    assert sent["metadata[order_id]"] == "o-1"
    assert request.req_kwargs["timeout"] == (1.5, 4.0)  # ours, not the SDK's 80 s
    assert (result.captured, result.charge_id, result.amount) == (True, "pi_1", Decimal("1500"))


@pytest.mark.parametrize("status", [429, 500, 502, 503, 409])
def test_stripes_throttling_and_server_errors_are_transient_and_not_retried_inside(
    mocked, gateway, status
):
    mocked.post(INTENTS, json={"error": {"type": "api_error", "message": "busy"}}, status=status)

    with pytest.raises(TransientError):
        charge(gateway)
    assert len(mocked.calls) == 1  # our step retries, with a backoff the timeline shows


def test_a_dropped_connection_is_transient(mocked, gateway):
    mocked.post(INTENTS, body=requests.ConnectionError())

    with pytest.raises(TransientError):
        charge(gateway)


def test_a_card_error_is_a_declined_result_with_its_decline_code(mocked, gateway):
    mocked.post(
        INTENTS,
        status=402,
        json={
            "error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
                "payment_intent": {"id": "pi_d", "object": "payment_intent"},
            }
        },
    )

    result = charge(gateway)

    assert (result.status, result.decline_code, result.charge_id) == (
        "declined",
        "insufficient_funds",
        "pi_d",
    )


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (400, {"type": "invalid_request_error", "code": "resource_missing"}, "resource_missing"),
        (400, {"type": "idempotency_error"}, "idempotency_error"),
        (401, {"type": "invalid_request_error"}, "http_401"),
    ],
)
def test_other_refusals_are_permanent_with_stripes_code(mocked, gateway, status, body, code):
    mocked.post(INTENTS, json={"error": {"message": "no", **body}}, status=status)

    with pytest.raises(PermanentError) as caught:
        charge(gateway)
    assert caught.value.code == code


def test_requires_action_brings_what_the_front_end_needs(mocked, gateway):
    next_action = {"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}}
    mocked.post(
        INTENTS,
        json={
            "id": "pi_3ds",
            "object": "payment_intent",
            "status": "requires_action",
            "amount": 1250,
            "currency": "eur",
            "client_secret": "pi_3ds_secret_x",
            "next_action": next_action,
        },
    )

    result = charge(gateway)

    assert (result.status, result.client_secret, result.next_action) == (
        "requires_action",
        "pi_3ds_secret_x",
        next_action,
    )


# --- SMTP ---------------------------------------------------------------------------------------
class _Answers:
    """An SMTP server's handler that answers RCPT and DATA with chosen replies."""

    def __init__(self, rcpt: str = "250 OK", data: str = "250 Message accepted") -> None:
        self.rcpt, self.data, self.received = rcpt, data, []
        self.quits: list[float] = []
        self.quit_delay = 0.0  # seconds before it answers QUIT

    async def handle_QUIT(self, server, session, envelope):  # aiosmtpd hook
        self.quits.append(time.monotonic())
        await asyncio.sleep(self.quit_delay)
        return "221 Bye"

    async def handle_RCPT(self, server, session, envelope, address, options):  # aiosmtpd hook
        if self.rcpt.startswith("250"):
            envelope.rcpt_tos.append(address)
        return self.rcpt

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd hook
        if self.data.startswith("250"):
            self.received.append(envelope.content)
        return self.data


@pytest.fixture
def smtp(settings):
    controllers = []

    def serve(**answers: str) -> _Answers:
        handler = _Answers(**answers)
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append(controller)
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 5
        return handler

    yield serve
    for controller in controllers:
        controller.stop()


def _send() -> None:
    send_email(to="ada@example.com", subject="s", body="b", message_id="<o-1.confirmation@x>")


def test_an_accepted_message_arrives_with_its_message_id(smtp):
    server = smtp()

    _send()

    [content] = server.received
    assert b"Message-ID: <o-1.confirmation@x>" in content


def test_the_sender_is_told_the_message_was_taken_before_the_session_ends(smtp, settings):
    """The server answers 250 to DATA, then takes its time over QUIT (it never answers
    within the timeout). Expected: `accepted` was called before the QUIT reached the server,
    and the message counts as sent."""
    server = smtp()
    server.quit_delay = 3.0
    settings.EMAIL_TIMEOUT = 0.5
    accepted: list[int] = []

    send_email(
        to="ada@example.com",
        subject="s",
        body="b",
        message_id="<o-1.confirmation@x>",
        accepted=lambda: accepted.append(len(server.quits)),
    )

    assert len(server.received) == 1
    assert accepted == [0]  # before the QUIT reached the server


@pytest.mark.parametrize(
    "answers",
    [
        {"rcpt": "550 5.1.1 No such user"},
        {"data": "554 5.7.1 Rejected as spam"},
    ],
)
def test_a_refusal_for_good_is_permanent(smtp, answers):
    smtp(**answers)

    with pytest.raises(PermanentError) as caught:
        _send()
    assert caught.value.code == "mail_refused"


def test_a_refused_recipient_is_not_named_in_the_error(smtp):
    # The error's text goes to the order's timeline, the logs and Sentry.
    smtp(rcpt="550 5.1.1 No such user")

    with pytest.raises(PermanentError) as caught:
        _send()
    assert "ada@example.com" not in str(caught.value)
    assert str(caught.value) == "mail refused: the server answered 550 for the recipient"


def test_a_temporary_refusal_is_transient(smtp):
    smtp(data="451 4.3.0 Try again later")

    with pytest.raises(TransientError, match="451"):
        _send()


def test_a_mail_server_that_refuses_connections_is_transient(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", closed.getsockname()[1]

    with pytest.raises(TransientError, match="unreachable"):
        _send()
