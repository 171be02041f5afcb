"""The provider adapters' error mapping: what a retry may cure is a TransientError, what it
cannot is a PermanentError with the provider's code. HTTP through `responses`; SMTP against
a real SMTP server (aiosmtpd) that answers with chosen codes."""

import socket
from decimal import Decimal

import pytest
import requests
import responses
from aiosmtpd.controller import Controller

from integrations import http
from integrations.email import send_email
from integrations.errors import PermanentError, TransientError
from integrations.payments import SandboxPaymentGateway
from tests.services import free_port

URL = "https://provider.invalid/v1/things/"


@pytest.fixture
def mocked(settings):
    settings.PROVIDER_TIMEOUT_SECONDS = 4.0
    settings.PROVIDER_CONNECT_TIMEOUT_SECONDS = 1.5
    with responses.RequestsMock() as rsps:
        yield rsps


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_transient(mocked, status):
    mocked.post(URL, json={"error": {"code": "busy"}}, status=status)

    with pytest.raises(TransientError, match=f"HTTP {status}"):
        http.call("POST", URL, json={}, idempotency_key="k")


@pytest.mark.parametrize(
    "error", [requests.ConnectTimeout(), requests.ReadTimeout(), requests.ConnectionError()]
)
def test_timeouts_and_dropped_connections_are_transient(mocked, error):
    mocked.post(URL, body=error)

    with pytest.raises(TransientError):
        http.call("POST", URL, json={})


@pytest.mark.parametrize("status", [200, 201, 400])
def test_a_body_that_is_not_json_is_transient(mocked, status):
    mocked.post(URL, body="<html>oops</html>", status=status)

    with pytest.raises(TransientError, match="not JSON"):
        http.call("POST", URL, json={})


def test_a_client_error_is_permanent_with_the_providers_code(mocked):
    mocked.post(URL, json={"error": {"code": "address_rejected", "message": "no"}}, status=422)

    with pytest.raises(PermanentError) as caught:
        http.call("POST", URL, json={})
    assert caught.value.code == "address_rejected"


def test_a_client_error_without_a_code_is_named_by_its_status(mocked):
    mocked.post(URL, json={"detail": "nope"}, status=409)

    with pytest.raises(PermanentError) as caught:
        http.call("POST", URL, json={})
    assert caught.value.code == "http_409"


def test_the_idempotency_key_and_the_timeouts_are_sent(mocked):
    mocked.post(URL, json={"id": "x"}, status=201)

    assert http.call("POST", URL, json={"a": 1}, idempotency_key="order-1-charge") == (
        201,
        {"id": "x"},
    )
    request = mocked.calls[0].request
    assert request.headers["Idempotency-Key"] == "order-1-charge"
    assert request.req_kwargs["timeout"] == (1.5, 4.0)


@pytest.mark.parametrize("code", ["card_declined", "invalid_token"])
def test_the_gateway_adapter_turns_a_decline_into_a_declined_result(mocked, settings, code):
    settings.SANDBOX_URL = "https://provider.invalid/sandbox/"
    mocked.post(
        "https://provider.invalid/sandbox/payments/charges/",
        json={"error": {"code": code}},
        status=402,
    )

    result = SandboxPaymentGateway().charge(
        order_id="o", amount=Decimal("1"), currency="EUR", token="t", idempotency_key="k"
    )

    assert (result.captured, result.decline_code) == (False, code)


def test_the_gateway_adapter_keeps_other_refusals_permanent(mocked, settings):
    settings.SANDBOX_URL = "https://provider.invalid/sandbox/"
    mocked.post(
        "https://provider.invalid/sandbox/payments/charges/",
        json={"error": {"code": "invalid_request"}},
        status=400,
    )

    with pytest.raises(PermanentError):
        SandboxPaymentGateway().charge(
            order_id="o", amount=Decimal("1"), currency="EUR", token="t", idempotency_key="k"
        )


# --- SMTP ---------------------------------------------------------------------------------------
class _Answers:
    """An SMTP server's handler that answers RCPT and DATA with chosen replies."""

    def __init__(self, rcpt: str = "250 OK", data: str = "250 Message accepted") -> None:
        self.rcpt, self.data, self.received = rcpt, data, []

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
