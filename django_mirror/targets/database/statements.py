"""The batched SQL the database target writes with: inserts, upserts, updates, deletes.

Replay is a bulk loader, and Django's per-object machinery would cost more than the
database does, so rows go to the driver as parameter tuples, in as few statements as
each backend's parameter limit allows.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

from django.db import connections, models

from django_mirror.core.batching import chunks, keys_per_statement, rows_per_statement


def existing_pks(alias: str, model: type[models.Model], pks: list[Any]) -> list[Any]:
    """The keys among ``pks`` the table of ``alias`` holds."""
    found: list[Any] = []
    for chunk in chunks(pks, keys_per_statement(alias)):
        qs = models.QuerySet(model=model, using=alias).filter(pk__in=chunk)
        found.extend(qs.values_list("pk", flat=True))
    return found


def delete_rows(alias: str, model: type[models.Model], pks: list[Any]) -> None:
    """Delete the rows ``pks`` (event keys, converted to the key field's values)."""
    if not pks:
        return
    connection = connections[alias]
    qn = connection.ops.quote_name
    pk = model._meta.pk
    with connection.cursor() as cursor:
        for chunk in chunks(pks, keys_per_statement(alias)):
            cursor.execute(
                f"DELETE FROM {qn(model._meta.db_table)} WHERE {qn(pk.column)} IN "
                f"({', '.join(['%s'] * len(chunk))})",
                [pk.get_db_prep_value(pk.to_python(v), connection) for v in chunk],
            )


def update_rows(
    alias: str, model: type[models.Model], rows: Sequence[Sequence[Any]], pk_index: int
) -> None:
    """Rewrite held rows by primary key, every column (a clash with another row's
    unique value raises, as an insert would)."""
    others = [i for i in range(len(model._meta.concrete_fields)) if i != pk_index]
    if not rows or not others:
        return
    connection = connections[alias]
    qn = connection.ops.quote_name
    fields = model._meta.concrete_fields
    sql = (
        f"UPDATE {qn(model._meta.db_table)} SET "
        f"{', '.join(f'{qn(fields[i].column)} = %s' for i in others)} "
        f"WHERE {qn(model._meta.pk.column)} = %s"
    )
    with connection.cursor() as cursor:
        cursor.executemany(sql, [[row[i] for i in others] + [row[pk_index]] for row in rows])


def insert_rows(alias: str, model: type[models.Model], rows: Sequence[Sequence[Any]]) -> None:
    """Insert rows of parameters in field order, every column."""
    if not rows:
        return
    connection = connections[alias]
    qn = connection.ops.quote_name
    fields = model._meta.concrete_fields
    sql = (
        f"INSERT INTO {qn(model._meta.db_table)} "
        f"({', '.join(qn(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def upsert_rows(alias: str, model: type[models.Model], rows: Sequence[Sequence[Any]]) -> None:
    """Insert the rows, overwriting those the table holds (``ON CONFLICT`` on the key)."""
    if not rows:
        return
    qn = connections[alias].ops.quote_name
    pk = model._meta.pk
    others = [qn(f.column) for f in model._meta.concrete_fields if f is not pk]
    action = (
        f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in others)}"
        if others
        else "DO NOTHING"
    )
    columns = [f.column for f in model._meta.concrete_fields]
    insert_many(alias, model, columns, rows, f"ON CONFLICT ({qn(pk.column)}) {action}")


def insert_many(
    alias: str,
    model: type[models.Model],
    columns: list[str],
    rows: Sequence[Sequence[Any]],
    tail: str,
) -> list[tuple[Any, ...]]:
    """``INSERT INTO table (columns) <rows> tail``, returning what ``tail`` returns.

    PostgreSQL gets one array per column through ``unnest``: a short statement the
    driver converts once, where thousands of placeholders would cost more than the
    insert. Elsewhere, multi-row ``VALUES`` within the parameter limit.
    """
    conn = connections[alias]
    qn = conn.ops.quote_name
    into = f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(c) for c in columns)})"
    if conn.vendor == "sqlite":
        return sqlite_values(alias, into, rows, tail)[0]
    found: list[tuple[Any, ...]] = []
    with conn.cursor() as cursor:
        types = _array_types(model, columns, conn) if conn.vendor == "postgresql" else None
        if types is not None:
            arrays = ", ".join(f"%s::{t}[]" for t in types)
            for chunk in chunks(rows, 10_000):
                cursor.execute(
                    f"{into} SELECT * FROM unnest({arrays}) {tail}",
                    [list(values) for values in zip(*chunk, strict=True)],
                )
                found.extend(cursor.fetchall() if "RETURNING" in tail else ())
            return found
        placeholders = f"({', '.join(['%s'] * len(columns))})"
        for chunk in chunks(rows, rows_per_statement(alias, len(columns))):
            cursor.execute(
                f"{into} VALUES {', '.join([placeholders] * len(chunk))} {tail}",
                [value for params in chunk for value in params],
            )
            found.extend(cursor.fetchall() if "RETURNING" in tail else ())
    return found


def sqlite_values(
    alias: str,
    head: str,
    rows: Sequence[Sequence[Any]],
    tail: str,
    fixed: Sequence[Any] = (),
) -> tuple[list[tuple[Any, ...]], int]:
    """``head VALUES (?, ...), ... tail`` over ``rows``, in statements within SQLite's
    parameter limit, each with the ``fixed`` parameters first: what ``tail`` returns,
    and the rows the statements changed.

    Through the driver's own cursor, in its own ``?`` style: Django's cursor rewrites
    each ``%s`` with a regular expression, which on statements of a thousand
    parameters takes longer than SQLite takes to run them. Errors are Django's still.
    """
    conn = connections[alias]
    width = len(rows[0]) if rows else 1
    per = max(1, min(1000, (conn.features.max_query_params - len(fixed)) // width))
    marks = f"({', '.join(['?'] * width)})"
    found: list[tuple[Any, ...]] = []
    changed = 0
    conn.validate_no_broken_transaction()
    with conn.wrap_database_errors:
        cursor = conn.connection.cursor()
        try:
            for chunk in chunks(rows, per):
                cursor.execute(
                    f"{head} VALUES {', '.join([marks] * len(chunk))} {tail}",
                    [*fixed, *itertools.chain.from_iterable(chunk)],
                )
                found += cursor.fetchall()
                changed += cursor.rowcount
        finally:
            cursor.close()
    return found, changed


def _array_types(
    model: type[models.Model], columns: list[str], connection: Any
) -> list[str] | None:
    """Column types for ``unnest`` arrays, or None where arrays cannot carry the column.

    Length and precision modifiers are dropped: an explicit ``::varchar(20)`` cast would
    silently truncate a value the column must refuse (so that it is dead-lettered), while
    the assignment to the column still enforces them. Array columns are left to plain
    ``VALUES``, as ``unnest`` would flatten them.
    """
    by_column = {f.column: f for f in model._meta.concrete_fields}
    types = []
    for column in columns:
        db_type = by_column[column].db_type(connection)
        if not db_type or "[" in db_type:
            return None
        types.append(re.sub(r"\([^)]*\)", "", db_type).strip())
    return types
