from django.urls import path

from . import oauth, views, webhooks

app_name = "orders"
urlpatterns = [
    path("oauth/token/", oauth.TokenView.as_view(), name="oauth-token"),
    path("oauth/revoke/", oauth.RevokeTokenView.as_view(), name="oauth-revoke"),
    path("products/", views.ProductListView.as_view(), name="product-list"),
    path("orders/", views.OrderListCreateView.as_view(), name="order-list"),
    path("orders/<uuid:order_id>/", views.OrderDetailView.as_view(), name="order-detail"),
    path("orders/<uuid:order_id>/cancel/", views.OrderCancelView.as_view(), name="order-cancel"),
    path("webhooks/stripe/", views.StripeWebhookView.as_view(), name="webhook-stripe"),
    path("webhooks/easypost/", views.EasyPostWebhookView.as_view(), name="webhook-easypost"),
    path(
        "webhook-endpoints/",
        webhooks.WebhookEndpointListCreateView.as_view(),
        name="webhook-endpoint-list",
    ),
    path(
        "webhook-endpoints/<int:endpoint_id>/",
        webhooks.WebhookEndpointDetailView.as_view(),
        name="webhook-endpoint-detail",
    ),
    path(
        "webhook-endpoints/<int:endpoint_id>/rotate-secret/",
        webhooks.WebhookEndpointRotateSecretView.as_view(),
        name="webhook-endpoint-rotate-secret",
    ),
]
