"""Email through Django's email framework (SMTP where EMAIL_HOST is set)."""

import logging
import smtplib
from collections.abc import Callable

from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from .errors import PermanentError, TransientError

logger = logging.getLogger(__name__)


def send_email(
    *,
    to: str,
    subject: str,
    body: str,
    message_id: str,
    accepted: Callable[[], None] = lambda: None,
) -> None:
    """Send one message. The Message-ID is derived from the order and the kind of email,
    so a message sent twice after a crash is recognisable as the same one.

    `accepted` is called the moment the server has taken the message (its 250 to DATA),
    before the session's QUIT: the caller's receipt then does not wait for a round trip
    that no longer matters (a worker killed during it had sent the message with no
    receipt)."""
    connection = get_connection(fail_silently=False)
    message = EmailMessage(
        subject=subject,
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
        headers={"Message-ID": message_id},
        connection=connection,
    )
    try:
        connection.open()
        message.send()  # the connection is open: send() leaves it so
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
    else:
        accepted()  # before the finally's QUIT
    finally:
        _close(connection)


def _close(connection) -> None:  # type: ignore[no-untyped-def]
    """QUIT, whatever came before: once the message is taken its failure changes nothing."""
    try:
        connection.close()
    except (smtplib.SMTPException, OSError) as exc:
        logger.info("mail server: the session's end failed: %s", exc.__class__.__name__)
