"""No customer's name, address, email or payment method in log lines, Sentry events or metric
labels (config/redaction.py): the rules, both log formats, Sentry's pipeline, and a real stack
whose every log line, Sentry envelope and /metrics answer is searched for a customer's data."""

from __future__ import annotations

import inspect
import io
import logging
import sys

import pytest
import requests
import sentry_sdk
import structlog
from django.conf import settings
from sentry_sdk.transport import Transport
from sentry_sdk.utils import event_from_exception

from config.redaction import SENTRY_PRIVACY_OPTIONS, redact, redact_text, scrub_sentry_breadcrumb
from tests.factories import ProductFactory, UserFactory, order_payload, token_for
from tests.helpers import FAST_TIMINGS, api_session, place, wait_for, wait_for_orders
from tests.procs import timing_errors_under
from tests.test_sentry import _Sentry, sentry_server  # noqa: F401 - the stand-in Sentry server

# A customer nobody could mistake for anything else, and the parts of them a leak would show.
NAME = "Zelda Quixotic-Pseudonym"
LINE1 = "742 Evergreen Terrace Unique"
CITY = "Springfieldtown"
POSTAL_CODE = "99999-PII"
EMAIL = "zelda.pii@example.org"
UNKNOWN_CARD = "pm_zeldaPiiQuixotic"  # the sandbox knows no such method: the order fails
NEEDLES = ["zelda", "quixotic", "evergreen", "springfieldtown", "99999-pii", "pm_card_visa"]


def _leaks(text: str) -> dict[str, list[str]]:
    """Each needle found in `text` (case-insensitive), with the lines that carry it."""
    lines = text.lower().splitlines()
    return {
        needle: [line[:300] for line in lines if needle in line][:3]
        for needle in NEEDLES
        if needle in text.lower()
    }


def _address() -> dict[str, str]:
    return {
        "name": NAME,
        "line1": LINE1,
        "city": CITY,
        "postal_code": POSTAL_CODE,
        "country": "DE",
    }


# --- The rules ------------------------------------------------------------------------------
def test_personal_keys_are_redacted_at_any_depth():
    event = {
        "event": "order placed",
        "order_id": "o-1",
        "email": EMAIL,
        "request": {"shipping_address": _address(), "payment_token": UNKNOWN_CARD},
        "lines": [{"sku": "MUG-001", "ship_name": NAME}],
        "ship_postal_code": POSTAL_CODE,
        "task_name": "orders.send_confirmation_email",
        "no_email": "",
    }

    cleaned = redact(event)

    assert _leaks(str(cleaned)) == {}
    assert cleaned["order_id"] == "o-1"
    assert cleaned["task_name"] == "orders.send_confirmation_email"
    assert cleaned["lines"][0]["sku"] == "MUG-001"
    assert cleaned["request"]["shipping_address"] == "[redacted]"


@pytest.mark.parametrize(
    "text",
    [
        f"mail to {EMAIL} refused",
        f"SMTPDataError(451, b'4.7.1 <{EMAIL}>: greylisted')",
        f"stripe charge: No such PaymentMethod: '{UNKNOWN_CARD}'",
        f"to_address={{'name': '{NAME}', 'street1': '{LINE1}', 'city': '{CITY}'}}",
        f'{{"zip": "{POSTAL_CODE}", "line1":"{LINE1}"}}',
        f"Address(name='{NAME}', city={CITY}, postal_code={POSTAL_CODE})",
        "GET /admin/orders/order/?q=Zelda&o=2",
        "payment_method=pm_card_visa&confirm=true",
    ],
)
def test_personal_data_in_free_text_is_redacted(text):
    assert _leaks(redact_text(text)) == {}
    assert "[redacted]" in redact_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "order 3f2a failed: stripe charge: card_declined (generic_decline)",
        "Task orders.reserve_stock[ab-12] succeeded in 0.02s: 'reserved'",
        "Connected to amqp://guest:**@127.0.0.1:5672/stack-1",
        "w1@vm ready.",
        "refund re_123 of pi_456 (ch_789)",
        "GET /api/orders/?page=2&status=failed",
        "order o-1 completed without its confirmation email: the mail server refused it",
    ],
)
def test_what_is_not_personal_stays_readable(text):
    assert redact_text(text) == text


# --- Log lines, as both formats write them --------------------------------------------------
@pytest.fixture(params=["json", "console"])
def log_lines(request):
    """A logger writing through LOGGING's formatter of that format, and what it wrote."""
    spec = dict(settings.LOGGING["formatters"][request.param])
    formatter = spec.pop("()")(**spec)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield stream
    logger.removeHandler(handler)


def test_a_standard_library_line_is_redacted(log_lines):
    # As Celery, Django or kombu log: a %-format and its arguments, rendered by the formatter.
    logging.getLogger("tests.redaction").warning(
        "order %s: mail to %s refused for %r", "o-1", EMAIL, {"name": NAME, "line1": LINE1}
    )

    written = log_lines.getvalue()
    assert _leaks(written) == {}
    assert "order o-1: mail to [redacted] refused" in written


def test_a_structlog_line_is_redacted(log_lines):
    structlog.get_logger("tests.redaction").info(
        "order placed",
        order_id="o-1",
        email=EMAIL,
        shipping_address=_address(),
        payment_token=UNKNOWN_CARD,
    )

    written = log_lines.getvalue()
    assert _leaks(written) == {}
    assert "order placed" in written and "o-1" in written


def test_a_traceback_is_redacted(log_lines):
    try:
        raise ValueError(f"no such PaymentMethod '{UNKNOWN_CARD}' for {EMAIL}")
    except ValueError:
        logging.getLogger("tests.redaction").exception("charge of order %s failed", "o-1")

    written = log_lines.getvalue()
    assert _leaks(written) == {}
    assert "ValueError: no such PaymentMethod '[redacted]' for [redacted]" in written
    assert "test_a_traceback_is_redacted" in written  # still a traceback


# --- Sentry ---------------------------------------------------------------------------------
class _Envelopes(Transport):
    def __init__(self, options=None):
        super().__init__(options)
        self.sent: list[bytes] = []

    def capture_envelope(self, envelope):
        self.sent.append(envelope.serialize())


def _ship(order_id: str) -> None:
    where = f"{LINE1}, {POSTAL_CODE} {CITY}"  # a local under a name no rule knows  # noqa: F841
    raise ValueError(f"carrier refused order {order_id} to {EMAIL}")


def test_a_sentry_event_carries_no_personal_data():
    """An error as the Django and Celery integrations report it, through Sentry's own
    pipeline (scrubber, serializer, our hooks) with the project's options, up to the
    envelope it would send."""
    client = sentry_sdk.Client(
        dsn="http://public@127.0.0.1:9/1",
        transport=_Envelopes,
        default_integrations=False,
        **SENTRY_PRIVACY_OPTIONS,
    )
    try:
        _ship("o-1")
    except ValueError:
        event, hint = event_from_exception(sys.exc_info(), client_options=client.options)
    event["request"] = {
        "url": "http://shop.test/api/orders/",
        "method": "POST",
        "query_string": f"email={EMAIL}",
        "data": {"shipping_address": _address(), "payment_token": UNKNOWN_CARD},
        "cookies": {"sessionid": "zelda-session"},
    }
    event["logentry"] = {"message": "gave up on order %s: %r", "params": ["o-1", EMAIL]}
    event["extra"] = {"celery-job": {"kwargs": {"order_id": "o-1", "email": EMAIL}}}
    event["contexts"] = {"customer": {"name": NAME}}
    event["breadcrumbs"] = {
        "values": [{"message": f"mail to {EMAIL}", "data": {"to_address": _address()}}]
    }

    client.capture_event(event, hint)

    [envelope] = client.transport.sent
    sent = envelope.decode(errors="replace")
    assert _leaks(sent) == {}
    assert "carrier refused order o-1 to [redacted]" in sent  # the error is still readable
    assert "/api/orders/" in sent


def test_a_breadcrumb_is_redacted_as_it_is_recorded():
    crumb = scrub_sentry_breadcrumb(
        {"category": "orders", "message": f"sent to {EMAIL}", "data": {"city": CITY}}
    )

    assert _leaks(str(crumb)) == {}
    assert crumb["category"] == "orders"


# --- What Celery prints and sends -----------------------------------------------------------
@pytest.mark.django_db  # Celery's Django fixup runs the system checks (E004 reads a row)
def test_no_task_takes_personal_data_as_an_argument():
    """Celery writes a task's arguments into its messages, Flower's events, Sentry's
    `celery-job` and, at debug level, its log lines: the tasks take ids only, and read the
    customer's data from the database."""
    from config.celery import app

    app.loader.import_default_modules()
    ids = {"order_id", "line_id", "event_pk", "reservations", "endpoint_id"}
    ours = {name: task for name, task in app.tasks.items() if name.startswith("orders.")}

    assert ours
    for name, task in ours.items():
        assert set(inspect.signature(task.run).parameters) <= ids, name


# --- A real stack ---------------------------------------------------------------------------
GREYLISTED = "zelda.pii+greylisted@example.org"
ENV = {
    **FAST_TIMINGS,
    "LOG_FORMAT": "json",
    "TASK_MAX_RETRIES": "3",
    # The greylisted customer's confirmation is given up at once: an error reported to Sentry.
    "ORDER_EMAIL_DEADLINE_SECONDS": "1",
    "SENTRY_ENVIRONMENT": "test",
}


def test_the_test_timings_are_in_order():
    assert timing_errors_under(ENV) == []


@pytest.mark.slow
def test_a_customers_data_is_in_no_log_line_sentry_envelope_or_metric(
    stack_factory,
    sentry_server,  # noqa: F811
):
    ProductFactory(sku="MUG-PII", price="12.50", stock=10)
    dsn = f"http://public@127.0.0.1:{sentry_server.server_address[1]}/1"
    stack = stack_factory(env={**ENV, "SENTRY_DSN": dsn}, workers=1, beat=True)
    accept = stack.smtp.handle_DATA

    async def greylist(server, session, envelope):
        if GREYLISTED in envelope.rcpt_tos:
            # As real servers do, the refusal names the recipient.
            return f"451 4.7.1 <{GREYLISTED}>: Recipient address greylisted, try again later"
        return await accept(server, session, envelope)

    stack.smtp.handle_DATA = greylist  # aiosmtpd looks its hooks up per connection
    zelda = api_session(token_for(user=UserFactory(email=EMAIL)).key, stack.web_url)
    greylisted = api_session(token_for(user=UserFactory(email=GREYLISTED)).key, stack.web_url)

    def order(session, token):
        payload = order_payload(("MUG-PII", 1), token=token, postal_code=POSTAL_CODE)
        payload["shipping_address"] = _address()
        return place(session, payload)["id"]

    completed = [order(zelda, "tok_ok"), order(zelda, "pm_card_visa")]
    failed = order(zelda, UNKNOWN_CARD)
    reported = order(greylisted, "tok_ok")
    orders = {str(o.id): o for o in wait_for_orders([*completed, failed, reported], timeout=120)}
    envelopes = wait_for(
        lambda: [e for e in _Sentry.envelopes if b"completed without its confirmation" in e],
        timeout=60,
        what=f"the Sentry event of order {reported}:\n{stack.logs()}",
    )

    assert [orders[o].status for o in [*completed, failed, reported]] == [
        "completed",
        "completed",
        "failed",
        "completed",
    ]
    assert str(reported).encode() in envelopes[0]
    searched = {proc.name: proc.log() for proc in [stack.web, *stack.workers, stack.beat]}
    searched["web access log"] = stack.access_log.read_text()
    searched["sentry"] = b"\n".join(_Sentry.envelopes).decode(errors="replace")
    searched["metrics"] = requests.get(f"{stack.web_url}/metrics", timeout=15).text
    assert {where: leaks for where, text in searched.items() if (leaks := _leaks(text))} == {}
    # Still logs one can follow: every order's id, and why the failed one failed.
    worker = searched[stack.workers[0].name]
    assert all(str(o) in worker for o in [*completed, failed, reported])
    why = [line for line in worker.splitlines() if f"order {failed} failed:" in line]
    assert why and "No such PaymentMethod: '[redacted]'" in why[0]
