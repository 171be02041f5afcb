"""Personal data kept out of log lines and Sentry events: a customer's name, address, email
and payment method (issue 19, "Never in logs, errors or metrics").

One set of rules, `redact()`, used by the log formatters (config/settings/base.py, LOGGING:
every line of the web server, workers and beat, structlog's and the standard library's alike,
Celery's, Django's and kombu's among them) and by Sentry's hooks below. Two ways to recognise
personal data:

- by key: the value of a personal key (`email`, `name`, `line1`, `payment_token`, ... and
  the `ship_` fields of an order) in a log line's fields, in a nested dict or list, and
  written as `key=value`, `key: value` or `'key': 'value'` in free text (a message, a
  traceback, a dict's repr, a query string);
- by value, wherever it appears: email addresses and Stripe PaymentMethod and card-token
  ids (`pm_...`, `tok_...`). A name or a street in free text under no key cannot be
  recognised: the code must not write one there (the sources found are fixed at the source).

Pure Python, no Django: the settings import it before apps load.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

REDACTED = "[redacted]"

# Keys whose values are personal data wherever they appear. Compared lowercased. Not
# `username` (staff and API clients: the sign-in lock-out names them on purpose; one that is
# an email address is caught by its value).
PERSONAL_KEYS = frozenset(
    {
        # the customer and where the order goes
        "email",
        "to",
        "recipient",
        "recipients",
        "to_addrs",
        "name",
        "full_name",
        "first_name",
        "last_name",
        "phone",
        "address",
        "shipping_address",
        "to_address",
        "line1",
        "line2",
        "street1",
        "street2",
        "city",
        "postal_code",
        "zip",
        "ship_name",
        "ship_line1",
        "ship_city",
        "ship_postal_code",
        # how they pay
        "payment_token",
        "payment_method",
        "payment_method_data",
        # searches (the admin's `?q=`): staff search for customers by name and email
        "q",
        "search",
    }
)

# Longest first, so that `ship_name` is tried before `name` (the alternation takes the first).
_KEY_NAMES = "|".join(sorted(PERSONAL_KEYS, key=len, reverse=True))
# `email=zelda@...`, `name='Zelda Q'`, `'city': 'Springfield'`, `"zip": "99999"`, `?q=Zelda&`.
# The key must start a word (`task_name=` is no `name=`); a colon counts after a quoted key
# only (a dict's repr, JSON), not in prose ("without its confirmation email: the server...").
# A quoted value is taken whole, an unquoted one up to whitespace or a delimiter.
_KEY_VALUE = re.compile(
    rf"""(?<![\w.-])(?P<key>(?:(?:{_KEY_NAMES})\s*=|(?P<q>['"])(?:{_KEY_NAMES})(?P=q)\s*[=:])\s*)"""
    r"""(?P<value>'[^']*'|"[^"]*"|b'[^']*'|[^\s&,;)}\]'"]+)""",
    re.IGNORECASE,
)
# An address with a dotted domain whose last part is letters: not `guest@127.0.0.1` (a
# broker URL), not `w1@vm` (a Celery node name).
_EMAIL = re.compile(
    r"[A-Za-z0-9.!#$%&*+/?^_`{|}~-]+@((?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})(?![A-Za-z0-9-])"
)
# Stripe PaymentMethod ids and card tokens (what a customer pays with; `pi_`, `ch_`, `re_`,
# `evt_` name our own payments and refunds, and stay).
_PAYMENT_METHOD = re.compile(r"\b(?:pm|tok)_[A-Za-z0-9_]+")
# Celery names a worker `name@hostname`, and the test harness and supervisors wait for
# "<node name> ready.": where the host name is dotted the node name looks like an address.
_HOSTNAME = socket.gethostname().lower()

# Values that cannot carry personal data (their repr is their type and content), left as they
# are so that the renderers show them as before.
_PLAIN = (bool, int, float, Decimal, UUID, datetime, date, time, Enum, type(None))


def _email(match: re.Match[str]) -> str:
    return match.group(0) if match.group(1).lower() == _HOSTNAME else REDACTED


def _key_value(match: re.Match[str]) -> str:
    return f"{match.group('key')}{REDACTED}"


def redact_text(text: str) -> str:
    """Free text (a message, a traceback, a URL) with personal data replaced."""
    if not text:
        return text
    text = _KEY_VALUE.sub(_key_value, text)
    text = _EMAIL.sub(_email, text)
    return _PAYMENT_METHOD.sub(REDACTED, text)


def is_personal_key(key: object) -> bool:
    return isinstance(key, str) and key.lower() in PERSONAL_KEYS


def redact(value: Any, key: object = None) -> Any:
    """`value` with personal data replaced: the whole value under a personal key (an empty
    one stays, so that "no email" still shows), nested dicts and lists item by item, text by
    `redact_text`. Anything else is redacted through its repr, and left as it is (the same
    object) when the repr had nothing to redact."""
    if is_personal_key(key) and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [redact(item) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
        cleaned = redact_text(text)
        return value if cleaned == text else cleaned
    text = repr(value)
    cleaned = redact_text(text)
    return value if cleaned == text else cleaned


# --- Log lines ------------------------------------------------------------------------------
def redact_log_event(logger: Any, method_name: str, event_dict: Any) -> Any:
    """A structlog processor: the event dict with personal data replaced. In LOGGING's
    formatters after `format_exc_info`, so that the traceback is redacted too, and for
    structlog's records and the standard library's alike (both go through the formatter)."""
    return {key: redact(value, key) for key, value in event_dict.items()}


# --- Sentry ---------------------------------------------------------------------------------
# Contexts the SDK fills with facts about the process (runtime, os, trace, ...): their keys
# include `name` ("CPython") and carry no customer's data. Any other context is redacted.
_SDK_CONTEXTS = frozenset(
    {"runtime", "os", "device", "app", "browser", "trace", "otel", "cloud_resource", "response"}
)


def _scrub_breadcrumb(crumb: dict[str, Any]) -> dict[str, Any]:
    if isinstance(crumb.get("message"), str):
        crumb["message"] = redact_text(crumb["message"])
    if "data" in crumb:
        crumb["data"] = redact(crumb["data"])
    return crumb


def _scrub_request(request: dict[str, Any]) -> None:
    # The body of POST /api/orders/ is the address and the payment token; cookies are a
    # session. Neither is needed to read an error. (max_request_body_size="never" keeps the
    # SDK from reading bodies at all; this is the net.)
    request.pop("data", None)
    request.pop("cookies", None)
    for part in ("url", "query_string"):
        if isinstance(request.get(part), str):
            request[part] = redact_text(request[part])
    if "headers" in request:
        request["headers"] = redact(request["headers"])


def _scrub_exception(exception: dict[str, Any]) -> None:
    for value in exception.get("values") or []:
        if isinstance(value.get("value"), str):
            value["value"] = redact_text(value["value"])
        for frame in (value.get("stacktrace") or {}).get("frames") or []:
            if "vars" in frame:  # only if local variables are turned back on
                frame["vars"] = redact(frame["vars"])


def scrub_sentry_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> Any:
    """Sentry's before_send and before_send_transaction: no request body or cookies, and
    messages, exception values, extra data, contexts, tags, breadcrumbs and spans redacted."""
    if isinstance(event.get("request"), dict):
        _scrub_request(event["request"])
    if isinstance(event.get("message"), str):
        event["message"] = redact_text(event["message"])
    for part in ("logentry", "extra", "tags", "user"):
        if part in event:
            event[part] = redact(event[part])
    if isinstance(event.get("exception"), dict):
        _scrub_exception(event["exception"])
    if isinstance(event.get("contexts"), dict):
        event["contexts"] = {
            name: context if name in _SDK_CONTEXTS else redact(context)
            for name, context in event["contexts"].items()
        }
    breadcrumbs = event.get("breadcrumbs")
    crumbs = breadcrumbs.get("values") if isinstance(breadcrumbs, dict) else breadcrumbs
    for crumb in crumbs or []:
        if isinstance(crumb, dict):
            _scrub_breadcrumb(crumb)
    for span in event.get("spans") or []:
        if isinstance(span, dict):
            if isinstance(span.get("description"), str):
                span["description"] = redact_text(span["description"])
            if "data" in span:
                span["data"] = redact(span["data"])
    return event


def scrub_sentry_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any] | None = None) -> Any:
    """Sentry's before_breadcrumb: a log line, an HTTP call or a query, redacted as it is
    recorded (an event carries the last hundred)."""
    return _scrub_breadcrumb(crumb)


# What Sentry may collect, for sentry_sdk.init (config/settings/base.py).
SENTRY_PRIVACY_OPTIONS: dict[str, Any] = {
    "send_default_pii": False,  # no user, no client address, no sensitive headers
    # Frame locals hold the order, the address being sent to the carrier, a serializer's
    # input: a name or a street in a local under a neutral name ("value", "data") cannot be
    # recognised by key or pattern, so none are sent.
    "include_local_variables": False,
    "max_request_body_size": "never",
    "before_send": scrub_sentry_event,
    "before_send_transaction": scrub_sentry_event,
    "before_breadcrumb": scrub_sentry_breadcrumb,
}
