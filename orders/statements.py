"""The statements each order runs several times, as SQL built once per process from the
models' own metadata.

The ORM builds and compiles a query anew on every call: a quarter of the worker's CPU per
order went to building SQL for the same few statements (py-spy, bench/README.md). The order's
row lock, its status update and its timeline insert run on every step, so their SQL is made
once here; values still go through each field's own `get_db_prep_save` (encryption
included) and rows through its converters (decryption included), as the ORM does. These
models have no save signals to skip (a test holds the results equal to the ORM's)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, TypeVar

from django.db import connection
from django.db.models import Field, Model

M = TypeVar("M", bound=Model)


def _field(model: type[Model], name: str) -> Field:
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    assert isinstance(field, Field), f"{model.__name__}.{name} is not a column"
    return field


def _conditions(model: type[Model], names: tuple[str, ...]) -> str:
    quote = connection.ops.quote_name
    return " AND ".join(f"{quote(_field(model, name).column)} = %s" for name in names)


def _params(model: type[Model], where: dict[str, Any]) -> list[Any]:
    """The conditions' values as their fields send them (a UUID as text on SQLite)."""
    return [_field(model, name).get_db_prep_value(v, connection) for name, v in where.items()]


def _converters(field: Field, table: str, *, sealed: bool = False) -> tuple[list, Any]:
    """What the compiler applies to the field's value as read: the backend's converters,
    then the field's own (from_db_value: decryption, JSON). `sealed`: a field that can
    (crypto.EncryptedTextField) decrypts on the instance attribute's first read instead."""
    col = field.get_col(table)
    found: Any = field
    # Asked of the field, not of its class: this module builds on Django alone.
    lazy = getattr(field, "sealed_from_db_value", None) if sealed else None
    own = [lazy] if lazy else found.get_db_converters(connection)
    return connection.ops.get_db_converters(col) + own, col


def _convert(row: Sequence[Any], converters: list[tuple[list, Any]]) -> list[Any]:
    values = list(row)
    for index, (found, col) in enumerate(converters):
        for converter in found:
            values[index] = converter(values[index], col, connection)
    return values


def _prepared(record: Model, fields: list[Field], *, add: bool) -> list[Any]:
    """The record's values as save() sends them: auto_now and the like filled in first,
    each then prepared by its field (encryption, JSON)."""
    return [f.get_db_prep_save(f.pre_save(record, add=add), connection) for f in fields]


def _fields(model: type[Model], only: tuple[str, ...]) -> list[Field]:
    """The concrete fields (`only`: those named), in the model's order: from_db takes a
    subset's values in that order."""
    wanted = {_field(model, name) for name in only}
    return [f for f in model._meta.concrete_fields if not only or f in wanted]


@cache
def columns(model: type[Model], alias: str = "", only: tuple[str, ...] = ()) -> str:
    """Every column of the model (`only`: those fields', the rest deferred as .only() leaves
    them), qualified by its table (or `alias`), in the order `from_row` reads."""
    quote = connection.ops.quote_name
    table = alias or quote(model._meta.db_table)
    return ", ".join(f"{table}.{quote(f.column)}" for f in _fields(model, only))


@cache
def _reader(model: type[Model], only: tuple[str, ...]) -> tuple[list[str], list]:
    fields = _fields(model, only)
    table = model._meta.db_table
    return [f.attname for f in fields], [_converters(f, table, sealed=True) for f in fields]


def from_row(model: type[M], row: Sequence[Any], only: tuple[str, ...] = ()) -> M:
    """The model instance of a row that starts with `columns(model, only=only)`, as the ORM
    loads it."""
    names, converters = _reader(model, only)
    return model.from_db(connection.alias, names, _convert(row[: len(names)], converters))


@cache
def _get_sql(model: type[Model], where: tuple[str, ...], lock: bool) -> str:
    table = connection.ops.quote_name(model._meta.db_table)
    sql = f"SELECT {columns(model)} FROM {table} WHERE {_conditions(model, where)}"
    if lock and connection.features.has_select_for_update:
        # SQLite (the embedded default) has none: its transactions take the whole database
        # (IMMEDIATE, config/settings/base.py), as the ORM's select_for_update() leaves it.
        sql += " FOR UPDATE"
    return sql


def get(model: type[M], *, lock: bool = False, **where: Any) -> M:
    """`model.objects.get(**where)` (`lock`: `.select_for_update()`), every column loaded,
    for equality conditions on the model's own columns that match one row at most."""
    found = get_or_none(model, lock=lock, **where)
    if found is None:
        missing: Any = model
        raise missing.DoesNotExist(f"{model.__name__} matching query does not exist.")
    return found


def get_or_none(model: type[M], *, lock: bool = False, **where: Any) -> M | None:
    """As `get`, None where no row matches."""
    with connection.cursor() as cursor:
        cursor.execute(_get_sql(model, tuple(where), lock), _params(model, where))
        rows = cursor.fetchmany(2)
    if not rows:
        return None
    if len(rows) > 1:
        many: Any = model
        raise many.MultipleObjectsReturned(f"{model.__name__}: more than one row matches.")
    return from_row(model, rows[0])


@cache
def _filter_in_sql(model: type[Model], name: str, count: int, where: tuple[str, ...]) -> str:
    quote = connection.ops.quote_name
    marks = ", ".join(["%s"] * count)
    sql = f"SELECT {columns(model)} FROM {quote(model._meta.db_table)} "
    sql += f"WHERE {quote(_field(model, name).column)} IN ({marks})"
    return sql + (f" AND {_conditions(model, where)}" if where else "")


def filter_in(model: type[M], name: str, values: Sequence[Any], **where: Any) -> list[M]:
    """`model.objects.filter(**{f"{name}__in": values}, **where)`, unordered, every column
    loaded: its SQL made once per number of values (an order's few lines)."""
    if not values:
        return []
    field = _field(model, name)
    params = [field.get_db_prep_value(v, connection) for v in values]
    sql = _filter_in_sql(model, name, len(values), tuple(where))
    with connection.cursor() as cursor:
        cursor.execute(sql, params + _params(model, where))
        rows = cursor.fetchall()
    return [from_row(model, row) for row in rows]


@cache
def _values_sql(
    model: type[Model], names: tuple[str, ...], where: tuple[str, ...]
) -> tuple[str, list]:
    meta = model._meta
    quote = connection.ops.quote_name
    fields = [_field(model, name) for name in names]
    columns = ", ".join(quote(f.column) for f in fields)
    sql = f"SELECT {columns} FROM {quote(meta.db_table)} WHERE {_conditions(model, where)}"
    return sql, [_converters(f, meta.db_table) for f in fields]


def values_list(model: type[Model], names: Sequence[str], **where: Any) -> list[list[Any]]:
    """`model.objects.filter(**where).values_list(*names)`, unordered, for equality
    conditions on the model's own columns."""
    sql, converters = _values_sql(model, tuple(names), tuple(where))
    with connection.cursor() as cursor:
        cursor.execute(sql, _params(model, where))
        rows = cursor.fetchall()
    return [_convert(row, converters) for row in rows]


@cache
def _update_sql(
    model: type[Model], names: tuple[str, ...], where: tuple[str, ...]
) -> tuple[str, list[Field]]:
    quote = connection.ops.quote_name
    fields = [_field(model, name) for name in names]
    assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields)
    sql = f"UPDATE {quote(model._meta.db_table)} SET {assignments}"
    return f"{sql} WHERE {_conditions(model, where)}", fields


def update(instance: Model, fields: Sequence[str]) -> None:
    """`instance.save(update_fields=fields)` for a row that exists: auto_now fields take the
    time, every value is prepared by its field."""
    sql, prepared = _update_sql(type(instance), tuple(fields), ("pk",))
    values = _prepared(instance, prepared, add=False)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, *_params(type(instance), {"pk": instance.pk})])


def update_where(model: type[Model], values: dict[str, Any], **where: Any) -> int:
    """`model.objects.filter(**where).update(**values)` with plain values, for equality
    conditions: each value prepared by its field (no auto_now, as update() leaves it).
    Returns how many rows it changed."""
    sql, fields = _update_sql(model, tuple(values), tuple(where))
    prepared = [
        f.get_db_prep_save(v, connection) for f, v in zip(fields, values.values(), strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*prepared, *_params(model, where)])
        return cursor.rowcount


@cache
def _take_sql(model: type[Model], name: str, where: tuple[str, ...]) -> str:
    quote = connection.ops.quote_name
    column = quote(_field(model, name).column)
    sql = f"UPDATE {quote(model._meta.db_table)} SET {column} = {column} - %s"
    return f"{sql} WHERE {_conditions(model, where)} AND {column} >= %s"


def take(model: type[Model], name: str, amount: int, **where: Any) -> bool:
    """`filter(**where, **{f"{name}__gte": amount}).update(**{name: F(name) - amount})`: the
    check and the decrement in one statement, so that two racing callers cannot both take
    the last units. True if the row had enough and now has `amount` less."""
    params = [amount, *_params(model, where), amount]
    with connection.cursor() as cursor:
        cursor.execute(_take_sql(model, name, tuple(where)), params)
        return cursor.rowcount > 0


@cache
def _insert_sql(
    model: type[Model],
    conflict: tuple[str, ...],
    rows: int = 1,
    *,
    returning: bool = True,
    with_pk: bool = False,
) -> tuple[str, list[Field]]:
    """`with_pk`: the caller made the primary key (a UUID, a provider's id) and it is sent;
    otherwise the database assigns it."""
    meta = model._meta
    quote = connection.ops.quote_name
    fields = [f for f in meta.concrete_fields if with_pk or not f.primary_key]
    names = ", ".join(quote(f.column) for f in fields)
    row = f"({', '.join(['%s'] * len(fields))})"
    sql = f"INSERT INTO {quote(meta.db_table)} ({names}) VALUES {', '.join([row] * rows)}"
    if conflict:
        target = ", ".join(quote(_field(model, name).column) for name in conflict)
        sql += f" ON CONFLICT ({target}) DO NOTHING"
    if returning:
        sql += f" RETURNING {quote(meta.pk.column)}"
    return sql, fields


def insert(record: Model) -> None:
    """`record.save()` (or `objects.create`) for a new row: auto_now_add and the like filled
    in as save() would; a primary key that is not None (a UUID default, an id the caller
    made) is sent as it is, as save() sends it, and a None one set from the database's."""
    _insert(record, conflict=())


def insert_many(records: Sequence[Model], *, returning: bool = False) -> None:
    """`bulk_create(records)` in one statement, for rows whose primary keys the database
    assigns; `returning`: each record's pk is set from the rows the INSERT returns, taken
    to come back in the order they were given, as bulk_create takes them on PostgreSQL
    and SQLite (PostgreSQL does not promise it; Django relies on it)."""
    if not records:
        return
    sql, fields = _insert_sql(type(records[0]), (), len(records), returning=returning)
    values = [value for record in records for value in _prepared(record, fields, add=True)]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        if not returning:
            return
        for record, (pk,) in zip(records, cursor.fetchall(), strict=True):
            record.pk = pk
            record._state.adding = False
            record._state.db = connection.alias


def insert_once(record: Model, *, conflict: Sequence[str]) -> bool:
    """One INSERT ... ON CONFLICT DO NOTHING, where get_or_create takes four or five round
    trips (a read, a savepoint or a transaction of its own, the insert, its release or
    commit): for the rows every order or webhook writes once and a rerun must find (provider
    events, emails, the shipment). Inserts `record` unless a row with the same `conflict`
    columns exists: sets its pk and returns True if it is new; returns False, and leaves it
    unsaved, if one was there."""
    return _insert(record, conflict=tuple(conflict))


def _insert(record: Model, *, conflict: tuple[str, ...]) -> bool:
    # As save() decides: only a pk that is None is left to the database (an AutoField's).
    made = record.pk is not None
    sql, fields = _insert_sql(type(record), conflict, with_pk=made)
    values = _prepared(record, fields, add=True)
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        row = cursor.fetchone()  # none: a row with the same conflict columns was there
    if row is None:
        return False
    if not made:
        # The database's own key. A key the record made stays as it is: read back raw it
        # would not be the same value on SQLite (a UUID comes back as 32 hex digits).
        record.pk = row[0]
    record._state.adding = False
    record._state.db = connection.alias
    return True
