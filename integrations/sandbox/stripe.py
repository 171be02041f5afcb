"""The sandbox's Stripe: the subset of Stripe's API that integrations.payments.StripeGateway
uses, in Stripe's wire format, served under /sandbox/stripe/ in local and test settings, so
that the same adapter (on the official SDK) runs here and against Stripe.

What it speaks as Stripe does: form-encoded requests with bracketed keys
(`metadata[order_id]=...`, `payment_method_types[0]=card`), `Authorization: Bearer sk_...`,
`Idempotency-Key` (the first answer replayed for the same parameters, `idempotency_error` for
others), JSON objects with `id` and `object`, list and search results, Stripe's error shape
and codes (402 `card_error`, 400, 404, 429, 500 `api_error`), and events signed as Stripe
signs them (`Stripe-Signature: t=...,v1=...`), sent to STRIPE_SANDBOX_WEBHOOK_URL (default:
this app's own /api/webhooks/stripe/), retried on failure and now and then sent twice.

Payment methods: Stripe's test ones, `pm_card_visa` (succeeds), `pm_card_chargeDeclined`
(card_declined / generic_decline), `pm_card_chargeDeclinedInsufficientFunds`
(insufficient_funds), `pm_card_authenticationRequired` (requires_action: 3-D Secure), and the
sandbox's scripted ones, `tok_ok` (succeeds), `tok_declined` (declined), `tok_flaky` (two 500s
per idempotency key, then succeeds), `tok_timeout_after_success` (succeeds, but answers after
the client's timeout). Anything else is `resource_missing`. SANDBOX_FAILURE_RATE and
SANDBOX_LATENCY_MS apply to every API call.

The customer's side of 3-D Secure (Stripe.js in a browser):
`POST /sandbox/stripe/test/payment_intents/{id}/authenticate` `{"outcome": "succeed"|"fail"}`;
and a dispute opened by the card holder's bank: `POST .../test/payment_intents/{id}/dispute`.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from orders import statements

from .models import (
    SandboxCallCount,
    SandboxIdempotentRequest,
    SandboxPaymentIntent,
    SandboxStripeEvent,
    SandboxStripeRefund,
)
from .sender import Sender

logger = logging.getLogger(__name__)

FLAKY_FAILURES = 2  # tok_flaky answers 500 this many times per idempotency key
IDLE_CLOSE_SECONDS = 2.0  # the delivery thread gives its connection back when idle this long
SUCCEEDS = {"pm_card_visa", "tok_ok", "tok_flaky", "tok_timeout_after_success"}
DECLINES = {
    "pm_card_chargeDeclined": "generic_decline",
    "tok_declined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
}
NEEDS_AUTHENTICATION = {"pm_card_authenticationRequired"}
CANCELABLE = {
    "requires_payment_method",
    "requires_confirmation",
    "requires_action",
    "requires_capture",
    "processing",
}


# --- Stripe's wire format ---------------------------------------------------------------------
def error(status: int, type_: str, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": {"type": type_, "message": message, **extra}}, status=status)


def decode(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding: `metadata[order_id]=1&payment_method_types[0]=card` ->
    {"metadata": {"order_id": "1"}, "payment_method_types": ["card"]}."""
    tree: dict[str, Any] = {}
    for raw_key, value in pairs:
        parts = re.findall(r"[^\[\]]+", raw_key)
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def lists(node: Any) -> Any:
        if isinstance(node, dict):
            if node and all(k.isdigit() for k in node):
                return [lists(node[k]) for k in sorted(node, key=int)]
            return {k: lists(v) for k, v in node.items()}
        return node

    return lists(tree)


def _params(request: HttpRequest) -> dict[str, Any]:
    if request.method == "GET":
        return decode([(k, str(v)) for k, v in request.GET.items()])
    return decode([(k, str(v)) for k, v in request.POST.items()])


def _authorized(request: HttpRequest) -> JsonResponse | None:
    auth = request.headers.get("Authorization", "")
    if not re.fullmatch(r"Bearer (sk|rk)_\w+", auth):
        return error(
            401,
            "invalid_request_error",
            "You did not provide a valid API key. Send it as `Authorization: Bearer sk_...`.",
        )
    return None


def _chaos() -> JsonResponse | None:
    if settings.SANDBOX_LATENCY_MS:
        time.sleep(settings.SANDBOX_LATENCY_MS / 1000)
    if settings.SANDBOX_FAILURE_RATE and random.random() < settings.SANDBOX_FAILURE_RATE:
        # Before anything is recorded: nothing kept under the key, a retry may go through.
        failed = error(500, "api_error", "sandbox: simulated outage")
        failed["Stripe-Should-Retry"] = "true"
        return failed
    return None


def _now() -> int:
    return int(time.time())


def intent_json(pi: SandboxPaymentIntent, request: HttpRequest | None = None) -> dict[str, Any]:
    next_action = None
    if pi.status == "requires_action":
        path = f"/sandbox/stripe/test/payment_intents/{pi.id}/authenticate"
        next_action = {
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {
                "type": "three_d_secure_redirect",
                "stripe_js": request.build_absolute_uri(path) if request else path,
            },
        }
    return {
        "id": pi.id,
        "object": "payment_intent",
        "amount": pi.amount,
        "amount_received": pi.amount if pi.status == "succeeded" else 0,
        "currency": pi.currency,
        "status": pi.status,
        "client_secret": pi.client_secret,
        "capture_method": "automatic",
        "confirmation_method": "automatic",
        "created": pi.created,
        "livemode": False,
        "metadata": pi.metadata,
        "payment_method": pi.payment_method or None,
        "payment_method_types": ["card"],
        "latest_charge": pi.latest_charge or None,
        "last_payment_error": pi.last_payment_error,
        "next_action": next_action,
        "cancellation_reason": pi.cancellation_reason or None,
    }


def refund_json(refund: SandboxStripeRefund) -> dict[str, Any]:
    return {
        "id": refund.id,
        "object": "refund",
        "amount": refund.amount,
        "currency": refund.currency,
        "payment_intent": refund.payment_intent_id,
        "charge": refund.payment_intent.latest_charge,
        "metadata": refund.metadata,
        "reason": refund.reason or None,
        "status": "succeeded",
        "created": refund.created,
    }


def charge_json(pi: SandboxPaymentIntent) -> dict[str, Any]:
    refunded = sum(r.amount for r in pi.refunds.all())
    return {
        "id": pi.latest_charge,
        "object": "charge",
        "amount": pi.amount,
        "amount_captured": pi.amount,
        "amount_refunded": refunded,
        "currency": pi.currency,
        "captured": True,
        "paid": True,
        "refunded": refunded >= pi.amount,
        "status": "succeeded",
        "payment_intent": pi.id,
        "metadata": pi.metadata,
        "created": pi.created,
    }


def _list(data: list[dict], url: str, has_more: bool = False) -> JsonResponse:
    return JsonResponse({"object": "list", "data": data, "has_more": has_more, "url": url})


# --- Idempotency, as Stripe honours it ------------------------------------------------------
def _idempotent(
    request: HttpRequest, params: dict[str, Any], handle: Callable[[], JsonResponse]
) -> JsonResponse:
    """Run `handle` once per Idempotency-Key: the same key and parameters replay the first
    answer (5xx answers are not kept, as at Stripe); other parameters are refused."""
    key = request.headers.get("Idempotency-Key")
    if not key:
        return handle()
    fingerprint = hashlib.sha256(
        json.dumps([request.path, params], sort_keys=True).encode()
    ).hexdigest()
    # One transaction per keyed request: the look-up, the work and the stored answer. Two
    # requests racing with one key: the second's insert of the answer fails on the key's
    # unique constraint, its work is rolled back with it, and it replays the first's answer.
    try:
        with transaction.atomic():
            existing = statements.get_or_none(SandboxIdempotentRequest, key=key)
            if existing is None:
                response = handle()
                if response.status_code < 500:  # a 500 before the endpoint acted: not kept
                    kept = SandboxIdempotentRequest(
                        key=key,
                        fingerprint=fingerprint,
                        status_code=response.status_code,
                        body=json.loads(response.content),
                    )
                    statements.insert(kept)
    except IntegrityError:
        existing = SandboxIdempotentRequest.objects.get(key=key)
    if existing is not None:
        if existing.fingerprint != fingerprint:
            return error(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters "
                f"they were first used with. Try using a key other than '{key}' if you "
                "meant to execute a different request.",
            )
        replay = JsonResponse(existing.body, status=existing.status_code)
        replay["Idempotent-Replayed"] = "true"
        return replay
    # tok_timeout_after_success: the answer is kept (a retry replays it), then given late.
    if delay := getattr(request, "_answer_late_by", 0):
        time.sleep(delay)
    return response


# --- Events -----------------------------------------------------------------------------
def _webhook_url(request: HttpRequest) -> str:
    return settings.STRIPE_SANDBOX_WEBHOOK_URL or request.build_absolute_uri(
        "/api/webhooks/stripe/"
    )


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for a payload, as Stripe computes it."""
    timestamp = _now() if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def emit(request: HttpRequest, type_: str, obj: dict[str, Any]) -> SandboxStripeEvent:
    """Record the event and send it once the current transaction commits."""
    event_id = f"evt_{uuid.uuid4().hex[:24]}"
    body = {
        "id": event_id,
        "object": "event",
        "api_version": request.headers.get("Stripe-Version") or None,
        "created": _now(),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": request.headers.get("Idempotency-Key")},
        "type": type_,
    }
    event = SandboxStripeEvent(id=event_id, type=type_, body=body, url=_webhook_url(request))
    statements.insert(event)
    payload = json.dumps(body).encode()
    transaction.on_commit(lambda: _outbox.put(event_id, event.url, payload))
    return event


class _Outbox:
    """The sandbox's delivery of events: one thread per process, at least once, as Stripe
    delivers them: a failed delivery is tried again after a doubling wait (at most
    STRIPE_SANDBOX_WEBHOOK_ATTEMPTS times), and a delivered one is now and then sent twice.
    One thread and one keep-alive connection (sender.py): a thread and a connection per
    event cost the web server more than the webhook itself (measured with `make bench`)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, str, str, bytes, int]] = []
        self._seq = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def put(self, event_id: str, url: str, payload: bytes, *, attempt: int = 0) -> None:
        with self._wake:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                # A forked process (a gunicorn worker) starts its own thread.
                self._due, self._pid = [], os.getpid()
                self._thread = threading.Thread(target=self._run, daemon=True, name="stripe-out")
                self._thread.start()
            wait = (
                0.0
                if attempt == 0
                else min(0.5 * 2 ** (attempt - 1), settings.STRIPE_SANDBOX_WEBHOOK_MAX_WAIT_SECONDS)
            )
            self._seq += 1
            heapq.heappush(
                self._due, (time.monotonic() + wait, self._seq, event_id, url, payload, attempt)
            )
            self._wake.notify()

    def _run(self) -> None:
        sender = Sender()
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    if not self._due and not self._wake.wait(timeout=IDLE_CLOSE_SECONDS):
                        # Idle: the database connection is not held while nothing is due (a
                        # test may drop the database), but kept between events (a new
                        # connection per event cost more than the event, measured).
                        connection.close()
                        sender.close()
                        self._wake.wait()
                    elif self._due:
                        self._wake.wait(timeout=max(self._due[0][0] - time.monotonic(), 0))
                _, _, event_id, url, payload, attempt = heapq.heappop(self._due)
            try:
                self._deliver(sender, event_id, url, payload, attempt)
            except Exception:  # a sandbox thread: log and go on, never stop delivering
                logger.exception("sandbox stripe: delivering %s failed", event_id)
                connection.close()

    def _deliver(
        self, sender: Sender, event_id: str, url: str, payload: bytes, attempt: int
    ) -> None:
        if attempt:  # the endpoint may have moved since (a test moves it)
            moved = SandboxStripeEvent.objects.filter(pk=event_id).values_list("url", flat=True)
            if not moved:  # gone (a test flushed the tables)
                return
            url = moved[0]
        if _post(sender, url, payload):
            if random.random() < settings.STRIPE_SANDBOX_WEBHOOK_DUPLICATE_RATE:
                _post(sender, url, payload)
            if attempt:  # a first delivery that worked costs no write; a retried one is noted
                SandboxStripeEvent.objects.filter(pk=event_id).update(
                    attempts=attempt + 1, delivered_at=timezone.now()
                )
        elif attempt + 1 < settings.STRIPE_SANDBOX_WEBHOOK_ATTEMPTS:
            SandboxStripeEvent.objects.filter(pk=event_id).update(attempts=attempt + 1)
            self.put(event_id, url, payload, attempt=attempt + 1)
        else:
            SandboxStripeEvent.objects.filter(pk=event_id).update(attempts=attempt + 1)
            logger.warning("sandbox stripe: gave up delivering %s to %s", event_id, url)


_outbox = _Outbox()


def _post(sender: Sender, url: str, payload: bytes) -> bool:
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": sign(payload, settings.STRIPE_WEBHOOK_SECRET),
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    return sender.post(url, payload, headers)


# --- PaymentIntents -------------------------------------------------------------------------
def _api(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
    """Every /v1/ endpoint: the API key, then the simulated latency and outages."""

    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        if refused := _authorized(request):
            return refused
        if failure := _chaos():
            return failure
        return view(request, *args, **kwargs)

    wrapped.__name__ = view.__name__
    return csrf_exempt(wrapped)


@_api
@require_http_methods(["GET", "POST"])
def payment_intents(request: HttpRequest) -> JsonResponse:
    params = _params(request)
    if request.method == "GET":
        return _list_intents(request, params)
    return _idempotent(request, params, lambda: _create_intent(request, params))


def _list_intents(request: HttpRequest, params: dict[str, Any]) -> JsonResponse:
    return _page(
        SandboxPaymentIntent.objects.all(),
        params,
        lambda pi: intent_json(pi, request),
        "/v1/payment_intents",
    )


def _page(
    rows: Any, params: dict[str, Any], to_json: Callable[[Any], dict], url: str
) -> JsonResponse:
    """A Stripe list page: newest first, `limit` (at most 100), `starting_after` an id."""
    limit = min(int(params.get("limit") or 10), 100)
    if after := params.get("starting_after"):
        anchor = rows.model.objects.filter(pk=after).first()
        if anchor is None:
            return _missing(rows.model.__name__, after)
        rows = rows.filter(created_at__lt=anchor.created_at)
    page = list(rows[: limit + 1])
    return _list([to_json(row) for row in page[:limit]], url, len(page) > limit)


def _create_intent(request: HttpRequest, params: dict[str, Any]) -> JsonResponse:
    try:
        amount = int(params["amount"])
        currency = str(params["currency"]).lower()
    except (KeyError, ValueError):
        return error(
            400,
            "invalid_request_error",
            "Missing or invalid amount or currency.",
            code="parameter_missing",
        )
    method = str(params.get("payment_method") or "")
    card = (params.get("payment_method_data") or {}).get("card") or {}
    if not method and card.get("token"):  # a card token, as Stripe turns it into a method
        method = str(card["token"])
    confirm = str(params.get("confirm", "false")).lower() == "true"
    if confirm and not method:
        return error(
            400,
            "invalid_request_error",
            "You must provide a payment_method to confirm.",
            code="parameter_missing",
            param="payment_method",
        )
    known = SUCCEEDS | DECLINES.keys() | NEEDS_AUTHENTICATION
    if method and method not in known:
        return error(
            400,
            "invalid_request_error",
            f"No such PaymentMethod: '{method}'",
            code="resource_missing",
            param="payment_method",
        )
    key = request.headers.get("Idempotency-Key", "")
    if confirm and method == "tok_flaky" and key:
        if _count_call(f"stripe-charge:{key}") <= FLAKY_FAILURES:
            # A 500 before the endpoint acted: Stripe keeps no result for the key and says a
            # retry may go through (after it acted, it would replay the 500 instead).
            failed = error(500, "api_error", "sandbox: tok_flaky fails twice before it succeeds")
            failed["Stripe-Should-Retry"] = "true"
            return failed
    with transaction.atomic(savepoint=False):
        pi = SandboxPaymentIntent(
            amount=amount,
            currency=currency,
            payment_method=method,
            metadata=params.get("metadata") or {},
            status="requires_confirmation" if method else "requires_payment_method",
            created=_now(),
        )
        if not confirm:
            _write(pi)
            emit(request, "payment_intent.created", intent_json(pi, request))
            return JsonResponse(intent_json(pi, request))
        if method in DECLINES:
            pi.status = "requires_payment_method"
            pi.last_payment_error = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": DECLINES[method],
                "message": "Your card was declined.",
            }
            _write(pi)
            body = intent_json(pi, request)
            emit(request, "payment_intent.payment_failed", body)
            error_body = {**pi.last_payment_error, "payment_intent": body}
            return JsonResponse({"error": error_body}, status=402)
        if method in NEEDS_AUTHENTICATION:
            pi.status = "requires_action"
            _write(pi)
            emit(request, "payment_intent.requires_action", intent_json(pi, request))
            return JsonResponse(intent_json(pi, request))
        _succeed(request, pi)
    if method == "tok_timeout_after_success":
        request._answer_late_by = settings.PROVIDER_TIMEOUT_SECONDS + 1.0  # type: ignore[attr-defined]
    return JsonResponse(intent_json(pi, request))


def _succeed(request: HttpRequest, pi: SandboxPaymentIntent) -> None:
    pi.status = "succeeded"
    pi.latest_charge = f"ch_{uuid.uuid4().hex[:24]}"
    pi.last_payment_error = None
    _write(pi)
    emit(request, "payment_intent.succeeded", intent_json(pi, request))


def _write(pi: SandboxPaymentIntent) -> None:
    """A new PaymentIntent in one INSERT of SQL built once (orders/statements.py): the
    sandbox stands for Stripe's servers, and what the ORM spends compiling its statements
    is spent on the machine that runs the pipeline (bench/README.md). A known one: save()."""
    if pi._state.adding:
        pi.id = pi.new_id()
        statements.insert(pi)
    else:
        pi.save()


def _count_call(key: str) -> int:
    with transaction.atomic():
        counter, _ = SandboxCallCount.objects.select_for_update().get_or_create(key=key)
        counter.count = F("count") + 1
        counter.save(update_fields=["count"])
        counter.refresh_from_db()
    return counter.count


_SEARCH = re.compile(r"^metadata\['(?P<key>[\w-]+)'\]:'(?P<value>[^']*)'$")


@_api
@require_http_methods(["GET"])
def payment_intents_search(request: HttpRequest) -> JsonResponse:
    """Only `metadata['key']:'value'`. Eventually consistent, as Stripe's: an intent shows up
    STRIPE_SANDBOX_SEARCH_LAG_SECONDS after it was created."""
    params = _params(request)
    match = _SEARCH.match(str(params.get("query", "")).strip())
    if not match:
        return error(
            400,
            "invalid_request_error",
            "The sandbox searches only metadata['key']:'value'.",
            param="query",
        )
    visible_before = timezone.now() - timedelta(seconds=settings.STRIPE_SANDBOX_SEARCH_LAG_SECONDS)
    found = SandboxPaymentIntent.objects.filter(
        **{f"metadata__{match['key']}": match["value"]}, created_at__lte=visible_before
    )
    limit = min(int(params.get("limit") or 10), 100)
    return JsonResponse(
        {
            "object": "search_result",
            "data": [intent_json(pi, request) for pi in found[:limit]],
            "has_more": False,
            "next_page": None,
            "url": "/v1/payment_intents/search",
        }
    )


@_api
@require_http_methods(["GET"])
def payment_intent(request: HttpRequest, intent_id: str) -> JsonResponse:
    pi = SandboxPaymentIntent.objects.filter(pk=intent_id).first()
    if pi is None:
        return _missing("payment_intent", intent_id)
    return JsonResponse(intent_json(pi, request))


def _missing(kind: str, object_id: str) -> JsonResponse:
    return error(
        404, "invalid_request_error", f"No such {kind}: '{object_id}'", code="resource_missing"
    )


@_api
@require_http_methods(["POST"])
def payment_intent_cancel(request: HttpRequest, intent_id: str) -> JsonResponse:
    params = _params(request)

    def cancel() -> JsonResponse:
        with transaction.atomic(savepoint=False):
            pi = SandboxPaymentIntent.objects.select_for_update().filter(pk=intent_id).first()
            if pi is None:
                return _missing("payment_intent", intent_id)
            if pi.status not in CANCELABLE:
                return error(
                    400,
                    "invalid_request_error",
                    f"You cannot cancel this PaymentIntent because it has a status of {pi.status}.",
                    code="payment_intent_unexpected_state",
                    payment_intent=intent_json(pi, request),
                )
            pi.status = "canceled"
            pi.cancellation_reason = str(params.get("cancellation_reason") or "requested")
            pi.save()
            emit(request, "payment_intent.canceled", intent_json(pi, request))
            return JsonResponse(intent_json(pi, request))

    return _idempotent(request, params, cancel)


# --- Refunds --------------------------------------------------------------------------------
@_api
@require_http_methods(["GET", "POST"])
def refunds(request: HttpRequest) -> JsonResponse:
    params = _params(request)
    if request.method == "GET":
        listed = SandboxStripeRefund.objects.select_related("payment_intent")
        if intent_id := params.get("payment_intent"):
            listed = listed.filter(payment_intent_id=intent_id)
        return _page(listed, params, refund_json, "/v1/refunds")
    return _idempotent(request, params, lambda: _create_refund(request, params))


def _create_refund(request: HttpRequest, params: dict[str, Any]) -> JsonResponse:
    intent_id = str(params.get("payment_intent") or "")
    with transaction.atomic(savepoint=False):
        pi = SandboxPaymentIntent.objects.select_for_update().filter(pk=intent_id).first()
        if pi is None:
            return _missing("payment_intent", intent_id)
        if pi.status != "succeeded":
            return error(
                400,
                "invalid_request_error",
                f"This PaymentIntent ({pi.id}) does not have a successful charge to refund.",
                code="charge_not_refundable" if pi.status != "canceled" else "resource_missing",
            )
        remaining = pi.amount - sum(r.amount for r in pi.refunds.all())
        if remaining <= 0:
            return error(
                400,
                "invalid_request_error",
                f"Charge {pi.latest_charge} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = int(params.get("amount") or remaining)
        if not 0 < amount <= remaining:
            return error(
                400,
                "invalid_request_error",
                "Refund amount is greater than unrefunded amount.",
                code="amount_too_large",
                param="amount",
            )
        refund = SandboxStripeRefund.objects.create(
            payment_intent=pi,
            amount=amount,
            currency=pi.currency,
            metadata=params.get("metadata") or {},
            reason=str(params.get("reason") or ""),
            created=_now(),
        )
        emit(request, "charge.refunded", charge_json(pi))
    return JsonResponse(refund_json(refund))


# --- Events, read back ---------------------------------------------------------------------
@_api
@require_http_methods(["GET"])
def events(request: HttpRequest) -> JsonResponse:
    params = _params(request)
    listed = SandboxStripeEvent.objects.all()
    if type_ := params.get("type"):
        listed = listed.filter(type=type_)
    return _page(listed, params, lambda e: e.body, "/v1/events")


@_api
@require_http_methods(["GET"])
def event(request: HttpRequest, event_id: str) -> JsonResponse:
    found = SandboxStripeEvent.objects.filter(pk=event_id).first()
    return JsonResponse(found.body) if found else _missing("event", event_id)


# --- The customer's side and the bank's ------------------------------------------------------
@csrf_exempt
@require_http_methods(["POST"])
def authenticate(request: HttpRequest, intent_id: str) -> JsonResponse:
    """What Stripe.js does when the customer passes or fails 3-D Secure in the browser."""
    try:
        outcome = json.loads(request.body or b"{}").get("outcome")
    except (ValueError, AttributeError):
        outcome = None
    if outcome not in ("succeed", "fail"):
        return error(400, "invalid_request_error", 'Send {"outcome": "succeed"} or "fail".')
    with transaction.atomic():
        pi = SandboxPaymentIntent.objects.select_for_update().filter(pk=intent_id).first()
        if pi is None:
            return _missing("payment_intent", intent_id)
        if pi.status != "requires_action":
            return error(
                400,
                "invalid_request_error",
                f"This PaymentIntent is {pi.status}, not awaiting authentication.",
                code="payment_intent_unexpected_state",
            )
        if outcome == "succeed":
            _succeed(request, pi)
        else:
            pi.status = "requires_payment_method"
            pi.last_payment_error = {
                "type": "card_error",
                "code": "payment_intent_authentication_failure",
                "message": "The provided PaymentMethod has failed authentication.",
            }
            pi.save()
            emit(request, "payment_intent.payment_failed", intent_json(pi, request))
    return JsonResponse(intent_json(pi, request))


@csrf_exempt
@require_http_methods(["POST"])
def dispute(request: HttpRequest, intent_id: str) -> JsonResponse:
    """The card holder's bank disputes a charge."""
    with transaction.atomic():
        pi = SandboxPaymentIntent.objects.filter(pk=intent_id, status="succeeded").first()
        if pi is None:
            return _missing("succeeded payment_intent", intent_id)
        body = {
            "id": f"dp_{uuid.uuid4().hex[:24]}",
            "object": "dispute",
            "amount": pi.amount,
            "currency": pi.currency,
            "charge": pi.latest_charge,
            "payment_intent": pi.id,
            "reason": "fraudulent",
            "status": "needs_response",
            "created": _now(),
        }
        emit(request, "charge.dispute.created", body)
    return JsonResponse(body)
