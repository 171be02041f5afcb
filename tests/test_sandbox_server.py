"""The sandbox providers on a server of their own (config/settings/sandbox.py), as `make
bench` serves them, apart from the app as Stripe's and EasyPost's servers are: the adapters
reach them there, their signed events reach the app's endpoints, and that server serves
nothing of the app."""

import pytest
import requests

from orders.models import Order, ProviderEvent
from tests.factories import ProductFactory, order_payload
from tests.helpers import gateway_ledger, place_as_new_customer, wait_for
from tests.procs import BIN, HOST, Proc
from tests.services import free_port

pytestmark = pytest.mark.slow


def test_an_order_runs_against_the_sandbox_on_its_own_server(stack_factory, tmp_path):
    ProductFactory(sku="MUG-001", price="12.50", stock=10)
    port = free_port()
    sandbox_base = f"http://{HOST}:{port}"
    # The app's settings and the sandbox's (local) differ in their default secrets: both sides
    # are given the same, as Stripe's dashboard and the app's environment are.
    secrets = {"STRIPE_WEBHOOK_SECRET": "whsec_own_server", "EASYPOST_WEBHOOK_SECRET": "ep_own"}
    stack = stack_factory(
        start=False,
        env={
            **secrets,
            "STRIPE_API_BASE": f"{sandbox_base}/sandbox/stripe",
            "EASYPOST_API_BASE": f"{sandbox_base}/sandbox/easypost/v2",
        },
    )
    sandbox_log = tmp_path / "sandbox-access.log"
    argv = [str(BIN / "gunicorn"), "config.wsgi:application", "--bind", f"{HOST}:{port}"]
    argv += ["--worker-class", "gthread", "--threads", "4", "--access-logfile", str(sandbox_log)]
    sandbox = Proc(
        "sandbox",
        argv,
        env={
            **stack.env(),
            "DJANGO_SETTINGS_MODULE": "config.settings.sandbox",
            "STRIPE_SANDBOX_WEBHOOK_URL": f"{stack.web_url}/api/webhooks/stripe/",
            "EASYPOST_SANDBOX_WEBHOOK_URL": f"{stack.web_url}/api/webhooks/easypost/",
            "EASYPOST_SANDBOX_TRACKING_STEP_SECONDS": "0.5",
        },
        log_dir=tmp_path,
    )
    try:
        sandbox.start()

        def answering() -> bool:
            # Without an API key the sandbox's Stripe answers 401, as Stripe does: it is up.
            try:
                requests.get(f"{sandbox_base}/sandbox/stripe/v1/events", timeout=1)
                return True
            except requests.RequestException:
                return False

        sandbox.wait_ready(answering, timeout=30)
        stack.start(workers=1)
        order_id = place_as_new_customer(stack.web_url, order_payload(("MUG-001", 2)))

        def delivered():
            order = Order.objects.select_related("shipment").get(pk=order_id)
            shipped = getattr(order, "shipment", None)
            return order if shipped and shipped.tracking_status == "delivered" else None

        # Completed, then the parcel followed to `delivered` by the sandbox's tracking events.
        order = wait_for(delivered, timeout=90, interval=0.25, what="the parcel delivered")
        assert order.status == "completed", order.status
        assert [(c["status"], c["refunded"]) for c in gateway_ledger(sandbox_base, order_id)] == [
            ("succeeded", False)
        ]
        # Stripe's event for the charge reached the app, signed with the shared secret.
        wait_for(
            lambda: ProviderEvent.objects.filter(
                provider="stripe", type="payment_intent.succeeded", order_id=order_id
            ).exists(),
            timeout=30,
            what="payment_intent.succeeded recorded by the app",
        )
        # The adapters called the sandbox's server, never the app's.
        assert "/sandbox/stripe/v1/payment_intents" in sandbox_log.read_text()
        assert "/sandbox/easypost/v2/shipments" in sandbox_log.read_text()
        assert "/sandbox/" not in stack.access_log.read_text()
        # And the sandbox's server serves nothing of the app.
        for path in ("/api/orders/", "/admin/", "/healthz"):
            assert requests.get(f"{sandbox_base}{path}", timeout=5).status_code == 404, path
    finally:
        sandbox.kill()
