"""The API clients in the admin: staff create them (the secret is shown once, on the page that
answers the creation, and never stored or sent again), restrict their scopes and revoke them,
all through the services in orders/oauth.py. Imported by orders/admin.py."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from oauth2_provider import models as oauth_models

from . import oauth
from .errors import ApplicationError
from .models import API_SCOPES, ApiClient

# The library registers its own admin for every model it has; here only the clients matter.
# Tokens are stored as digests, useless to look at; revoking a client ends them.
for model in (
    oauth_models.get_access_token_model(),
    oauth_models.get_refresh_token_model(),
    oauth_models.get_grant_model(),
    oauth_models.get_id_token_model(),
    oauth_models.get_application_model(),
):
    if admin.site.is_registered(model):
        admin.site.unregister(model)


class ApiClientForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=list(API_SCOPES.items()),
        widget=forms.CheckboxSelectMultiple,
        help_text="What the client may ask a token for. Taking a scope away ends the client's "
        "current tokens.",
    )

    class Meta:
        model = ApiClient
        fields = ["name", "user"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["scopes"].initial = self.instance.scopes


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    form = ApiClientForm
    list_display = ("name", "user", "client_id", "scope", "created", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "client_id", "user__username")
    list_select_related = ("user",)
    actions = ["revoke"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ["name", "user", "scopes"]
        return ["name", "user", "client_id", "scopes", "created", "updated", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        # The account a client acts for never changes: a new account needs a new client.
        return ["user", "client_id", "created", "updated", "revoked_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoked, not deleted: the record of who could act for whom stays

    def save_model(self, request: HttpRequest, obj: ApiClient, form: Any, change: bool) -> None:
        scopes = form.cleaned_data["scopes"]
        try:
            if change:
                obj.save(update_fields=["name", "updated"])
                if sorted(scopes) != sorted(obj.scopes):
                    oauth.api_client_restrict(client=obj, scopes=scopes)
                return
            issued = oauth.api_client_create(user=obj.user, scopes=scopes, name=obj.name)
        except ApplicationError as error:  # the form's own choices make this rare
            self.message_user(request, error.message, messages.ERROR)
            return
        # The admin goes on with `obj` (its history entry, the answer below): make it the one
        # the service created, and keep the secret for the answer only.
        obj.pk, obj.client_id = issued.client.pk, issued.client.client_id
        obj._state.adding = False
        request._issued_secret = issued.client_secret  # type: ignore[attr-defined]

    def response_add(
        self, request: HttpRequest, obj: ApiClient, post_url_continue: str | None = None
    ) -> HttpResponse:
        secret = getattr(request, "_issued_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        response = TemplateResponse(
            request,
            "admin/orders/apiclient/issued.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "client": obj,
                "client_secret": secret,
                "title": "API client created",
            },
        )
        response["Cache-Control"] = "no-store"  # the secret must not sit in a cache
        return response

    @admin.action(
        description="Revoke selected clients (no new tokens; current ones end now)",
        permissions=["change"],
    )
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiClient]) -> None:
        for client in queryset:
            oauth.api_client_revoke(client=client)
        self.message_user(request, f"{queryset.count()} client(s) revoked.", messages.SUCCESS)
