import uuid
from typing import Any, TypeAlias

from django.conf import settings
from django.db import models
from django.db.models import Q
from oauth2_provider.models import AbstractApplication

from .crypto import EncryptedJSONField, EncryptedTextField


class Product(models.Model):
    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    # Units available now: a reservation takes from it, a release gives back.
    stock = models.PositiveIntegerField(default=0)
    # The parcel's weight is the sum over the order's lines (the carrier prices by it).
    weight_grams = models.PositiveIntegerField()
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.CheckConstraint(condition=Q(stock__gte=0), name="product_stock_gte_0")
        ]

    def __str__(self) -> str:
        return f"{self.sku} ({self.name})"


class StockAdjustment(models.Model):
    """A change of a product's stock made by staff: `+n` (goods received) or `-n` (damaged,
    counted short). Applied as an F() update, so it never overwrites reservations made
    meanwhile; the product's history of adjustments is this table."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="adjustments")
    delta = models.IntegerField()
    stock_after = models.PositiveIntegerField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    reason = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.delta:+d} {self.product_id}"


class OrderStatus(models.TextChoices):
    PENDING = "pending"  # accepted; the workflow has not started yet
    RESERVING = "reserving"  # stock is being reserved, one task per line
    PAYING = "paying"  # every line is reserved; the payment is being charged
    # The card needs the customer's authentication (3-D Secure): the shop's front end
    # finishes it with Stripe.js; a webhook, or the sweep asking Stripe, moves the order on.
    AWAITING_PAYMENT_ACTION = "awaiting_payment_action"
    SHIPPING = "shipping"  # the payment is captured; the shipment is being created
    CONFIRMING = "confirming"  # the shipment exists; the confirmation email is going out
    COMPLETED = "completed"  # terminal: shipped and confirmed
    FAILED = "failed"  # terminal: a step failed for good; what was done is undone
    CANCELLED = "cancelled"  # terminal: cancelled by the customer or staff before shipment


# The order's one identifier type inside the app. Celery messages carry it as a string;
# tasks turn it back into a UUID at the boundary (orders/tasks.py).
OrderId: TypeAlias = uuid.UUID

# The state machine: every move an order's status may make. orders/state.py's
# order_transition is the one function that changes a status, and it refuses any move not
# listed here. Everything else about statuses is derived from this table.
ORDER_TRANSITIONS: dict[str, frozenset[str]] = {
    # The first line's reservation moves the order to `reserving`, the last one to `paying`
    # (an order of one line goes straight to `paying`).
    OrderStatus.PENDING: frozenset(
        {OrderStatus.RESERVING, OrderStatus.PAYING, OrderStatus.FAILED, OrderStatus.CANCELLED}
    ),
    OrderStatus.RESERVING: frozenset(
        {OrderStatus.PAYING, OrderStatus.FAILED, OrderStatus.CANCELLED}
    ),
    OrderStatus.PAYING: frozenset(
        {
            OrderStatus.SHIPPING,
            OrderStatus.AWAITING_PAYMENT_ACTION,
            OrderStatus.FAILED,
            OrderStatus.CANCELLED,
        }
    ),
    # Authenticated (shipping), refused or expired (failed), or cancelled by the shop; nothing
    # was taken until the customer authenticated.
    OrderStatus.AWAITING_PAYMENT_ACTION: frozenset(
        {OrderStatus.SHIPPING, OrderStatus.FAILED, OrderStatus.CANCELLED}
    ),
    # Shipment creation has begun: the customer can no longer cancel, but a carrier that
    # refuses the shipment for good still fails the order (its charge is refunded).
    OrderStatus.SHIPPING: frozenset({OrderStatus.CONFIRMING, OrderStatus.FAILED}),
    # The shipment exists: the goods are on their way and nothing may be refunded, so the
    # only way out is completion.
    OrderStatus.CONFIRMING: frozenset({OrderStatus.COMPLETED}),
    OrderStatus.COMPLETED: frozenset(),
    OrderStatus.FAILED: frozenset(),
    OrderStatus.CANCELLED: frozenset(),
}
TERMINAL_STATUSES = frozenset(s for s, moves in ORDER_TRANSITIONS.items() if not moves)
# The customer (or staff) may cancel until shipment creation begins.
CANCELLABLE_STATUSES = frozenset(
    s for s, moves in ORDER_TRANSITIONS.items() if OrderStatus.CANCELLED in moves
)
# A step, the sweep or staff may fail the order in these; never once it has shipped.
FAILABLE_STATUSES = frozenset(
    s for s, moves in ORDER_TRANSITIONS.items() if OrderStatus.FAILED in moves
)
# Ended orders whose compensation (refund, email) runs after the status change.
COMPENSATED_STATUSES = frozenset({OrderStatus.FAILED, OrderStatus.CANCELLED})


class Order(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders"
    )
    # Personal data, encrypted at rest (orders/crypto.py); the country stays plain (reports).
    email = EncryptedTextField(blank=True)  # where the customer's emails go, copied from the user
    # The email's keyed hash: finds a customer's orders (erasure) without decrypting any.
    email_hash = models.CharField(max_length=64, blank=True, db_index=True, editable=False)
    status = models.CharField(
        max_length=32, choices=OrderStatus.choices, default=OrderStatus.PENDING
    )
    currency = models.CharField(max_length=3)
    total = models.DecimalField(max_digits=14, decimal_places=2)
    payment_token = EncryptedTextField()
    ship_name = EncryptedTextField()
    ship_line1 = EncryptedTextField()
    ship_city = EncryptedTextField()
    ship_postal_code = EncryptedTextField()
    ship_country = models.CharField(max_length=2)
    # Set when the personal data above was replaced (retention or erasure on request).
    anonymized_at = models.DateTimeField(null=True, blank=True)
    # Encrypted too: a provider's refusal may quote the address (the carrier's, say).
    failure_reason = EncryptedTextField(blank=True)
    # The X-Request-ID of the request that placed it: every task of its workflow logs it,
    # also those the sweep resumes long after the request, so one grep finds its story.
    request_id = models.CharField(max_length=200, blank=True)
    # Set once refunds and the failure/cancellation email are done (failed or cancelled orders).
    compensated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        # The admin's order actions, each its own permission: a support agent may cancel
        # without being able to fail or resume.
        permissions = [
            ("cancel_order", "Can cancel orders (stock released, charge refunded)"),
            ("resume_order", "Can resume unfinished orders now"),
            ("fail_order", "Can fail orders stuck behind a provider"),
            ("erase_personal_data", "Can erase a customer's personal data from finished orders"),
        ]
        indexes = [
            # The recovery sweep looks for non-terminal orders not updated for a while.
            models.Index(fields=["status", "updated_at"], name="order_status_updated_idx"),
            models.Index(fields=["user", "-created_at"], name="order_user_created_idx"),
        ]

    def __str__(self) -> str:
        return f"Order {self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def shipping_address(self) -> dict[str, str]:
        return {
            "name": self.ship_name,
            "line1": self.ship_line1,
            "city": self.ship_city,
            "postal_code": self.ship_postal_code,
            "country": self.ship_country,
        }


class LineReservation(models.TextChoices):
    PENDING = "pending"  # not reserved yet
    RESERVED = "reserved"  # the units are taken from the product's stock
    OUT_OF_STOCK = "out_of_stock"  # could not be reserved; the order fails
    RELEASED = "released"  # given back after the order failed or was cancelled


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="order_lines")
    sku = models.CharField(max_length=64)
    quantity = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)
    reservation = models.CharField(
        max_length=16, choices=LineReservation.choices, default=LineReservation.PENDING
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["order", "product"], name="orderline_unique_product"),
            models.CheckConstraint(condition=Q(quantity__gte=1), name="orderline_quantity_gte_1"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.sku}"


class PaymentStatus(models.TextChoices):
    PENDING = "pending"  # a charge was sent or is about to be; its outcome is not known yet
    CAPTURED = "captured"  # the gateway captured the amount
    REQUIRES_ACTION = "requires_action"  # waiting for the customer's authentication (3DS)
    DECLINED = "declined"  # the gateway refused the charge; nothing was taken
    REFUNDED = "refunded"  # captured, then given back
    NOT_CHARGED = "not_charged"  # the order ended before any charge was captured


class Payment(models.Model):
    """The order's charge. Created before the gateway is called, so a crash mid-call is
    visible and compensation knows to ask the gateway what happened."""

    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="payment")
    status = models.CharField(
        max_length=16, choices=PaymentStatus.choices, default=PaymentStatus.PENDING
    )
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    # Sent with every charge attempt, so a retry after a timeout cannot charge twice.
    idempotency_key = models.CharField(max_length=100, unique=True)
    # The gateway's id for the charge (Stripe: the PaymentIntent, pi_...), stored as soon as
    # an answer brings it: the ledger is then asked by id, not searched.
    charge_id = models.CharField(max_length=100, blank=True, db_index=True)
    refund_id = models.CharField(max_length=100, blank=True)
    decline_code = models.CharField(max_length=64, blank=True)
    # While the customer must authenticate: what the shop's front end needs (Stripe.js),
    # cleared once the payment is decided.
    client_secret = models.CharField(max_length=200, blank=True)
    next_action = models.JSONField(null=True, blank=True)
    action_required_at = models.DateTimeField(null=True, blank=True)
    # Refunded in all, by us or outside the backend (Stripe's dashboard), as the gateway says.
    amount_refunded = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    disputed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency} ({self.status})"


class LabelStatus(models.TextChoices):
    CREATING = "creating"  # a create was sent: if its answer is lost, the ledger is asked
    CREATED = "created"  # the carrier's shipment exists (carrier_reference); no label yet
    PURCHASED = "purchased"  # the label is bought: the goods go out


class TrackingStatus(models.TextChoices):
    PRE_TRANSIT = "pre_transit"
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    RETURN_TO_SENDER = "return_to_sender"
    FAILURE = "failure"


# A parcel's status only moves forward: a late `in_transit` never undoes `delivered`.
TRACKING_RANK: dict[str, int] = {
    TrackingStatus.PRE_TRANSIT: 1,
    TrackingStatus.IN_TRANSIT: 2,
    TrackingStatus.OUT_FOR_DELIVERY: 3,
    TrackingStatus.DELIVERED: 4,
    TrackingStatus.RETURN_TO_SENDER: 4,
    TrackingStatus.FAILURE: 4,
}
DELIVERY_PROBLEMS = frozenset({TrackingStatus.RETURN_TO_SENDER, TrackingStatus.FAILURE})


class Shipment(models.Model):
    """The order's shipment, written before the carrier is called (`creating`), its carrier
    id recorded before the label is bought (`created`): a retry retrieves, never creates or
    buys twice."""

    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="shipment")
    label_status = models.CharField(
        max_length=16, choices=LabelStatus.choices, default=LabelStatus.CREATING
    )
    carrier = models.CharField(max_length=50, blank=True)
    service = models.CharField(max_length=50, blank=True)
    rate = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    rate_currency = models.CharField(max_length=3, blank=True)
    tracking_number = models.CharField(max_length=100, blank=True, db_index=True)
    # The carrier's shipment id (EasyPost: shp_...), and its tracker (trk_...).
    carrier_reference = models.CharField(max_length=100, blank=True)
    tracker_id = models.CharField(max_length=100, blank=True, db_index=True)
    label_url = models.URLField(max_length=500, blank=True)
    # The carrier's public page for the parcel, linked in the "shipped" email.
    tracking_url = models.URLField(max_length=500, blank=True)
    tracking_status = models.CharField(max_length=20, choices=TrackingStatus.choices, blank=True)
    tracking_updated_at = models.DateTimeField(null=True, blank=True)
    delivery_problem_at = models.DateTimeField(null=True, blank=True)
    purchased_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.carrier} {self.tracking_number}"


class NotificationKind(models.TextChoices):
    CONFIRMATION = "confirmation"  # the order is completed
    FAILURE = "failure"  # "we could not complete your order"
    CANCELLATION = "cancellation"  # the order was cancelled
    SHIPPED = "shipped"  # the parcel is on its way (its first `in_transit`)


class Notification(models.Model):
    """One email per order and outcome: the unique constraint makes a rerun a no-op."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=16, choices=NotificationKind.choices)
    to = EncryptedTextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["order", "kind"], name="notification_unique_kind")
        ]

    def __str__(self) -> str:
        return f"{self.kind} email of order {self.order_id}"  # no address: it is personal data


class EmailReceipt(models.Model):
    """The mail server accepted the order's email of this kind. Written the moment it does,
    on a connection of its own and committed at once (orders/notifications.py), so that it
    outlives the step's transaction: a worker killed before that commits loses the
    Notification's record, not this. A mail server keeps no ledger to ask; this is ours."""

    # No constraint in the database: the row is written beside the step's transaction,
    # which may hold the order's row; Django still deletes it with its order.
    order = models.ForeignKey(  # the unique constraint's index serves its look-ups
        Order, on_delete=models.CASCADE, related_name="+", db_constraint=False, db_index=False
    )
    kind = models.CharField(max_length=16, choices=NotificationKind.choices)
    accepted_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["order", "kind"], name="email_receipt_unique_kind")
        ]

    def __str__(self) -> str:
        return f"{self.kind} email of order {self.order_id} accepted"


class Step(models.TextChoices):
    ORDER = "order"  # the order itself: created, cancelled, failed
    RESERVE_STOCK = "reserve_stock"
    CHARGE_PAYMENT = "charge_payment"
    CREATE_SHIPMENT = "create_shipment"
    SEND_CONFIRMATION_EMAIL = "send_confirmation_email"
    COMPENSATE = "compensate"  # release stock, refund, tell the customer
    PAYMENT_EVENT = "payment_event"  # the gateway told us something (a webhook)
    TRACKING = "tracking"  # the carrier told us where the parcel is (a webhook)
    RECOVERY = "recovery"  # the sweep resumed or expired the order
    PRIVACY = "privacy"  # personal data erased: by retention, or on the customer's request


class Outcome(models.TextChoices):
    CREATED = "created"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"  # a transient error; the step runs again after a backoff
    FAILED = "failed"  # a permanent error
    SKIPPED = "skipped"  # nothing to do: done before, or no longer wanted
    BUSY = "busy"  # another copy of this step holds its lock; this one retries later
    RESUMED = "resumed"
    CANCELLED = "cancelled"
    ANONYMIZED = "anonymized"


class ActorKind(models.TextChoices):
    CUSTOMER = "customer"  # the order's owner, through the API
    STAFF = "staff"  # a staff user, through the API or the admin
    SYSTEM = "system"  # the workflow, the sweep
    STRIPE = "stripe"  # told by Stripe's webhook: a refund or dispute made outside the backend
    EASYPOST = "easypost"  # told by EasyPost's webhook: where the parcel is


class OrderEvent(models.Model):
    """The order's timeline: one row per step attempt and per change of status. Clients and
    tests read `reason_code` and `data`; `detail` is the same for a person to read."""

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="events")
    step = models.CharField(max_length=32, choices=Step.choices)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    attempt = models.PositiveIntegerField(default=1)
    # The status the order moved to with this event, if it moved.
    status = models.CharField(max_length=32, choices=OrderStatus.choices, blank=True)
    actor_kind = models.CharField(
        max_length=16, choices=ActorKind.choices, default=ActorKind.SYSTEM
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The customer or staff user who acted; empty for the system.",
    )
    # A stable, machine-readable reason: "out_of_stock", "payment_declined", "deadline", ...
    reason_code = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)  # ids and states only: stays plain
    # Encrypted: a provider's or the mail server's message may quote the address or email.
    detail = EncryptedTextField(blank=True)
    # The Celery task that wrote it, and when that task attempt began: the admin draws each
    # attempt as a bar from started_at to at, and links it to the task's result and Flower.
    task_id = models.CharField(max_length=255, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["order", "at"], name="orderevent_order_at_idx")]

    def __str__(self) -> str:
        return f"{self.step} {self.outcome} #{self.attempt}"


class IdempotencyKey(models.Model):
    """A client's Idempotency-Key on POST /api/orders/ and the first response to it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    # Null while the first request is still being worked on.
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = EncryptedJSONField(null=True, blank=True)  # the order, address and all
    response_headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_unique_user_key")
        ]

    def __str__(self) -> str:
        return self.key


class PendingDispatch(models.Model):
    """An order whose next message could not be sent because the broker was down when its
    transaction committed. orders/dispatch.py writes it only when a send fails, so the happy
    path costs nothing; the relay (a beat task every ORDER_DISPATCH_RELAY_SECONDS) sends the
    order's workflow from the status it has reached once the broker is back, and deletes it."""

    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"dispatch of {self.order_id}"


class ProviderEvent(models.Model):
    """A webhook event from a provider, recorded once by its id (a repeat is a no-op), then
    processed by a task. Processed events keep what was done with them."""

    provider = models.CharField(max_length=32)
    event_id = models.CharField(max_length=255)
    type = models.CharField(max_length=100)
    # Encrypted: a provider's event carries the payment method, and a parcel's scans and
    # addresses.
    payload = EncryptedJSONField()
    order = models.ForeignKey(
        Order, on_delete=models.SET_NULL, null=True, blank=True, related_name="provider_events"
    )
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    result = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "event_id"], name="provider_event_unique_id"
            )
        ]
        indexes = [
            # The sweep sends the unprocessed ones again.
            models.Index(
                fields=["received_at"],
                name="provider_event_unprocessed_idx",
                condition=Q(processed_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.type} {self.event_id}"


# The scopes an API client may hold; each endpoint names the one it needs (orders/api).
API_SCOPES = {
    "orders:read": "Read your orders",
    "orders:write": "Place and cancel orders",
    "products:read": "Read the catalogue",
    "webhooks:manage": "Register and manage webhook endpoints",
}


class ApiClient(AbstractApplication):
    """A shop's server: an OAuth 2.0 client (client credentials) acting for one user account,
    which it sees the orders of and nothing else. Its secret is stored hashed (the library's
    ClientSecretField) and shown once; its tokens are stored as digests only."""

    # Space-separated, as OAuth writes scopes: what this client may ask a token for. (Annotated:
    # the library's base class is untyped, so the stubs cannot infer these.)
    scope: "models.TextField[str, str]" = models.TextField(
        default=" ".join(API_SCOPES),
        help_text="The scopes this client may ask for, space-separated: " + ", ".join(API_SCOPES),
    )
    revoked_at: "models.DateTimeField[Any, Any]" = models.DateTimeField(null=True, blank=True)

    class Meta(AbstractApplication.Meta):
        verbose_name = "API client"

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()

    def is_usable(self, request: Any) -> bool:
        # A revoked client gets no token; the shop's account must still be active.
        return self.revoked_at is None and self.user is not None and self.user.is_active


# --- Webhooks to the shops ------------------------------------------------------------------
# The events a shop may subscribe to (or "*" for all), and what each means.
WEBHOOK_EVENT_TYPES: dict[str, str] = {
    "order.created": "The order was accepted by the API.",
    "order.paid": "The payment was captured; the shipment is being created.",
    "order.awaiting_payment_action": "The card needs the customer's authentication (3-D Secure).",
    "order.shipped": "The label is bought: the goods are on their way.",
    "order.completed": "Shipped and confirmed to the customer.",
    "order.failed": "A step failed for good; stock released, any charge refunded.",
    "order.cancelled": "Cancelled before shipment; stock released, any charge refunded.",
    "order.refunded": "A refund was recorded (ours, or one made at Stripe).",
    "shipment.delivered": "The carrier delivered the parcel.",
    "shipment.delivery_problem": "The parcel is returned to sender or lost.",
}
WEBHOOK_ALL_EVENTS = "*"


class WebhookEndpoint(models.Model):
    """A shop's URL that receives its orders' events, signed with its secret (Standard
    Webhooks). The secret is stored encrypted and shown once; after a rotation the previous
    one keeps signing beside it until previous_secret_expires_at."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list)  # event types, or ["*"]
    enabled = models.BooleanField(default=True)
    # Why it was disabled: "gone" (it answered 410), "failing" (WEBHOOK_DISABLE_AFTER_HOURS),
    # "shop" (the shop's PATCH); empty while enabled.
    disabled_reason = models.CharField(max_length=32, blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)
    secret = EncryptedTextField()
    previous_secret = EncryptedTextField(blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    # Set by the first failed attempt after a success, cleared by the next success.
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # The hot path: every event asks which enabled endpoints the order's shop has.
            models.Index(fields=["user", "enabled"], name="webhook_endpoint_user_idx")
        ]

    def __str__(self) -> str:
        return f"{self.url} ({'enabled' if self.enabled else 'disabled'})"

    def subscribed(self, event_type: str) -> bool:
        return WEBHOOK_ALL_EVENTS in self.events or event_type in self.events


class WebhookDeliveryStatus(models.TextChoices):
    PENDING = "pending"  # waiting for its (next) attempt
    DELIVERED = "delivered"  # a 2xx came back
    FAILED = "failed"  # given up: WEBHOOK_RETRY_HOURS passed, or its order's data was erased


class WebhookDelivery(models.Model):
    """The outbox: one event for one endpoint, written in the transaction of the change that
    caused it, delivered by orders.deliver_webhooks. `event_id` is the webhook-id, the same
    on every attempt; `body` the exact JSON sent (the order as the API showed it then)."""

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    order = models.ForeignKey(
        Order, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    event_id = models.CharField(max_length=64)
    type = models.CharField(max_length=64)
    body = EncryptedTextField(blank=True)  # personal data (the address): encrypted
    status = models.CharField(
        max_length=16,
        choices=WebhookDeliveryStatus.choices,
        default=WebhookDeliveryStatus.PENDING,
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # Retried until then (WEBHOOK_RETRY_HOURS after the event, or after staff's resend).
    expires_at = models.DateTimeField()
    # A worker's claim: while in the future, no other worker sends it; a claim of a worker
    # that died runs out and the row is sent again (at least once).
    locked_until = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(db_index=True)  # when the event happened
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        permissions = [("resend_webhook", "Can resend a webhook delivery")]
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event_id"], name="webhook_delivery_unique_event"
            )
        ]
        indexes = [
            # What is due for an endpoint, and what waits in front of a row for its order.
            models.Index(
                fields=["endpoint", "next_attempt_at"],
                name="webhook_delivery_due_idx",
                condition=Q(status="pending"),
            ),
            models.Index(
                fields=["endpoint", "order", "id"],
                name="webhook_delivery_order_idx",
                condition=Q(status="pending"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class WebhookAttempt(models.Model):
    """One POST of a delivery: what came back and how long it took."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log"
    )
    at = models.DateTimeField(auto_now_add=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    elapsed_ms = models.FloatField(default=0)
    error = models.CharField(max_length=500, blank=True)
    # The start of the shop's answer (WEBHOOK sender reads a few KiB at most); it may echo
    # the payload, so it is encrypted like it.
    response = EncryptedTextField(blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.status_code or self.error} in {self.elapsed_ms:.0f} ms"
