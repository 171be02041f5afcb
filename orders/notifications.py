"""The customer's emails: one per order and kind (confirmation, failure, cancellation).

The copy lives in templates (orders/templates/orders/email/<kind>_subject.txt and
<kind>_body.txt); sending goes through integrations/email.py. A Notification row per order
and kind records what was sent, so a step that runs again sends nothing twice.
"""

from __future__ import annotations

from django.template.loader import render_to_string
from django.utils import timezone

from integrations.email import send_email

from .models import Notification, Order, Outcome, Shipment
from .state import event_record


def render(*, order: Order, kind: str) -> tuple[str, str]:
    """The subject and body of the order's email of this kind."""
    shipment = Shipment.objects.filter(order=order).first()
    context = {"order": order, "tracking": shipment.tracking_number if shipment else "-"}
    subject = render_to_string(f"orders/email/{kind}_subject.txt", context).strip()
    body = render_to_string(f"orders/email/{kind}_body.txt", context)
    return subject, body


def message_id(*, order: Order, kind: str) -> str:
    # Derived from the order and the kind: a message sent twice after a crash (between the
    # mail server's acceptance and our record of it) is recognisable as the same one.
    return f"<{order.id}.{kind}@orders.invalid>"


def notification_send(*, order: Order, kind: str, step: str, attempt: int) -> bool:
    """Send the order's email of this kind at most once. Returns False if it had been sent
    before. Raises integrations.errors.TransientError / PermanentError from the mail server."""
    notification, _ = Notification.objects.get_or_create(
        order=order, kind=kind, defaults={"to": order.email}
    )
    if notification.sent_at:
        return False
    if notification.to:
        subject, body = render(order=order, kind=kind)
        send_email(
            to=notification.to,
            subject=subject,
            body=body,
            message_id=message_id(order=order, kind=kind),
        )
        detail, reason_code = f"{kind} email sent to {notification.to}", "email_sent"
    else:
        detail, reason_code = (
            f"{kind} email not sent: the customer has no email address",
            "no_email",
        )
    Notification.objects.filter(pk=notification.pk).update(sent_at=timezone.now())
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
