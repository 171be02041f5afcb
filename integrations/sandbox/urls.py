from django.urls import path

from . import views

app_name = "sandbox"
urlpatterns = [
    path("payments/charges/", views.charges, name="charges"),
    path("payments/refunds/", views.refunds, name="refunds"),
    path("shipping/shipments/", views.shipments, name="shipments"),
]
