"""Authorization (OWASP API Security Top 10, 2023): API1 broken object level authorization,
API2 broken authentication, API5 broken function level authorization. Every attack is answered
in the API's one error shape and leaves the database as it was."""

import base64
import uuid

import pytest
from oauth2_provider.models import AccessToken
from rest_framework.test import APIClient

from orders import services
from orders.models import Order, OrderStatus
from tests.api_fixtures import assert_error, db_state
from tests.factories import IssuedToken, UserFactory, order_payload, token_for

ADDRESS = {
    "name": "A",
    "line1": "1 Main St",
    "city": "Berlin",
    "postal_code": "10115",
    "country": "DE",
}


def client_for(token: IssuedToken | None = None) -> APIClient:
    client = APIClient()
    if token is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.key}")
    return client


@pytest.fixture
def place(mug, django_capture_on_commit_callbacks):
    def place(user, quantity: int = 1) -> Order:
        with django_capture_on_commit_callbacks(execute=False):
            return services.order_create(
                user=user,
                lines=[{"product": mug, "quantity": quantity}],
                shipping_address=ADDRESS,
                payment_token="tok_ok",
            )

    return place


@pytest.fixture
def mine(user, place):
    return place(user)


@pytest.fixture
def theirs(place):
    return place(UserFactory(), quantity=3)


def order_endpoints(order_id) -> list[tuple[str, str]]:
    return [
        ("get", "/api/orders/"),
        ("post", "/api/orders/"),
        ("get", f"/api/orders/{order_id}/"),
        ("post", f"/api/orders/{order_id}/cancel/"),
        ("get", "/api/products/"),
    ]


# --- API2: no token, a bad token, another scheme --------------------------------------------------
BAD_CREDENTIALS = {
    "none": None,
    "unknown token": "Bearer 0123456789abcdef0123456789abcdef01234567",
    "empty token": "Bearer",
    "token with a space": "Bearer abc def",
    "another scheme": "Token {key}",
    "bare key": "{key}",
    "the stored digest": "Bearer {digest}",
    "basic with the right password": "Basic {basic}",
    "non-ascii": "Bearer \u00e9\u00e9\u00e9",
}


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
def test_every_endpoint_needs_a_valid_token(user, token, mine, credentials):
    basic = base64.b64encode(f"{user.username}:secret-pass-123".encode()).decode()
    digest = AccessToken.objects.get(application=token.client).token_checksum
    for method, path in order_endpoints(mine.pk):
        client = APIClient()
        if credentials is not None:
            client.credentials(
                HTTP_AUTHORIZATION=credentials.format(key=token.key, basic=basic, digest=digest)
            )
        before = db_state()

        response = getattr(client, method)(
            path, order_payload(("MUG-001", 1)) if method == "post" else None, format="json"
        )

        assert_error(response, 401)
        assert response["WWW-Authenticate"].startswith('Bearer realm="api"'), (method, path)
        assert db_state() == before, (method, path)
    assert Order.objects.get(pk=mine.pk).status == OrderStatus.PENDING


def test_the_order_endpoints_stay_closed_if_the_default_permission_is_loosened(settings, mine):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    }
    for method, path in order_endpoints(mine.pk):
        before = db_state()
        assert_error(getattr(APIClient(), method)(path, format="json"), 401, "not_authenticated")
        assert db_state() == before


def test_an_inactive_users_token_is_refused(user, token, mine):
    assert client_for(token).get(f"/api/orders/{mine.pk}/").status_code == 200
    user.is_active = False
    user.save()
    assert_error(client_for(token).get(f"/api/orders/{mine.pk}/"), 401, "not_authenticated")


def test_an_expired_token_is_refused(user, mine):
    expired = token_for(user=user, seconds=-1)
    assert_error(client_for(expired).get(f"/api/orders/{mine.pk}/"), 401, "not_authenticated")


# --- API1: another user's order is not found ------------------------------------------------------
def test_another_users_order_is_404_like_one_that_does_not_exist(api, theirs):
    foreign = api.get(f"/api/orders/{theirs.pk}/")
    missing = api.get(f"/api/orders/{uuid.uuid4()}/")

    assert_error(foreign, 404, "not_found")
    assert foreign.json() == missing.json()


def test_another_users_order_cannot_be_cancelled(api, theirs, mine):
    events = theirs.events.count()
    before = db_state()

    response = api.post(f"/api/orders/{theirs.pk}/cancel/")

    assert_error(response, 404, "not_found")
    assert db_state() == before
    theirs.refresh_from_db()
    assert theirs.status == OrderStatus.PENDING and theirs.events.count() == events


def test_the_list_holds_only_the_users_own_orders(api, mine, theirs):
    body = api.get("/api/orders/").json()
    assert [o["id"] for o in body["results"]] == [str(mine.pk)]
    assert body["count"] == 1


def test_own_order_can_be_read_and_cancelled(api, mine):
    assert api.get(f"/api/orders/{mine.pk}/").status_code == 200
    response = api.post(f"/api/orders/{mine.pk}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"


def test_staff_see_every_order_in_the_list_and_in_detail(mine, theirs):
    staff = client_for(token_for(user=UserFactory(is_staff=True)))

    listed = staff.get("/api/orders/").json()

    assert {o["id"] for o in listed["results"]} == {str(mine.pk), str(theirs.pk)}
    for order in (mine, theirs):
        detail = staff.get(f"/api/orders/{order.pk}/")
        assert detail.status_code == 200 and detail.json()["id"] == str(order.pk)


def test_an_unknown_order_id_is_404_in_the_error_shape(api):
    assert_error(api.get(f"/api/orders/{uuid.uuid4()}/cancel/"), 405, "method_not_allowed")
    assert_error(api.post(f"/api/orders/{uuid.uuid4()}/cancel/"), 404, "not_found")


# --- The one error shape, for what no view handles ------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "/api/",
        "/api/nope/",
        "/api/orders/not-a-uuid/",
        "/api/orders/1/",
        f"/api/orders/{uuid.uuid4()}/nope/",
        "/api/schema/nope",
    ],
)
def test_an_unknown_url_under_api_is_a_404_in_the_error_shape(api, path):
    assert_error(api.get(path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("put", "/api/orders/"),
        ("delete", "/api/orders/"),
        ("patch", "/api/orders/{id}/"),
        ("delete", "/api/orders/{id}/"),
        ("post", "/api/products/"),
    ],
)
def test_a_method_not_allowed_is_a_405_in_the_error_shape(api, mine, method, path):
    before = db_state()
    response = getattr(api, method)(path.format(id=mine.pk), {}, format="json")
    assert_error(response, 405, "method_not_allowed")
    assert "Allow" in response
    assert db_state() == before


def test_cancelling_too_late_is_a_409_in_the_error_shape(api, mine):
    Order.objects.filter(pk=mine.pk).update(status=OrderStatus.SHIPPING)
    before = db_state()
    assert_error(api.post(f"/api/orders/{mine.pk}/cancel/"), 409, "not_cancellable")
    assert db_state() == before


def test_a_token_on_a_non_json_accept_header_is_a_406_in_the_error_shape(api):
    assert_error(api.get("/api/orders/", HTTP_ACCEPT="text/html"), 406, "not_acceptable")


# --- API5: the admin needs a staff login ----------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    ["/admin/", "/admin/orders/order/", "/admin/orders/product/", "/admin/orders/apiclient/"],
)
def test_the_admin_redirects_to_its_login(client, token, path):
    for kwargs in (
        {},
        {"HTTP_AUTHORIZATION": f"Bearer {token.key}"},
    ):  # an API token is no admin login
        response = client.get(path, **kwargs)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/")


def test_a_customer_login_does_not_open_the_admin(client, user):
    client.force_login(user)
    response = client.get("/admin/orders/order/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_the_admin_refuses_a_wrong_password(client, db):
    UserFactory(username="boss", is_staff=True, is_superuser=True)
    page = client.post(
        "/admin/login/", {"username": "boss", "password": "guess", "next": "/admin/"}
    )
    assert page.status_code == 200 and "correct username and password" in page.content.decode()
    assert client.get("/admin/").status_code == 302
