"""Shipping carrier adapters.

One adapter, EasyPostCarrier, runs everywhere: against EasyPost in production and against
the sandbox's EasyPost (integrations/sandbox/easypost.py, in EasyPost's wire format) in
`make run` and the tests. The unit tests put tests.fakes.FakeCarrier behind the protocol.

EasyPost has no idempotency keys, so the step never relies on one: it records the
shipment's id before it buys, retrieves a recorded shipment instead of creating another,
and looks a shipment up by the order's reference when a create's answer was lost.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import easypost
from django.conf import settings
from django.utils.module_loading import import_string
from easypost import errors as easypost_errors

from .errors import PermanentError, TransientError

GRAMS_PER_OUNCE = Decimal("28.349523125")


@dataclass(frozen=True)
class CarrierRate:
    rate_id: str
    carrier: str
    service: str
    amount: Decimal
    currency: str


@dataclass(frozen=True)
class CarrierShipment:
    """A shipment as the carrier has it; `purchased` once its label is bought."""

    shipment_id: str
    reference: str
    purchased: bool
    rates: tuple[CarrierRate, ...] = ()
    carrier: str = ""
    service: str = ""
    amount: Decimal | None = None
    currency: str = ""
    tracking_code: str = ""
    label_url: str = ""
    tracker_id: str = ""
    tracking_url: str = ""


class Carrier(Protocol):
    def create_shipment(
        self, *, order_id: str, address: dict[str, str], parcel_grams: int
    ) -> CarrierShipment:
        """Raise PermanentError when the carrier rejects the shipment (the address)."""

    def retrieve(self, *, shipment_id: str) -> CarrierShipment: ...

    def find_shipments(self, *, order_id: str, since: datetime) -> list[CarrierShipment]:
        """The carrier's ledger: its shipments with this order as reference, created since
        `since`. Asked whenever a create's answer was lost."""

    def buy(self, *, shipment: CarrierShipment) -> CarrierShipment:
        """Buy the label (the rate SHIPPING_SERVICE names, else the lowest). PermanentError
        with code `SHIPMENT.POSTAGE.EXISTS` if it was bought already."""


# --- EasyPost -------------------------------------------------------------------------------
_clients: dict[tuple, easypost.EasyPostClient] = {}
_clients_lock = threading.Lock()

_TRANSIENT = (
    easypost_errors.TimeoutError,
    easypost_errors.HttpError,  # connection refused, reset
    easypost_errors.JsonError,  # a body cut short
    easypost_errors.RateLimitError,
    easypost_errors.InternalServerError,
    easypost_errors.ServiceUnavailableError,
    easypost_errors.GatewayTimeoutError,
)


def easypost_client() -> easypost.EasyPostClient:
    """One client per process and configuration, with our own short timeouts (the SDK's
    default is 60 s, and it does not retry: our steps do)."""
    key = (
        settings.EASYPOST_API_KEY,
        settings.EASYPOST_API_BASE,
        settings.PROVIDER_CONNECT_TIMEOUT_SECONDS,
        settings.PROVIDER_TIMEOUT_SECONDS,
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = easypost.EasyPostClient(
                settings.EASYPOST_API_KEY or "missing",
                api_base=settings.EASYPOST_API_BASE,
                # requests takes (connect, read); the SDK passes it through as it is.
                timeout=(  # type: ignore[arg-type]
                    settings.PROVIDER_CONNECT_TIMEOUT_SECONDS,
                    settings.PROVIDER_TIMEOUT_SECONDS,
                ),
            )
    return client


@contextmanager
def _easypost_errors(what: str) -> Iterator[None]:
    try:
        yield
    except _TRANSIENT as exc:
        raise TransientError(f"easypost {what}: {exc.__class__.__name__}: {exc}") from exc
    except easypost_errors.ApiError as exc:
        code = getattr(exc, "code", None) or f"http_{getattr(exc, 'http_status', '')}"
        status = getattr(exc, "http_status", None)
        if status is not None and int(status) >= 500:
            raise TransientError(f"easypost {what}: HTTP {status}: {exc.message}") from exc
        raise PermanentError(f"easypost {what}: {exc.message}", code=code) from exc


def to_ounces(grams: int) -> float:
    return float((Decimal(grams) / GRAMS_PER_OUNCE).quantize(Decimal("0.1")))


class EasyPostCarrier:
    """Labels through EasyPost, on the official SDK."""

    def create_shipment(
        self, *, order_id: str, address: dict[str, str], parcel_grams: int
    ) -> CarrierShipment:
        with _easypost_errors("create shipment"):
            shipment = easypost_client().shipment.create(
                to_address={
                    "name": address["name"],
                    "street1": address["line1"],
                    "city": address["city"],
                    "zip": address["postal_code"],
                    "country": address["country"],
                },
                from_address=settings.SHIPPING_FROM_ADDRESS,
                parcel={"weight": to_ounces(parcel_grams)},
                reference=order_id,
            )
        return _shipment(shipment)

    def retrieve(self, *, shipment_id: str) -> CarrierShipment:
        with _easypost_errors("retrieve shipment"):
            return _shipment(easypost_client().shipment.retrieve(shipment_id))

    def find_shipments(self, *, order_id: str, since: datetime) -> list[CarrierShipment]:
        found: list[CarrierShipment] = []
        params: dict[str, Any] = {"page_size": 100, "start_datetime": since.isoformat()}
        with _easypost_errors("list shipments"):
            while True:
                page = easypost_client().shipment.all(**params)
                shipments = list(page.get("shipments") or [])
                found += [_shipment(s) for s in shipments if s.get("reference") == order_id]
                if not page.get("has_more") or not shipments:
                    return found
                params["before_id"] = shipments[-1].id

    def buy(self, *, shipment: CarrierShipment) -> CarrierShipment:
        rate = choose_rate(shipment.rates)
        with _easypost_errors("buy shipment"):
            bought = easypost_client().shipment.buy(shipment.shipment_id, rate={"id": rate.rate_id})
        return _shipment(bought)


def choose_rate(rates: tuple[CarrierRate, ...]) -> CarrierRate:
    """SHIPPING_SERVICE (`Priority`, or `USPS:Priority`) if set, else the lowest rate."""
    if not rates:
        raise PermanentError("the carrier offers no rate for this parcel", code="no_rates")
    wanted = settings.SHIPPING_SERVICE
    if wanted:
        carrier, _, service = wanted.rpartition(":")
        for rate in rates:
            if rate.service == service and (not carrier or rate.carrier == carrier):
                return rate
        raise PermanentError(f"the carrier offers no {wanted} for this parcel", code="no_rates")
    return min(rates, key=lambda r: r.amount)


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value)) if value not in (None, "") else None
    except InvalidOperation:
        return None


def _shipment(obj: Any) -> CarrierShipment:
    rates = tuple(
        CarrierRate(
            rate_id=r.id,
            carrier=r.get("carrier") or "",
            service=r.get("service") or "",
            amount=_decimal(r.get("rate")) or Decimal("0"),
            currency=r.get("currency") or "",
        )
        for r in (obj.get("rates") or [])
    )
    label = obj.get("postage_label")
    selected = obj.get("selected_rate")
    tracker = obj.get("tracker")
    return CarrierShipment(
        shipment_id=obj.id,
        reference=obj.get("reference") or "",
        purchased=bool(label),
        rates=rates,
        carrier=(selected.get("carrier") if selected else "") or "",
        service=(selected.get("service") if selected else "") or "",
        amount=_decimal(selected.get("rate")) if selected else None,
        currency=(selected.get("currency") if selected else "") or "",
        tracking_code=obj.get("tracking_code") or "",
        label_url=(label.get("label_url") if label else "") or "",
        tracker_id=(tracker.get("id") if tracker else "") or "",
        tracking_url=(tracker.get("public_url") if tracker else "") or "",
    )


def get_carrier() -> Carrier:
    return import_string(settings.SHIPPING_CARRIER)()
