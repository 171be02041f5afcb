"""OAuth 2.0 client credentials, as a shop's server meets them: a token for its client id and
secret and the scopes its client may have, refused when expired or revoked; each endpoint's
scope enforced; nothing in the token or client tables that authenticates; a client locked out
after repeated failures; staff creating, restricting and revoking clients in the admin."""

import base64
import json
import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.utils import timezone
from oauth2_provider.models import AccessToken
from rest_framework.test import APIClient

from orders import oauth
from orders.metrics import SIGN_IN_LOCKOUTS
from orders.models import API_SCOPES, ApiClient, Order
from orders.tasks import clear_expired_tokens
from tests.api_fixtures import assert_error
from tests.factories import OrderFactory, ProductFactory, UserFactory, order_payload, token_for

TOKEN_URL = "/api/oauth/token/"
REVOKE_URL = "/api/oauth/revoke/"


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


@pytest.fixture
def issued(user):
    return oauth.api_client_create(user=user, scopes=["orders:read", "orders:write"])


def ask(client, issued, scope: str | None = None, secret: str | None = None, **extra):
    data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    return client.post(
        TOKEN_URL,
        data,
        HTTP_AUTHORIZATION=basic(issued.client.client_id, secret or issued.client_secret),
        **extra,
    )


def bearer(token: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return api


# --- The token endpoint -----------------------------------------------------------------------
def test_a_client_gets_a_bearer_token_that_acts_for_its_account(client, user, issued):
    mine = OrderFactory(user=user)
    OrderFactory()

    response = ask(client, issued)

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"].split() == ["orders:read", "orders:write"]  # all its own, by default
    listed = bearer(body["access_token"]).get("/api/orders/").json()
    assert [o["id"] for o in listed["results"]] == [str(mine.pk)]  # its account's, no others


def test_the_secret_may_come_in_the_body_too(client, issued):
    response = client.post(
        TOKEN_URL,
        {
            "grant_type": "client_credentials",
            "client_id": issued.client.client_id,
            "client_secret": issued.client_secret,
        },
    )
    assert response.status_code == 200, response.content


def test_a_client_may_ask_for_fewer_scopes_and_gets_just_those(client, issued):
    body = ask(client, issued, scope="orders:read").json()
    assert body["scope"] == "orders:read"
    api = bearer(body["access_token"])
    assert api.get("/api/orders/").status_code == 200
    assert_error(api.post("/api/orders/", {}, format="json"), 403, "insufficient_scope")


@pytest.mark.parametrize("scope", ["products:read", "orders:read products:read", "admin"])
def test_asking_for_a_scope_the_client_does_not_have_is_invalid_scope(client, issued, scope):
    response = ask(client, issued, scope=scope)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert not AccessToken.objects.exists()


@pytest.mark.parametrize("who", ["wrong secret", "unknown client", "revoked client"])
def test_no_token_without_the_right_credentials(client, issued, who):
    if who == "revoked client":
        oauth.api_client_revoke(client=issued.client)
    if who == "unknown client":
        issued = oauth.IssuedClient(client=ApiClient(client_id="nobody"), client_secret="x")
    response = ask(client, issued, secret="guess" if who == "wrong secret" else None)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert not AccessToken.objects.exists()


def test_tokens_of_an_account_that_is_deactivated_stop_at_once(client, user, issued):
    token = ask(client, issued).json()["access_token"]
    user.is_active = False
    user.save()
    assert_error(bearer(token).get("/api/orders/"), 401, "not_authenticated")
    assert ask(client, issued).status_code == 401  # and it gets no new one


def test_a_revoked_token_is_refused_and_only_that_one(client, issued):
    first, second = (ask(client, issued).json()["access_token"] for _ in range(2))

    response = client.post(
        REVOKE_URL,
        {"token": first},
        HTTP_AUTHORIZATION=basic(issued.client.client_id, issued.client_secret),
    )

    assert response.status_code == 200
    assert_error(bearer(first).get("/api/orders/"), 401, "not_authenticated")
    assert bearer(second).get("/api/orders/").status_code == 200


def test_another_client_cannot_revoke_a_token_it_does_not_own(client, issued):
    token = ask(client, issued).json()["access_token"]
    stranger = oauth.api_client_create(user=UserFactory(), scopes=["orders:read"])
    client.post(
        REVOKE_URL,
        {"token": token},
        HTTP_AUTHORIZATION=basic(stranger.client.client_id, stranger.client_secret),
    )
    assert bearer(token).get("/api/orders/").status_code == 200


def test_an_expired_token_is_refused_and_beat_clears_it(client, user, issued):
    token = ask(client, issued).json()["access_token"]
    live = token_for(user=user)
    AccessToken.objects.filter(application=issued.client).update(
        expires=timezone.now() - timedelta(seconds=1)
    )

    assert_error(bearer(token).get("/api/orders/"), 401, "not_authenticated")
    clear_expired_tokens()
    assert list(AccessToken.objects.values_list("application", flat=True)) == [live.client.pk]


# --- Nothing secret in the clear --------------------------------------------------------------
def test_the_tables_hold_no_token_and_no_secret_that_authenticates(client, issued):
    tokens = [ask(client, issued).json()["access_token"] for _ in range(3)]
    assert all(bearer(t).get("/api/orders/").status_code == 200 for t in tokens)

    stored = [
        value
        for row in AccessToken.objects.values("token", "token_checksum")
        for value in row.values()
    ]
    client_row = ApiClient.objects.values().get(pk=issued.client.pk)
    assert not set(tokens) & set(stored)
    assert issued.client_secret not in json.dumps(client_row, default=str)
    for value in {v for v in stored if v}:  # a stolen copy of the table opens nothing
        assert bearer(value).get("/api/orders/").status_code == 401
    assert ask(client, issued, secret=client_row["client_secret"]).status_code == 401


# --- Scopes, endpoint by endpoint -------------------------------------------------------------
ENDPOINTS = [
    ("get", "/api/products/", "products:read"),
    ("get", "/api/orders/", "orders:read"),
    ("post", "/api/orders/", "orders:write"),
    ("get", "/api/orders/{id}/", "orders:read"),
    ("post", "/api/orders/{id}/cancel/", "orders:write"),
]


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS)
def test_every_endpoint_needs_its_scope(
    user, method, path, scope, django_capture_on_commit_callbacks
):
    ProductFactory(sku="MUG-001", stock=10)
    order = OrderFactory(user=user)
    url = path.format(id=order.pk)
    body = order_payload(("MUG-001", 1)) if url == "/api/orders/" else None
    without = bearer(token_for(user=user, scopes=[s for s in API_SCOPES if s != scope]).key)
    only = bearer(token_for(user=user, scopes=[scope]).key)

    refused = getattr(without, method)(url, body, format="json")
    assert assert_error(refused, 403, "insufficient_scope")["detail"] == (
        f"This token lacks the scope this endpoint needs: {scope}."
    )
    assert Order.objects.count() == 1 and Order.objects.get().status == "pending"
    with django_capture_on_commit_callbacks(execute=False):
        allowed = getattr(only, method)(url, body, format="json")
    assert allowed.status_code in (200, 201), allowed.content


# --- Lock-out ---------------------------------------------------------------------------------
def test_repeated_failures_lock_the_client_out_even_with_the_right_secret(
    client, issued, settings, caplog
):
    limit = settings.AXES_FAILURE_LIMIT
    locked_before = SIGN_IN_LOCKOUTS.labels(surface="token")._value.get()
    with caplog.at_level(logging.WARNING, logger="orders.signin"):
        answers = [ask(client, issued, secret=f"guess-{n}").status_code for n in range(limit)]
    assert answers == [401] * (limit - 1) + [429]

    locked = ask(client, issued)

    assert locked.status_code == 429 and locked.json()["error"] == "invalid_client"
    assert int(locked["Retry-After"]) == settings.AXES_COOLOFF_TIME.total_seconds()
    assert not AccessToken.objects.exists()
    assert SIGN_IN_LOCKOUTS.labels(surface="token")._value.get() > locked_before
    assert any(
        "sign-in locked out" in r.getMessage() and issued.client.client_id in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    other = oauth.api_client_create(user=UserFactory(), scopes=["orders:read"])
    assert ask(client, other).status_code == 200  # by client, not for everyone
    call_command("axes_reset_username", issued.client.client_id, stdout=StringIO())
    assert ask(client, issued).status_code == 200  # an operator unlocks it


def test_repeated_failures_lock_a_username_out_of_the_admin(client, settings, db):
    UserFactory(username="boss", is_staff=True, is_superuser=True)  # password secret-pass-123
    locked_before = SIGN_IN_LOCKOUTS.labels(surface="admin")._value.get()
    for n in range(settings.AXES_FAILURE_LIMIT):
        client.post("/admin/login/", {"username": "boss", "password": f"guess-{n}"})

    response = client.post(
        "/admin/login/", {"username": "boss", "password": "secret-pass-123", "next": "/admin/"}
    )

    assert response.status_code == 429
    assert client.get("/admin/").status_code == 302  # not signed in
    assert SIGN_IN_LOCKOUTS.labels(surface="admin")._value.get() > locked_before


# --- Creating clients -------------------------------------------------------------------------
def test_the_command_creates_a_client_and_prints_its_secret_once(client, user):
    out = StringIO()
    call_command(
        "api_client_create",
        "--username",
        user.username,
        "--scopes",
        "orders:read orders:write products:read",
        stdout=out,
    )
    printed = json.loads(out.getvalue())

    assert set(printed) == {"client_id", "client_secret"}
    created = ApiClient.objects.get(client_id=printed["client_id"])
    assert created.user == user
    assert created.scopes == ["orders:read", "orders:write", "products:read"]
    assert "webhooks:manage" in API_SCOPES  # asked for three of the scopes, given those alone
    assert printed["client_secret"] not in created.client_secret  # hashed
    issued = oauth.IssuedClient(client=created, client_secret=printed["client_secret"])
    assert ask(client, issued).status_code == 200


@pytest.mark.parametrize(
    ("username", "scopes", "error"),
    [
        ("nobody", "orders:read", "No user 'nobody'."),
        (None, "orders:read admin", "Unknown scope(s): admin."),
        (None, "", "A client needs at least one scope."),
    ],
)
def test_the_command_refuses_an_unknown_user_or_scope(user, username, scopes, error):
    with pytest.raises(CommandError, match=error.replace("(", r"\(").replace(")", r"\)")):
        call_command(
            "api_client_create", "--username", username or user.username, "--scopes", scopes
        )
    assert not ApiClient.objects.exists()


@pytest.fixture
def staff(client, db):
    """A staff member who manages API clients, without being a superuser."""
    member = UserFactory(is_staff=True)
    member.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["add_apiclient", "change_apiclient", "view_apiclient"]
        )
    )
    client.force_login(member)
    return client


def test_staff_create_a_client_in_the_admin_and_see_its_secret_once(staff, user):
    page = staff.post(
        "/admin/orders/apiclient/add/",
        {"name": "Shop server", "user": user.pk, "scopes": ["orders:read", "products:read"]},
    )

    assert page.status_code == 200, page.content[:2000]
    created = ApiClient.objects.get()
    html = page.content.decode()
    secret = html.split('<code id="client-secret">')[1].split("</code>")[0]
    assert created.client_id in html and "no-store" in page["Cache-Control"]
    assert created.user == user and created.scopes == ["orders:read", "products:read"]
    assert secret not in created.client_secret
    token = staff.post(
        TOKEN_URL,
        {"grant_type": "client_credentials"},
        HTTP_AUTHORIZATION=basic(created.client_id, secret),
    )
    assert token.status_code == 200 and token.json()["scope"] == "orders:read products:read"
    assert secret not in staff.get(f"/admin/orders/apiclient/{created.pk}/change/").content.decode()


def test_staff_restrict_a_client_and_its_tokens_with_the_scope_end(staff, client, issued):
    token = ask(client, issued).json()["access_token"]

    response = staff.post(
        f"/admin/orders/apiclient/{issued.client.pk}/change/",
        {"name": issued.client.name, "scopes": ["orders:read"]},
    )

    assert response.status_code == 302, response.content[:2000]
    issued.client.refresh_from_db()
    assert issued.client.scopes == ["orders:read"]
    assert_error(bearer(token).get("/api/orders/"), 401, "not_authenticated")
    assert ask(client, issued, scope="orders:write").json()["error"] == "invalid_scope"
    assert ask(client, issued).json()["scope"] == "orders:read"


def test_staff_revoke_a_client_and_its_tokens_end(staff, client, issued):
    token = ask(client, issued).json()["access_token"]

    staff.post(
        "/admin/orders/apiclient/",
        {"action": "revoke", "_selected_action": [issued.client.pk]},
    )

    issued.client.refresh_from_db()
    assert issued.client.revoked_at is not None
    assert_error(bearer(token).get("/api/orders/"), 401, "not_authenticated")
    assert ask(client, issued).status_code == 401
    # Revoked, not deleted: the record stays.
    assert staff.get(f"/admin/orders/apiclient/{issued.client.pk}/delete/").status_code == 403
