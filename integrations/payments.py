"""Payment gateway adapters. Every gateway answers with the same normalized results."""

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from . import http
from .errors import PermanentError


@dataclass(frozen=True)
class ChargeResult:
    status: str  # "captured" or "declined"
    charge_id: str = ""
    amount: Decimal = Decimal("0")
    decline_code: str = ""

    @property
    def captured(self) -> bool:
        return self.status == "captured"


@dataclass(frozen=True)
class GatewayCharge:
    """A charge as the gateway's ledger has it."""

    charge_id: str
    status: str  # "captured" or "declined"
    amount: Decimal
    refunded: bool


@dataclass(frozen=True)
class RefundResult:
    refund_id: str
    charge_id: str
    amount: Decimal


class PaymentGateway(Protocol):
    def charge(
        self, *, order_id: str, amount: Decimal, currency: str, token: str, idempotency_key: str
    ) -> ChargeResult: ...

    def refund(self, *, charge_id: str, idempotency_key: str) -> RefundResult: ...

    def list_charges(self, *, order_id: str) -> list[GatewayCharge]: ...


class SandboxPaymentGateway:
    """Talks to the sandbox gateway under SANDBOX_URL over HTTP, as to a real one."""

    # orders.E002 refuses it wherever the sandbox is off (production).
    is_sandbox = True

    def charge(
        self, *, order_id: str, amount: Decimal, currency: str, token: str, idempotency_key: str
    ) -> ChargeResult:
        payload = {"order": order_id, "amount": str(amount), "currency": currency, "token": token}
        try:
            _, body = http.call(
                "POST",
                http.sandbox_url("payments/charges/"),
                json=payload,
                idempotency_key=idempotency_key,
            )
        except PermanentError as exc:
            if exc.code in {"card_declined", "invalid_token"}:
                return ChargeResult(status="declined", decline_code=exc.code)
            raise
        return ChargeResult(status="captured", charge_id=body["id"], amount=Decimal(body["amount"]))

    def refund(self, *, charge_id: str, idempotency_key: str) -> RefundResult:
        _, body = http.call(
            "POST",
            http.sandbox_url("payments/refunds/"),
            json={"charge": charge_id},
            idempotency_key=idempotency_key,
        )
        return RefundResult(
            refund_id=body["id"], charge_id=charge_id, amount=Decimal(body["amount"])
        )

    def list_charges(self, *, order_id: str) -> list[GatewayCharge]:
        _, body = http.call(
            "GET", http.sandbox_url("payments/charges/"), params={"order": order_id}
        )
        return [
            GatewayCharge(
                charge_id=c["id"],
                status=c["status"],
                amount=Decimal(c["amount"]),
                refunded=c["refunded"],
            )
            for c in body["results"]
        ]


def get_payment_gateway() -> PaymentGateway:
    return import_string(settings.PAYMENT_GATEWAY)()
