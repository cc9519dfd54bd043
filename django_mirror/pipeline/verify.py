"""Prove, row by row, that a model's target holds what its source holds.

Both sides are compared in primary-key ranges by checksum — inside the database when
source and target are PostgreSQL or MySQL/MariaDB, in Python over the canonical event
encoding otherwise — and only ranges that differ are fetched and compared row by row.
A difference may just be replay lag, so it is re-checked after a delay before it
counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, models
from django.db.models import OuterRef, Subquery

from django_mirror.capture.record import paused
from django_mirror.config import conf
from django_mirror.core.diff import EXTRA, Difference, compare_rows, redacted_row
from django_mirror.core.events import encode_column, pk_text
from django_mirror.models import MismatchRecord, VerifyRun
from django_mirror.targets import get_target


@dataclass
class VerifyStats:
    model: str
    rows: int = 0
    chunks: int = 0
    chunks_differing: int = 0
    suspected: int = 0
    differences: list[Difference] = field(default_factory=list)
    repaired: int = 0
    method: str = "python"
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "rows": self.rows,
            "chunks": self.chunks,
            "chunks_differing": self.chunks_differing,
            "suspected": self.suspected,
            "differences": [d.as_dict() for d in self.differences],
            "repaired": self.repaired,
            "method": self.method,
            "seconds": round(self.elapsed, 3),
            "rows_per_second": round(self.rows / max(self.elapsed, 1e-9), 1),
        }


class Verifier:
    """Compare one model's source and database target."""

    def __init__(
        self,
        config: conf.ModelConfig,
        chunk_size: int = 1000,
        recheck_delay: float = 5.0,
        progress: Callable[[VerifyStats], None] | None = None,
        segments: int = 4,
    ) -> None:
        if config.model is None:
            raise ValueError(f"{config.label}: verify needs a model")
        self.config = config
        self.model: type[models.Model] = config.model
        # The store holding the truth against the one following it: after promotion the
        # target is checked against, and repairs rewrite, the old store.
        self.source = config.primary_alias
        self.target = config.other_alias
        #: A target that is not a database: read by key, and scanned in ``segments``.
        self.store = get_target(config) if self.target is None else None
        self.segments = segments
        self.chunk_size = chunk_size
        self.recheck_delay = recheck_delay
        self.progress = progress
        self.fields = [
            f
            for f in self.model._meta.concrete_fields
            if f.name not in config.exclude_fields and f.attname not in config.exclude_fields
        ]
        self.stats = VerifyStats(config.label, method=self._method())

    # --- checksums ----------------------------------------------------------------------

    def _method(self) -> str:
        if self.target is None:
            return "fetch"
        source, target = connections[self.source].vendor, connections[self.target].vendor
        return source if source == target and source in ("postgresql", "mysql") else "python"

    def _range(self, qs: models.QuerySet, low: Any, high: Any) -> models.QuerySet:
        if low is not None:
            qs = qs.filter(pk__gt=low)
        if high is not None:
            qs = qs.filter(pk__lte=high)
        return qs.order_by("pk")

    def _sql_checksum(self, alias: str, low: Any, high: Any) -> str:
        connection = connections[alias]
        qn = connection.ops.quote_name
        pk = self.model._meta.pk
        where, params = [], []
        if low is not None:
            where.append(f"{qn(pk.column)} > %s")
            params.append(pk.get_db_prep_value(low, connection))
        if high is not None:
            where.append(f"{qn(pk.column)} <= %s")
            params.append(pk.get_db_prep_value(high, connection))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        columns = [qn(f.column) for f in self.fields]
        if connection.vendor == "postgresql":
            # An order-free sum of 64-bit row hashes, with the count: a few times cheaper
            # than md5 over the sorted rows, and a differing range still shows.
            row = f"CAST(ROW({', '.join(columns)}) AS text)"
            sql = (
                f"SELECT count(*) || ':' || coalesce(sum(hashtextextended({row}, 0)), 0) "
                f"FROM {qn(self.model._meta.db_table)} {clause}"
            )
        else:  # MySQL / MariaDB: QUOTE() tells NULL from '' and 'NULL'
            row = f"CONCAT_WS(',', {', '.join(f'QUOTE({c})' for c in columns)})"
            sql = (
                f"SELECT MD5(GROUP_CONCAT(MD5({row}) ORDER BY {qn(pk.column)} SEPARATOR '')) "
                f"FROM {qn(self.model._meta.db_table)} {clause}"
            )
        with connection.cursor() as cursor:
            if connection.vendor == "mysql":
                cursor.execute("SET SESSION group_concat_max_len = 67108864")
            cursor.execute(sql, params)
            return str(cursor.fetchone()[0] or "")

    def _rows(self, alias: str, low: Any, high: Any) -> dict[str, list[Any]]:
        """Rows of a range as ``{pk text: canonical encoded values}``."""
        qs = self._range(models.QuerySet(model=self.model, using=alias), low, high)
        return self._encode(qs)

    def _rows_by_pk(self, alias: str | None, pks: list[Any]) -> dict[str, list[Any]]:
        """Rows by key from a database alias, or (None) from the non-database target."""
        if alias is None:
            return self._fetched(pks)
        rows: dict[str, list[Any]] = {}
        for start in range(0, len(pks), 500):
            chunk = pks[start : start + 500]
            rows.update(
                self._encode(models.QuerySet(model=self.model, using=alias).filter(pk__in=chunk))
            )
        return rows

    def _fetched(self, pks: list[Any]) -> dict[str, list[Any]]:
        assert self.store is not None
        found = self.store.fetch(self.model, pks)
        return {
            key: [encode_column(f, row.get(f.attname)) for f in self.fields]
            for key, row in found.items()
        }

    def _encode(self, qs: models.QuerySet) -> dict[str, list[Any]]:
        attnames = [f.attname for f in self.fields]
        pk = self.model._meta.pk.attname
        return {
            pk_text(row[pk]): [encode_column(f, row[f.attname]) for f in self.fields]
            for row in qs.values(*attnames, pk)
        }

    # --- the walk -----------------------------------------------------------------------

    def _ranges(self) -> Iterator[tuple[Any, Any, int]]:
        """Half-open (low, high] key ranges covering every key on either side, with the
        number of source rows in each; each range's end is found in the database."""
        source = models.QuerySet(model=self.model, using=self.source).order_by("pk")
        low = None
        while True:
            page = source.filter(pk__gt=low) if low is not None else source
            end = list(page.values_list("pk", flat=True)[self.chunk_size - 1 : self.chunk_size])
            if not end:
                yield low, None, page.count()  # open-ended: extra target rows land in it
                return
            yield low, end[0], self.chunk_size
            low = end[0]

    def _compare(
        self, source: dict[str, list[Any]], target: dict[str, list[Any]]
    ) -> list[Difference]:
        return compare_rows(
            self.config.label,
            [f.name for f in self.fields],
            source,
            target,
            self.config.redact_fields,
            self.model._meta.pk.to_python,
        )

    def run(self) -> VerifyStats:
        if self.store is not None:
            return self._run_by_key()
        suspected: list[Difference] = []
        # The target's checksum of a range is computed while the source's is: one
        # worker thread, with its own connection, closed at the end.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirror-verify") as pool:
            try:
                for low, high, count in self._ranges():
                    self.stats.chunks += 1
                    self.stats.rows += count
                    suspected += self._check_range(pool, low, high)
                    if self.progress:
                        self.progress(self.stats)
            finally:
                pool.submit(connections.close_all).result()
        self.stats.suspected = len(suspected)
        if suspected and self.recheck_delay > 0:
            time.sleep(self.recheck_delay)
        self.stats.differences = self.recheck(suspected)
        return self.stats

    def _run_by_key(self) -> VerifyStats:
        """A target that is not a database: each range of source rows against the same
        keys fetched from it, then its rows scanned in parallel segments for keys the
        source lacks (where the store can be scanned)."""
        suspected: list[Difference] = []
        for low, high, count in self._ranges():
            self.stats.chunks += 1
            self.stats.rows += count
            source_rows = self._rows(self.source, low, high)
            pks = [self.model._meta.pk.to_python(key) for key in source_rows]
            differences = self._compare(source_rows, self._fetched(pks) if pks else {})
            self.stats.chunks_differing += bool(differences)
            suspected += differences
            if self.progress:
                self.progress(self.stats)
        suspected += self._extras()
        self.stats.suspected = len(suspected)
        if suspected and self.recheck_delay > 0:
            time.sleep(self.recheck_delay)
        self.stats.differences = self.recheck(suspected)
        return self.stats

    def _extras(self) -> list[Difference]:
        """Rows the target holds and the source does not, scanned segment by segment."""
        store = self.store
        assert store is not None
        pk = self.model._meta.pk

        def segment(number: int) -> list[Difference]:
            extra: list[Difference] = []
            try:
                batch: list[Any] = []
                for row in store.scan(self.model, number, self.segments):
                    batch.append(row[pk.attname])
                    if len(batch) >= self.chunk_size:
                        extra += self._absent_from_source(batch)
                        batch = []
                extra += self._absent_from_source(batch)
            finally:
                connections.close_all()
            return extra

        try:
            with ThreadPoolExecutor(self.segments, thread_name_prefix="mirror-scan") as pool:
                return [d for found in pool.map(segment, range(self.segments)) for d in found]
        except NotImplementedError:
            self.stats.method = "fetch (no scan: rows only the target holds are not seen)"
            return []

    def _absent_from_source(self, pks: list[Any]) -> list[Difference]:
        if not pks:
            return []
        present = set(
            models.QuerySet(model=self.model, using=self.source)
            .filter(pk__in=pks)
            .values_list("pk", flat=True)
        )
        return [Difference(self.config.label, p, EXTRA) for p in pks if p not in present]

    def _check_range(self, pool: ThreadPoolExecutor, low: Any, high: Any) -> list[Difference]:
        target = self.target
        assert target is not None  # a target that is not a database is checked by key
        if self.stats.method == "python":
            rows_future = pool.submit(self._rows, target, low, high)
            source_rows = self._rows(self.source, low, high)
            target_rows = rows_future.result()
            if source_rows == target_rows:
                return []
        else:
            checksum_future = pool.submit(self._sql_checksum, target, low, high)
            if self._sql_checksum(self.source, low, high) == checksum_future.result():
                return []
            source_rows = self._rows(self.source, low, high)
            target_rows = self._rows(target, low, high)
        self.stats.chunks_differing += 1
        return self._compare(source_rows, target_rows)

    def recheck(self, suspected: list[Difference]) -> list[Difference]:
        """Compare these rows again: what replay has caught up with meanwhile drops out."""
        if not suspected:
            return []
        pks = [d.pk for d in suspected]
        return self._compare(self._rows_by_pk(self.source, pks), self._rows_by_pk(self.target, pks))

    # --- reporting and repair -------------------------------------------------------------

    def current_values(
        self, pks: list[Any]
    ) -> dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]:
        """``{pk text: (source row, target row)}`` as they are now, ``redact_fields``
        hidden; None for a side without the row."""
        names = [f.name for f in self.fields]
        hidden = set(self.config.redact_fields)
        source = self._rows_by_pk(self.source, pks)
        target = self._rows_by_pk(self.target, pks)

        return {
            pk_text(pk): (
                redacted_row(names, source.get(pk_text(pk)), hidden),
                redacted_row(names, target.get(pk_text(pk)), hidden),
            )
            for pk in pks
        }

    def record(self) -> list[MismatchRecord]:
        """Store each difference as a ``MismatchRecord`` of kind ``verify``, redacted."""
        values = self.current_values([d.pk for d in self.stats.differences])
        records = [
            MismatchRecord(
                kind=MismatchRecord.Kind.VERIFY,
                model=self.config.label,
                pk_value=pk_text(difference.pk)[:255],
                source_value=values[pk_text(difference.pk)][0],
                target_value=values[pk_text(difference.pk)][1],
                diff=difference.as_dict(),
            )
            for difference in self.stats.differences
        ]
        return MismatchRecord.objects.using(conf.source_alias()).bulk_create(records)

    def repair(self) -> int:
        """Rewrite the differing target rows from the source, keeping replay's versions."""
        from django_mirror.targets import DatabaseTarget

        if self.target is None:
            raise ValueError(
                f"{self.config.label}: --repair rewrites database targets only; for "
                f"{self.store.describe() if self.store else 'this target'} replay from the start"
            )
        pks = [d.pk for d in self.stats.differences]
        if not pks:
            return 0
        rows = list(
            models.QuerySet(model=self.model, using=self.source)
            .filter(pk__in=pks)
            .values(*[f.attname for f in self.fields])  # exclude_fields never leave the source
        )
        with paused():
            DatabaseTarget(self.target).repair(self.model, rows, pks)
        remaining = self.recheck(self.stats.differences)
        self.stats.repaired = len(self.stats.differences) - len(remaining)
        self.stats.differences = remaining
        return self.stats.repaired


def last_runs() -> dict[str, VerifyRun]:
    """The newest finished ``mirror_verify`` of each model (lower-cased label): what a
    move to phase ``mirror`` checks, and what status pages show."""
    runs = VerifyRun.objects.using(conf.source_alias())
    newest = (
        runs.filter(model=OuterRef("model"), finished_at__isnull=False)
        .order_by("-finished_at")
        .values("finished_at")[:1]
    )
    return {run.model.lower(): run for run in runs.filter(finished_at=Subquery(newest))}
