"""The webhook endpoints' API: registering, reading, changing, deleting and rotating, the
scope it needs, one shop never seeing another's, bad input as 400 with field errors, the
secret shown once and stored encrypted, and the SSRF rules of production at registration.
No worker: these are requests and rows."""

from __future__ import annotations

import socket

import pytest
from django.db import connection
from rest_framework.test import APIClient
from standardwebhooks.webhooks import Webhook

from integrations import webhook_sender
from orders.models import WebhookEndpoint
from tests.factories import UserFactory, token_for

URL = "https://hooks.shop.example/orders"
LIST = "/api/webhook-endpoints/"


def _client(token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.key}")
    return client


@pytest.fixture
def public_dns(monkeypatch):
    """Names under shop.example resolve to a public address (the documentation range would be
    refused as reserved, so a real public one), internal.example to a private one; no
    network is asked."""
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        addresses = {"hooks.shop.example": "93.184.215.14", "internal.example": "10.1.2.3"}
        if host in addresses:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addresses[host], port))]
        if host == "six.example":
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd12:3456::1", port, 0, 0))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(webhook_sender.socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def production_rules(settings, public_dns):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False


def test_create_read_change_delete(api, user, production_rules):
    created = api.post(LIST, {"url": URL, "events": ["order.paid", "order.failed"]}, format="json")

    assert created.status_code == 201, created.content
    body = created.json()
    assert body["url"] == URL and body["events"] == ["order.paid", "order.failed"]
    assert body["enabled"] is True and body["disabled_reason"] == ""
    assert created["Location"] == f"{LIST}{body['id']}/"
    detail = f"{LIST}{body['id']}/"

    listed = api.get(LIST).json()["results"]
    assert [e["id"] for e in listed] == [body["id"]]
    changed = api.patch(detail, {"events": ["*"], "enabled": False}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["events"] == ["*"]
    assert (changed.json()["enabled"], changed.json()["disabled_reason"]) == (False, "shop")
    reenabled = api.patch(detail, {"enabled": True}, format="json").json()
    assert (reenabled["enabled"], reenabled["disabled_reason"]) == (True, "")

    assert api.delete(detail).status_code == 204
    assert api.get(detail).status_code == 404
    assert not WebhookEndpoint.objects.exists()


def test_the_secret_is_shown_once_and_stored_encrypted(api, production_rules):
    body = api.post(LIST, {"url": URL, "events": ["*"]}, format="json").json()

    secret = body["secret"]
    assert secret.startswith("whsec_")
    Webhook(secret)  # the format every Standard Webhooks library reads
    assert "secret" not in api.get(f"{LIST}{body['id']}/").json()
    assert "secret" not in api.get(LIST).json()["results"][0]
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM orders_webhookendpoint WHERE id = %s", [body["id"]])
        [stored] = cursor.fetchone()
    assert secret not in stored and secret[6:] not in stored
    assert WebhookEndpoint.objects.get().secret == secret


def test_rotate_secret_shows_the_new_one_once_and_keeps_the_old_for_a_day(api, production_rules):
    from datetime import timedelta

    from django.utils import timezone

    body = api.post(LIST, {"url": URL, "events": ["*"]}, format="json").json()

    rotated = api.post(f"{LIST}{body['id']}/rotate-secret/")

    assert rotated.status_code == 200, rotated.content
    new = rotated.json()["secret"]
    assert new.startswith("whsec_") and new != body["secret"]
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.secret, endpoint.previous_secret) == (new, body["secret"])
    overlap = endpoint.previous_secret_expires_at - timezone.now()
    assert timedelta(hours=23, minutes=59) < overlap <= timedelta(hours=24)


@pytest.mark.parametrize("method", ["get", "post"])
def test_the_scope_is_required(user, method, production_rules):
    token = token_for(user=user, scopes=["orders:read", "orders:write"])

    response = getattr(_client(token), method)(LIST, {"url": URL, "events": ["*"]}, format="json")

    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    assert "webhooks:manage" in response.json()["detail"]


def test_without_a_token_it_is_401(client, db):
    assert client.get(LIST).status_code == 401


def test_another_shops_endpoint_is_404(api, production_rules):
    theirs = _client(token_for(user=UserFactory()))
    body = theirs.post(LIST, {"url": URL, "events": ["*"]}, format="json").json()
    detail = f"{LIST}{body['id']}/"

    assert api.get(detail).status_code == 404
    assert api.patch(detail, {"enabled": False}, format="json").status_code == 404
    assert api.post(f"{detail}rotate-secret/").status_code == 404
    assert api.delete(detail).status_code == 404
    assert api.get(LIST).json()["results"] == []
    assert WebhookEndpoint.objects.get().enabled is True


@pytest.mark.parametrize(
    ("payload", "field", "says"),
    [
        ({"url": URL, "events": ["order.teleported"]}, "events", "Unknown event type"),
        ({"url": URL, "events": "order.paid"}, "events", "list"),
        ({"url": URL, "events": []}, "events", "empty"),
        ({"url": URL, "events": {"order.paid": True}}, "events", "list"),
        ({"url": "not a url", "events": ["*"]}, "url", "valid URL"),
        ({"url": "ftp://hooks.shop.example/x", "events": ["*"]}, "url", ""),
        ({"events": ["*"]}, "url", "required"),
        ({"url": URL}, "events", "required"),
    ],
)
def test_bad_input_is_a_400_with_field_errors(api, production_rules, payload, field, says):
    response = api.post(LIST, payload, format="json")

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid" and field in body["fields"]
    assert says in str(body["fields"][field])
    assert not WebhookEndpoint.objects.exists()


def test_a_bad_patch_is_a_400_and_changes_nothing(api, production_rules):
    body = api.post(LIST, {"url": URL, "events": ["*"]}, format="json").json()
    detail = f"{LIST}{body['id']}/"

    for payload, field in [
        ({"enabled": "yes"}, "enabled"),
        ({"events": ["nope"]}, "events"),
        ({"url": "https://127.0.0.1/x"}, "url"),
    ]:
        response = api.patch(detail, payload, format="json")
        assert response.status_code == 400, (payload, response.content)
        assert field in response.json()["fields"]
    endpoint = WebhookEndpoint.objects.get()
    assert (endpoint.url, endpoint.events, endpoint.enabled) == (URL, ["*"], True)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hooks",  # loopback
        "https://10.0.0.5/hooks",  # private
        "https://192.168.1.1/hooks",
        "https://169.254.169.254/latest/meta-data/",  # the cloud's metadata service
        "https://0.0.0.0/hooks",
        "https://224.0.0.1/hooks",  # multicast
        "https://2130706433/hooks",  # 127.0.0.1 spelt as a number
        "https://[::1]/hooks",  # IPv6 loopback
        "https://[fd00::1]/hooks",  # IPv6 unique local
        "https://[fe80::1]/hooks",  # IPv6 link-local
        "https://[::ffff:10.0.0.1]/hooks",  # IPv4-mapped private
        "https://internal.example/hooks",  # a name resolving to a private address
        "https://six.example/hooks",  # a name resolving to a private IPv6 address
        "http://hooks.shop.example/orders",  # not https
        "https://user:pw@hooks.shop.example/orders",
    ],
)
def test_ssrf_urls_are_refused_under_production_rules(api, production_rules, url):
    response = api.post(LIST, {"url": url, "events": ["*"]}, format="json")

    assert response.status_code == 400, (url, response.content)
    assert response.json()["fields"]["url"]
    assert not WebhookEndpoint.objects.exists()


def test_loopback_is_allowed_where_private_urls_are(api, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True  # local and test settings

    response = api.post(LIST, {"url": "http://127.0.0.1:9/hooks", "events": ["*"]}, format="json")

    assert response.status_code == 201, response.content


def test_a_shop_has_at_most_ten_endpoints(api, production_rules):
    for _ in range(10):
        assert api.post(LIST, {"url": URL, "events": ["*"]}, format="json").status_code == 201

    response = api.post(LIST, {"url": URL, "events": ["*"]}, format="json")

    assert response.status_code == 400 and response.json()["code"] == "too_many_endpoints"


def test_production_refuses_private_urls_in_a_system_check(settings):
    from orders import checks

    settings.SANDBOX_ENABLED, settings.WEBHOOK_ALLOW_PRIVATE_URLS = False, True
    [error] = checks.check_webhooks()
    assert error.id == "orders.E005" and "WEBHOOK_ALLOW_PRIVATE_URLS" in error.msg
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
    assert checks.check_webhooks() == []
