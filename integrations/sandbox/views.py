"""Sandbox payment gateway and carrier, served under /sandbox/ in local and test settings.

They behave like real third parties: their own ledger, Idempotency-Key as Stripe honours it
(the same key returns the same answer), scripted test tokens, and SANDBOX_FAILURE_RATE /
SANDBOX_LATENCY_MS to make every call fail transiently or slow down.

Test tokens: tok_ok (captured), tok_declined (permanent decline), tok_flaky (two 503s, then
captured), tok_timeout_after_success (captured, but the answer comes after the client's
timeout). Any other well-formed token is declined as invalid. The carrier rejects the
postal code "00000" for good; for "00001" it creates the shipment, answers after the
client's timeout, and then answers 503 to every further create for that order (its ledger,
GET shipments?order=, answers normally).
"""

import json
import random
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .models import SandboxCallCount, SandboxCharge, SandboxRefund, SandboxShipment

FLAKY_FAILURES = 2  # tok_flaky answers 503 this many times per idempotency key


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _chaos() -> JsonResponse | None:
    """Latency and random transient failures, applied before anything is recorded."""
    if settings.SANDBOX_LATENCY_MS:
        time.sleep(settings.SANDBOX_LATENCY_MS / 1000)
    if settings.SANDBOX_FAILURE_RATE and random.random() < settings.SANDBOX_FAILURE_RATE:
        return _error(503, "unavailable", "sandbox: simulated outage")
    return None


def _body(request: HttpRequest) -> dict | None:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _write_request(request: HttpRequest) -> tuple[str, dict] | JsonResponse:
    """What every POST starts with: the simulated outage, then an Idempotency-Key and a
    JSON object. Returns (key, body) or the error to answer with."""
    if failure := _chaos():
        return failure
    key = request.headers.get("Idempotency-Key")
    if not key:
        return _error(400, "idempotency_key_required", "send an Idempotency-Key header")
    body = _body(request)
    if body is None:
        return _error(400, "invalid_request", "the body must be a JSON object")
    return key, body


def _list_by_order(
    request: HttpRequest, queryset: QuerySet[Any], to_json: Callable[[Any], dict]
) -> JsonResponse:
    if order := request.GET.get("order"):
        queryset = queryset.filter(order=order)
    return JsonResponse({"results": [to_json(obj) for obj in queryset]})


def _charge_json(charge: SandboxCharge) -> dict:
    refund = getattr(charge, "refund", None)
    return {
        "id": charge.id,
        "order": charge.order,
        "status": charge.status,
        "amount": str(charge.amount),
        "currency": charge.currency,
        "token": charge.token,
        "refunded": refund is not None,
        "refund": refund.id if refund else None,
        "created_at": charge.created_at.isoformat(),
    }


def _charge_response(charge: SandboxCharge, *, status: int) -> JsonResponse:
    if charge.status == "declined":
        return _error(402, charge.decline_code, "the card was declined")
    return JsonResponse(_charge_json(charge), status=status)


def _count_call(key: str) -> int:
    with transaction.atomic():
        counter, _ = SandboxCallCount.objects.select_for_update().get_or_create(key=key)
        counter.count = F("count") + 1
        counter.save(update_fields=["count"])
        counter.refresh_from_db()
    return counter.count


@csrf_exempt
@require_http_methods(["GET", "POST"])
def charges(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return _list_by_order(
            request,
            SandboxCharge.objects.select_related("refund").order_by("created_at"),
            _charge_json,
        )
    parsed = _write_request(request)
    if isinstance(parsed, JsonResponse):
        return parsed
    key, body = parsed
    if not {"order", "amount", "currency", "token"} <= body.keys():
        return _error(400, "invalid_request", "order, amount, currency and token are required")
    try:
        amount = Decimal(str(body["amount"]))
    except InvalidOperation:
        return _error(400, "invalid_request", "amount is not a number")

    existing = SandboxCharge.objects.filter(idempotency_key=key).first()
    if existing:
        return _charge_response(existing, status=200)  # replay: same key, same answer

    token = str(body["token"])
    if token == "tok_flaky" and _count_call(f"charge:{key}") <= FLAKY_FAILURES:
        return _error(503, "unavailable", "sandbox: tok_flaky fails twice before it succeeds")
    status, decline_code = "captured", ""
    if token == "tok_declined":
        status, decline_code = "declined", "card_declined"
    elif token not in {"tok_ok", "tok_flaky", "tok_timeout_after_success"}:
        status, decline_code = "declined", "invalid_token"
    try:
        with (
            transaction.atomic()
        ):  # a savepoint: the IntegrityError must not spoil an outer transaction
            charge = SandboxCharge.objects.create(
                order=str(body["order"]),
                idempotency_key=key,
                token=token,
                amount=amount,
                currency=str(body["currency"])[:3],
                status=status,
                decline_code=decline_code,
            )
    except IntegrityError:  # a concurrent request with the same key won the race
        return _charge_response(SandboxCharge.objects.get(idempotency_key=key), status=200)
    if token == "tok_timeout_after_success":
        # The charge is recorded; the client gives up before it hears so.
        time.sleep(settings.PROVIDER_TIMEOUT_SECONDS + 1.0)
    return _charge_response(charge, status=201)


@csrf_exempt
@require_http_methods(["POST"])
def refunds(request: HttpRequest) -> JsonResponse:
    parsed = _write_request(request)
    if isinstance(parsed, JsonResponse):
        return parsed
    key, body = parsed
    if "charge" not in body:
        return _error(400, "invalid_request", "charge is required")
    existing = SandboxRefund.objects.filter(idempotency_key=key).first()
    if existing:
        return JsonResponse(
            {"id": existing.id, "charge": existing.charge_id, "amount": str(existing.amount)}
        )
    charge = SandboxCharge.objects.filter(pk=body["charge"], status="captured").first()
    if charge is None:
        return _error(404, "no_such_charge", "no captured charge with that id")
    try:
        with transaction.atomic():
            refund = SandboxRefund.objects.create(
                charge=charge, idempotency_key=key, amount=charge.amount
            )
    except IntegrityError:
        return _error(409, "charge_already_refunded", "the charge was refunded under another key")
    return JsonResponse(
        {"id": refund.id, "charge": charge.id, "amount": str(refund.amount)}, status=201
    )


ADDRESS_FIELDS = ("name", "line1", "city", "postal_code", "country")
REJECTED_POSTAL_CODE = "00000"
TIMEOUT_POSTAL_CODE = "00001"


def _shipment_json(shipment: SandboxShipment) -> dict:
    return {
        "id": shipment.id,
        "order": shipment.order,
        "carrier": "sandbox-post",
        "tracking_number": shipment.tracking_number,
        "created_at": shipment.created_at.isoformat(),
    }


@csrf_exempt
@require_http_methods(["GET", "POST"])
def shipments(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return _list_by_order(
            request, SandboxShipment.objects.order_by("created_at"), _shipment_json
        )
    parsed = _write_request(request)
    if isinstance(parsed, JsonResponse):
        return parsed
    key, body = parsed
    if "order" not in body or not all(body.get(f) for f in ADDRESS_FIELDS):
        return _error(400, "invalid_request", f"order and {', '.join(ADDRESS_FIELDS)} are required")
    timeout_after_success = body["postal_code"] == TIMEOUT_POSTAL_CODE
    if timeout_after_success and SandboxShipment.objects.filter(order=str(body["order"])).exists():
        return _error(503, "unavailable", "sandbox: the carrier keeps failing for this order")
    existing = SandboxShipment.objects.filter(idempotency_key=key).first()
    if existing:
        return JsonResponse(_shipment_json(existing))
    if body["postal_code"] == REJECTED_POSTAL_CODE:
        return _error(
            422, "address_rejected", f"the carrier does not deliver to {REJECTED_POSTAL_CODE}"
        )
    try:
        with transaction.atomic():
            shipment = SandboxShipment.objects.create(
                order=str(body["order"]),
                idempotency_key=key,
                address={f: body[f] for f in ADDRESS_FIELDS},
            )
    except IntegrityError:
        shipment = SandboxShipment.objects.get(idempotency_key=key)
    if timeout_after_success:
        # The shipment is recorded; the client gives up before it hears so.
        time.sleep(settings.PROVIDER_TIMEOUT_SECONDS + 1.0)
    return JsonResponse(_shipment_json(shipment), status=201)
