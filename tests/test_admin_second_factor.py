"""Staff sign in to the admin with a password and a TOTP code where ADMIN_REQUIRE_OTP is on (in
production by default): a password alone, or a wrong code, opens nothing."""

import time
from io import StringIO
from urllib.parse import parse_qs, urlparse

import pytest
from django.core.management import call_command
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.factories import UserFactory

PASSWORD = "secret-pass-123"


@pytest.fixture
def otp_required(settings):
    settings.ADMIN_REQUIRE_OTP = True


@pytest.fixture
def boss(db):
    return UserFactory(username="boss", is_staff=True, is_superuser=True)


def sign_in(client, **extra):
    return client.post(
        "/admin/login/", {"username": "boss", "password": PASSWORD, "next": "/admin/", **extra}
    )


def code(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):06d}"


def test_a_password_alone_does_not_open_the_admin(client, otp_required, boss):
    page = sign_in(client)
    assert page.status_code == 200 and "otp_token" in page.content.decode()
    assert client.get("/admin/").status_code == 302
    client.force_login(boss)  # signed in some other way, but never verified: still closed
    assert client.get("/admin/").status_code == 302


def test_the_command_gives_a_device_and_its_code_opens_the_admin(client, otp_required, boss):
    out = StringIO()
    call_command("staff_totp_create", "--username", "boss", stdout=out)
    url = urlparse(out.getvalue().strip())
    assert url.scheme == "otpauth" and "secret" in parse_qs(url.query)
    device = TOTPDevice.objects.get(user=boss)

    wrong = sign_in(client, otp_device=device.persistent_id, otp_token="000000")
    assert wrong.status_code == 200 and client.get("/admin/").status_code == 302
    # After a wrong code the device waits before it checks another (1 s, doubling each time):
    # guessing six digits is slow.
    throttled = sign_in(client, otp_device=device.persistent_id, otp_token=code(device))
    assert throttled.status_code == 200 and client.get("/admin/").status_code == 302

    time.sleep(1.1)
    right = sign_in(client, otp_device=device.persistent_id, otp_token=code(device))
    assert right.status_code == 302, right.content.decode()[:2000]
    assert client.get("/admin/").status_code == 200


def test_without_the_setting_the_admin_asks_for_a_password_only(client, boss):
    assert sign_in(client).status_code == 302
    assert client.get("/admin/").status_code == 200
