"""The sandbox's EasyPost: the subset of EasyPost's API v2 that the shipping adapter uses, in
EasyPost's wire format, served under /sandbox/easypost/v2/ in local and test settings, so that
the official SDK (`easypost.EasyPostClient(key, api_base=".../sandbox/easypost/v2")`) runs
against it unchanged.

What it speaks as EasyPost does: `Authorization: Bearer <key>` (401 without one), JSON bodies
wrapped in the object's name (`{"shipment": {...}}`), list parameters in the query string,
objects with `id` ("shp_", "rate_", "trk_", ...) and `object` ("Shipment", ...), errors as
`{"error": {"code", "message", "errors"}}` with the status codes the SDK maps to its error
classes (401, 404, 422, 503), and `tracker.updated` events signed as EasyPost signs them
(`X-Hmac-Signature: hmac-sha256-hex=...`), sent at least once to EASYPOST_SANDBOX_WEBHOOK_URL
(default: this app's own /api/webhooks/easypost/, as seen by the request that bought the label).
EasyPost takes no Idempotency-Key: a client that lost a create's answer finds the shipment in
the list by its `reference`.

Scripted postal codes (`to_address.zip`): `00000` is refused for good (ADDRESS.VERIFY.FAILURE);
`00001` records the shipment, answers after the client's timeout, and answers 503 to every
further create with the same reference (the list and retrieve answer normally); `00002` is
returned to the sender instead of delivered. Once bought, a tracker moves on by itself, one
status every EASYPOST_SANDBOX_TRACKING_STEP_SECONDS. SANDBOX_FAILURE_RATE and
SANDBOX_LATENCY_MS apply to every API call.
"""

from __future__ import annotations

import base64
import functools
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
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from orders import statements

from .models import SandboxEasyPostEvent, SandboxEasyPostShipment, SandboxEasyPostTracker, hex_id
from .sender import Sender

logger = logging.getLogger(__name__)

REFUSED_ZIP = "00000"
TIMEOUT_ZIP = "00001"
RETURNED_ZIP = "00002"
DELIVERED_ROUTE = ["pre_transit", "in_transit", "out_for_delivery", "delivered"]
RETURNED_ROUTE = ["pre_transit", "in_transit", "return_to_sender"]
# status -> (status_detail, the carrier's message), as EasyPost's test trackers report them
STATUSES = {
    "pre_transit": ("label_created", "Pre-Shipment Info Sent to USPS"),
    "in_transit": ("arrived_at_facility", "Arrived at Facility"),
    "out_for_delivery": ("out_for_delivery", "Out for Delivery"),
    "delivered": ("arrived_at_destination", "Delivered"),
    "return_to_sender": ("return", "Returned to Sender"),
}
# carrier, service, price at 0 oz, price per ounce, days in transit
SERVICES = [
    ("USPS", "Priority", 7.58, 0.10, 2),
    ("USPS", "Express", 26.35, 0.25, 1),
    ("UPS", "Ground", 9.24, 0.08, 5),
]
ADDRESS_FIELDS = (
    *("name", "company", "street1", "street2", "city", "state", "zip", "country"),
    *("phone", "email"),
)
MONTH = timedelta(days=31)  # EasyPost's default window for lists
IDLE_CLOSE_SECONDS = 2.0  # the courier thread gives its connection back when idle this long
WEBHOOK_PATH = "/api/webhooks/easypost/"
# A 1x1 PNG: the label the sandbox "prints".
LABEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
M = TypeVar("M", bound=models.Model)


# --- EasyPost's wire format -----------------------------------------------------------------
def error(
    status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None
) -> JsonResponse:
    body = {"error": {"code": code, "message": message, "errors": errors or []}}
    return JsonResponse(body, status=status)


def _not_found() -> JsonResponse:
    return error(404, "NOT_FOUND", "The requested resource could not be found.")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def address_json(given: dict[str, Any], now: str) -> dict[str, Any]:
    fields = {f: given.get(f) for f in ADDRESS_FIELDS}
    fields["country"] = fields["country"] or "US"  # EasyPost's default
    return {
        "id": hex_id("adr"),
        "object": "Address",
        "mode": "test",
        **fields,
        "residential": None,
        "verifications": {},
        "created_at": now,
        "updated_at": now,
    }


def parcel_json(weight: float, now: str) -> dict[str, Any]:
    return {
        "id": hex_id("prcl"),
        "object": "Parcel",
        "mode": "test",
        "length": None,
        "width": None,
        "height": None,
        "predefined_package": None,
        "weight": weight,
        "created_at": now,
        "updated_at": now,
    }


def rates_json(shipment_id: str, weight: float, now: str) -> list[dict[str, Any]]:
    """The carriers' offers: priced by the parcel's weight in ounces, as strings, as EasyPost's."""
    return [
        {
            "id": hex_id("rate"),
            "object": "Rate",
            "mode": "test",
            "carrier": carrier,
            "carrier_account_id": f"ca_{hashlib.sha256(carrier.encode()).hexdigest()[:32]}",
            "service": service,
            "rate": f"{base + per_ounce * weight:.2f}",
            "currency": "USD",
            "retail_rate": f"{(base + per_ounce * weight) * 1.2:.2f}",
            "retail_currency": "USD",
            "list_rate": f"{(base + per_ounce * weight) * 1.1:.2f}",
            "list_currency": "USD",
            "delivery_days": days,
            "est_delivery_days": days,
            "delivery_date": None,
            "delivery_date_guaranteed": False,
            "shipment_id": shipment_id,
            "created_at": now,
            "updated_at": now,
        }
        for carrier, service, base, per_ounce, days in SERVICES
    ]


def label_json(label_url: str, now: str) -> dict[str, Any]:
    return {
        "id": hex_id("pl"),
        "object": "PostageLabel",
        "label_url": label_url,
        "label_file_type": "image/png",
        "label_size": "4x6",
        "label_resolution": 300,
        "label_date": now,
        "label_pdf_url": None,
        "label_zpl_url": None,
        "label_epl2_url": None,
        "created_at": now,
        "updated_at": now,
    }


def tracking_detail(status: str, carrier: str) -> dict[str, Any]:
    status_detail, message = STATUSES[status]
    return {
        "object": "TrackingDetail",
        "message": message,
        "description": message,
        "status": status,
        "status_detail": status_detail,
        "datetime": _iso(timezone.now()),
        "source": carrier,
        "carrier_code": "",
        "tracking_location": {
            "object": "TrackingLocation",
            "city": None,
            "state": None,
            "country": None,
            "zip": None,
        },
    }


def tracker_json(tracker: SandboxEasyPostTracker) -> dict[str, Any]:
    return {
        "id": tracker.id,
        "object": "Tracker",
        "mode": "test",
        "tracking_code": tracker.tracking_code,
        "status": tracker.status,
        "status_detail": STATUSES[tracker.status][0],
        "signed_by": None,
        "weight": None,
        "est_delivery_date": None,
        "shipment_id": tracker.shipment_id,
        "carrier": tracker.carrier,
        "tracking_details": tracker.tracking_details,
        "carrier_detail": None,
        "public_url": tracker.public_url,
        "fees": [],
        "created_at": _iso(tracker.created_at),
        "updated_at": _iso(tracker.updated_at),
    }


def _tracker_of(shipment: SandboxEasyPostShipment) -> SandboxEasyPostTracker | None:
    if not shipment.tracking_code:  # the tracker comes with the label: none to look for
        return None
    try:
        return shipment.tracker
    except SandboxEasyPostTracker.DoesNotExist:
        return None


def shipment_json(shipment: SandboxEasyPostShipment) -> dict[str, Any]:
    tracker = _tracker_of(shipment)
    return {
        "id": shipment.id,
        "object": "Shipment",
        "mode": "test",
        "reference": shipment.reference or None,
        "status": tracker.status if tracker else "unknown",
        "to_address": shipment.to_address,
        "from_address": shipment.from_address,
        "return_address": shipment.from_address,
        "buyer_address": shipment.to_address,
        "parcel": shipment.parcel,
        "rates": shipment.rates,
        "selected_rate": shipment.selected_rate,
        "postage_label": shipment.postage_label,
        "tracking_code": shipment.tracking_code or None,
        "tracker": tracker_json(tracker) if tracker else None,
        "messages": [],
        "options": {},
        "is_return": False,
        "customs_info": None,
        "insurance": None,
        "refund_status": None,
        "fees": [],
        "forms": [],
        "created_at": _iso(shipment.created_at),
        "updated_at": _iso(shipment.updated_at),
    }


def sign(payload: bytes, secret: str) -> str:
    """The X-Hmac-Signature header for a payload, as EasyPost computes it (and as
    easypost.util.validate_webhook checks it)."""
    key = unicodedata.normalize("NFKD", secret).encode("utf8")
    return "hmac-sha256-hex=" + hmac.new(key, payload, hashlib.sha256).hexdigest()


# --- What every API call goes through -------------------------------------------------------
def _authorized(request: HttpRequest) -> JsonResponse | None:
    if not re.fullmatch(r"Bearer \S+", request.headers.get("Authorization", "")):
        return error(
            401,
            "APIKEY.REQUIRED",
            "We couldn't authenticate you. Please check your API key and try again.",
        )
    return None


def _chaos() -> JsonResponse | None:
    if settings.SANDBOX_LATENCY_MS:
        time.sleep(settings.SANDBOX_LATENCY_MS / 1000)
    if settings.SANDBOX_FAILURE_RATE and random.random() < settings.SANDBOX_FAILURE_RATE:
        # Before anything is recorded: a retry may go through.
        return error(503, "SERVICE.UNAVAILABLE", "sandbox: simulated outage")
    return None


def _api(*methods: str) -> Callable[[Callable[..., JsonResponse]], Callable[..., JsonResponse]]:
    """Every /v2/ endpoint: its methods, the API key, then the simulated latency and outages.
    A refused method answers in EasyPost's error shape, which the SDK parses."""

    def decorate(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                return error(405, "METHOD.NOT_ALLOWED", f"{request.method} is not allowed here.")
            if refused := _authorized(request):
                return refused
            if failure := _chaos():
                return failure
            return view(request, *args, **kwargs)

        return csrf_exempt(wrapped)

    return decorate


def _body(request: HttpRequest) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _one(rows: QuerySet[M], pk: str) -> M | None:
    """The row with this primary key: an index look-up, no ordering."""
    return next(iter(rows.filter(pk=pk).order_by()[:1]), None)


# --- Shipments ------------------------------------------------------------------------------
@_api("GET", "POST")
def shipments(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        return _list_shipments(request)
    return _create_shipment(request)


def _shipment_params(body: dict[str, Any] | None) -> dict[str, Any] | JsonResponse:
    """The `shipment` of the body, or what EasyPost answers before it rates: missing
    addresses, a parcel without a weight."""
    if body is None:
        return error(400, "PARAMETER.INVALID", "The body must be a JSON object.")
    given = body.get("shipment")
    if not isinstance(given, dict):
        return error(422, "PARAMETER.REQUIRED", "Missing required parameter.", [_blank("shipment")])
    nested = ("to_address", "from_address", "parcel")
    missing = [f for f in nested if not (isinstance(given.get(f), dict) and given[f])]
    if missing:
        errors = [_blank(f) for f in missing]
        return error(422, "PARAMETER.REQUIRED", "Missing required parameter.", errors)
    try:
        weight = float(given["parcel"].get("weight"))
    except (TypeError, ValueError):
        weight = 0.0
    if not weight > 0:
        errors = [{"field": "weight", "message": "must be greater than 0", "suggestion": None}]
        return error(422, "PARAMETER.INVALID", "Invalid parcel weight.", errors)
    return given


def _blank(field: str) -> dict[str, Any]:
    return {"field": field, "message": "cannot be blank", "suggestion": None}


def _create_shipment(request: HttpRequest) -> JsonResponse:
    given = _shipment_params(_body(request))
    if isinstance(given, JsonResponse):
        return given
    zip_code = str(given["to_address"].get("zip") or "").strip()
    reference = str(given.get("reference") or "")
    if zip_code == TIMEOUT_ZIP and reference:
        if SandboxEasyPostShipment.objects.filter(reference=reference).exists():
            return error(503, "SERVICE.UNAVAILABLE", "sandbox: the carrier keeps failing here")
    if zip_code == REFUSED_ZIP:
        message = f"Address not found: the carrier does not deliver to {REFUSED_ZIP}."
        errors = [{"field": "address", "message": "Address not found", "suggestion": None}]
        return error(422, "ADDRESS.VERIFY.FAILURE", message, errors)
    shipment = _new_shipment(given, reference)  # one INSERT: committed as it runs
    if zip_code == TIMEOUT_ZIP:
        # Recorded (committed: the list shows it); the client gives up before it hears so.
        time.sleep(settings.PROVIDER_TIMEOUT_SECONDS + 1.0)
    return JsonResponse(shipment_json(shipment), status=201)


def _new_shipment(given: dict[str, Any], reference: str) -> SandboxEasyPostShipment:
    now = _iso(timezone.now())
    weight = float(given["parcel"]["weight"])
    shipment = SandboxEasyPostShipment(id=hex_id("shp"), reference=reference)
    shipment.to_address = address_json(given["to_address"], now)
    shipment.from_address = address_json(given["from_address"], now)
    shipment.parcel = parcel_json(weight, now)
    shipment.rates = rates_json(shipment.id, weight, now)
    # SQL built once (orders/statements.py), as for the writes below: the sandbox stands for
    # EasyPost's servers, and what the ORM spends compiling statements is spent on the
    # machine that runs the pipeline (bench/README.md).
    statements.insert(shipment)
    return shipment


def _list_shipments(request: HttpRequest) -> JsonResponse:
    """Newest first; `page_size` (20, at most 100), `before_id` (the shipments created before
    that one), `purchased`, and the window `start_datetime` (inclusive) to `end_datetime`
    (exclusive), which, as EasyPost's, is a month when only one end of it is given."""
    params = request.GET
    try:
        size = min(int(params.get("page_size") or 20), 100)
        start, end = _window(params.get("start_datetime"), params.get("end_datetime"))
        purchased = _flag(params.get("purchased"))
        if size < 1:
            raise ValueError("page_size must be at least 1")
    except ValueError as invalid:
        return error(422, "PARAMETER.INVALID", str(invalid))
    rows = SandboxEasyPostShipment.objects.select_related("tracker").filter(created_at__gte=start)
    if end is not None:
        rows = rows.filter(created_at__lt=end)
    if purchased is not None:
        rows = rows.exclude(tracking_code="") if purchased else rows.filter(tracking_code="")
    if before := params.get("before_id"):
        anchor = _one(SandboxEasyPostShipment.objects.all(), before)
        if anchor is None:
            return _not_found()
        older = Q(created_at__lt=anchor.created_at)
        rows = rows.filter(older | Q(created_at=anchor.created_at, id__lt=anchor.id))
    page = list(rows[: size + 1])
    return JsonResponse(
        {"shipments": [shipment_json(s) for s in page[:size]], "has_more": len(page) > size}
    )


def _window(start: str | None, end: str | None) -> tuple[datetime, datetime | None]:
    begins, ends = _moment(start), _moment(end)
    if begins is None:
        begins = (ends or timezone.now()) - MONTH
    elif ends is None:
        ends = begins + MONTH
    return begins, ends


def _moment(value: str | None) -> datetime | None:
    """ISO 8601 (what the SDK sends for a datetime through requests: str()), or seconds
    since the epoch (what it sends through urlfetch)."""
    if not value:
        return None
    if value.isdigit():
        return datetime.fromtimestamp(int(value), UTC)
    # A "+00:00" written into a URL by hand arrives as " 00:00".
    value = re.sub(r" (\d\d:?\d\d)$", r"+\1", value.strip())
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"Invalid datetime: {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _flag(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ValueError(f"Invalid purchased: {value!r}")


@_api("GET")
def shipment(request: HttpRequest, shipment_id: str) -> JsonResponse:
    found = _one(SandboxEasyPostShipment.objects.select_related("tracker"), shipment_id)
    return JsonResponse(shipment_json(found)) if found else _not_found()


@_api("POST")
def shipment_buy(request: HttpRequest, shipment_id: str) -> JsonResponse:
    rate = (_body(request) or {}).get("rate")
    rate_id = rate.get("id") if isinstance(rate, dict) else None
    if not rate_id:
        return error(422, "PARAMETER.REQUIRED", "Missing required parameter.", [_blank("rate")])
    with transaction.atomic():
        # Locked: two buys at once, one label; the second sees the first's.
        bought = statements.get_or_none(SandboxEasyPostShipment, lock=True, pk=shipment_id)
        if bought is None:
            return _not_found()
        if bought.postage_label:
            return error(
                422, "SHIPMENT.POSTAGE.EXISTS", "Postage already exists for this shipment."
            )
        chosen = next((r for r in bought.rates if r["id"] == rate_id), None)
        if chosen is None:
            errors = [{"field": "rate", "message": f"{rate_id} is not a rate of {shipment_id}"}]
            return error(422, "SHIPMENT.RATE.NOT_FOUND", "Rate not found.", errors)
        _purchase(request, bought, chosen)
    return JsonResponse(shipment_json(bought))


def _purchase(request: HttpRequest, bought: SandboxEasyPostShipment, rate: dict) -> None:
    """The label, the tracking code and the tracker; the tracker's first step is scheduled
    once this commits. Test tracking codes say their end, as EasyPost's do: EZ4... is
    delivered, EZ5... returned to the sender."""
    returned = bought.to_address.get("zip") == RETURNED_ZIP
    route = RETURNED_ROUTE if returned else DELIVERED_ROUTE
    code = ("EZ5" if returned else "EZ4") + f"{random.randrange(10**9):09d}"
    now = _iso(timezone.now())
    bought.selected_rate = rate
    bought.tracking_code = code
    label_url = request.build_absolute_uri(f"/sandbox/easypost/labels/{bought.id}.png")
    bought.postage_label = label_json(label_url, now)
    # The columns the label changes: the addresses, parcel and rates are not encoded again.
    statements.update(bought, ["selected_rate", "tracking_code", "postage_label", "updated_at"])
    tracker = SandboxEasyPostTracker(id=hex_id("trk"), shipment=bought, tracking_code=code)
    tracker.carrier = rate["carrier"]
    tracker.status, tracker.route = route[0], route[1:]
    tracker.tracking_details = [tracking_detail(route[0], tracker.carrier)]
    tracker.webhook_url = request.build_absolute_uri(WEBHOOK_PATH)
    tracker.public_url = request.build_absolute_uri(f"/sandbox/easypost/track/{tracker.id}")
    statements.insert(tracker)
    tracker_id = tracker.id
    transaction.on_commit(
        lambda: _courier.at(_step_seconds(), functools.partial(_step, tracker_id))
    )


# --- Trackers -------------------------------------------------------------------------------
@_api("GET")
def tracker(request: HttpRequest, tracker_id: str) -> JsonResponse:
    found = _one(SandboxEasyPostTracker.objects.all(), tracker_id)
    return JsonResponse(tracker_json(found)) if found else _not_found()


def _step_seconds() -> float:
    return float(getattr(settings, "EASYPOST_SANDBOX_TRACKING_STEP_SECONDS", 5.0))


def _step(tracker_id: str, _sender: Sender) -> None:
    """The tracker's next status, and its event. A tracker that is gone (a test flushed the
    tables) or at its end stops quietly."""
    with transaction.atomic():
        moving = _one(SandboxEasyPostTracker.objects.select_for_update(), tracker_id)
        if moving is None or not moving.route:
            return
        previous = moving.status
        moving.status, moving.route = moving.route[0], moving.route[1:]
        detail = tracking_detail(moving.status, moving.carrier)
        moving.tracking_details = [*moving.tracking_details, detail]
        moving.save(update_fields=["status", "route", "tracking_details", "updated_at"])
        _emit(moving, previous)
    if moving.route:
        _courier.at(_step_seconds(), functools.partial(_step, tracker_id))


def _emit(changed: SandboxEasyPostTracker, previous: str) -> None:
    """Record the tracker.updated event and send it once the current transaction commits."""
    now = _iso(timezone.now())
    url = getattr(settings, "EASYPOST_SANDBOX_WEBHOOK_URL", "") or changed.webhook_url
    event_id = hex_id("evt")
    body = {
        "id": event_id,
        "object": "Event",
        "mode": "test",
        "description": "tracker.updated",
        "previous_attributes": {"status": previous},
        "result": tracker_json(changed),
        "status": "pending",
        "pending_urls": [url],
        "completed_urls": [],
        "created_at": now,
        "updated_at": now,
    }
    SandboxEasyPostEvent.objects.create(
        id=event_id, tracker=changed, description="tracker.updated", body=body, url=url
    )
    deliver = functools.partial(_deliver, event_id, url, json.dumps(body).encode(), 0)
    transaction.on_commit(lambda: _courier.at(0.0, deliver))


# --- The courier: tracker steps and webhook deliveries ---------------------------------------
Task = Callable[[Sender], None]


class _Courier:
    """What the sandbox's EasyPost does on its own time, in one thread per process: trackers'
    steps and the delivery of their events, at least once (a failed delivery is tried again
    after a doubling wait). One thread and one keep-alive connection, as the Stripe sandbox's
    outbox: a thread and a connection per event cost the web server more than the event."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Task]] = []
        self._seq = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def at(self, delay: float, task: Task) -> None:
        with self._wake:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                # A forked process (a gunicorn worker) starts its own thread.
                self._due, self._pid = [], os.getpid()
                self._thread = threading.Thread(target=self._run, daemon=True, name="easypost")
                self._thread.start()
            self._seq += 1
            heapq.heappush(self._due, (time.monotonic() + delay, self._seq, task))
            self._wake.notify()

    def _run(self) -> None:
        sender = Sender()
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    if not self._due and not self._wake.wait(timeout=IDLE_CLOSE_SECONDS):
                        # Idle: no connection held while nothing is due (a test may drop the
                        # database), but kept between tasks.
                        connection.close()
                        sender.close()
                        self._wake.wait()
                    elif self._due:
                        self._wake.wait(timeout=max(self._due[0][0] - time.monotonic(), 0))
                _, _, task = heapq.heappop(self._due)
            try:
                task(sender)
            except Exception:  # a sandbox thread: log and go on, never stop
                logger.exception("sandbox easypost: %s failed", task)
                connection.close()


_courier = _Courier()


def _deliver(event_id: str, url: str, payload: bytes, attempt: int, sender: Sender) -> None:
    if attempt:  # the endpoint may have moved since (a test moves it)
        moved = SandboxEasyPostEvent.objects.filter(pk=event_id).values_list("url", flat=True)
        if not moved:  # gone (a test flushed the tables)
            return
        url = moved[0]
    if _post(sender, url, payload):
        if random.random() < getattr(settings, "EASYPOST_SANDBOX_WEBHOOK_DUPLICATE_RATE", 0.0):
            _post(sender, url, payload)  # at least once: now and then twice
        if attempt:  # a first delivery that worked costs no write; a retried one is noted
            SandboxEasyPostEvent.objects.filter(pk=event_id).update(
                attempts=attempt + 1, delivered_at=timezone.now()
            )
        return
    SandboxEasyPostEvent.objects.filter(pk=event_id).update(attempts=attempt + 1)
    if attempt + 1 >= getattr(settings, "EASYPOST_SANDBOX_WEBHOOK_ATTEMPTS", 8):
        logger.warning("sandbox easypost: gave up delivering %s to %s", event_id, url)
        return
    longest = getattr(settings, "EASYPOST_SANDBOX_WEBHOOK_MAX_WAIT_SECONDS", 8.0)
    again = functools.partial(_deliver, event_id, url, payload, attempt + 1)
    _courier.at(min(0.5 * 2**attempt, longest), again)


def _post(sender: Sender, url: str, payload: bytes) -> bool:
    headers = {
        "Content-Type": "application/json",
        "X-Hmac-Signature": sign(payload, getattr(settings, "EASYPOST_WEBHOOK_SECRET", "")),
        "User-Agent": "EasyPost WebHook Agent 1.0",
    }
    return sender.post(url, payload, headers)


# --- What is not the API: the label and the public tracking page ---------------------------
def label(request: HttpRequest, shipment_id: str) -> HttpResponse:
    """The label_url of a bought shipment: public, as EasyPost's (no key)."""
    rows = SandboxEasyPostShipment.objects.exclude(tracking_code="")
    if request.method not in ("GET", "HEAD") or _one(rows, shipment_id) is None:
        return HttpResponse(status=404)
    return HttpResponse(LABEL_PNG, content_type="image/png")


def tracking_page(request: HttpRequest, tracker_id: str) -> HttpResponse:
    """A tracker's public_url: where the customer looks."""
    found = _one(SandboxEasyPostTracker.objects.all(), tracker_id)
    if found is None:
        return HttpResponse("Unknown tracking code.\n", status=404, content_type="text/plain")
    lines = [f"{found.carrier} {found.tracking_code}: {found.status}"]
    lines += [f"{d['datetime']}  {d['message']}" for d in found.tracking_details]
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain")
