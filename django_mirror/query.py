"""``MirroredQuerySet`` and ``MirroredManager``: the write paths that send no signals,
and the reads that shadow-read sampling sees.

``update()``, ``bulk_create()`` and ``bulk_update()`` bypass ``post_save``; a mirrored
model's default manager must use this queryset so they are captured too (system check
``django_mirror.E011`` enforces it). Reads end in ``_fetch_all`` (iteration, ``get``,
``first``/``last``, ``values``/``values_list``, ``in_bulk``), ``count``, ``exists`` and
``aggregate``, which is where a sampled read is timed and handed to the shadow pool.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from django.db import connections, models, transaction
from django.db.models import Q

from django_mirror import capture
from django_mirror.batching import chunks, keys_per_statement
from django_mirror.shadow import reads

T = TypeVar("T")


def unique_sets(model: type[models.Model]) -> list[tuple[str, ...]]:
    """Attribute-name tuples that identify a row besides its primary key."""
    opts = model._meta
    sets: list[tuple[str, ...]] = [
        (f.attname,) for f in opts.concrete_fields if f.unique and not f.primary_key
    ]
    for together in opts.unique_together:
        sets.append(tuple(opts.get_field(name).attname for name in together))
    for constraint in opts.total_unique_constraints:
        sets.append(tuple(opts.get_field(name).attname for name in constraint.fields))
    return sets


def _pks_by_unique_values(
    model: type[models.Model], objs: Sequence[models.Model], using: str
) -> list[Any]:
    """Find the rows ``bulk_create`` wrote when the database did not return their keys."""
    sets = unique_sets(model)
    lookups = []
    for obj in objs:
        for names in sets:
            values = {name: getattr(obj, name) for name in names}
            if all(value is not None for value in values.values()):
                lookups.append(Q(**values))
                break
        else:
            raise capture.CaptureError(
                f"{model._meta.label}: bulk_create() wrote rows whose primary keys the "
                f"{connections[using].vendor} backend did not return and no unique field "
                "identifies; set the primary keys before bulk_create()."
            )
    pks: list[Any] = []
    for chunk in chunks(lookups, 100):
        condition = Q()
        for lookup in chunk:
            condition |= lookup
        qs = models.QuerySet(model=model, using=using).filter(condition)
        pks.extend(qs.values_list("pk", flat=True))
    return pks


class MirroredQuerySet(models.QuerySet):
    """A ``QuerySet`` whose bulk write methods record operation events and whose reads,
    in a sampled shadow-read scope, also run on the other store."""

    # --- reads ----------------------------------------------------------------------
    # Iteration, get(), first()/last(), values()/values_list() and in_bulk() all end in
    # _fetch_all; count(), exists() and aggregate() ask the database directly.

    def _shadowed(self, kind: str, run: Callable[[], T], **details: Any) -> T:
        """``run()`` the read; when sampled, time it and hand the result to a shadow read."""
        read = reads.begin(self, kind)
        if read is None:
            return run()
        for name, value in details.items():
            setattr(read, name, value)
        started = time.perf_counter()
        result = run()
        elapsed = (time.perf_counter() - started) * 1000
        read.submit(self._result_cache if kind == reads.ROWS else result, elapsed)
        return result

    def _fetch_all(self) -> None:
        if self._result_cache is None:
            self._shadowed(reads.ROWS, super()._fetch_all)

    def count(self) -> int:
        if self._result_cache is not None:
            return len(self._result_cache)
        return self._shadowed(reads.COUNT, super().count)

    def exists(self) -> bool:
        if self._result_cache is not None:
            return bool(self._result_cache)
        return self._shadowed(reads.EXISTS, super().exists)

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        run = functools.partial(super().aggregate, *args, **kwargs)
        return self._shadowed(reads.AGGREGATE, run, aggregate=(args, kwargs))

    # --- writes ---------------------------------------------------------------------

    def update(self, **kwargs: Any) -> int:
        if capture.active_config(self.model, self.db) is None:
            return super().update(**kwargs)
        with transaction.atomic(using=self.db, savepoint=False):
            # Lock the matching rows, then update exactly those, so the events name
            # every row the statement changed and no other.
            locked = self.order_by().values_list("pk", flat=True)
            if connections[self.db].features.has_select_for_update:
                locked = locked.select_for_update()
            pks = list(locked)
            rows = 0
            for chunk in chunks(pks, keys_per_statement(self.db)):
                rows += super(MirroredQuerySet, self.filter(pk__in=chunk)).update(**kwargs)
            capture.record(self.model, self.db, upsert_pks=pks)
        return rows

    update.alters_data = True  # type: ignore[attr-defined]

    def delete(self) -> tuple[int, dict[str, int]]:
        if capture.active_config(self.model, self.db) is None:
            return super().delete()
        # Collector sends post_delete per row (capture listens, so nothing is
        # fast-deleted); batch() folds them into one outbox row per model.
        with transaction.atomic(using=self.db, savepoint=False), capture.batch(self.db):
            return super().delete()

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    def bulk_create(
        self,
        objs: Iterable[models.Model],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Sequence[str] | None = None,
        unique_fields: Sequence[str] | None = None,
    ) -> list[models.Model]:
        if capture.active_config(self.model, self.db) is None:
            return super().bulk_create(
                objs, batch_size, ignore_conflicts, update_conflicts, update_fields, unique_fields
            )
        objs = list(objs)
        if ignore_conflicts and not unique_sets(self.model) and all(o.pk is None for o in objs):
            # Only generated keys are unique, so nothing can conflict; asking for no
            # conflict handling lets the database return the keys capture needs.
            ignore_conflicts = False
        with transaction.atomic(using=self.db, savepoint=False):
            created = super().bulk_create(
                objs, batch_size, ignore_conflicts, update_conflicts, update_fields, unique_fields
            )
            unknown = [obj for obj in created if obj.pk is None]
            known = [obj for obj in created if obj.pk is not None] if unknown else created
            pks = _pks_by_unique_values(self.model, unknown, self.db) if unknown else []
            if ignore_conflicts or update_conflicts:
                # A conflicting row holds what the database kept, not the instance: lock
                # and re-read it, so its image is committed state no concurrent writer
                # is about to replace.
                pks.extend(obj.pk for obj in known)
                capture.record(self.model, self.db, upsert_pks=pks, lock=True)
            else:
                capture.record(self.model, self.db, upsert_pks=pks, instances=known)
        return created

    bulk_create.alters_data = True  # type: ignore[attr-defined]

    def bulk_update(
        self, objs: Iterable[models.Model], fields: Sequence[str], batch_size: int | None = None
    ) -> int:
        if capture.active_config(self.model, self.db) is None:
            return super().bulk_update(objs, fields, batch_size)
        with transaction.atomic(using=self.db, savepoint=False), capture.batch(self.db):
            return super().bulk_update(objs, fields, batch_size)

    bulk_update.alters_data = True  # type: ignore[attr-defined]


class MirroredManager(models.Manager.from_queryset(MirroredQuerySet)):  # type: ignore[misc]
    """The default manager for mirrored models."""
