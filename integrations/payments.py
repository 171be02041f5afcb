"""Payment gateway adapters. Every gateway answers with the same normalized results.

One adapter, StripeGateway, runs everywhere: against Stripe in production and against the
sandbox's Stripe (integrations/sandbox/stripe.py, which speaks Stripe's wire format) in
`make run` and the tests. The unit tests put tests.fakes.FakeGateway behind the same
protocol.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import stripe
from django.conf import settings
from django.utils.module_loading import import_string

from .errors import PermanentError, TransientError

# Stripe's SDK imports its client and the classes of the objects it parses on first use.
# Named here, they load with this module: in a worker's parent, before it forks its pool
# processes, instead of in each of them on its first charge (about 2 ms an order over a
# 400-order `make bench`, profiled).
_LOADED_NOW = (stripe.StripeClient, stripe.PaymentIntent, stripe.Refund)


class ChargeStatus:
    CAPTURED = "captured"  # the money is taken (Stripe: succeeded)
    DECLINED = "declined"  # refused; nothing taken (Stripe: requires_payment_method)
    REQUIRES_ACTION = "requires_action"  # the customer must authenticate (3-D Secure)
    CANCELED = "canceled"  # cancelled before anything was taken
    # Not decided yet at the gateway (e.g. `processing`): asked again by id, never taken for
    # "not charged".
    PROCESSING = "processing"
    # Still open at the gateway: could yet be confirmed, so compensation cancels it.
    OPEN = frozenset({DECLINED, REQUIRES_ACTION, "requires_confirmation"})


@dataclass(frozen=True)
class ChargeResult:
    status: str  # a ChargeStatus
    charge_id: str = ""  # Stripe: the PaymentIntent's id
    amount: Decimal = Decimal("0")
    decline_code: str = ""
    # For requires_action: what the shop's front end needs to finish with Stripe.js.
    client_secret: str = ""
    next_action: dict[str, Any] | None = None

    @property
    def captured(self) -> bool:
        return self.status == ChargeStatus.CAPTURED


@dataclass(frozen=True)
class GatewayCharge:
    """A charge as the gateway's ledger has it."""

    charge_id: str
    status: str  # a ChargeStatus, or the gateway's own word for anything else
    amount: Decimal
    refunded: bool = False
    decline_code: str = ""
    # Refunds of this charge: (refund id, amount, made by this backend?)
    refunds: tuple[tuple[str, Decimal, bool], ...] = field(default=())


@dataclass(frozen=True)
class RefundResult:
    refund_id: str
    charge_id: str
    amount: Decimal


class PaymentGateway(Protocol):
    def charge(
        self, *, order_id: str, amount: Decimal, currency: str, token: str, idempotency_key: str
    ) -> ChargeResult:
        """Create and confirm a charge. A decline is a ChargeResult, not an error."""

    def retrieve(self, *, charge_id: str) -> GatewayCharge:
        """The charge as the gateway has it now (its refunds included)."""

    def find_charges(
        self, *, order_id: str, idempotency_key: str, amount: Decimal, currency: str
    ) -> list[GatewayCharge]:
        """The ledger, for an order whose charge id is not known (its answer was lost).
        Raises TransientError when it cannot tell yet: never "none" on a guess."""

    def retrieve_result(self, *, charge_id: str) -> ChargeResult:
        """The answer to a charge that was not decided yet, asked by its id."""

    def refund(self, *, charge_id: str, order_id: str, idempotency_key: str) -> RefundResult: ...

    def cancel(self, *, charge_id: str, idempotency_key: str) -> GatewayCharge:
        """Cancel a charge that took nothing yet. PermanentError with code
        `payment_intent_unexpected_state` if it was captured meanwhile."""


# --- Stripe ---------------------------------------------------------------------------------
# Currencies whose amounts Stripe takes in units other than hundredths
# (https://docs.stripe.com/currencies#zero-decimal).
ZERO_DECIMAL_CURRENCIES = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()
)
THREE_DECIMAL_CURRENCIES = frozenset("BHD JOD KWD OMR TND".split())
# Our refunds carry this in their metadata: a refund without it was made elsewhere (the
# dashboard), and the webhook records it as such.
REFUND_ORIGIN = "order-pipeline"


def minor_unit_exponent(currency: str) -> int:
    code = currency.upper()
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def to_minor_units(amount: Decimal, currency: str) -> int:
    """12.50 EUR -> 1250, 1500 JPY -> 1500, 1.250 KWD -> 1250. An amount finer than the
    currency's minor unit is refused rather than rounded: money is not guessed."""
    scaled = amount * (10 ** minor_unit_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} is finer than the currency's smallest unit")
    return int(scaled)


def from_minor_units(value: int, currency: str) -> Decimal:
    """1250 EUR -> Decimal("12.50"): as many places as the currency has."""
    return Decimal(value).scaleb(-minor_unit_exponent(currency))


_STRIPE_STATUS = {
    "succeeded": ChargeStatus.CAPTURED,
    "requires_payment_method": ChargeStatus.DECLINED,
    "requires_action": ChargeStatus.REQUIRES_ACTION,
    "canceled": ChargeStatus.CANCELED,
    "processing": ChargeStatus.PROCESSING,
}

_clients: dict[tuple, stripe.StripeClient] = {}
_clients_lock = threading.Lock()


def stripe_client() -> stripe.StripeClient:
    """One StripeClient per process and configuration. Our own short timeouts, and no
    retries inside the SDK: a step retries, with the same idempotency key, after a backoff
    the timeline shows."""
    key = (
        settings.STRIPE_API_KEY,
        settings.STRIPE_API_BASE,
        settings.PROVIDER_CONNECT_TIMEOUT_SECONDS,
        settings.PROVIDER_TIMEOUT_SECONDS,
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            http_client = stripe.RequestsClient(
                timeout=(
                    settings.PROVIDER_CONNECT_TIMEOUT_SECONDS,
                    settings.PROVIDER_TIMEOUT_SECONDS,
                )
            )
            client = _clients[key] = stripe.StripeClient(
                settings.STRIPE_API_KEY or "sk_missing",
                base_addresses={"api": settings.STRIPE_API_BASE},
                max_network_retries=0,
                http_client=http_client,
            )
    return client


@contextmanager
def _stripe_errors(what: str) -> Iterator[None]:
    """Stripe's errors as ours: what a retry may cure is transient, the rest permanent with
    Stripe's code. (CardError is handled by the charge itself: a decline is an answer.)"""
    try:
        yield
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        raise TransientError(f"stripe {what}: {exc.__class__.__name__}: {exc}") from exc
    except stripe.APIError as exc:  # 5xx, and 409 (a concurrent request with the same key)
        raise TransientError(f"stripe {what}: HTTP {exc.http_status}: {exc}") from exc
    except stripe.IdempotencyError as exc:
        raise PermanentError(f"stripe {what}: {exc}", code="idempotency_error") from exc
    except (
        stripe.InvalidRequestError,
        stripe.AuthenticationError,
        stripe.PermissionError,
    ) as exc:
        code = exc.code or f"http_{exc.http_status}"
        raise PermanentError(f"stripe {what}: {exc}", code=code) from exc


class StripeGateway:
    """Payments through Stripe's PaymentIntents, on the official SDK (StripeClient)."""

    @property
    def _v1(self) -> Any:
        return stripe_client().v1

    def charge(
        self, *, order_id: str, amount: Decimal, currency: str, token: str, idempotency_key: str
    ) -> ChargeResult:
        params: dict[str, Any] = {
            "amount": to_minor_units(amount, currency),
            "currency": currency.lower(),
            "payment_method_types": ["card"],
            "confirm": True,
            "metadata": {"order_id": order_id},
        }
        if token.startswith("tok_"):  # a card token: Stripe makes the PaymentMethod from it
            params["payment_method_data"] = {"type": "card", "card": {"token": token}}
        else:
            params["payment_method"] = token
        try:
            with _stripe_errors("create payment_intent"):
                intent = self._v1.payment_intents.create(
                    params, {"idempotency_key": idempotency_key}
                )
        except stripe.CardError as exc:
            error = exc.error
            declined_intent = getattr(error, "payment_intent", None) if error else None
            return ChargeResult(
                status=ChargeStatus.DECLINED,
                charge_id=getattr(declined_intent, "id", "") or "",
                decline_code=(getattr(error, "decline_code", None) or exc.code or "card_declined"),
            )
        return self._result(intent)

    def retrieve_result(self, *, charge_id: str) -> ChargeResult:
        """A charge whose answer said "not decided yet", asked again by id (a replay of the
        create would bring back the same stored answer)."""
        with _stripe_errors("retrieve payment_intent"):
            return self._result(self._v1.payment_intents.retrieve(charge_id))

    def _result(self, intent: Any) -> ChargeResult:
        charge = self._charge(intent, refunds=())
        next_action = getattr(intent, "next_action", None)
        return ChargeResult(
            status=charge.status,
            charge_id=intent.id,
            amount=charge.amount,
            decline_code=charge.decline_code,
            client_secret=getattr(intent, "client_secret", None) or "",
            next_action=next_action.to_dict() if next_action else None,
        )

    def retrieve(self, *, charge_id: str) -> GatewayCharge:
        with _stripe_errors("retrieve payment_intent"):
            intent = self._v1.payment_intents.retrieve(charge_id)
            return self._charge(intent, refunds=self._refunds(intent.id))

    def find_charges(
        self, *, order_id: str, idempotency_key: str, amount: Decimal, currency: str
    ) -> list[GatewayCharge]:
        with _stripe_errors("search payment_intents"):
            found = self._v1.payment_intents.search(
                {"query": f"metadata['order_id']:'{order_id}'", "limit": 100}
            )
            intents = list(found.data)
        if intents:
            # Search results may be stale: each hit is read again by id, which is consistent.
            return [self.retrieve(charge_id=i.id) for i in intents]
        # Search is eventually consistent: "none found" may be "not indexed yet". The key
        # tells: sent again with other parameters (unconfirmed, so it can never take money),
        # Stripe refuses it if the charge's request was processed under it, and otherwise
        # creates an empty PaymentIntent, which proves no charge was made and is cancelled.
        probe = {
            "amount": to_minor_units(amount, currency),
            "currency": currency.lower(),
            "payment_method_types": ["card"],
            "metadata": {"order_id": order_id, "probe": "true"},
        }
        try:
            with _stripe_errors("probe idempotency key"):
                empty = self._v1.payment_intents.create(probe, {"idempotency_key": idempotency_key})
        except PermanentError as exc:
            if exc.code == "idempotency_error":
                raise TransientError(
                    "stripe: a charge was sent under this key, and search does not show it yet"
                ) from exc
            raise
        if empty.status != "canceled":
            self.cancel(charge_id=empty.id, idempotency_key=f"{idempotency_key}-probe-cancel")
        return []

    def refund(self, *, charge_id: str, order_id: str, idempotency_key: str) -> RefundResult:
        with _stripe_errors("create refund"):
            refund = self._v1.refunds.create(
                {
                    "payment_intent": charge_id,
                    "metadata": {"order_id": order_id, "origin": REFUND_ORIGIN},
                },
                {"idempotency_key": idempotency_key},
            )
        return RefundResult(
            refund_id=refund.id,
            charge_id=charge_id,
            amount=from_minor_units(refund.amount, refund.currency),
        )

    def cancel(self, *, charge_id: str, idempotency_key: str) -> GatewayCharge:
        with _stripe_errors("cancel payment_intent"):
            intent = self._v1.payment_intents.cancel(
                charge_id,
                {"cancellation_reason": "abandoned"},
                {"idempotency_key": idempotency_key},
            )
        return self._charge(intent, refunds=())

    def _refunds(self, intent_id: str) -> tuple[tuple[str, Decimal, bool], ...]:
        listed = self._v1.refunds.list({"payment_intent": intent_id, "limit": 100})
        return tuple(
            (
                r.id,
                from_minor_units(r.amount, r.currency),
                _metadata(r).get("origin") == REFUND_ORIGIN,
            )
            for r in listed.data
            if r.status in ("succeeded", "pending")
        )

    @staticmethod
    def _charge(intent: Any, *, refunds: tuple[tuple[str, Decimal, bool], ...]) -> GatewayCharge:
        error = getattr(intent, "last_payment_error", None)
        amount = from_minor_units(intent.amount, intent.currency)
        return GatewayCharge(
            charge_id=intent.id,
            status=_STRIPE_STATUS.get(intent.status, intent.status),
            amount=amount,
            refunded=sum((r[1] for r in refunds), Decimal("0")) >= amount > 0,
            decline_code=(
                (getattr(error, "decline_code", None) or getattr(error, "code", None) or "")
                if error
                else ""
            ),
            refunds=refunds,
        )


def _metadata(obj: Any) -> dict[str, Any]:
    metadata = getattr(obj, "metadata", None)
    return metadata.to_dict() if metadata else {}


def get_payment_gateway() -> PaymentGateway:
    return import_string(settings.PAYMENT_GATEWAY)()
