"""The customer's emails: one per order and kind (confirmation, failure, cancellation).

The copy lives in templates (orders/templates/orders/email/<kind>_subject.txt and
<kind>_body.txt); sending goes through integrations/email.py. A Notification row per order
and kind records what was sent, so a step that runs again sends nothing twice.

A mail server keeps no ledger we can ask, so the moment between its acceptance and our
record of it is covered by receipts, written the moment the server takes the message (its
250 to DATA, before the session's QUIT) and read before sending: an EmailReceipt row,
committed at once on this process's own connection, which outlives the step's transaction
(a worker killed before that commits, a Redis restart after it), and a key in Redis, which
outlives a PostgreSQL lost in that moment. Only a process killed between the server's 250
and the receipt's commit, or Redis and PostgreSQL lost together then, sends an email twice;
the Message-ID, the same for both copies, lets a mail client fold them into one.
"""

from __future__ import annotations

import logging
import os
import threading

import psycopg
import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from integrations.email import send_email
from integrations.errors import PermanentError, TransientError

from . import statements
from .locks import redis_client
from .models import EmailReceipt, Notification, Order, Outcome, Shipment, WebhookEndpoint
from .state import event_record

logger = logging.getLogger(__name__)

# At least a week, and twice ORDER_EMAIL_DEADLINE_SECONDS (a day by default), the longest a
# step keeps trying to record a message it sent.
RECEIPT_MIN_TTL_SECONDS = 7 * 24 * 3600


def render(*, order: Order, kind: str, shipment: Shipment | None = None) -> tuple[str, str]:
    """The subject and body of the order's email of this kind (`shipment`: the order's, when
    the caller has it at hand already)."""
    if shipment is None:
        shipment = statements.get_or_none(Shipment, order_id=order.pk)
    context = {
        "order": order,
        "shipment": shipment,
        "tracking": (shipment.tracking_number if shipment else "") or "-",
        "tracking_url": shipment.tracking_url if shipment else "",
    }
    subject = render_to_string(f"orders/email/{kind}_subject.txt", context).strip()
    body = render_to_string(f"orders/email/{kind}_body.txt", context)
    return subject, body


def message_id(*, order: Order, kind: str) -> str:
    # Derived from the order and the kind: a message sent twice after a crash (between the
    # mail server's acceptance and our record of it) is recognisable as the same one.
    return f"<{order.id}.{kind}@orders.invalid>"


def receipt_key(*, order: Order, kind: str) -> str:
    return f"notification-sent:{order.id}:{kind}"


def _receipts_write(*, order: Order, kind: str) -> None:
    """The server took the message: note it where a rerun looks before sending. Neither
    write may fail the step (the message is sent; the Notification's record, written next,
    is what counts)."""
    durable = _receipt_commit(order=order, kind=kind)
    try:
        ttl = max(RECEIPT_MIN_TTL_SECONDS, 2 * settings.ORDER_EMAIL_DEADLINE_SECONDS)
        redis_client().set(receipt_key(order=order, kind=kind), 1, ex=ttl)
    except redis.RedisError:
        if not durable:
            logger.warning("no receipt for the %s email of order %s", kind, order.id)


def _accepted_before(*, order: Order, kind: str) -> bool:
    """Did a run before this one see the server take this email? Its receipts say."""
    if statements.values_list(EmailReceipt, ("id",), order_id=order.pk, kind=kind):
        return True
    return bool(redis_client().exists(receipt_key(order=order, kind=kind)))


# This process's connection for receipts: its own, in autocommit, so that a receipt is
# committed the moment it is written, whatever becomes of the step's transaction (which
# holds the Notification row from the check to the record). One per process, made on
# first use; the lock serializes a thread pool's threads on it.
_receipts_lock = threading.Lock()
_receipts_connection: tuple[int, psycopg.Connection] | None = None
_RECEIPT_SQL = (
    "INSERT INTO {table} (order_id, kind, accepted_at) VALUES (%s, %s, now()) "
    "ON CONFLICT (order_id, kind) DO NOTHING"
)


def _receipt_commit(*, order: Order, kind: str) -> bool:
    """The EmailReceipt, committed at once. False if it could not be written (then the key
    in Redis is the only receipt), and on SQLite, which takes one writer at a time: a
    second connection would wait for the step's own transaction."""
    if connection.vendor != "postgresql":
        return False
    sql = _RECEIPT_SQL.format(table=connection.ops.quote_name(EmailReceipt._meta.db_table))
    with _receipts_lock:
        for _ in range(2):
            try:
                _receipts_connect().execute(sql, [order.pk, kind])
                return True
            except psycopg.OperationalError:
                # A connection that died while idle (a restart, a failover, a timeout of
                # the server's): one more try, on a new one (closing it dropped it). The
                # insert may be repeated.
                _receipts_close()
            except (psycopg.Error, SoftTimeLimitExceeded) as exc:
                # Interrupted mid-statement, or refused: the connection is not to be reused.
                _receipts_close()
                logger.warning(
                    "no receipt in PostgreSQL for the %s email of order %s: %s",
                    kind,
                    order.id,
                    exc.__class__.__name__,
                )
                return False
    logger.warning("no receipt in PostgreSQL for the %s email of order %s", kind, order.id)
    return False


def _receipts_connect() -> psycopg.Connection:
    global _receipts_connection
    held = _receipts_connection
    if held is None or held[0] != os.getpid() or held[1].closed:
        # A forked pool process makes its own: its parent's is not its to use.
        params = {**connection.get_connection_params(), "autocommit": True}
        # Never wait long: the mail server has taken the message, and the step's record
        # (and the Redis key) should follow at once. Keepalives notice a silent peer.
        params.setdefault("connect_timeout", 2)
        params.update(keepalives=1, keepalives_idle=30, tcp_user_timeout=5000)
        params["options"] = f"{params.get('options', '')} -c statement_timeout=2000".strip()
        held = _receipts_connection = (os.getpid(), psycopg.connect(**params))
    return held[1]


def _receipts_close() -> None:
    global _receipts_connection
    if _receipts_connection is not None and _receipts_connection[0] == os.getpid():
        _receipts_connection[1].close()
    _receipts_connection = None


@transaction.atomic
def notification_send(
    *, order: Order, kind: str, step: str, attempt: int, shipment: Shipment | None = None
) -> bool:
    """Send the order's email of this kind at most once. Returns False if it had been sent
    before. Raises integrations.errors.TransientError / PermanentError from the mail server
    (nothing of the attempt is kept then).

    One transaction: the Notification row is held (inserted, or locked) from the check to
    the record, so two runs that meet (the step's Redis lock lost with a Redis restart, a
    redelivered message beside the first) send one email: the second waits for the first's
    commit and finds it sent. A run killed after the server accepted rolls back; the
    receipt covers that."""
    notification = _notification_of(order=order, kind=kind)
    if notification.sent_at:
        return False
    if notification.to and _accepted_before(order=order, kind=kind):
        late = "accepted by the mail server before; its record was written late"
        detail, reason_code = f"{kind} email sent to the customer ({late})", "email_sent"
    elif notification.to:
        subject, body = render(order=order, kind=kind, shipment=shipment)
        send_email(
            to=notification.to,
            subject=subject,
            body=body,
            message_id=message_id(order=order, kind=kind),
            accepted=lambda: _receipts_write(order=order, kind=kind),
        )
        detail, reason_code = f"{kind} email sent to the customer", "email_sent"
    else:
        detail, reason_code = (
            f"{kind} email not sent: the customer has no email address",
            "no_email",
        )
    notification.sent_at = timezone.now()
    statements.update(notification, ["sent_at"])
    event_record(
        order=order,
        step=step,
        outcome=Outcome.SUCCEEDED,
        attempt=attempt,
        detail=detail,
        reason_code=reason_code,
        data={"kind": kind},
    )
    return True


def _notification_of(*, order: Order, kind: str) -> Notification:
    """The order's record of this kind, created on first use and held by the caller's
    transaction: one INSERT ... ON CONFLICT DO NOTHING on every email of the pipeline (its
    uncommitted row holds off a concurrent insert until the commit), where get_or_create
    takes four round trips. A conflict means a record exists, written by an earlier run of
    the step: it is read under a row lock."""
    fresh = Notification(order=order, kind=kind, to=order.email)
    if statements.insert_once(fresh, conflict=["order", "kind"]):
        return fresh
    return Notification.objects.select_for_update().get(order=order, kind=kind)


def webhook_endpoint_disabled_send(*, endpoint: WebhookEndpoint, reason: str) -> bool:
    """Tell the shop (its account's email) that its webhook endpoint was disabled, once per
    disabling. Best effort: the endpoint's state in the API says the same."""
    to = endpoint.user.email
    if not to:
        return False
    why = {
        "gone": "it answered 410 Gone, which says it will take no more events",
        "failing": "every attempt to deliver to it has failed for "
        f"{settings.WEBHOOK_DISABLE_AFTER_HOURS:g} hours",
    }
    body = (
        f"Your webhook endpoint {endpoint.url} (id {endpoint.pk}) was disabled: "
        f"{why.get(reason, reason)}.\n\n"
        "Events for it are kept and retried for their retry window: enable it again with "
        f'PATCH /api/webhook-endpoints/{endpoint.pk}/ and {{"enabled": true}} once it '
        "answers 2xx.\n"
    )
    at = endpoint.disabled_at or timezone.now()
    try:
        send_email(
            to=to,
            subject="Your webhook endpoint was disabled",
            body=body,
            message_id=f"<webhook-{endpoint.pk}.{int(at.timestamp())}@orders.invalid>",
        )
    except (PermanentError, TransientError) as exc:
        logger.warning("could not tell the shop that endpoint %s is disabled: %s", endpoint.pk, exc)
        return False
    return True
