"""Email through Django's email framework (SMTP where EMAIL_HOST is set)."""

import smtplib

from django.conf import settings
from django.core.mail import EmailMessage

from .errors import PermanentError, TransientError


def send_email(*, to: str, subject: str, body: str, message_id: str) -> None:
    """Send one message. The Message-ID is derived from the order and the kind of email,
    so a message sent twice after a crash is recognisable as the same one."""
    message = EmailMessage(
        subject=subject,
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
        headers={"Message-ID": message_id},
    )
    try:
        message.send(fail_silently=False)
    except smtplib.SMTPRecipientsRefused as exc:
        # Its text is a dict keyed by the customer's address, and this message goes to the
        # timeline, the logs and Sentry: the server's codes say what happened.
        codes = ", ".join(str(code) for code, _ in exc.recipients.values())
        raise PermanentError(
            f"mail refused: the server answered {codes} for the recipient", code="mail_refused"
        ) from exc
    except smtplib.SMTPSenderRefused as exc:
        raise PermanentError(
            f"mail refused: the server answered {exc.smtp_code} for the sender",
            code="mail_refused",
        ) from exc
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise TransientError(f"mail server answered {exc.smtp_code}") from exc
        raise PermanentError(f"mail server answered {exc.smtp_code}", code="mail_refused") from exc
    except (TimeoutError, smtplib.SMTPException, OSError) as exc:
        raise TransientError(f"mail server unreachable: {exc.__class__.__name__}: {exc}") from exc
