"""API views: validate with an input serializer, call a service, answer with an output
serializer."""

from typing import cast
from uuid import UUID

import structlog
from django.contrib.auth.models import User
from django.db import transaction
from django.urls import reverse
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import carrier_events, idempotency, payment_events, selectors
from ..errors import ApplicationError
from ..models import Order
from ..services import order_cancel, order_create
from ..state import Actor
from .oauth import ScopeRequired, scopes
from .serializers import (
    OrderCreateInputSerializer,
    OrderOutputSerializer,
    ProductOutputSerializer,
    order_shown,
)
from .throttles import OrderCreateAnonThrottle, OrderCreateUserThrottle

ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "code": serializers.CharField(
            help_text="Machine-readable: `invalid`, `not_found`, `throttled`, ..."
        ),
        "detail": serializers.CharField(),
        "fields": serializers.DictField(
            required=False,
            help_text="Validation errors only: per field, nested like the request; the errors of "
            "`lines` are keyed by the line's index.",
        ),
    },
)

ERROR_DESCRIPTIONS = {
    400: "Invalid input: `fields` holds the errors per field.",
    401: "No valid token: send `Authorization: Bearer <access token>`.",
    403: "The token lacks the scope this operation needs.",
    404: "Not found.",
    409: "Conflict with the order's state, or an Idempotency-Key still in flight.",
    413: "Request body too large.",
    415: "Not JSON.",
    422: "Idempotency-Key reused with a different body.",
    429: "Too many requests: see Retry-After.",
}


def _user(request: Request) -> User:
    # The order views require IsAuthenticated: the user is a real one.
    return cast(User, request.user)


def errors(*codes: int, descriptions: dict[int, str] | None = None) -> dict:
    """The error responses of an operation, all in the one error shape."""
    descriptions = {**ERROR_DESCRIPTIONS, **(descriptions or {})}
    return {
        code: OpenApiResponse(ErrorSerializer, description=descriptions[code]) for code in codes
    }


def error_headers(*codes: int) -> list[OpenApiParameter]:
    """The response headers that come with these error responses."""
    documented = []
    if 401 in codes:
        documented.append(
            OpenApiParameter(
                "WWW-Authenticate",
                str,
                OpenApiParameter.HEADER,
                required=True,
                response=[401],
                description="`Bearer`: send `Authorization: Bearer <access token>`, a token from "
                "`POST /api/oauth/token/`.",
            )
        )
    if 429 in codes:
        documented.append(
            OpenApiParameter(
                "Retry-After",
                int,
                OpenApiParameter.HEADER,
                required=True,
                response=[429],
                description="Seconds until the next request may succeed.",
            )
        )
    return documented


BAD_PAGE = "No such page (`page` beyond the last, or not a positive integer)."
NOT_YOURS = "No such order, or not yours."


# Each endpoint names its scope (ScopeRequired) beside IsAuthenticated, rather than lean on the
# defaults in settings: a change there must not open them.
class ProductListView(GenericAPIView):
    permission_classes = [IsAuthenticated, ScopeRequired]
    required_alternate_scopes = scopes(GET="products:read")
    serializer_class = ProductOutputSerializer

    @extend_schema(
        operation_id="products_list",
        description="The active catalogue.",
        responses={
            200: ProductOutputSerializer(many=True),
            **errors(401, 403, 404, descriptions={404: BAD_PAGE}),
        },
        parameters=error_headers(401),
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.product_list())
        return self.get_paginated_response(ProductOutputSerializer(page, many=True).data)


IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": idempotency.MAX_KEY_LENGTH},
    OpenApiParameter.HEADER,
    required=False,
    description="Up to 255 characters, unique per intended order. Retrying with the same key "
    "returns the first response and never creates a second order.",
)


class OrderListCreateView(GenericAPIView):
    permission_classes = [IsAuthenticated, ScopeRequired]
    required_alternate_scopes = scopes(GET="orders:read", POST="orders:write")
    serializer_class = OrderOutputSerializer
    throttle_classes = [OrderCreateUserThrottle, OrderCreateAnonThrottle]

    def check_permissions(self, request: Request) -> None:
        # Throttle before the permission check, so that anonymous attempts count too.
        self.check_throttles(request)
        super().check_permissions(request)

    def check_throttles(self, request: Request) -> None:
        if getattr(request, "_throttles_checked", False):  # DRF calls it again after permissions
            return
        request._throttles_checked = True  # type: ignore[attr-defined]
        super().check_throttles(request)

    @extend_schema(
        operation_id="orders_list",
        description="Your orders, newest first; staff see everyone's.",
        responses={
            200: OrderOutputSerializer(many=True),
            **errors(401, 403, 404, descriptions={404: BAD_PAGE}),
        },
        parameters=error_headers(401),
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.order_list(user=_user(request)))
        return self.get_paginated_response(OrderOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="orders_create",
        description="Place an order. Prices and the total come from the catalogue (any price "
        "sent is ignored); the order is processed in the background (follow it with GET "
        "on the Location). Creating an order does not promise stock: an order whose "
        "stock cannot be reserved ends `failed`, with the reason in its timeline. One "
        "line per SKU: a SKU repeated in one order is refused (400), not merged.",
        parameters=[
            IDEMPOTENCY_HEADER,
            OpenApiParameter(
                "Location",
                str,
                OpenApiParameter.HEADER,
                required=True,
                response=[201],
                description="The new order's URL.",
            ),
            OpenApiParameter(
                "Idempotent-Replayed",
                str,
                OpenApiParameter.HEADER,
                response=[201],
                enum=["true"],
                description="Present when this is the stored first response "
                "to the same Idempotency-Key.",
            ),
            *error_headers(401, 429),
        ],
        request=OrderCreateInputSerializer,
        examples=[
            OpenApiExample(
                "Two mugs",
                request_only=True,
                value={
                    "lines": [{"sku": "MUG-001", "quantity": 2}],
                    "shipping_address": {
                        "name": "Ada Lovelace",
                        "line1": "1 Main St",
                        "city": "Berlin",
                        "postal_code": "10115",
                        "country": "DE",
                    },
                    "payment_token": "pm_card_visa",
                },
            )
        ],
        responses={
            201: OpenApiResponse(OrderOutputSerializer, description="Accepted, `pending`."),
            **errors(400, 401, 403, 409, 413, 415, 422, 429),
        },
    )
    def post(self, request: Request) -> Response:
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            idempotency.validate_key(key)
        data = OrderCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)  # invalid requests store nothing under the key
        record = None
        if key is not None:
            claimed = idempotency.begin(
                user=_user(request),
                key=key,
                request_fingerprint=idempotency.fingerprint(request.data),
            )
            if isinstance(claimed, idempotency.Replay):
                return Response(
                    claimed.body,
                    status=claimed.status,
                    headers={**claimed.headers, "Idempotent-Replayed": "true"},
                )
            record = claimed
        try:
            with transaction.atomic():
                created = order_create(user=_user(request), **data.validated_data)
                body = order_shown(created)
                headers = {
                    "Location": reverse("orders:order-detail", kwargs={"order_id": created.pk})
                }
                if record is not None:
                    idempotency.finish(record=record, status=201, body=body, headers=headers)
        except BaseException:
            if record is not None:
                idempotency.abandon(record=record)
            raise
        return Response(body, status=status.HTTP_201_CREATED, headers=headers)


class OrderDetailView(APIView):
    permission_classes = [IsAuthenticated, ScopeRequired]
    required_alternate_scopes = scopes(GET="orders:read")

    @extend_schema(
        operation_id="orders_retrieve",
        description="One order with its timeline. Another user's order is a 404, as if it did "
        "not exist.",
        responses={
            200: OrderOutputSerializer,
            **errors(401, 403, 404, descriptions={404: NOT_YOURS}),
        },
        parameters=error_headers(401),
    )
    def get(self, request: Request, order_id: UUID) -> Response:
        structlog.contextvars.bind_contextvars(order_id=str(order_id))
        order = selectors.order_get(user=_user(request), order_id=order_id)
        if order is None:
            raise ApplicationError("Not found.", status_code=404, code="not_found")
        return Response(order_shown(order))


class OrderCancelView(APIView):
    permission_classes = [IsAuthenticated, ScopeRequired]
    required_alternate_scopes = scopes(POST="orders:write")

    @extend_schema(
        operation_id="orders_cancel",
        description="Cancel before shipment creation begins: stock is released and any charge "
        "refunded. Afterwards the answer is 409. Another user's order is a 404.",
        request=None,
        responses={
            200: OrderOutputSerializer,
            **errors(401, 403, 404, 409, descriptions={404: NOT_YOURS}),
        },
        parameters=error_headers(401),
    )
    def post(self, request: Request, order_id: UUID) -> Response:
        structlog.contextvars.bind_contextvars(order_id=str(order_id))
        order = selectors.order_get(user=_user(request), order_id=order_id)
        if order is None:
            raise ApplicationError("Not found.", status_code=404, code="not_found")
        order_cancel(order_id=order.id, actor=Actor.for_user(_user(request)))
        cancelled = selectors.order_get(user=_user(request), order_id=order_id)
        return Response(order_shown(cast(Order, cancelled)))  # it was there a moment ago: it stays


class StripeWebhookView(APIView):
    """Stripe's events. Verifies, records and queues; the work is done by a task."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="webhooks_stripe",
        description="Stripe's webhook endpoint: point an endpoint in Stripe's dashboard here "
        "and set its signing secret as STRIPE_WEBHOOK_SECRET. The `Stripe-Signature` header is "
        "verified (a bad, missing or stale one is a 400 and changes nothing); each event is "
        "processed once, by its id (a repeat is answered 200 and does nothing).",
        request=None,  # Stripe's event, read raw: the signature covers the exact bytes
        responses={
            200: inline_serializer(
                "WebhookReceived",
                {"received": serializers.BooleanField(), "duplicate": serializers.BooleanField()},
            ),
            **errors(400, 413, descriptions={400: "The signature does not verify."}),
        },
        parameters=[
            OpenApiParameter("Stripe-Signature", str, OpenApiParameter.HEADER, required=True)
        ],
        auth=[],
    )
    def post(self, request: Request) -> Response:
        _, created = payment_events.stripe_event_receive(
            payload=request.body, signature=request.headers.get("Stripe-Signature")
        )
        return Response({"received": True, "duplicate": not created})


class EasyPostWebhookView(APIView):
    """EasyPost's tracking events. Verifies, records and queues; a task does the work."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="webhooks_easypost",
        description="EasyPost's webhook endpoint: add a webhook in EasyPost's dashboard with "
        "this URL and a secret, and set the secret as EASYPOST_WEBHOOK_SECRET. The "
        "`X-Hmac-Signature` header is verified (a bad or missing one is a 400 and changes "
        "nothing); each event is processed once, by its id.",
        request=None,  # EasyPost's event, read raw: the signature covers the exact bytes
        responses={
            200: inline_serializer(
                "CarrierWebhookReceived",
                {"received": serializers.BooleanField(), "duplicate": serializers.BooleanField()},
            ),
            **errors(400, 413, descriptions={400: "The signature does not verify."}),
        },
        parameters=[
            OpenApiParameter("X-Hmac-Signature", str, OpenApiParameter.HEADER, required=True)
        ],
        auth=[],
    )
    def post(self, request: Request) -> Response:
        _, created = carrier_events.easypost_event_receive(
            payload=request.body, headers=dict(request.headers)
        )
        return Response({"received": True, "duplicate": not created})
