from django.urls import path

from . import stripe, views

app_name = "sandbox"
urlpatterns = [
    # Stripe's API, under the base URL the adapter is given (STRIPE_API_BASE).
    path("stripe/v1/payment_intents", stripe.payment_intents, name="stripe-payment-intents"),
    path(
        "stripe/v1/payment_intents/search",
        stripe.payment_intents_search,
        name="stripe-payment-intents-search",
    ),
    path("stripe/v1/payment_intents/<str:intent_id>", stripe.payment_intent),
    path("stripe/v1/payment_intents/<str:intent_id>/cancel", stripe.payment_intent_cancel),
    path("stripe/v1/refunds", stripe.refunds, name="stripe-refunds"),
    path("stripe/v1/events", stripe.events, name="stripe-events"),
    path("stripe/v1/events/<str:event_id>", stripe.event),
    # What Stripe.js and the card holder's bank do.
    path("stripe/test/payment_intents/<str:intent_id>/authenticate", stripe.authenticate),
    path("stripe/test/payment_intents/<str:intent_id>/dispute", stripe.dispute),
    path("shipping/shipments/", views.shipments, name="shipments"),
]
