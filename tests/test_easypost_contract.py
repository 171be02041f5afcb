"""The sandbox speaks EasyPost: EasyPost's official SDK, pointed at the sandbox over real
HTTP, parses every object it answers with into its own models, raises its own errors for the
sandbox's refusals, and accepts the sandbox's webhook signatures with its own check; trackers
move on by themselves, one signed tracker.updated event per change."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import easypost
import pytest
import requests
from easypost.util import validate_webhook

from tests.helpers import wait_for
from tests.services import free_port

KEY = "EZTK_sandbox_contract"
SECRET = "easypost_contract_sécret"  # not ASCII: the signature normalizes it (NFKD) first
SHOP = {"name": "Shop", "street1": "1 Warehouse Way", "city": "Berlin", "zip": "10115"}


@pytest.fixture
def base(live_server, settings, transactional_db, receiver):
    settings.EASYPOST_WEBHOOK_SECRET = SECRET
    settings.EASYPOST_SANDBOX_TRACKING_STEP_SECONDS = 0.2
    settings.EASYPOST_SANDBOX_WEBHOOK_DUPLICATE_RATE = 0.0
    settings.SANDBOX_FAILURE_RATE = 0.0
    settings.SANDBOX_LATENCY_MS = 0
    return f"{live_server.url}/sandbox/easypost/v2"


@pytest.fixture
def client(base):
    return easypost.EasyPostClient(KEY, api_base=base)


@pytest.fixture
def receiver(settings):
    """A webhook endpoint of our own on 127.0.0.1 that keeps what the sandbox sends it."""
    received: list[tuple[bytes, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((body, dict(self.headers.items())))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.EASYPOST_SANDBOX_WEBHOOK_URL = f"http://127.0.0.1:{server.server_port}/hook"
    yield received
    server.shutdown()
    server.server_close()


def create(client, zip_code="94105", reference="order-1", weight=10.5):
    return client.shipment.create(
        to_address={
            "name": "Ada",
            "street1": "1 Main St",
            "city": "San Francisco",
            "zip": zip_code,
            "country": "US",
        },
        from_address={**SHOP, "country": "DE"},
        parcel={"weight": weight},
        reference=reference,
    )


def buy(client, zip_code="94105", reference="order-1"):
    shipment = create(client, zip_code, reference)
    return client.shipment.buy(shipment.id, rate=shipment.lowest_rate())


def events_of(received, tracker_id, *, until):
    """The tracker.updated events of one tracker, once one of them says `until`."""

    def arrived():
        mine = [
            (body, headers)
            for body, headers in list(received)
            if json.loads(body)["result"]["id"] == tracker_id
        ]
        done = any(json.loads(body)["result"]["status"] == until for body, _ in mine)
        return mine if done else None

    return wait_for(arrived, timeout=10, what=f"{tracker_id} to be {until}")


def test_a_shipment_is_created_with_rates(client):
    shipment = create(client)

    assert isinstance(shipment, easypost.models.Shipment) and shipment.id.startswith("shp_")
    assert (shipment.reference, shipment.mode, shipment.status) == ("order-1", "test", "unknown")
    assert isinstance(shipment.to_address, easypost.models.Address)
    assert shipment.to_address.zip == "94105" and shipment.to_address.id.startswith("adr_")
    assert isinstance(shipment.parcel, easypost.models.Parcel) and shipment.parcel.weight == 10.5
    assert 2 <= len(shipment.rates) <= 3
    for rate in shipment.rates:
        assert isinstance(rate, easypost.models.Rate) and rate.id.startswith("rate_")
        assert rate.shipment_id == shipment.id and rate.currency == "USD"
        assert float(rate.rate) > 0 and isinstance(rate.rate, str)
    assert shipment.postage_label is None and shipment.tracking_code is None
    assert shipment.selected_rate is None and shipment.tracker is None
    assert shipment.messages == []


def test_the_lowest_rate_is_bought_once(client):
    shipment = create(client)
    lowest = shipment.lowest_rate()

    bought = client.shipment.buy(shipment.id, rate=lowest)

    assert bought.selected_rate.id == lowest.id
    assert isinstance(bought.postage_label, easypost.models.PostageLabel)
    assert bought.postage_label.label_file_type == "image/png"
    label = requests.get(bought.postage_label.label_url, timeout=10)
    assert label.status_code == 200 and label.content.startswith(b"\x89PNG")
    assert bought.tracking_code.startswith("EZ") and len(bought.tracking_code) == 12
    tracker = bought.tracker
    assert isinstance(tracker, easypost.models.Tracker) and tracker.id.startswith("trk_")
    assert (tracker.status, tracker.tracking_code) == ("pre_transit", bought.tracking_code)
    assert (tracker.shipment_id, tracker.carrier) == (shipment.id, lowest.carrier)
    assert requests.get(tracker.public_url, timeout=10).status_code == 200
    retrieved = client.shipment.retrieve(shipment.id)
    assert retrieved.tracking_code == bought.tracking_code
    assert retrieved.postage_label.id == bought.postage_label.id

    with pytest.raises(easypost.errors.InvalidRequestError) as caught:
        client.shipment.buy(shipment.id, rate=lowest)
    assert (caught.value.http_status, caught.value.code) == (422, "SHIPMENT.POSTAGE.EXISTS")


def test_an_unknown_rate_or_shipment_is_refused(client):
    shipment = create(client)
    with pytest.raises(easypost.errors.InvalidRequestError) as caught:
        client.shipment.buy(shipment.id, rate={"id": "rate_nonsense"})
    assert caught.value.code == "SHIPMENT.RATE.NOT_FOUND"
    with pytest.raises(easypost.errors.NotFoundError) as missing:
        client.shipment.retrieve("shp_nonsense")
    assert missing.value.code == "NOT_FOUND"
    with pytest.raises(easypost.errors.NotFoundError):
        client.tracker.retrieve("trk_nonsense")


def test_the_list_finds_a_shipment_by_reference_newest_first(client):
    older = create(client, reference="order-a")
    newer = create(client, reference="order-b")
    client.shipment.buy(newer.id, rate=newer.lowest_rate())

    listed = client.shipment.all(page_size=1)
    assert [s.id for s in listed.shipments] == [newer.id] and listed.has_more
    following = client.shipment.get_next_page(listed, page_size=1)
    assert [s.id for s in following.shipments] == [older.id] and not following.has_more
    everything = client.shipment.all(start_datetime=older.created_at)
    by_reference = {s.reference: s.id for s in everything.shipments}
    assert by_reference == {"order-a": older.id, "order-b": newer.id}
    assert [s.id for s in client.shipment.all(purchased=True).shipments] == [newer.id]
    assert [s.id for s in client.shipment.all(purchased=False).shipments] == [older.id]
    later = client.shipment.all(start_datetime="2999-01-01T00:00:00Z")
    assert later.shipments == [] and not later.has_more


def test_an_undeliverable_address_is_refused_for_good(client):
    with pytest.raises(easypost.errors.InvalidRequestError) as caught:
        create(client, zip_code="00000")

    assert (caught.value.http_status, caught.value.code) == (422, "ADDRESS.VERIFY.FAILURE")
    assert "Address not found" in caught.value.message
    assert client.shipment.all().shipments == []


def test_a_lost_answer_leaves_the_shipment_in_the_list_and_further_creates_fail(base, settings):
    settings.PROVIDER_TIMEOUT_SECONDS = 0.5  # the sandbox answers after 1.5 s
    impatient = easypost.EasyPostClient(KEY, api_base=base, timeout=1)
    client = easypost.EasyPostClient(KEY, api_base=base)

    with pytest.raises(easypost.errors.TimeoutError):
        create(impatient, zip_code="00001", reference="order-lost")

    [recorded] = client.shipment.all().shipments
    assert recorded.reference == "order-lost"
    assert client.shipment.retrieve(recorded.id).id == recorded.id
    with pytest.raises(easypost.errors.ServiceUnavailableError):
        create(client, zip_code="00001", reference="order-lost")
    assert len(client.shipment.all().shipments) == 1


def test_an_outage_records_nothing_and_a_missing_key_is_refused(client, base, settings):
    settings.SANDBOX_FAILURE_RATE = 1.0
    with pytest.raises(easypost.errors.ServiceUnavailableError):
        create(client)
    settings.SANDBOX_FAILURE_RATE = 0.0
    assert client.shipment.all().shipments == []

    with pytest.raises(easypost.errors.UnauthorizedError):
        easypost.EasyPostClient("", api_base=base).shipment.all()
    anonymous = requests.get(f"{base}/shipments", timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"]


def test_a_tracker_is_delivered_with_one_signed_event_per_change(client, receiver):
    from integrations.sandbox.models import SandboxEasyPostEvent

    tracker = buy(client).tracker
    events = events_of(receiver, tracker.id, until="delivered")

    bodies = [validate_webhook(body, headers, SECRET) for body, headers in events]
    assert [b["previous_attributes"]["status"] for b in bodies] == [
        "pre_transit",
        "in_transit",
        "out_for_delivery",
    ]
    assert [b["result"]["status"] for b in bodies] == [
        "in_transit",
        "out_for_delivery",
        "delivered",
    ]
    assert {(b["object"], b["description"], b["mode"]) for b in bodies} == {
        ("Event", "tracker.updated", "test")
    }
    assert len({b["id"] for b in bodies}) == 3 and bodies[0]["id"].startswith("evt_")
    assert len(bodies[-1]["result"]["tracking_details"]) == 4
    event = easypost.util.receive_event(events[-1][0].decode())
    assert isinstance(event, easypost.models.Event)
    assert isinstance(event.result, easypost.models.Tracker)
    with pytest.raises(easypost.errors.SignatureVerificationError):
        validate_webhook(events[0][0], events[0][1], "someone_else's_secret")

    assert client.tracker.retrieve(tracker.id).status == "delivered"
    assert client.shipment.retrieve(tracker.shipment_id).status == "delivered"
    assert SandboxEasyPostEvent.objects.filter(tracker_id=tracker.id).count() == 3


def test_a_tracker_for_00002_is_returned_to_the_sender(client, receiver):
    tracker = buy(client, zip_code="00002").tracker
    events = events_of(receiver, tracker.id, until="return_to_sender")

    statuses = [json.loads(body)["result"]["status"] for body, _ in events]
    assert statuses == ["in_transit", "return_to_sender"]
    assert client.tracker.retrieve(tracker.id).status == "return_to_sender"


def test_a_failed_delivery_is_retried(client, receiver, settings):
    from integrations.sandbox.models import SandboxEasyPostEvent

    # Sent first where nothing listens (refused); the events' endpoint then moves to the
    # receiver, and a later attempt reaches it.
    url = settings.EASYPOST_SANDBOX_WEBHOOK_URL
    settings.EASYPOST_SANDBOX_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/nobody"
    tracker = buy(client, zip_code="00002").tracker
    wait_for(lambda: SandboxEasyPostEvent.objects.filter(attempts__gte=1).exists(), timeout=5)
    SandboxEasyPostEvent.objects.update(url=url)
    settings.EASYPOST_SANDBOX_WEBHOOK_URL = url

    def both_arrived():
        bodies = [json.loads(body)["result"] for body, _ in list(receiver)]
        statuses = {r["status"] for r in bodies if r["id"] == tracker.id}
        return statuses == {"in_transit", "return_to_sender"}

    # The retried one may well arrive after the next one: not in order, as EasyPost's.
    wait_for(both_arrived, timeout=15, what="the retried event")
    assert SandboxEasyPostEvent.objects.filter(attempts__gte=2).exists()
