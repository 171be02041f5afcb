from django.urls import path

from . import easypost, stripe

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
    # EasyPost's API, under the base URL the adapter is given (EASYPOST_API_BASE).
    path("easypost/v2/shipments", easypost.shipments, name="easypost-shipments"),
    path("easypost/v2/shipments/<str:shipment_id>", easypost.shipment),
    path("easypost/v2/shipments/<str:shipment_id>/buy", easypost.shipment_buy),
    path("easypost/v2/trackers/<str:tracker_id>", easypost.tracker),
    # What EasyPost serves outside its API: the label and the public tracking page.
    path("easypost/labels/<str:shipment_id>.png", easypost.label, name="easypost-label"),
    path("easypost/track/<str:tracker_id>", easypost.tracking_page, name="easypost-tracking"),
]
