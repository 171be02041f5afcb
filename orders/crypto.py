"""Personal data encrypted at rest: a model field that stores Fernet tokens (AES-128-CBC with
an HMAC-SHA256, cryptography's authenticated encryption) and decrypts on read, and a keyed
hash for the one lookup that needs equality (an order's email).

Keys come from FIELD_ENCRYPTION_KEYS, apart from SECRET_KEY: the first key encrypts, every
key decrypts (MultiFernet), so a new key goes first and the old one stays until
`manage.py rotate_field_keys` has re-encrypted every row. A value no key opens is an error,
never ciphertext shown as data and never a silent empty string."""

from __future__ import annotations

import hashlib
import hmac
import json
from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import FieldError, ImproperlyConfigured
from django.db import models
from django.db.models.lookups import Exact
from django.db.models.query_utils import DeferredAttribute


class FieldDecryptionError(Exception):
    """A stored value that none of FIELD_ENCRYPTION_KEYS opens: the key that encrypted it is
    missing (removed too early, or the wrong keys were deployed), or the value was altered."""


@cache
def _keyring(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty: personal data needs a key.")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEYS holds a key that is not a Fernet key (32 url-safe base64 "
            "bytes; make one with `python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`)."
        ) from exc


def keyring() -> MultiFernet:
    return _keyring(tuple(settings.FIELD_ENCRYPTION_KEYS))


@cache
def _primary(key: str) -> Fernet:
    return Fernet(key.encode())


def primary() -> Fernet:
    # Asked for every stored value while keys rotate: built once per key, as the keyring is.
    return _primary(settings.FIELD_ENCRYPTION_KEYS[0])


def encrypt(plaintext: str) -> str:
    return keyring().encrypt(plaintext.encode()).decode()


def decrypt(token: str, *, what: str = "a value") -> str:
    try:
        return keyring().decrypt(token.encode()).decode()
    except InvalidToken:
        raise FieldDecryptionError(
            f"None of FIELD_ENCRYPTION_KEYS decrypts {what}: the key it was encrypted with is "
            "missing from the list (or the stored value was altered)."
        ) from None


def is_current(token: str) -> bool:
    """Encrypted under the first key already (rotate_field_keys leaves it as it is)."""
    try:
        primary().decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def keyed_hash(value: str) -> str:
    """HMAC-SHA256 under FIELD_HASH_KEY: equal values give equal hashes, and without the key
    nobody can test a guess against it."""
    return hmac.new(settings.FIELD_HASH_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


def blind_index(value: str) -> str:
    """The keyed hash of an email, as written in any case: rows can be found by it, and it
    decrypts to nothing."""
    return keyed_hash(value.strip().lower()) if value else ""


class RefusedLookup(models.Lookup):
    def __init__(self, lhs: Any, rhs: Any) -> None:
        raise FieldError(
            f"{getattr(lhs.target, 'name', 'this field')} is encrypted: `{self.lookup_name}` "
            "cannot compare ciphertext (use its blind index)."
        )


class EmptyOnlyExact(Exact):
    """`field=""` works (an empty value is stored empty); any other value cannot be found by
    equality (each encryption differs), and a query that silently found nothing would be a
    bug: it is refused."""

    def get_db_prep_lookup(self, value: Any, connection: Any) -> Any:
        if value not in ("", None):
            raise FieldError(
                f"{self.lhs.target.name} is encrypted: it cannot be looked up by value "
                "(use its blind index)."
            )
        return super().get_db_prep_lookup(value, connection)


class Sealed:
    """A stored value not yet decrypted: what `orders/statements.py` loads into an instance,
    opened on the first read of its attribute. The steps lock an order several times each,
    and most of them never read its address, email or payment method: decrypting all of
    them on every load took 4 % of the worker's CPU (py-spy), and kept the plaintext in
    memory for nothing. Saved unread, the stored value is written back as it was."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token


class _DecryptedOnRead(DeferredAttribute):
    """The field's attribute: a Sealed value is decrypted when first read, and kept so. A
    data descriptor (it has __set__), or the instance's own value would hide it."""

    def __get__(self, instance: Any, cls: Any = None) -> Any:
        value = super().__get__(instance, cls)
        if isinstance(value, Sealed):
            field: Any = self.field  # an EncryptedTextField
            value = instance.__dict__[field.attname] = field.open(value.token)
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__[self.field.attname] = value


class EncryptedTextField(models.TextField):
    """Text stored encrypted. An empty value stays empty (it says only that there is none);
    equality lookups cannot work on it (every encryption differs): use a blind index."""

    descriptor_class = _DecryptedOnRead

    def pre_save(self, model_instance: Any, add: bool) -> Any:
        value = model_instance.__dict__.get(self.attname)
        if isinstance(value, Sealed):  # unread: written back as stored, never opened
            return value
        return super().pre_save(model_instance, add)

    def get_prep_value(self, value: Any) -> Any:
        if isinstance(value, Sealed):
            return value.token
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(str(value))

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None or value == "":
            return value
        return self.open(value)

    def sealed_from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        """As from_db_value, decrypting on the attribute's first read instead (for
        statements.from_row: values() and the like need the plaintext at once)."""
        if value is None or value == "":
            return value
        return Sealed(value)

    def open(self, token: str) -> str:
        return decrypt(token, what=f"{self.model.__name__}.{self.name}")


class EncryptedJSONField(models.TextField):
    """JSON stored encrypted (the idempotency records' stored responses, providers' events)."""

    # For django-stubs: set and read as JSON values, not as the text it is stored as.
    _pyi_private_set_type: Any
    _pyi_private_get_type: Any

    def get_prep_value(self, value: Any) -> Any:
        if value is None:
            return None
        return encrypt(json.dumps(value, separators=(",", ":")))

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value is None or value == "":
            return None
        return json.loads(decrypt(value, what=f"{self.model.__name__}.{self.name}"))

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value


EncryptedTextField.register_lookup(EmptyOnlyExact)
for _name in (
    "iexact",
    "contains",
    "icontains",
    "startswith",
    "istartswith",
    "endswith",
    "iendswith",
    "regex",
    "iregex",
    "in",
    "gt",
    "gte",
    "lt",
    "lte",
    "range",
):
    # Comparisons with ciphertext mean nothing: refused at query-building time.
    EncryptedTextField.register_lookup(
        type(f"Refused_{_name}", (RefusedLookup,), {"lookup_name": _name})
    )


def encrypted_fields(model: type[models.Model]) -> list[str]:
    return [
        f.name
        for f in model._meta.concrete_fields
        if isinstance(f, EncryptedTextField | EncryptedJSONField)
    ]
