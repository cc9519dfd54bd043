"""The versions a database target holds per row (``RowVersion``): read, stored, claimed.

Every write the target takes is decided here: an event applies only where its version
is newer than the stored one, and a delete leaves a tombstone version so an older
upsert arriving late cannot bring the row back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections, transaction

from django_mirror.core.batching import chunks, keys_per_statement
from django_mirror.core.events import UPSERT, Event
from django_mirror.models import RowVersion
from django_mirror.targets.database.statements import insert_many, sqlite_values

#: Django 6.1 renamed ``savepoint()`` (deprecated there) to ``savepoint_create()``.
_savepoint_create = getattr(transaction, "savepoint_create", transaction.savepoint)


def read(alias: str, label: str, keys: list[str], lock: bool) -> dict[str, tuple[int, bool]]:
    """``{pk text: (version, deleted)}`` of the rows among ``keys`` the target has seen;
    ``lock``: held ``FOR UPDATE`` where the database has it."""
    found: dict[str, tuple[int, bool]] = {}
    for chunk in chunks(keys, keys_per_statement(alias)):
        qs = RowVersion.objects.using(alias).filter(model=label, pk_value__in=chunk)
        if lock and connections[alias].features.has_select_for_update:
            qs = qs.select_for_update()
        for key, version, deleted in qs.values_list("pk_value", "version", "deleted"):
            found[key] = (version, deleted)
    return found


def store(
    alias: str, label: str, entries: list[tuple[str, int, bool]], replace: Sequence[str] = ()
) -> None:
    """Write ``(pk text, version, deleted)`` rows, first dropping those of ``replace``
    (delete + insert: portable, and two statements per batch)."""
    connection = connections[alias]
    qn = connection.ops.quote_name
    table = qn(RowVersion._meta.db_table)
    with connection.cursor() as cursor:
        for chunk in chunks(replace, keys_per_statement(alias)):
            cursor.execute(
                f"DELETE FROM {table} WHERE {qn('model')} = %s AND {qn('pk_value')} IN "
                f"({', '.join(['%s'] * len(chunk))})",
                [label, *chunk],
            )
        if entries:
            cursor.executemany(
                f"INSERT INTO {table} ({qn('model')}, {qn('pk_value')}, {qn('version')}, "
                f"{qn('deleted')}) VALUES (%s, %s, %s, %s)",
                [(label, key, version, deleted) for key, version, deleted in entries],
            )


def store_events(
    alias: str, label: str, events: list[Event], current: dict[str, tuple[int, bool]]
) -> None:
    """Store the events' versions, replacing those ``current`` holds for their rows."""
    store(
        alias,
        label,
        [(e.key[1], e.version, e.op != UPSERT) for e in events],
        replace=[e.key[1] for e in events if e.key[1] in current],
    )


def claim(alias: str, label: str, upserts: list[Event], deletes: list[Event]) -> set[str]:
    """Store each event's version where it is newer than the stored one (or there is
    none); the pk texts of the events that did, and so are to be applied.

    One conditional upsert (``ON CONFLICT ... DO UPDATE ... WHERE``): PostgreSQL and
    SQLite only."""
    connection = connections[alias]
    qn = connection.ops.quote_name
    table = qn(RowVersion._meta.db_table)
    version, deleted = qn("version"), qn("deleted")
    on_conflict = (
        f"ON CONFLICT ({qn('model')}, {qn('pk_value')}) DO UPDATE SET "
        f"{version} = EXCLUDED.{version}, {deleted} = EXCLUDED.{deleted} "
        f"WHERE {table}.{version} < EXCLUDED.{version}"
    )
    if connection.vendor == "sqlite":
        return _claim_sqlite(alias, label, upserts, deletes, on_conflict)
    # In key order, as copy claims them: two writers of one set of keys then wait for
    # each other in one direction only, never in a deadlock.
    rows = sorted(
        [(label, e.key[1], e.version, False) for e in upserts]
        + [(label, e.key[1], e.version, True) for e in deletes]
    )
    found = insert_many(
        alias,
        RowVersion,
        ["model", "pk_value", "version", "deleted"],
        rows,
        f"{on_conflict} RETURNING {qn('pk_value')}",
    )
    return {key for (key,) in found}


def _claim_sqlite(
    alias: str, label: str, upserts: list[Event], deletes: list[Event], on_conflict: str
) -> set[str]:
    """SQLite: first without ``RETURNING``, which SQLite runs as a trigger per row that
    adds more than half to the claim's time. When it stored a version for every event,
    the rule, every event won (each is the only one of its row, and stores one row
    or none); otherwise that claim is undone and made again, naming the winners.

    One writer holds the whole file, so there is no order to keep. Upserts and
    deletes go apart, ``deleted`` written in the statement: a bool bound per row
    costs the driver an adapter look-up each, which adds a third to the time.
    """
    groups = [
        (tombstone, [(e.key[1], e.version) for e in events])
        for tombstone, events in ((False, upserts), (True, deletes))
    ]
    savepoint = _savepoint_create(alias)
    if _run_sqlite_claim(alias, label, groups, on_conflict)[1] == len(upserts) + len(deletes):
        transaction.savepoint_commit(savepoint, alias)
        return {key for _, rows in groups for key, _ in rows}
    transaction.savepoint_rollback(savepoint, alias)
    qn = connections[alias].ops.quote_name
    returning = f"{on_conflict} RETURNING {qn('pk_value')}"
    found = _run_sqlite_claim(alias, label, groups, returning)[0]
    return {key for (key,) in found}


def _run_sqlite_claim(
    alias: str, label: str, groups: list[tuple[bool, list[tuple[str, int]]]], on_conflict: str
) -> tuple[list[tuple[Any, ...]], int]:
    """Run the claim over ``(tombstone, [(pk text, version)])`` groups: what it
    returns, and how many versions it stored."""
    qn = connections[alias].ops.quote_name
    columns = ", ".join(qn(c) for c in ("model", "pk_value", "version", "deleted"))
    found: list[tuple[Any, ...]] = []
    stored = 0
    for tombstone, rows in groups:
        if rows:
            returned, changed = sqlite_values(
                alias,
                f"INSERT INTO {qn(RowVersion._meta.db_table)} ({columns}) "
                f"SELECT ?, column1, column2, {int(tombstone)} FROM (",
                rows,
                f") WHERE true {on_conflict}",  # WHERE: SQLite's rule for an upsert from SELECT
                fixed=[label],
            )
            found += returned
            stored += changed
    return found, stored
