"""The webhook endpoints' API: a shop registers, reads, changes and deletes its endpoints
and rotates their signing secret (scope `webhooks:manage`). Another shop's endpoint is a 404.
Validate with an input serializer, call a service (orders/webhooks.py), answer with an
output serializer."""

from typing import Any, cast

from django.contrib.auth.models import User
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import selectors, webhooks
from ..errors import ApplicationError
from ..models import WEBHOOK_ALL_EVENTS, WEBHOOK_EVENT_TYPES, WebhookEndpoint
from .oauth import ScopeRequired, scopes
from .throttles import WebhookEndpointThrottle
from .views import error_headers, errors

EVENT_CHOICES = [WEBHOOK_ALL_EVENTS, *WEBHOOK_EVENT_TYPES]
NOT_YOURS = "No such webhook endpoint, or not yours."
MANAGE = "webhooks:manage"


class EventsField(serializers.ListField):
    child = serializers.ChoiceField(
        choices=EVENT_CHOICES,
        error_messages={"invalid_choice": "Unknown event type: {input}."},
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            allow_empty=False,
            max_length=len(EVENT_CHOICES),
            help_text='The event types to receive, or `["*"]` for all: '
            + ", ".join(f"`{t}`" for t in WEBHOOK_EVENT_TYPES),
            **kwargs,
        )


class EndpointInputSerializer(serializers.Serializer):
    url = serializers.URLField(
        max_length=2000,
        help_text="Where the events are POSTed: https, on a public address.",
    )
    events = EventsField()


class EndpointUpdateSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2000, required=False)
    events = EventsField(required=False)
    enabled = serializers.BooleanField(
        required=False, help_text="`true` re-enables a disabled endpoint."
    )

    def to_internal_value(self, data: object) -> dict:
        if isinstance(data, dict) and "enabled" in data and not isinstance(data["enabled"], bool):
            raise serializers.ValidationError({"enabled": ["Must be true or false."]})
        return super().to_internal_value(data)


class EndpointOutputSerializer(serializers.ModelSerializer):
    disabled_reason = serializers.CharField(
        help_text="Why it is disabled: `gone` (it answered 410), `failing` (every attempt "
        "failed for WEBHOOK_DISABLE_AFTER_HOURS), `shop` (you disabled it); empty if enabled."
    )
    previous_secret_expires_at = serializers.DateTimeField(
        help_text="After a rotation: until then the previous secret signs too."
    )

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "events",
            "enabled",
            "disabled_reason",
            "disabled_at",
            "failing_since",
            "previous_secret_expires_at",
            "created_at",
            "updated_at",
        ]


class EndpointWithSecretSerializer(EndpointOutputSerializer):
    secret = serializers.SerializerMethodField(
        help_text="The signing secret (`whsec_...`): shown this once, store it now."
    )

    class Meta(EndpointOutputSerializer.Meta):
        fields = [*EndpointOutputSerializer.Meta.fields, "secret"]

    def get_secret(self, endpoint: WebhookEndpoint) -> str:
        return cast(str, self.context["secret"])


def _user(request: Request) -> User:
    return cast(User, request.user)


def _endpoint(request: Request, endpoint_id: int) -> WebhookEndpoint:
    endpoint = selectors.webhook_endpoint_get(user=_user(request), endpoint_id=endpoint_id)
    if endpoint is None:
        raise ApplicationError("Not found.", status_code=404, code="not_found")
    return endpoint


class WebhookEndpointListCreateView(GenericAPIView):
    permission_classes = [IsAuthenticated, ScopeRequired]
    required_alternate_scopes = scopes(GET=MANAGE, POST=MANAGE)
    serializer_class = EndpointOutputSerializer
    throttle_classes = [WebhookEndpointThrottle]

    @extend_schema(
        operation_id="webhook_endpoints_list",
        description="Your webhook endpoints, oldest first. Secrets are never shown here.",
        responses={200: EndpointOutputSerializer(many=True), **errors(401, 403, 404)},
        parameters=error_headers(401),
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.webhook_endpoint_list(user=_user(request)))
        return self.get_paginated_response(EndpointOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="webhook_endpoints_create",
        description="Register an endpoint for your orders' events. The answer holds its "
        "signing secret, shown this once. A URL that is not https or resolves to a private, "
        "loopback, link-local or reserved address is refused (400 on `url`).",
        request=EndpointInputSerializer,
        responses={
            201: OpenApiResponse(EndpointWithSecretSerializer, description="Registered."),
            **errors(400, 401, 403, 413, 415, 429),
        },
        parameters=[
            OpenApiParameter(
                "Location", str, OpenApiParameter.HEADER, response=[201], required=True
            ),
            *error_headers(401, 429),
        ],
    )
    def post(self, request: Request) -> Response:
        data = EndpointInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint, secret = webhooks.endpoint_create(user=_user(request), **data.validated_data)
        body = EndpointWithSecretSerializer(endpoint, context={"secret": secret}).data
        location = reverse("orders:webhook-endpoint-detail", kwargs={"endpoint_id": endpoint.pk})
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})


class WebhookEndpointDetailView(APIView):
    permission_classes = [IsAuthenticated, ScopeRequired]
    required_alternate_scopes = scopes(GET=MANAGE, PATCH=MANAGE, DELETE=MANAGE)

    @extend_schema(
        operation_id="webhook_endpoints_retrieve",
        responses={
            200: EndpointOutputSerializer,
            **errors(401, 403, 404, descriptions={404: NOT_YOURS}),
        },
        parameters=error_headers(401),
    )
    def get(self, request: Request, endpoint_id: int) -> Response:
        return Response(EndpointOutputSerializer(_endpoint(request, endpoint_id)).data)

    @extend_schema(
        operation_id="webhook_endpoints_update",
        description="Change the URL or the events, or `enabled`: `true` re-enables a disabled "
        "endpoint and delivers the events that waited (within their retry window).",
        request=EndpointUpdateSerializer,
        responses={
            200: EndpointOutputSerializer,
            **errors(400, 401, 403, 404, 413, 415, descriptions={404: NOT_YOURS}),
        },
        parameters=error_headers(401),
    )
    def patch(self, request: Request, endpoint_id: int) -> Response:
        endpoint = _endpoint(request, endpoint_id)
        data = EndpointUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint = webhooks.endpoint_update(endpoint=endpoint, **data.validated_data)
        return Response(EndpointOutputSerializer(endpoint).data)

    @extend_schema(
        operation_id="webhook_endpoints_destroy",
        description="Delete the endpoint; what waited for it is not sent.",
        responses={204: None, **errors(401, 403, 404, descriptions={404: NOT_YOURS})},
        parameters=error_headers(401),
    )
    def delete(self, request: Request, endpoint_id: int) -> Response:
        webhooks.endpoint_delete(endpoint=_endpoint(request, endpoint_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookEndpointRotateSecretView(APIView):
    permission_classes = [IsAuthenticated, ScopeRequired]
    required_alternate_scopes = scopes(POST=MANAGE)
    throttle_classes = [WebhookEndpointThrottle]

    @extend_schema(
        operation_id="webhook_endpoints_rotate_secret",
        description="A new signing secret, shown this once. For 24 hours every event is "
        "signed with both the new and the previous secret (two signatures in "
        "`webhook-signature`), so you can switch without missing one.",
        request=None,
        responses={
            200: EndpointWithSecretSerializer,
            **errors(401, 403, 404, 429, descriptions={404: NOT_YOURS}),
        },
        parameters=error_headers(401, 429),
    )
    def post(self, request: Request, endpoint_id: int) -> Response:
        endpoint, secret = webhooks.endpoint_secret_rotate(endpoint=_endpoint(request, endpoint_id))
        return Response(EndpointWithSecretSerializer(endpoint, context={"secret": secret}).data)
