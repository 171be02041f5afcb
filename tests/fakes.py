"""Test doubles for the unit layer: a payment gateway and a carrier in memory, named in
settings exactly as real adapters are (PAYMENT_GATEWAY = "tests.fakes.FakeGateway",
SHIPPING_CARRIER = "tests.fakes.FakeCarrier").

Each keeps a ledger, as the real provider does, and honours idempotency keys as the sandbox
does: the same key gives the same charge or shipment, never a second one. What the next
calls do is scripted, one word per call, popped in order (an empty script means "act"):

    FakeGateway.script("timeout_after_success", "ok")  # the first charge acts, then times out
    FakeCarrier.script("timeout")                       # the first create fails before acting

Words: "ok"; "timeout" (TransientError, nothing done); "timeout_after_success" (done and
recorded, then TransientError: the answer was lost); "decline" (a declined charge);
"requires_action" (3-D Secure: the charge waits for the customer; `FakeGateway.authenticate`
acts for them); "reject" (PermanentError); "unreachable" (TransientError for ledger reads
too, until the script is empty). `reset()` empties ledgers and scripts; the `fakes` fixture does it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import ClassVar

from integrations.errors import PermanentError, TransientError
from integrations.payments import ChargeResult, ChargeStatus, GatewayCharge, RefundResult
from integrations.shipping import CarrierRate, CarrierShipment

_ids = itertools.count(1)


@dataclass
class _Charge:
    charge_id: str
    order_id: str
    amount: Decimal
    status: str
    refunded: bool = False


@dataclass
class _Book:
    script: deque[str] = field(default_factory=deque)
    calls: list[str] = field(default_factory=list)


class _Scripted:
    _book: ClassVar[_Book]

    @classmethod
    def script(cls, *words: str) -> None:
        cls._book.script.extend(words)

    @classmethod
    def _next(cls, call: str) -> str:
        cls._book.calls.append(call)
        return cls._book.script.popleft() if cls._book.script else "ok"

    @classmethod
    def calls(cls) -> list[str]:
        return list(cls._book.calls)

    @classmethod
    def _check_reachable(cls, call: str) -> None:
        if cls._book.script and cls._book.script[0] == "unreachable":
            cls._next(call)
            raise TransientError(f"{call}: connection refused (fake)")


class FakeGateway(_Scripted):
    _book = _Book()
    # Called inside the next charge, before the gateway answers: what happens meanwhile (a
    # cancel, a compensation) while the charge is in flight.
    during_charge: ClassVar[Callable[[], None] | None] = None
    charges: ClassVar[dict[str, _Charge]] = {}  # by idempotency key
    refunds: ClassVar[dict[str, RefundResult]] = {}  # by idempotency key

    @classmethod
    def reset(cls) -> None:
        cls._book = _Book()
        cls.charges.clear()
        cls.refunds.clear()
        cls.during_charge = None

    def charge(
        self, *, order_id: str, amount: Decimal, currency: str, token: str, idempotency_key: str
    ) -> ChargeResult:
        self._check_reachable("charge")
        word = self._next("charge")
        if word == "timeout":
            raise TransientError("charge: timed out (fake)")
        if word == "reject":
            raise PermanentError("charge: rejected (fake)", code="invalid_request")
        if (meanwhile := type(self).during_charge) is not None:
            type(self).during_charge = None
            meanwhile()
        existing = self.charges.get(idempotency_key)
        if existing is None:
            status = {
                "decline": ChargeStatus.DECLINED,
                "requires_action": ChargeStatus.REQUIRES_ACTION,
            }.get(word, ChargeStatus.CAPTURED)
            existing = self.charges[idempotency_key] = _Charge(
                charge_id=f"pi_fake_{next(_ids)}", order_id=order_id, amount=amount, status=status
            )
        if word == "timeout_after_success":
            raise TransientError("charge: timed out after the gateway captured (fake)")
        return ChargeResult(
            status=existing.status,
            charge_id=existing.charge_id,
            amount=amount,
            decline_code="card_declined" if existing.status == ChargeStatus.DECLINED else "",
            client_secret=f"{existing.charge_id}_secret"
            if existing.status == ChargeStatus.REQUIRES_ACTION
            else "",
        )

    def retrieve_result(self, *, charge_id: str) -> ChargeResult:
        self._check_reachable("retrieve")
        charge = self._find(charge_id)
        return ChargeResult(status=charge.status, charge_id=charge_id, amount=charge.amount)

    def _find(self, charge_id: str) -> _Charge:
        return next(c for c in self.charges.values() if c.charge_id == charge_id)

    def _as_gateway(self, charge: _Charge) -> GatewayCharge:
        refunds = tuple(
            (r.refund_id, r.amount, True)
            for r in self.refunds.values()
            if r.charge_id == charge.charge_id
        )
        return GatewayCharge(
            charge.charge_id, charge.status, charge.amount, charge.refunded, refunds=refunds
        )

    def retrieve(self, *, charge_id: str) -> GatewayCharge:
        self._check_reachable("retrieve")
        self._book.calls.append("retrieve")  # a read: the script is for what acts
        return self._as_gateway(self._find(charge_id))

    def find_charges(
        self, *, order_id: str, idempotency_key: str, amount: Decimal, currency: str
    ) -> list[GatewayCharge]:
        self._check_reachable("find_charges")
        return [self._as_gateway(c) for c in self.charges.values() if c.order_id == order_id]

    def refund(self, *, charge_id: str, order_id: str, idempotency_key: str) -> RefundResult:
        self._check_reachable("refund")
        word = self._next("refund")
        if word == "timeout":
            raise TransientError("refund: timed out (fake)")
        if idempotency_key not in self.refunds:
            charge = self._find(charge_id)
            charge.refunded = True
            self.refunds[idempotency_key] = RefundResult(
                refund_id=f"re_fake_{next(_ids)}", charge_id=charge_id, amount=charge.amount
            )
        if word == "timeout_after_success":
            raise TransientError("refund: timed out after the gateway refunded (fake)")
        return self.refunds[idempotency_key]

    def cancel(self, *, charge_id: str, idempotency_key: str) -> GatewayCharge:
        self._check_reachable("cancel")
        self._book.calls.append("cancel")
        charge = self._find(charge_id)
        if charge.status not in ChargeStatus.OPEN:
            raise PermanentError(
                f"cannot cancel a {charge.status} charge (fake)",
                code="payment_intent_unexpected_state",
            )
        charge.status = ChargeStatus.CANCELED
        return self._as_gateway(charge)

    @classmethod
    def authenticate(cls, order_id: object, *, succeed: bool = True) -> None:
        """The customer's side of 3-D Secure."""
        [charge] = cls.ledger(order_id)
        charge.status = ChargeStatus.CAPTURED if succeed else ChargeStatus.DECLINED

    @classmethod
    def ledger(cls, order_id: object) -> list[_Charge]:
        return [c for c in cls.charges.values() if c.order_id == str(order_id)]


class SandboxOnlyCarrier:
    """An adapter that marks itself as the sandbox's: production refuses it (orders.E002)."""

    is_sandbox = True


class FakeCarrier(_Scripted):
    """A carrier as EasyPost is: no idempotency keys; a shipment is created, then its label
    bought (once: a second buy is refused). The script words apply to creates and buys."""

    _book = _Book()
    shipments: ClassVar[dict[str, CarrierShipment]] = {}  # by shipment id
    parcels: ClassVar[dict[str, int]] = {}  # grams, by order id, as the last create sent

    @classmethod
    def reset(cls) -> None:
        cls._book = _Book()
        cls.shipments.clear()
        cls.parcels.clear()

    def create_shipment(
        self, *, order_id: str, address: dict[str, str], parcel_grams: int
    ) -> CarrierShipment:
        self._check_reachable("create_shipment")
        self.parcels[order_id] = parcel_grams
        word = self._next("create_shipment")
        if word == "timeout":
            raise TransientError("create_shipment: timed out (fake)")
        if word == "reject":
            raise PermanentError(
                "create_shipment: address rejected (fake)", code="ADDRESS.VERIFY.FAILURE"
            )
        number = next(_ids)
        shipment = self.shipments[f"shp_{number}"] = CarrierShipment(
            shipment_id=f"shp_{number}",
            reference=order_id,
            purchased=False,
            rates=(
                CarrierRate(f"rate_{number}a", "FakePost", "Ground", Decimal("5.00"), "USD"),
                CarrierRate(f"rate_{number}b", "FakePost", "Express", Decimal("9.00"), "USD"),
            ),
        )
        if word == "timeout_after_success":
            raise TransientError("create_shipment: timed out after the carrier acted (fake)")
        return shipment

    def retrieve(self, *, shipment_id: str) -> CarrierShipment:
        self._check_reachable("retrieve")
        self._book.calls.append("retrieve")
        return self.shipments[shipment_id]

    def find_shipments(self, *, order_id: str, since: object) -> list[CarrierShipment]:
        self._check_reachable("find_shipments")
        self._book.calls.append("find_shipments")
        return [s for s in self.shipments.values() if s.reference == order_id]

    def buy(self, *, shipment: CarrierShipment) -> CarrierShipment:
        self._check_reachable("buy")
        word = self._next("buy")
        if word == "timeout":
            raise TransientError("buy: timed out (fake)")
        current = self.shipments[shipment.shipment_id]
        if current.purchased:
            raise PermanentError("buy: postage exists (fake)", code="SHIPMENT.POSTAGE.EXISTS")
        rate = min(current.rates, key=lambda r: r.amount)
        number = next(_ids)
        bought = self.shipments[shipment.shipment_id] = replace(
            current,
            purchased=True,
            carrier=rate.carrier,
            service=rate.service,
            amount=rate.amount,
            currency=rate.currency,
            tracking_code=f"FK{number:08d}",
            label_url=f"https://labels.invalid/{shipment.shipment_id}.png",
            tracker_id=f"trk_{number}",
        )
        if word == "timeout_after_success":
            raise TransientError("buy: timed out after the carrier bought the label (fake)")
        return bought

    @classmethod
    def ledger(cls, order_id: object) -> list[CarrierShipment]:
        """The order's bought labels."""
        return [s for s in cls.shipments.values() if s.reference == str(order_id) and s.purchased]
