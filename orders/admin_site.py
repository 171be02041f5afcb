"""The admin site: Django's, asking staff for a second factor (django-otp's TOTP) when
ADMIN_REQUIRE_OTP is on. Read at each request, so that one site serves both settings. Also
what the app's admin pages share (ReadOnlyMixin), here so that orders/admin.py and the
modules it imports (orders/admin_webhooks.py) take it from one place."""

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.http import HttpRequest
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite


class AdminSite(admin.AdminSite):
    @property
    def login_form(self) -> type[AdminAuthenticationForm]:  # type: ignore[override]
        if settings.ADMIN_REQUIRE_OTP:
            return OTPAdminAuthenticationForm
        return AdminAuthenticationForm

    @property
    def login_template(self) -> str | None:  # type: ignore[override]
        return OTPAdminSite.login_template if settings.ADMIN_REQUIRE_OTP else None

    def has_permission(self, request: HttpRequest) -> bool:
        if not super().has_permission(request):
            return False
        # Signed in with a password alone is not enough where a second factor is required.
        return not settings.ADMIN_REQUIRE_OTP or request.user.is_verified()  # type: ignore[union-attr]


class ReadOnlyMixin:
    """Nothing here is edited by hand: every change goes through a service."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
