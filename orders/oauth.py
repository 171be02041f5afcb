"""The API's OAuth 2.0 clients (client credentials): what each may ask for, whom its tokens
act for, and the services that create and revoke them.

django-oauth-toolkit does the protocol. What it leaves open is closed here: by default it
grants every scope to every client, and a client-credentials token has no user; ours carry
the client's own scopes only and act for the shop's account."""

import hashlib
import secrets
from dataclasses import dataclass
from functools import cache
from typing import Any

import structlog
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone
from oauth2_provider.models import AccessToken, clear_expired
from oauth2_provider.oauth2_validators import OAuth2Validator as BaseValidator
from oauth2_provider.scopes import BaseScopes

from . import statements
from .errors import ApplicationError
from .models import API_SCOPES, ApiClient

logger = structlog.get_logger(__name__)


class ClientScopes(BaseScopes):
    """Each client may have the scopes staff gave it, no more (OAUTH2_PROVIDER's
    SCOPES_BACKEND_CLASS). A token request naming no scope gets all of them."""

    def get_all_scopes(self) -> dict[str, str]:
        return API_SCOPES

    def get_available_scopes(
        self, application: ApiClient | None = None, request: Any = None, *args: Any, **kw: Any
    ) -> list[str]:
        if application is None:  # the schema and the library's own checks: every scope there is
            return list(API_SCOPES)
        return [scope for scope in application.scopes if scope in API_SCOPES]

    def get_default_scopes(
        self, application: ApiClient | None = None, request: Any = None, *args: Any, **kw: Any
    ) -> list[str]:
        return self.get_available_scopes(application, request)


# What token validation reads: the token's expiry, scopes and resource, whether its client is
# revoked, and the whole account (request.user), whose id is also the client's owner.
TOKEN_FIELDS = ("id", "token_checksum", "expires", "scope", "resource", "user", "application")
CLIENT_FIELDS = ("id", "client_id", "user", "revoked_at")


@cache
def _token_sql() -> str:
    quote = connection.ops.quote_name
    token, client, user = (quote(m._meta.db_table) for m in (AccessToken, ApiClient, User))
    return (
        f"SELECT {statements.columns(AccessToken, only=TOKEN_FIELDS)}, "
        f"{statements.columns(ApiClient, only=CLIENT_FIELDS)}, {statements.columns(User)} "
        f"FROM {token} LEFT JOIN {client} ON {client}.id = {token}.application_id "
        f"LEFT JOIN {user} ON {user}.id = {token}.user_id "
        f"WHERE {token}.token_checksum = %s LIMIT 1"
    )


class OAuth2Validator(BaseValidator):
    def _create_access_token(
        self, expires: Any, request: Any, token: dict, source_refresh_token: Any = None
    ) -> AccessToken:
        # The library leaves a client-credentials token without a user; ours acts for the
        # account that owns the client, so that it sees that account's orders and no others.
        request.user = request.client.user
        return super()._create_access_token(expires, request, token, source_refresh_token)

    def _load_access_token(self, token: str) -> AccessToken | None:
        # On every API request. The library's own query loads every column of the token, the
        # client and the account (~45 columns over three tables), and building it costs more
        # than the rest of a GET: only what validation reads is loaded here (the token's
        # expiry, scopes and resource, whether the client is revoked, the whole account for
        # request.user), and the client's account is the token's own row.
        # The SQL is built once per process (statements.py): the ORM's select_related query
        # cost three times its round trip to build, on every request.
        checksum = hashlib.sha256(token.encode("utf-8")).hexdigest()
        with connection.cursor() as cursor:
            cursor.execute(_token_sql(), [checksum])
            row = cursor.fetchone()
        if row is None:
            return None
        access_token = statements.from_row(AccessToken, row, TOKEN_FIELDS)
        row = row[len(TOKEN_FIELDS) :]
        client = None if row[0] is None else statements.from_row(ApiClient, row, CLIENT_FIELDS)
        row = row[len(CLIENT_FIELDS) :]
        user = None if row[0] is None else statements.from_row(User, row)
        # What select_related leaves: the related objects cached on the token.
        access_token._state.fields_cache["application"] = client
        access_token._state.fields_cache["user"] = user
        if client is not None and client.user_id == access_token.user_id:
            client._state.fields_cache["user"] = user
        return access_token

    def validate_bearer_token(self, token: str, scopes: list[str], request: Any) -> bool:
        if not super().validate_bearer_token(token, scopes, request):
            return False
        # A deactivated account's tokens stop working at once, not when they expire.
        return request.user is not None and request.user.is_active


@dataclass(frozen=True)
class IssuedClient:
    client: ApiClient
    client_secret: str  # shown once; only its hash is stored


def scopes_validate(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(API_SCOPES))
    if unknown:
        raise ApplicationError(
            f"Unknown scope(s): {', '.join(unknown)}.",
            code="invalid",
            fields={"scopes": [f"Choose from: {', '.join(API_SCOPES)}."]},
        )
    if not scopes:
        raise ApplicationError(
            "A client needs at least one scope.",
            code="invalid",
            fields={"scopes": ["This field may not be empty."]},
        )
    return [scope for scope in API_SCOPES if scope in scopes]  # one order, no repeats


def api_client_create(*, user: User, scopes: list[str], name: str = "") -> IssuedClient:
    """A confidential client-credentials client for `user`'s account."""
    scopes = scopes_validate(scopes)
    secret = secrets.token_urlsafe(48)
    client = ApiClient(
        user=user,
        name=name or f"{user.username} server",
        client_type=ApiClient.CLIENT_CONFIDENTIAL,
        authorization_grant_type=ApiClient.GRANT_CLIENT_CREDENTIALS,
        client_secret=secret,  # hashed by the field on save
        scope=" ".join(scopes),
    )
    client.full_clean(exclude=["client_secret"])
    client.save()
    logger.info("api client created", client_id=client.client_id, scopes=scopes)
    return IssuedClient(client=client, client_secret=secret)


def api_client_secret_reset(*, client: ApiClient) -> IssuedClient:
    """A new secret, shown once; the old one stops working (tokens already issued run on)."""
    secret = secrets.token_urlsafe(48)
    client.client_secret = secret  # hashed by the field on save
    client.save(update_fields=["client_secret", "updated"])
    logger.info("api client secret reset", client_id=client.client_id)
    return IssuedClient(client=client, client_secret=secret)


def api_client_restrict(*, client: ApiClient, scopes: list[str]) -> ApiClient:
    """Change what the client may ask for. Its current tokens end: a token holding a scope the
    client no longer has must not outlive the change (the client just asks for a new one)."""
    scopes = scopes_validate(scopes)
    with transaction.atomic():
        client.scope = " ".join(scopes)
        client.save(update_fields=["scope", "updated"])
        ended, _ = AccessToken.objects.filter(application=client).delete()
    logger.info("api client restricted", client_id=client.client_id, scopes=scopes, ended=ended)
    return client


def api_client_revoke(*, client: ApiClient) -> ApiClient:
    """The client gets no more tokens and the ones it has stop working now."""
    with transaction.atomic():
        client.revoked_at = client.revoked_at or timezone.now()
        client.save(update_fields=["revoked_at", "updated"])
        ended, _ = AccessToken.objects.filter(application=client).delete()
    logger.info("api client revoked", client_id=client.client_id, ended=ended)
    return client


def expired_tokens_clear() -> None:
    """Beat's clean-up: tokens past their expiry are useless, and only fill the table."""
    clear_expired()
