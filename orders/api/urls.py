from django.urls import path

from . import views

app_name = "orders"
urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="token"),
    path("auth/logout/", views.LogoutView.as_view(), name="logout"),
    path("products/", views.ProductListView.as_view(), name="product-list"),
    path("orders/", views.OrderListCreateView.as_view(), name="order-list"),
    path("orders/<uuid:order_id>/", views.OrderDetailView.as_view(), name="order-detail"),
    path("orders/<uuid:order_id>/cancel/", views.OrderCancelView.as_view(), name="order-cancel"),
    path("webhooks/stripe/", views.StripeWebhookView.as_view(), name="webhook-stripe"),
    path("webhooks/easypost/", views.EasyPostWebhookView.as_view(), name="webhook-easypost"),
]
