"""The sandbox carrier, served under /sandbox/ in local and test settings (the sandbox's
Stripe is integrations/sandbox/stripe.py).

It behaves like a real third party: its own ledger, Idempotency-Key honoured (the same key
returns the same answer), and SANDBOX_FAILURE_RATE / SANDBOX_LATENCY_MS to make every call
fail transiently or slow down. It rejects the postal code "00000" for good; for "00001" it
creates the shipment, answers after the client's timeout, and then answers 503 to every
further create for that order (its ledger, GET shipments?order=, answers normally).
"""

import json
import random
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from .models import SandboxShipment


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
