"""One INSERT ... ON CONFLICT DO NOTHING, where get_or_create takes four or five round trips
(a read, a savepoint or a transaction of its own, the insert, its release or commit). Used on
the rows every order or webhook writes once and a rerun must find: provider events, emails."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection
from django.db.models import Model


def insert_once(record: Model, *, conflict: Sequence[str]) -> bool:
    """Insert `record` unless a row with the same `conflict` columns exists. Sets its pk and
    returns True if it is new; returns False, and leaves it unsaved, if one was there."""
    meta = record._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    for field in fields:
        # auto_now_add and the like: what save() would have filled in.
        setattr(record, field.attname, field.pre_save(record, add=True))
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    by_name = {f.name: f for f in fields}
    target = ", ".join(quote(by_name[name].column) for name in conflict)
    values = [f.get_db_prep_save(getattr(record, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {quote(meta.db_table)} ({columns}) "
            f"VALUES ({', '.join(['%s'] * len(fields))}) "
            f"ON CONFLICT ({target}) DO NOTHING RETURNING {quote(meta.pk.column)}",
            values,
        )
        row = cursor.fetchone()
    if row is None:
        return False
    record.pk = row[0]
    record._state.adding = False
    record._state.db = connection.alias
    return True
