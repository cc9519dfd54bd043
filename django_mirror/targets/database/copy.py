"""Copying existing rows into a database target while the service writes.

A copy must never undo what replay applied: rows go in only where the target holds
neither the row nor a version or tombstone for it. PostgreSQL to PostgreSQL streams
the rows with binary ``COPY`` instead of reading them through Django.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import IntegrityError, connections, models

from django_mirror.config import conf
from django_mirror.core.events import pk_text
from django_mirror.core.locking import write_lock_first
from django_mirror.models import RowVersion
from django_mirror.targets.base import CopyResult
from django_mirror.targets.database import statements, versions
from django_mirror.targets.database.store import DatabaseStore

#: Bytes of binary ``COPY`` data handed to the driver at once by the copy's fast path.
COPY_BLOCK_BYTES = 128 * 1024


class Copying(DatabaseStore):
    """``DatabaseTarget.copy`` and its PostgreSQL fast path, ``copy_from_postgres``."""

    def copy(self, model: type[models.Model], rows: Sequence[dict[str, Any]]) -> CopyResult:
        """Insert the rows the target neither has nor holds a version or tombstone for.

        Copied rows get version 0: any captured write is newer and wins. A row that
        clashes with a unique value replay already applied changed in the source since
        it was read; its event is on its way, so it is skipped, not forced.
        """
        result = CopyResult()
        try:
            with self._transaction():
                self._copy(model, rows, result)
            return result
        except IntegrityError:
            result = CopyResult()
        for row in rows:
            try:
                with self._transaction():
                    self._copy(model, [row], result)
            except IntegrityError:
                result.clashed += 1
        return result

    def _copy(
        self, model: type[models.Model], rows: Sequence[dict[str, Any]], result: CopyResult
    ) -> None:
        """Insert the unheld ones of ``rows`` inside the caller's transaction, counting
        them into ``result``."""
        label = model._meta.label_lower
        pk = model._meta.pk
        keys = [pk_text(row[pk.attname]) for row in rows]
        write_lock_first(self.alias, RowVersion._meta.db_table)  # reads, then inserts
        held = versions.read(self.alias, label, keys, lock=False)
        present = {
            pk_text(value)
            for value in statements.existing_pks(self.alias, model, [r[pk.attname] for r in rows])
        }
        fresh = [
            row
            for row, key in zip(rows, keys, strict=True)
            if key not in held and key not in present
        ]
        # Versions before rows, in key order, as replay claims them: a concurrent replay
        # of one of these rows then either waits for this chunk or makes its version
        # insert fail (IntegrityError: the rows are retried one by one), never deadlocks.
        versions.store(
            self.alias, label, sorted((pk_text(row[pk.attname]), 0, False) for row in fresh)
        )
        spec = self._spec(model)
        statements.insert_rows(self.alias, model, [spec.params(model, row) for row in fresh])
        result.copied += len(fresh)
        result.skipped += len(rows) - len(fresh)

    def copy_from_postgres(
        self, model: type[models.Model], source_alias: str, after: Any, limit: int
    ) -> tuple[CopyResult, Any, int] | None:
        """PostgreSQL to PostgreSQL: stream up to ``limit`` rows after key ``after`` with
        binary ``COPY``, and insert those the target neither holds nor holds a version or
        tombstone for.

        No version is written for the copied rows. Replay's delete of a row the target
        does not hold writes only a tombstone, which the chunk cannot see before replay
        commits; what meets the copy is replay's ``DELETE`` of the row, in the same
        transaction. So each chunk runs under ``SHARE ROW EXCLUSIVE`` on the table, which
        conflicts with every writer's lock on it (and with itself; readers go on): a
        writer that came first has committed, tombstones included, before the chunk
        looks; one that comes later waits for the chunk, and its ``DELETE`` then finds
        the copied row.

        Where the target holds no row past ``after`` and no version of the model at all
        (a copy run before replay), the rows stream straight into the table; otherwise
        into a scratch table, from which the held ones are dropped before the insert.

        Returns the result, the chunk's last key and the rows read; None when this path
        does not apply (other databases, excluded fields) or a row clashed with a unique
        value, so the caller copies the chunk the portable way.
        """
        source = connections[source_alias]
        target = self.connection
        config = conf.model_config(model)
        if source.vendor != "postgresql" or target.vendor != "postgresql":
            return None
        if config is not None and config.exclude_fields:
            return None
        qn = target.ops.quote_name
        table, pk = qn(model._meta.db_table), qn(model._meta.pk.column)
        columns = ", ".join(qn(f.column) for f in model._meta.concrete_fields)
        past = f"{pk} > %s" if after is not None else "true"
        params = [model._meta.pk.get_db_prep_value(after, source)] if after is not None else []
        rows = f"SELECT {columns} FROM {table} WHERE {past} ORDER BY {pk} LIMIT {int(limit)}"
        try:
            with self._transaction(), target.cursor() as out:
                out.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
                straight = self._holds_nothing_past(model, out, past, params)
                into = table if straight else "mirror_copy_chunk"
                if not straight:
                    out.execute(f"CREATE TEMP TABLE {into} (LIKE {table}) ON COMMIT DROP")
                read = self._pipe(source, rows, params, out, into, columns)
                if not read:
                    return CopyResult(), after, 0
                # Straight in, the chunk's rows are the only ones past ``after``.
                out.execute(
                    f"SELECT {pk} FROM {into} WHERE {past} ORDER BY {pk} DESC LIMIT 1", params
                )
                (last,) = out.fetchone()
                copied = read if straight else self._insert_unheld(model, out, params, last)
        except IntegrityError:
            return None
        return CopyResult(copied=copied, skipped=read - copied), last, read

    def _holds_nothing_past(
        self, model: type[models.Model], out: Any, past: str, params: list[Any]
    ) -> bool:
        """Whether the target holds no row matching ``past`` and no version of the model.

        Each is asked as the first key in index order: a plan that scans the table for a
        key past the chunk's start would read every row copied so far, only to find none.
        """
        qn = self.connection.ops.quote_name
        table, pk = qn(model._meta.db_table), qn(model._meta.pk.column)
        versions, key = qn(RowVersion._meta.db_table), qn("pk_value")
        out.execute(
            f"SELECT (SELECT {pk} FROM {table} WHERE {past} ORDER BY {pk} LIMIT 1) IS NULL "
            f"AND (SELECT {key} FROM {versions} WHERE {qn('model')} = %s ORDER BY {key} "
            "LIMIT 1) IS NULL",
            [*params, model._meta.label_lower],
        )
        return bool(out.fetchone()[0])

    def _pipe(
        self, source: Any, rows: str, params: list[Any], out: Any, table: str, columns: str
    ) -> int:
        """Stream the source query ``rows`` into ``table`` of the target with binary
        ``COPY``; the number of rows.

        The source sends a message per row; the target takes them in blocks, which saves
        a driver call per row (half the time of the stream).

        ``COPY`` goes through psycopg's own cursors: Django's debug cursor (``DEBUG =
        True``) takes no parameters for it. Their errors still become Django's.
        """
        with (
            source.wrap_database_errors,
            self.connection.wrap_database_errors,
            source.cursor() as read,
            read.cursor.copy(f"COPY ({rows}) TO STDOUT (FORMAT BINARY)", params) as rows_out,
            out.cursor.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as rows_in,
        ):
            block = bytearray()
            for data in rows_out:
                block += data
                if len(block) >= COPY_BLOCK_BYTES:
                    rows_in.write(block)
                    block = bytearray()
            rows_in.write(block)
        return out.rowcount

    def _insert_unheld(
        self, model: type[models.Model], out: Any, after: list[Any], last: Any
    ) -> int:
        """Insert the scratch table's rows but those the target holds, or holds a version
        or tombstone for (replay or an earlier copy got there first); how many.

        The held rows are deleted from the scratch table first, each kind in its own
        statement: in the insert's own statement, a plan scanning the target table would
        rescan what the statement inserts. The key range keeps the planner on the
        primary-key index, and the version lookup goes key by key through the version
        index, never through every version of the model.
        """
        qn = self.connection.ops.quote_name
        table, pk = qn(model._meta.db_table), qn(model._meta.pk.column)
        key = qn("pk_value")
        columns = ", ".join(qn(f.column) for f in model._meta.concrete_fields)
        out.execute(
            f"DELETE FROM mirror_copy_chunk chunk USING {table} t WHERE t.{pk} = chunk.{pk} "
            f"{f'AND t.{pk} > %s ' if after else ''}AND t.{pk} <= %s",
            [*after, last],
        )
        out.execute(
            f"DELETE FROM mirror_copy_chunk chunk USING {qn(RowVersion._meta.db_table)} v "
            f"WHERE v.{qn('model')} = %s AND v.{key} = chunk.{pk}::text "
            f"AND v.{key} = ANY(ARRAY(SELECT {pk}::text FROM mirror_copy_chunk))",
            [model._meta.label_lower],
        )
        out.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM mirror_copy_chunk")
        return out.rowcount
