"""The steps, called directly with the unit layer's doubles (tests.fakes) named in
PAYMENT_GATEWAY and SHIPPING_CARRIER: each step run again after each kind of partial
failure ends in the same state as one clean run, and nothing is charged, shipped, reserved
or emailed twice. Real PostgreSQL; no worker: what the steps send next is captured."""

from decimal import Decimal

import pytest
from django.core import mail
from django.db import transaction

from integrations.errors import TransientError
from orders import services, steps, workflow
from orders.models import (
    LineReservation,
    Notification,
    Order,
    OrderStatus,
    Payment,
    PaymentStatus,
    Product,
    Shipment,
)
from orders.state import SYSTEM
from tests.factories import OrderFactory, OrderLineFactory, ProductFactory
from tests.fakes import FakeCarrier, FakeGateway
from tests.helpers import dispatched, reason_codes


@pytest.fixture(autouse=True)
def fakes(settings):
    settings.PAYMENT_GATEWAY = "tests.fakes.FakeGateway"
    settings.SHIPPING_CARRIER = "tests.fakes.FakeCarrier"
    FakeGateway.reset()
    FakeCarrier.reset()
    yield
    FakeGateway.reset()
    FakeCarrier.reset()


def _order(status=OrderStatus.PENDING, lines=((3, 10),)) -> Order:
    order = OrderFactory(status=status, total=Decimal("30.00"))
    for quantity, stock in lines:
        OrderLineFactory(order=order, product=ProductFactory(stock=stock), quantity=quantity)
    return order


def _reserve_all(order: Order) -> None:
    for line in order.lines.all():
        steps.reserve_line(order_id=order.id, line_id=line.id, attempt=1)


def _status(order: Order) -> str:
    return Order.objects.values_list("status", flat=True).get(pk=order.pk)


def _stock(order: Order) -> list[int]:
    return [line.product.stock for line in order.lines.select_related("product").order_by("id")]


# --- Reserve ----------------------------------------------------------------------------------
def test_reserving_twice_takes_the_units_once(db):
    order = _order(lines=((3, 10), (1, 5)))

    _reserve_all(order)
    _reserve_all(order)

    assert _status(order) == "paying"
    assert _stock(order) == [7, 4]
    assert reason_codes(order) == ["reserved", "reserved", "not_due", "not_due"]


def test_an_out_of_stock_line_fails_the_order_and_releases_the_others(
    db, django_capture_on_commit_callbacks
):
    order = _order(lines=((3, 10), (9, 5)))

    with django_capture_on_commit_callbacks() as sent:
        _reserve_all(order)
        _reserve_all(order)  # run again: nothing to do any more

    order.refresh_from_db()
    assert order.status == "failed" and "out of stock" in order.failure_reason
    assert _stock(order) == [10, 5]
    states = set(order.lines.values_list("reservation", flat=True))
    assert states == {LineReservation.RELEASED, LineReservation.OUT_OF_STOCK}
    assert len(dispatched(sent)) == 1  # the compensation, once


# --- Charge -----------------------------------------------------------------------------------
@pytest.fixture
def paying(db):
    order = _order()
    _reserve_all(order)
    assert _status(order) == "paying"
    return order


def test_a_charge_run_again_charges_once(paying):
    steps.charge_payment(order_id=paying.id, attempt=1)
    steps.charge_payment(order_id=paying.id, attempt=2)

    assert _status(paying) == "shipping"
    assert len(FakeGateway.ledger(paying.id)) == 1
    assert FakeGateway.calls() == ["charge"]  # the second run saw the order had moved on


@pytest.mark.parametrize("failure", ["timeout", "timeout_after_success"])
def test_a_charge_whose_answer_was_lost_is_replayed_not_repeated(paying, failure):
    FakeGateway.script(failure)

    with pytest.raises(TransientError):
        steps.charge_payment(order_id=paying.id, attempt=1)
    assert Payment.objects.get(order=paying).status == PaymentStatus.PENDING  # known to be in doubt
    steps.charge_payment(order_id=paying.id, attempt=2)

    assert _status(paying) == "shipping"
    [charge] = FakeGateway.ledger(paying.id)
    assert Payment.objects.get(order=paying).charge_id == charge.charge_id


def test_a_run_that_died_after_recording_the_capture_moves_on_without_charging(paying):
    Payment.objects.create(
        order=paying,
        amount=paying.total,
        currency="EUR",
        idempotency_key=f"order-{paying.id}-charge",
        status=PaymentStatus.CAPTURED,
        charge_id="ch_earlier",
    )

    steps.charge_payment(order_id=paying.id, attempt=2)

    assert _status(paying) == "shipping"
    assert FakeGateway.calls() == []


def test_a_decline_fails_the_order_and_releases_the_stock(paying):
    FakeGateway.script("decline")

    steps.charge_payment(order_id=paying.id, attempt=1)
    steps.charge_payment(order_id=paying.id, attempt=2)

    assert _status(paying) == "failed"
    assert Payment.objects.get(order=paying).status == PaymentStatus.DECLINED
    assert _stock(paying) == [10]
    assert "payment_declined" in reason_codes(paying)


def test_a_capture_that_lands_after_the_cancel_and_its_compensation_is_refunded(paying):
    def cancel_and_compensate_meanwhile() -> None:
        services.order_cancel(order_id=paying.id, actor=SYSTEM)
        steps.compensate(order_id=paying.id, attempt=1)  # finds nothing captured yet

    FakeGateway.during_charge = cancel_and_compensate_meanwhile

    steps.charge_payment(order_id=paying.id, attempt=1)

    order = Order.objects.get(pk=paying.pk)
    assert order.status == "cancelled" and order.compensated_at is None  # opened again
    assert "captured_after_end" in reason_codes(order)
    steps.compensate(order_id=order.id, attempt=1)
    [charge] = FakeGateway.ledger(order.id)
    assert charge.refunded
    assert Payment.objects.get(order=order).status == PaymentStatus.REFUNDED
    assert _stock(order) == [10]


def test_a_late_capture_from_a_run_whose_lock_expired_is_fenced_off(paying):
    """Run A calls the gateway and is cut off before it records the answer; its lock expires,
    and run B charges (same key: the same charge), records it, and the order is shipped.
    Then A's answer arrives. Expected: A's write is refused by the order's state (the fence),
    not trusted to its lost lock: the order stays as B left it, nothing is reopened for a
    refund, and the timeline says A found the work done."""

    def another_run_charges_and_ships_meanwhile() -> None:
        steps.charge_payment(order_id=paying.id, attempt=2)
        steps.create_shipment(order_id=paying.id, attempt=1)

    FakeGateway.during_charge = another_run_charges_and_ships_meanwhile

    steps.charge_payment(order_id=paying.id, attempt=1)

    order = Order.objects.get(pk=paying.pk)
    assert order.status == "confirming"
    assert order.compensated_at is None
    [charge] = FakeGateway.ledger(order.id)
    assert not charge.refunded
    assert Payment.objects.get(order=order).charge_id == charge.charge_id
    assert "captured_after_end" not in reason_codes(order)
    last = order.events.order_by("at", "id").last()
    assert (last.step, last.outcome, last.attempt) == ("charge_payment", "skipped", 1)


# --- Shipment ---------------------------------------------------------------------------------
@pytest.fixture
def shipping(paying):
    steps.charge_payment(order_id=paying.id, attempt=1)
    assert _status(paying) == "shipping"
    return paying


@pytest.mark.parametrize("failure", [None, "timeout", "timeout_after_success"])
def test_a_shipment_run_again_ships_once(shipping, failure):
    if failure:
        FakeCarrier.script(failure)
        with pytest.raises(TransientError):
            steps.create_shipment(order_id=shipping.id, attempt=1)
    steps.create_shipment(order_id=shipping.id, attempt=2)
    steps.create_shipment(order_id=shipping.id, attempt=3)

    assert _status(shipping) == "confirming"
    assert len(FakeCarrier.ledger(shipping.id)) == 1
    assert Shipment.objects.filter(order=shipping).count() == 1


def test_the_parcel_weighs_what_the_lines_weigh(db):
    order = OrderFactory(status=OrderStatus.SHIPPING)
    for quantity, grams in ((2, 350), (1, 120)):
        product = ProductFactory(weight_grams=grams)
        OrderLineFactory(order=order, product=product, quantity=quantity)
    Payment.objects.create(
        order=order, amount=order.total, currency="EUR", idempotency_key="k", status="captured"
    )
    steps.create_shipment(order_id=order.id, attempt=1)
    assert FakeCarrier.parcels[str(order.id)] == 2 * 350 + 120


def test_giving_up_after_a_lost_answer_finds_the_shipment_in_the_ledger(
    shipping, django_capture_on_commit_callbacks
):
    FakeCarrier.script("ok", "timeout_after_success")  # created, then bought: answer lost
    with pytest.raises(TransientError):
        steps.create_shipment(order_id=shipping.id, attempt=1)

    with django_capture_on_commit_callbacks() as sent:
        verdict = steps.shipment_fail(
            order_id=shipping.id, reason="gave up", reason_code="gave_up", attempt=9
        )

    assert verdict == steps.ShipmentVerdict.SHIPPED
    assert _status(shipping) == "confirming"
    assert (
        Shipment.objects.get(order=shipping).tracking_number
        == FakeCarrier.ledger(shipping.id)[0].tracking_code
    )
    assert (
        len(dispatched(sent)) == 1
    )  # the confirmation, since no chain follows a task that gave up


def test_a_rejected_shipment_with_an_empty_ledger_fails_and_refunds(shipping):
    FakeCarrier.script("reject")

    steps.create_shipment(order_id=shipping.id, attempt=1)

    order = Order.objects.get(pk=shipping.pk)
    assert order.status == "failed" and "rejected" in order.failure_reason
    steps.compensate(order_id=order.id, attempt=1)
    steps.compensate(order_id=order.id, attempt=2)
    [charge] = FakeGateway.ledger(order.id)
    assert charge.refunded and len(FakeGateway.refunds) == 1
    assert Payment.objects.get(order=order).status == PaymentStatus.REFUNDED


def test_a_shipping_order_is_not_failed_while_the_carrier_cannot_be_asked(shipping):
    Shipment.objects.create(order=shipping)  # a create was sent; its answer is unknown
    FakeCarrier.script("unreachable")

    verdict = steps.shipment_fail(order_id=shipping.id, reason="deadline", reason_code="deadline")

    assert verdict == steps.ShipmentVerdict.UNKNOWN
    assert _status(shipping) == "shipping"
    assert "carrier_unknown" in reason_codes(shipping)
    # And the services refuse to fail a shipping order without the ledger's answer.
    assert services.order_fail(order_id=shipping.id, reason="x") is False


# --- Confirmation -----------------------------------------------------------------------------
@pytest.fixture
def confirming(shipping):
    steps.create_shipment(order_id=shipping.id, attempt=1)
    assert _status(shipping) == "confirming"
    return shipping


def test_the_confirmation_run_again_sends_one_email(confirming):
    steps.send_confirmation(order_id=confirming.id, attempt=1)
    steps.send_confirmation(order_id=confirming.id, attempt=2)

    assert _status(confirming) == "completed"
    assert [m.subject for m in mail.outbox] == [f"Your order {confirming.id} is confirmed"]


def test_an_email_that_cannot_be_sent_keeps_the_order_confirming_until_the_deadline(
    confirming, settings
):
    steps.confirmation_give_up(order_id=confirming.id, attempt=9, reason="SMTP down")
    assert _status(confirming) == "confirming"
    assert reason_codes(confirming)[-1] == "email_waiting"

    settings.ORDER_EMAIL_DEADLINE_SECONDS = -1  # the deadline has passed
    steps.confirmation_give_up(order_id=confirming.id, attempt=10, reason="SMTP down")

    assert _status(confirming) == "completed"
    assert reason_codes(confirming)[-1] == "completed_without_email"


# --- Compensation -----------------------------------------------------------------------------
def test_a_refund_whose_answer_was_lost_is_not_repeated(shipping):
    steps.shipment_fail(order_id=shipping.id, reason="test", reason_code="test")
    FakeGateway.script("timeout_after_success")

    with pytest.raises(TransientError):
        steps.compensate(order_id=shipping.id, attempt=1)
    steps.compensate(order_id=shipping.id, attempt=2)

    [charge] = FakeGateway.ledger(shipping.id)
    assert charge.refunded and len(FakeGateway.refunds) == 1
    assert Order.objects.get(pk=shipping.pk).compensated_at is not None
    assert [m.subject for m in mail.outbox] == [f"We could not complete your order {shipping.id}"]


# --- Resuming -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "names"),
    [
        (OrderStatus.SHIPPING, ["orders.create_shipment", "orders.send_confirmation_email"]),
        (OrderStatus.CONFIRMING, ["orders.send_confirmation_email"]),
        (
            OrderStatus.PAYING,
            ["orders.charge_payment", "orders.create_shipment", "orders.send_confirmation_email"],
        ),
    ],
)
def test_resuming_sends_the_steps_left_from_the_status_reached(db, status, names):
    canvas = workflow.build(order_id=OrderFactory().id, line_ids=[1], from_status=status)

    tasks = getattr(canvas, "tasks", [canvas])
    assert [t.task for t in tasks] == names


def test_resuming_an_ended_order_compensates_it(db):
    assert workflow.compensation(order_id=OrderFactory().id).task == "orders.compensate_order"


def test_the_last_units_can_be_reserved_and_no_more(db):
    first, second = _order(lines=((5, 5),)), None
    product = first.lines.get().product
    second = OrderFactory()
    OrderLineFactory(order=second, product=product, quantity=1)

    _reserve_all(first)
    _reserve_all(second)

    assert Product.objects.get(pk=product.pk).stock == 0
    assert (_status(first), _status(second)) == ("paying", "failed")


def test_a_step_that_gives_up_after_its_work_is_recorded_does_not_fail_the_order(paying):
    """Every line is reserved and the order is paying; then a reservation task hits its time
    limit (publishing what follows while the broker is away, say) and Celery reports it
    failed. Expected: the order goes on; only a step the order still waits for may fail it."""
    from orders import tasks

    tasks.reserve_stock.give_up(paying.id, "reserve_stock gave up: TimeLimitExceeded")

    assert _status(paying) == "paying"
    assert _stock(paying) == [7]  # still reserved


# --- 3-D Secure: the charge step asks the gateway while the customer authenticates ---------------
@pytest.fixture
def awaiting(paying):
    FakeGateway.script("requires_action")
    steps.charge_payment(order_id=paying.id, attempt=1)
    assert _status(paying) == "awaiting_payment_action"
    payment = Payment.objects.get(order=paying)
    assert payment.status == PaymentStatus.REQUIRES_ACTION and payment.client_secret
    return paying


def test_an_authenticated_payment_moves_the_order_on_and_sends_the_rest(
    awaiting, django_capture_on_commit_callbacks
):
    FakeGateway.authenticate(awaiting.id)

    with django_capture_on_commit_callbacks() as sent:
        steps.charge_payment(order_id=awaiting.id, attempt=2)

    assert _status(awaiting) == "shipping"
    payment = Payment.objects.get(order=awaiting)
    assert payment.status == PaymentStatus.CAPTURED and payment.client_secret == ""
    assert len(dispatched(sent)) == 1  # the shipment and the confirmation
    assert FakeGateway.calls().count("charge") == 1  # asked, never charged again


def test_a_payment_still_with_the_customer_changes_nothing(awaiting):
    steps.charge_payment(order_id=awaiting.id, attempt=2)

    assert _status(awaiting) == "awaiting_payment_action"
    assert FakeGateway.calls() == ["charge", "retrieve"]


def test_a_failed_authentication_fails_the_order_and_releases_the_stock(awaiting):
    FakeGateway.authenticate(awaiting.id, succeed=False)

    steps.charge_payment(order_id=awaiting.id, attempt=2)

    assert _status(awaiting) == "failed"
    assert "payment_authentication_failed" in reason_codes(awaiting)
    assert _stock(awaiting) == [10]
    steps.compensate(order_id=awaiting.id, attempt=1)
    [charge] = FakeGateway.ledger(awaiting.id)
    assert charge.status == "canceled"  # its secret can no longer confirm it


def test_past_the_deadline_the_charge_is_cancelled_and_the_order_fails(awaiting, settings):
    settings.ORDER_PAYMENT_ACTION_DEADLINE_SECONDS = 0

    steps.charge_payment(order_id=awaiting.id, attempt=2)

    assert _status(awaiting) == "failed"
    assert "payment_action_expired" in reason_codes(awaiting)
    [charge] = FakeGateway.ledger(awaiting.id)
    assert charge.status == "canceled"
    assert Payment.objects.get(order=awaiting).status == PaymentStatus.NOT_CHARGED


def test_authenticated_as_the_deadline_passes_the_order_goes_on(awaiting, settings):
    """The customer authenticates between our look and our cancel: the gateway refuses the
    cancel, and the order goes on as paid, never failed beside a capture."""
    settings.ORDER_PAYMENT_ACTION_DEADLINE_SECONDS = 0
    real_retrieve = FakeGateway.retrieve

    def authenticated_after_the_look(self, *, charge_id):
        looked = real_retrieve(self, charge_id=charge_id)
        FakeGateway.authenticate(awaiting.id)
        return looked

    FakeGateway.retrieve = authenticated_after_the_look  # type: ignore[method-assign]
    try:
        steps.charge_payment(order_id=awaiting.id, attempt=2)
    finally:
        FakeGateway.retrieve = real_retrieve  # type: ignore[method-assign]

    assert _status(awaiting) == "shipping"
    [charge] = FakeGateway.ledger(awaiting.id)
    assert charge.status == "captured" and not charge.refunded


def test_cancelling_while_the_customer_authenticates_cancels_the_charge(awaiting):
    services.order_cancel(order_id=awaiting.id, actor=SYSTEM)
    steps.compensate(order_id=awaiting.id, attempt=1)

    assert _status(awaiting) == "cancelled"
    [charge] = FakeGateway.ledger(awaiting.id)
    assert charge.status == "canceled"
    assert "refunded" not in reason_codes(awaiting)


def test_two_runs_that_meet_send_the_email_once(transactional_db, monkeypatch):
    """Two runs of one email at the same moment (a step's Redis lock lost with a Redis
    restart, a redelivered message beside the first: seen once in the chaos test on
    RabbitMQ). Expected: the second waits for the first's record and sends nothing."""
    import threading
    import time

    from django.db import connection

    from orders import notifications
    from orders.models import NotificationKind

    order = OrderFactory(status=OrderStatus.FAILED)
    sent: list[str] = []

    def slow_send(*, to: str, subject: str, body: str, message_id: str, accepted) -> None:
        time.sleep(0.5)  # the mail server takes its time: both runs are inside the send
        sent.append(message_id)
        accepted()

    monkeypatch.setattr(notifications, "send_email", slow_send)
    results: list[bool] = []

    def run(attempt: int) -> None:
        try:
            results.append(
                notifications.notification_send(
                    order=Order.objects.get(pk=order.pk),
                    kind=NotificationKind.FAILURE,
                    step="compensate",
                    attempt=attempt,
                )
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(attempt,)) for attempt in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sent == [notifications.message_id(order=order, kind="failure")]
    assert sorted(results) == [False, True]


def test_a_run_killed_after_the_server_took_the_email_leaves_a_receipt_the_rerun_finds(
    transactional_db, monkeypatch
):
    """The server takes the email, then the run's transaction never commits (its worker is
    killed: here it rolls back), and Redis loses its key (a restart: it keeps nothing on
    disk). Expected: the receipt in PostgreSQL was committed on its own connection, and the
    rerun sends nothing again and records the email as sent."""
    from orders import notifications
    from orders.locks import redis_client
    from orders.models import EmailReceipt, NotificationKind

    order = OrderFactory(status=OrderStatus.FAILED)
    sent: list[str] = []

    def send(*, to: str, subject: str, body: str, message_id: str, accepted) -> None:
        sent.append(message_id)
        accepted()

    monkeypatch.setattr(notifications, "send_email", send)

    class Killed(Exception):
        pass

    with pytest.raises(Killed), transaction.atomic():
        notifications.notification_send(
            order=order, kind=NotificationKind.FAILURE, step="compensate", attempt=1
        )
        raise Killed
    redis_client().delete(notifications.receipt_key(order=order, kind="failure"))
    assert not Notification.objects.filter(order=order).exists()  # the record rolled back
    assert EmailReceipt.objects.filter(order=order, kind="failure").count() == 1

    again = notifications.notification_send(
        order=Order.objects.get(pk=order.pk),
        kind=NotificationKind.FAILURE,
        step="compensate",
        attempt=2,
    )

    assert again is True and len(sent) == 1
    assert Notification.objects.get(order=order, kind="failure").sent_at is not None
    [entry] = order.events.filter(reason_code="email_sent")
    assert "accepted by the mail server before" in entry.detail


def test_a_receipt_connection_the_server_ended_while_idle_is_replaced(
    transactional_db, monkeypatch
):
    """PostgreSQL ends the process's receipts connection while it is idle (a restart, a
    failover, an idle timeout: here pg_terminate_backend). Expected: the next email's
    receipt is written on a new connection, not skipped."""
    from django.db import connection

    from orders import notifications
    from orders.models import EmailReceipt, NotificationKind

    monkeypatch.setattr(notifications, "send_email", lambda *, accepted, **message: accepted())
    first, second = OrderFactory(status=OrderStatus.FAILED), OrderFactory(status=OrderStatus.FAILED)
    notifications.notification_send(
        order=first, kind=NotificationKind.FAILURE, step="compensate", attempt=1
    )
    ended = notifications._receipts_connection[1].info.backend_pid
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [ended])

    notifications.notification_send(
        order=second, kind=NotificationKind.FAILURE, step="compensate", attempt=1
    )

    assert EmailReceipt.objects.filter(order__in=[first, second]).count() == 2
    assert notifications._receipts_connection[1].info.backend_pid != ended
