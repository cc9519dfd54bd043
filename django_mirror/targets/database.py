"""A ``DATABASES`` alias as target: same tables as the source, plus ``RowVersion``.

Writes go through the database driver in batches (``executemany``) rather than
model instances: replay is a bulk loader, and Django's per-object machinery would
cost more than the database does.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from django.db import DatabaseError, DataError, IntegrityError, connections, models, transaction

from django_mirror import conf, images
from django_mirror.events import UPSERT, Event, EventDecodeError, decode_row, decode_value, pk_text
from django_mirror.models import RowVersion
from django_mirror.targets.base import ApplyResult, CopyResult, Target, latest_per_row

logger = logging.getLogger("django_mirror.targets")


class UnknownModel(LookupError):
    """An event names a model that is not mirrored here."""


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: What one bad event can raise. Anything else (a lost connection, a missing table)
#: means the target itself is broken: replay stops rather than dead-letter everything.
APPLY_ERRORS = (IntegrityError, DataError, EventDecodeError, UnknownModel, ValueError, TypeError)


#: Backends with ``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE ... RETURNING``.
UPSERT_VENDORS = ("postgresql", "sqlite")


def _prepare(field: models.Field, connection: Any, value: Any) -> Any:
    return field.get_db_prep_save(value, connection=connection)


class DatabaseTarget(Target):
    """Mirror rows into the ``DATABASES`` alias ``alias``."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._prepare_cache: dict[type[models.Model], list[tuple[str, Any, Any]]] = {}

    def describe(self) -> str:
        return f"database {self.alias!r}"

    @property
    def connection(self) -> Any:
        return connections[self.alias]

    def _chunk_size(self) -> int:
        return max(1, min(500, (self.connection.features.max_query_params or 1000) - 10))

    def relax_foreign_keys(self) -> None:
        """Rows arrive in order per row, not across rows, so the target cannot check FKs.

        Like any logical replication, replay turns the session's foreign-key checks
        off; ``mirror_verify`` catches what a check would have.
        """
        conn = self.connection
        conn.ensure_connection()
        if getattr(conn, "_mirror_fk_relaxed", None) is conn.connection or conn.in_atomic_block:
            return
        statement = {
            "sqlite": "PRAGMA foreign_keys = OFF",
            "mysql": "SET SESSION foreign_key_checks = 0",
            "postgresql": "SET session_replication_role = replica",
        }.get(conn.vendor)
        if statement:
            try:
                with conn.cursor() as cursor:
                    cursor.execute(statement)
            except DatabaseError as exc:
                logger.warning(
                    "django-mirror: could not turn off foreign-key checks on %r (%s); rows "
                    "referencing rows not yet replayed will fail and be retried",
                    self.alias,
                    exc,
                )
        conn._mirror_fk_relaxed = conn.connection

    # --- reading ------------------------------------------------------------------------

    def versions(self, model_label: str, pks: Sequence[Any]) -> dict[str, tuple[int, bool]]:
        return self._versions(model_label.lower(), [pk_text(pk) for pk in pks], lock=False)

    def _versions(self, label: str, keys: list[str], lock: bool) -> dict[str, tuple[int, bool]]:
        found: dict[str, tuple[int, bool]] = {}
        for chunk in _chunks(keys, self._chunk_size()):
            qs = RowVersion.objects.using(self.alias).filter(model=label, pk_value__in=chunk)
            if lock and self.connection.features.has_select_for_update:
                qs = qs.select_for_update()
            for key, version, deleted in qs.values_list("pk_value", "version", "deleted"):
                found[key] = (version, deleted)
        return found

    # --- writing ------------------------------------------------------------------------

    def apply(self, events: Sequence[Event]) -> ApplyResult:
        """Apply a batch in one transaction; on failure, one event at a time to isolate it."""
        self.relax_foreign_keys()
        latest = latest_per_row(events)
        result = ApplyResult(stale=len(events) - len(latest))
        try:
            with transaction.atomic(using=self.alias):
                applied, stale = self._apply(latest)
        except APPLY_ERRORS:
            for event in sorted(latest, key=lambda e: e.version):
                self._apply_one(event, result)
            return result
        result.applied += applied
        result.stale += stale
        return result

    def _apply_one(self, event: Event, result: ApplyResult) -> None:
        """One event on its own; a unique clash with a stale row evicts that row, once."""
        error: Exception | None = None
        for evict in (False, True):
            try:
                with transaction.atomic(using=self.alias):
                    if evict and self._evict_unique_clashes(event):
                        result.stale += 1  # a newer row holds its unique value: superseded
                        return
                    applied, stale = self._apply([event])
            except APPLY_ERRORS as exc:
                error = exc
                if isinstance(exc, (EventDecodeError, UnknownModel)):
                    break
                continue
            result.applied += applied
            result.stale += stale
            return
        result.failed.append((event, self._redacted(event, f"{type(error).__name__}: {error}")))

    def _redacted(self, event: Event, reason: str) -> str:
        """The reason with the model's ``redact_fields`` values hidden: database errors
        quote them (PostgreSQL's "Failing row contains", MySQL's "Duplicate entry")."""
        config = conf.config_for_label(event.model)
        if config is None or config.model is None or not isinstance(event.row, dict):
            return reason
        for f in config.model._meta.concrete_fields:
            if f.name in config.redact_fields or f.attname in config.redact_fields:
                try:
                    value = str(decode_value(event.row.get(f.column)))
                except EventDecodeError:
                    continue
                if event.row.get(f.column) not in (None, ""):
                    reason = reason.replace(value, "<redacted>")
        return reason

    def _model(self, event: Event) -> type[models.Model]:
        config = conf.config_for_label(event.model)
        if config is None or config.model is None:
            raise UnknownModel(f"{event.model} is not a mirrored model")
        return config.model

    def _apply(self, events: Sequence[Event]) -> tuple[int, int]:
        """Apply newest-per-row events inside the caller's transaction: (applied, stale)."""
        by_model: dict[type[models.Model], list[Event]] = defaultdict(list)
        for event in events:
            by_model[self._model(event)].append(event)
        applied = stale = 0
        apply = (
            self._apply_upserting
            if self.connection.vendor in UPSERT_VENDORS
            else self._apply_locking
        )
        for model, model_events in by_model.items():
            done = apply(model, model_events)
            applied += done
            stale += len(model_events) - done
        return applied, stale

    def _apply_locking(self, model: type[models.Model], events: list[Event]) -> int:
        """Portable: lock the stored versions, then delete and insert the newer rows."""
        label = model._meta.label_lower
        current = self._versions(label, [e.key[1] for e in events], lock=True)
        fresh = [e for e in events if e.version > current.get(e.key[1], (-1, False))[0]]
        if not fresh:
            return 0
        # Decode first: a bad event must fail before anything is written.
        rows = [self._values(model, e) for e in fresh if e.op == UPSERT]
        self._delete_rows(model, [e.pk for e in fresh])
        self._insert_rows(model, rows)
        self._write_versions(label, fresh, current)
        return len(fresh)

    def _apply_upserting(self, model: type[models.Model], events: list[Event]) -> int:
        """PostgreSQL and SQLite: one conditional version upsert names the events that are
        newer than what the target holds; then one row upsert and one delete apply them."""
        rows = {e.key[1]: self._values(model, e) for e in events if e.op == UPSERT}
        won = self._claim_versions(model._meta.label_lower, events)
        self._delete_rows(model, [e.pk for e in events if e.op != UPSERT and e.key[1] in won])
        self._upsert_rows(model, [params for key, params in rows.items() if key in won])
        return len(won)

    def _claim_versions(self, label: str, events: list[Event]) -> set[str]:
        qn = self.connection.ops.quote_name
        table = qn(RowVersion._meta.db_table)
        version = qn("version")
        won: set[str] = set()
        with self.connection.cursor() as cursor:
            for chunk in _chunks(events, self._row_chunk(4)):
                sql = (
                    f"INSERT INTO {table} ({qn('model')}, {qn('pk_value')}, {version}, "
                    f"{qn('deleted')}) VALUES {', '.join(['(%s, %s, %s, %s)'] * len(chunk))} "
                    f"ON CONFLICT ({qn('model')}, {qn('pk_value')}) DO UPDATE SET "
                    f"{version} = EXCLUDED.{version}, {qn('deleted')} = EXCLUDED.{qn('deleted')} "
                    f"WHERE {table}.{version} < EXCLUDED.{version} RETURNING {qn('pk_value')}"
                )
                params: list[Any] = []
                for e in chunk:
                    params += (label, e.key[1], e.version, e.op != UPSERT)
                cursor.execute(sql, params)
                won.update(key for (key,) in cursor.fetchall())
        return won

    def _upsert_rows(self, model: type[models.Model], rows: list[list[Any]]) -> None:
        if not rows:
            return
        qn = self.connection.ops.quote_name
        fields = model._meta.concrete_fields
        pk = model._meta.pk
        others = [qn(f.column) for f in fields if f is not pk]
        action = (
            f"DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in others)}"
            if others
            else "DO NOTHING"
        )
        row = f"({', '.join(['%s'] * len(fields))})"
        with self.connection.cursor() as cursor:
            for chunk in _chunks(rows, self._row_chunk(len(fields))):
                cursor.execute(
                    f"INSERT INTO {qn(model._meta.db_table)} "
                    f"({', '.join(qn(f.column) for f in fields)}) "
                    f"VALUES {', '.join([row] * len(chunk))} ON CONFLICT ({qn(pk.column)}) {action}",
                    [value for params in chunk for value in params],
                )

    def _row_chunk(self, columns: int) -> int:
        """Rows per multi-row statement within the backend's parameter limit."""
        limit = self.connection.features.max_query_params or 10_000
        return max(1, min(1000, limit // columns))

    def _values(self, model: type[models.Model], event: Event) -> list[Any]:
        values = decode_row(model, event.row or {})
        values[model._meta.pk.attname] = model._meta.pk.to_python(event.pk)
        return self._params(model, values)

    def _params(self, model: type[models.Model], values: dict[str, Any]) -> list[Any]:
        """Driver parameters of one row; excluded fields get their default."""
        params = []
        for attname, prepare, default in self._preparers(model):
            value = values[attname] if attname in values else default()
            params.append(value if prepare is None or value is None else prepare(value))
        return params

    def _preparers(self, model: type[models.Model]) -> list[tuple[str, Any, Any]]:
        """Per field: attname, the driver conversion (None where the value passes as it
        is) and the default; built once per model, since replay calls it per row."""
        cached = self._prepare_cache.get(model)
        if cached is None:
            conn = self.connection
            cached = []
            for f in model._meta.concrete_fields:
                passes = images.passes_unchanged(f)
                prepare = None if passes else functools.partial(_prepare, f, conn)
                cached.append((f.attname, prepare, f.get_default))
            self._prepare_cache[model] = cached
        return cached

    # --- copy ---------------------------------------------------------------------------

    def copy(self, model: type[models.Model], rows: Sequence[dict[str, Any]]) -> CopyResult:
        """Insert the rows the target neither has nor holds a version or tombstone for.

        Copied rows get version 0: any captured write is newer and wins. A row that
        clashes with a unique value replay already applied changed in the source since
        it was read; its event is on its way, so it is skipped, not forced.
        """
        self.relax_foreign_keys()
        result = CopyResult()
        try:
            with transaction.atomic(using=self.alias):
                self._copy(model, rows, result)
            return result
        except IntegrityError:
            result = CopyResult()
        for row in rows:
            try:
                with transaction.atomic(using=self.alias):
                    self._copy(model, [row], result)
            except IntegrityError:
                result.clashed += 1
        return result

    def _copy(
        self, model: type[models.Model], rows: Sequence[dict[str, Any]], result: CopyResult
    ) -> None:
        label = model._meta.label_lower
        pk = model._meta.pk
        keys = [pk_text(row[pk.attname]) for row in rows]
        held = self._versions(label, keys, lock=True)
        present = {
            pk_text(value) for value in self._existing_pks(model, [r[pk.attname] for r in rows])
        }
        fresh = [
            row
            for row, key in zip(rows, keys, strict=True)
            if key not in held and key not in present
        ]
        self._insert_rows(model, [self._params(model, row) for row in fresh])
        self._store_versions(label, [(pk_text(row[pk.attname]), 0, False) for row in fresh])
        result.copied += len(fresh)
        result.skipped += len(rows) - len(fresh)

    def repair(
        self, model: type[models.Model], rows: Sequence[dict[str, Any]], pks: Sequence[Any]
    ) -> None:
        """Make the rows ``pks`` what the source holds (``rows``; absent ones are deleted).

        Versions replay applied are kept, so a newer event still wins and an older one is
        still skipped; rows without one get version 0, deleted ones a tombstone.
        """
        self.relax_foreign_keys()
        label = model._meta.label_lower
        pk = model._meta.pk
        keys = [pk_text(value) for value in pks]
        live = {pk_text(row[pk.attname]) for row in rows}
        with transaction.atomic(using=self.alias):
            held = self._versions(label, keys, lock=True)
            self._delete_rows(model, list(pks))
            self._insert_rows(model, [self._params(model, row) for row in rows])
            self._store_versions(
                label,
                [(key, held.get(key, (0, False))[0], key not in live) for key in keys],
                replace=keys,
            )

    def _existing_pks(self, model: type[models.Model], pks: list[Any]) -> list[Any]:
        found: list[Any] = []
        for chunk in _chunks(pks, self._chunk_size()):
            qs = models.QuerySet(model=model, using=self.alias).filter(pk__in=chunk)
            found.extend(qs.values_list("pk", flat=True))
        return found

    def _delete_rows(self, model: type[models.Model], pks: list[Any]) -> None:
        qn = self.connection.ops.quote_name
        pk = model._meta.pk
        with self.connection.cursor() as cursor:
            for chunk in _chunks(pks, self._chunk_size()):
                cursor.execute(
                    f"DELETE FROM {qn(model._meta.db_table)} WHERE {qn(pk.column)} IN "
                    f"({', '.join(['%s'] * len(chunk))})",
                    [pk.get_db_prep_value(pk.to_python(v), self.connection) for v in chunk],
                )

    def _insert_rows(self, model: type[models.Model], rows: list[list[Any]]) -> None:
        if not rows:
            return
        qn = self.connection.ops.quote_name
        fields = model._meta.concrete_fields
        sql = (
            f"INSERT INTO {qn(model._meta.db_table)} "
            f"({', '.join(qn(f.column) for f in fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))})"
        )
        with self.connection.cursor() as cursor:
            cursor.executemany(sql, rows)

    def _write_versions(
        self, label: str, events: list[Event], current: dict[str, tuple[int, bool]]
    ) -> None:
        self._store_versions(
            label,
            [(e.key[1], e.version, e.op != UPSERT) for e in events],
            replace=[e.key[1] for e in events if e.key[1] in current],
        )

    def _store_versions(
        self, label: str, entries: list[tuple[str, int, bool]], replace: Sequence[str] = ()
    ) -> None:
        """Write ``(pk text, version, deleted)`` rows, first dropping those of ``replace``
        (delete + insert: portable, and two statements per batch)."""
        qn = self.connection.ops.quote_name
        table = qn(RowVersion._meta.db_table)
        with self.connection.cursor() as cursor:
            for chunk in _chunks(replace, self._chunk_size()):
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

    def _evict_unique_clashes(self, event: Event) -> bool:
        """Delete target rows that hold this upsert's unique values under another key;
        True, deleting nothing, when one of them is newer than the event.

        The source's own unique constraint means that of two rows holding one value, the
        older one changed or went before the newer one took it; that change's event is
        still on its way (it keeps its version, so it lands). So an older row is evicted,
        and against a newer one this event is already superseded (shards interleave).
        """
        if event.op != UPSERT:
            return False
        from django_mirror.query import unique_sets

        model = self._model(event)
        values = decode_row(model, event.row or {})
        qs = models.QuerySet(model=model, using=self.alias)
        pks: list[Any] = []
        for names in unique_sets(model):
            lookup = {name: values.get(name) for name in names}
            if None in lookup.values():
                continue
            clashing = qs.filter(**lookup).exclude(pk=model._meta.pk.to_python(event.pk))
            pks.extend(clashing.values_list("pk", flat=True))
        if not pks:
            return False
        held = self._versions(model._meta.label_lower, [pk_text(pk) for pk in pks], lock=True)
        if any(version > event.version for version, _ in held.values()):
            return True
        self._delete_rows(model, pks)
        return False
