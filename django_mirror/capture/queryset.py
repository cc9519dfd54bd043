"""The write half of ``MirroredQuerySet``: ``update()``, ``bulk_create()`` and
``bulk_update()`` send no ``post_save``, so capture records their rows here; ``delete()``
and ``update_or_create()`` get the write transaction capture needs.

``django_mirror.query`` joins this half to the shadow-read half (``shadow.queryset``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.core.exceptions import FieldError
from django.db import connections, models, router
from django.db.models import Q
from django.db.models.sql import UpdateQuery

from django_mirror.capture import record as capture
from django_mirror.core.batching import chunks, keys_per_statement, unique
from django_mirror.core.keys import unique_sets
from django_mirror.core.locking import defers_write_lock


class CapturingQuerySet(models.QuerySet):
    """A ``QuerySet`` whose bulk write methods record operation events."""

    # Each decides on the alias Django will write to (a router may read elsewhere), and
    # lets Django check its arguments before any statement or transaction of ours, so
    # a refused call raises what it raises without django-mirror and leaves the
    # caller's transaction usable.

    def _write_db(self) -> str:
        """The alias this queryset's writes go to, as Django picks it for them."""
        return self._db or router.db_for_write(self.model, **self._hints)

    def update(self, **kwargs: Any) -> int:
        using = self._write_db()
        if (
            not kwargs
            or self.query.is_sliced
            or self.query.combinator
            or capture.active_config(self.model, using) is None
        ):
            return super().update(**kwargs)
        _check_update(self, kwargs)
        with capture.write_transaction(using, self.model):
            # Lock the matching rows, then update exactly those, so the events name
            # every row the statement changed and no other.
            pks = _locked_pks(self, using)
            rows = 0
            if not pks:
                # Nothing matches: Django still compiles the statement (and refuses what
                # the database cannot do), then runs none for an empty key list.
                empty = self.using(using).filter(pk__in=[])
                return super(CapturingQuerySet, empty).update(**kwargs)
            for chunk in chunks(pks, keys_per_statement(using)):
                chunk_qs = self.using(using).filter(pk__in=chunk)
                rows += super(CapturingQuerySet, chunk_qs).update(**kwargs)
            capture.record(self.model, using, upsert_pks=pks)
        return rows

    update.alters_data = True  # type: ignore[attr-defined]

    def delete(self) -> tuple[int, dict[str, int]]:
        using = self._write_db()
        if capture.active_config(self.model, using) is None:
            return super().delete()
        _check_delete(self)
        # Collector sends post_delete per row (capture listens, so nothing is
        # fast-deleted); batch() folds them into one outbox row per model.
        with capture.write_transaction(using, self.model), capture.batch(using):
            return super().delete()

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    def update_or_create(
        self,
        defaults: dict[str, Any] | None = None,
        create_defaults: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[models.Model, bool]:
        using = self._write_db()
        if not (defers_write_lock(using) and capture.active_config(self.model, using)):
            return super().update_or_create(defaults, create_defaults, **kwargs)
        # Django's transaction reads the row before it writes: on SQLite in DEFERRED
        # mode that fails at once when another connection (the relay thread) writes.
        with capture.write_transaction(using, self.model):
            return super().update_or_create(defaults, create_defaults, **kwargs)

    update_or_create.alters_data = True  # type: ignore[attr-defined]

    def bulk_create(
        self,
        objs: Iterable[models.Model],
        batch_size: int | None = None,
        ignore_conflicts: bool = False,
        update_conflicts: bool = False,
        update_fields: Sequence[str] | None = None,
        unique_fields: Sequence[str] | None = None,
    ) -> list[models.Model]:
        using = self._write_db()
        if capture.active_config(self.model, using) is None:
            return super().bulk_create(
                objs, batch_size, ignore_conflicts, update_conflicts, update_fields, unique_fields
            )
        objs = list(objs)
        if ignore_conflicts and not unique_sets(self.model) and all(o.pk is None for o in objs):
            # Only generated keys are unique, so nothing can conflict; asking for no
            # conflict handling lets the database return the keys capture needs.
            ignore_conflicts = False
        with capture.write_transaction(using, self.model):
            created = super().bulk_create(
                objs, batch_size, ignore_conflicts, update_conflicts, update_fields, unique_fields
            )
            unknown = [obj for obj in created if obj.pk is None]
            known = [obj for obj in created if obj.pk is not None] if unknown else created
            pks = _pks_by_unique_values(self.model, unknown, using) if unknown else []
            if ignore_conflicts or update_conflicts:
                # A conflicting row holds what the database kept, not the instance: lock
                # and re-read it, so its image is committed state no concurrent writer
                # is about to replace.
                pks.extend(obj.pk for obj in known)
                capture.record(self.model, using, upsert_pks=pks, lock=True)
            else:
                capture.record(self.model, using, upsert_pks=pks, instances=known)
        return created

    bulk_create.alters_data = True  # type: ignore[attr-defined]

    def bulk_update(
        self, objs: Iterable[models.Model], fields: Sequence[str], batch_size: int | None = None
    ) -> int:
        using = self._write_db()
        if capture.active_config(self.model, using) is None:
            return super().bulk_update(objs, fields, batch_size)
        # Django runs one update() per batch, through this queryset's update().
        with capture.write_transaction(using, self.model), capture.batch(using):
            return super().bulk_update(objs, fields, batch_size)

    bulk_update.alters_data = True  # type: ignore[attr-defined]


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


def _check_update(queryset: models.QuerySet, kwargs: dict[str, Any]) -> None:
    """Django's own checks of ``update()`` arguments, made before any statement: they
    raise the ``FieldError`` that Django would, and nothing has run yet."""
    query = queryset.query.chain(UpdateQuery)
    query.add_update_values(kwargs)
    for ordering in query.order_by:
        alias = ordering.removeprefix("-") if isinstance(ordering, str) else ordering
        annotation = query.annotations.get(alias)
        if getattr(annotation, "contains_aggregate", False):
            raise FieldError(f"Cannot update when ordering by an aggregate: {annotation}")


def _check_delete(queryset: models.QuerySet) -> None:
    """Django's own checks of ``delete()``, made before our transaction opens: a refused
    call raises what Django raises, without a query (not even in a ``SimpleTestCase``)."""
    queryset._not_support_combined_queries("delete")
    if queryset.query.is_sliced:
        raise TypeError("Cannot use 'limit' or 'offset' with delete().")
    if queryset.query.distinct_fields:
        raise TypeError("Cannot call delete() after .distinct(*fields).")
    if queryset._fields is not None:
        raise TypeError("Cannot call delete() after .values() or .values_list()")


def _locked_pks(queryset: models.QuerySet, using: str) -> list[Any]:
    """The keys of the rows ``queryset`` matches, locked where the database can.

    A query on the model's table alone is locked as it is; any other (joins, which
    may be outer or many-valued, annotations, DISTINCT) goes into a key subquery,
    as ``FOR UPDATE`` can lock neither the nullable side of an outer join nor a
    grouped or distinct result.
    """
    query = queryset.query
    matching = queryset.order_by()
    if len(query.alias_map) > 1 or query.annotations or query.distinct or query.group_by:
        plain = models.QuerySet(model=queryset.model, using=using)
        # No ordering: a Meta.ordering across relations would join (outer joins, which
        # FOR UPDATE refuses on PostgreSQL) for nothing.
        matching = plain.filter(pk__in=matching.values("pk")).order_by()
    keys = matching.using(using).values_list("pk", flat=True)
    if connections[using].features.has_select_for_update:
        keys = keys.select_for_update()
    return unique(keys)
