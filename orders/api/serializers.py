import threading
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .. import statements
from ..models import (
    LabelStatus,
    Order,
    OrderEvent,
    OrderLine,
    Payment,
    PaymentStatus,
    Product,
    Shipment,
)

MAX_LINES = 100
MAX_QUANTITY = 1000

# Output serializers kept one per thread, their fields built once: DRF builds a
# ModelSerializer's fields (and its nested ones') anew for every instance, which was half the
# cost of showing an order (the API's detail view, every webhook event). to_representation
# reads the bound fields and changes nothing on the serializer; none of these reads context.
_shared = threading.local()


def shared_serializer(cls: type[serializers.Serializer]) -> serializers.Serializer:
    serializer = getattr(_shared, cls.__name__, None)
    if serializer is None:
        serializer = cls()
        setattr(_shared, cls.__name__, serializer)
    return serializer


# A Stripe PaymentMethod id from Stripe.js (pm_...), or a card token (tok_...).
PAYMENT_TOKEN_PATTERN = r"^(pm|tok)_[A-Za-z0-9_]{1,64}$"


class StrictIntegerField(serializers.IntegerField):
    """An integer in JSON, not "2", 2.0 or true."""

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A JSON string, not a number that happens to convert."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


# --- Input ----------------------------------------------------------------------------------------
class LineInputSerializer(serializers.Serializer):
    sku = StrictCharField(max_length=64)
    quantity = StrictIntegerField(min_value=1, max_value=MAX_QUANTITY)


class AddressInputSerializer(serializers.Serializer):
    name = StrictCharField(max_length=200)
    line1 = StrictCharField(max_length=200)
    city = StrictCharField(max_length=100)
    postal_code = StrictCharField(max_length=20)
    country = serializers.RegexField(
        r"^[A-Z]{2}$",
        error_messages={"invalid": "Use a two-letter ISO 3166 country code, e.g. DE."},
    )


class OrderCreateInputSerializer(serializers.Serializer):
    # A ListField rather than many=True: its length limits appear in the schema (minItems,
    # maxItems), and its item errors are keyed by index as well.
    lines = serializers.ListField(
        child=LineInputSerializer(), allow_empty=False, min_length=1, max_length=MAX_LINES
    )
    shipping_address = AddressInputSerializer()
    payment_token = serializers.RegexField(
        PAYMENT_TOKEN_PATTERN,
        error_messages={
            "invalid": "Unknown payment token format: expected a Stripe PaymentMethod id "
            "(pm_...) or card token (tok_...): letters, digits or underscores."
        },
    )

    def validate_lines(self, lines: list[dict]) -> list[dict]:
        """Resolve SKUs to active products. The same SKU twice is refused, not merged: the
        client should say what it means. Errors are keyed by the line's index, as DRF keys
        the errors of the lines' own fields (LIST_SERIALIZER_ERRORS_AS_DICT)."""
        skus = [line["sku"] for line in lines]
        # On every order, so its SQL is built once (orders/statements.py).
        products = {p.sku: p for p in statements.filter_in(Product, "sku", skus, is_active=True)}
        errors, seen, resolved = {}, set(), []
        for index, line in enumerate(lines):
            sku = line["sku"]
            if sku not in products:
                errors[index] = {"sku": [f"Unknown or inactive SKU: {sku}."]}
            elif sku in seen:
                errors[index] = {"sku": [f"{sku} appears more than once; send one line per SKU."]}
            else:
                resolved.append({"product": products[sku], "quantity": line["quantity"]})
            seen.add(sku)
        if errors:
            raise serializers.ValidationError(errors)  # type: ignore[arg-type]  # keyed by index, as DRF does for lists
        return resolved


# --- Output ---------------------------------------------------------------------------------------
class ProductOutputSerializer(serializers.ModelSerializer):
    stock_available = serializers.IntegerField(source="stock")

    class Meta:
        model = Product
        fields = ["sku", "name", "price", "currency", "stock_available"]


class LineOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = OrderLine
        fields = ["sku", "quantity", "unit_price", "reservation"]


class PaymentOutputSerializer(serializers.ModelSerializer):
    status = serializers.CharField(
        help_text="`pending`, `captured`, `requires_action` (the customer must authenticate: "
        "finish with Stripe.js and `client_secret`), `declined`, `refunded`, `not_charged`."
    )
    client_secret = serializers.SerializerMethodField(
        help_text="The PaymentIntent's client secret, while `requires_action`; else null."
    )
    next_action = serializers.SerializerMethodField(
        help_text="Stripe's `next_action`, while `requires_action`; else null."
    )
    disputed = serializers.SerializerMethodField()

    class Meta:
        model = Payment
        fields = [
            "status",
            "amount",
            "currency",
            "amount_refunded",
            "decline_code",
            "disputed",
            "client_secret",
            "next_action",
        ]

    def _waiting(self, payment: Payment) -> bool:
        return payment.status == PaymentStatus.REQUIRES_ACTION

    def get_client_secret(self, payment: Payment) -> str | None:
        return payment.client_secret if self._waiting(payment) else None

    @extend_schema_field(serializers.JSONField(allow_null=True))
    def get_next_action(self, payment: Payment) -> dict | None:
        return payment.next_action if self._waiting(payment) else None

    def get_disputed(self, payment: Payment) -> bool:
        return payment.disputed_at is not None


class ShipmentOutputSerializer(serializers.ModelSerializer):
    status = serializers.CharField(
        source="tracking_status",
        help_text="Where the parcel is: `pre_transit`, `in_transit`, `out_for_delivery`, "
        "`delivered`, `return_to_sender`, `failure`; empty until the carrier says.",
    )

    class Meta:
        model = Shipment
        fields = [
            "carrier",
            "service",
            "rate",
            "rate_currency",
            "tracking_number",
            "tracking_url",
            "label_url",
            "status",
        ]


class EventOutputSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(
        source="actor_kind",
        help_text="Who acted: `customer`, `staff`, `system`, `stripe` or `easypost`.",
    )
    reason_code = serializers.CharField(
        help_text="A stable code for why (e.g. `out_of_stock`, `payment_declined`, `deadline`); "
        "read this rather than `detail`, which is for people."
    )
    status = serializers.CharField(help_text="The status the order moved to, if it moved.")
    data = serializers.JSONField(  # type: ignore[assignment]  # the event's field, not Serializer.data
        help_text="Structured facts: amounts, ids, the previous status."
    )

    class Meta:
        model = OrderEvent
        fields = [
            "step",
            "outcome",
            "attempt",
            "at",
            "status",
            "actor",
            "reason_code",
            "data",
            "detail",
        ]


class AddressOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    line1 = serializers.CharField()
    city = serializers.CharField()
    postal_code = serializers.CharField()
    country = serializers.CharField()


class OrderOutputSerializer(serializers.ModelSerializer):
    lines = LineOutputSerializer(many=True)
    payment = serializers.SerializerMethodField()
    shipment = serializers.SerializerMethodField()
    events = EventOutputSerializer(
        many=True, help_text="The timeline: every step attempt, oldest first."
    )
    shipping_address = AddressOutputSerializer()

    class Meta:
        model = Order
        fields = [
            "id",
            "status",
            "lines",
            "total",
            "currency",
            "payment",
            "shipment",
            "shipping_address",
            "failure_reason",
            "events",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(PaymentOutputSerializer(allow_null=True))
    def get_payment(self, order: Order) -> dict | None:
        # A missing one-to-one raises an AttributeError subclass, so getattr's default applies.
        payment = getattr(order, "payment", None)
        if payment is None:
            return None
        return shared_serializer(PaymentOutputSerializer).to_representation(payment)

    @extend_schema_field(ShipmentOutputSerializer(allow_null=True))
    def get_shipment(self, order: Order) -> dict | None:
        shipment = getattr(order, "shipment", None)
        if shipment is None or shipment.label_status != LabelStatus.PURCHASED:
            return None  # being made: shown once its label is bought
        return shared_serializer(ShipmentOutputSerializer).to_representation(shipment)


def order_shown(order: Order) -> dict:
    """The order as the API shows it (what OrderOutputSerializer(order).data gives): the
    answers of the order views and the order in every webhook event, by this thread's one
    serializer."""
    return dict(shared_serializer(OrderOutputSerializer).to_representation(order))
