"""``DatabaseTarget``: a ``DATABASES`` alias as target, same tables as the source, plus
``RowVersion``.

The class is assembled from its halves (``apply.py``, ``copy.py``); what is here reads
rows and versions back, and repairs rows verify found different.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from django.db import models

from django_mirror.core.batching import chunks, keys_per_statement
from django_mirror.core.events import pk_text
from django_mirror.targets.database import statements, versions
from django_mirror.targets.database.apply import Applying
from django_mirror.targets.database.copy import Copying


class DatabaseTarget(Applying, Copying):
    """Mirror rows into the ``DATABASES`` alias ``alias``."""

    # --- reading ------------------------------------------------------------------------

    def versions(self, model_label: str, pks: Sequence[Any]) -> dict[str, tuple[int, bool]]:
        return versions.read(
            self.alias, model_label.lower(), [pk_text(pk) for pk in pks], lock=False
        )

    def fetch(self, model: type[models.Model], pks: Sequence[Any]) -> dict[str, dict[str, Any]]:
        attnames = [f.attname for f in model._meta.concrete_fields]
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks(list(pks), keys_per_statement(self.alias)):
            qs = models.QuerySet(model=model, using=self.alias).filter(pk__in=chunk)
            for row in qs.values(*attnames):
                found[pk_text(row[model._meta.pk.attname])] = row
        return found

    def scan(
        self, model: type[models.Model], segment: int = 0, segments: int = 1
    ) -> Iterator[dict[str, Any]]:
        """In key order, all in segment 0 (the other segments are empty): a database is
        read in one ordered pass."""
        if segment != 0:
            return
        attnames = [f.attname for f in model._meta.concrete_fields]
        qs = models.QuerySet(model=model, using=self.alias).order_by("pk").values(*attnames)
        yield from qs.iterator(chunk_size=2000)

    # --- writing rows and versions directly -----------------------------------------------

    def store_versions(
        self, label: str, entries: list[tuple[str, int, bool]], replace: Sequence[str] = ()
    ) -> None:
        """Write ``(pk text, version, deleted)`` rows, first dropping those of ``replace``
        (delete + insert: portable, and two statements per batch)."""
        versions.store(self.alias, label, entries, replace)

    def repair(
        self, model: type[models.Model], rows: Sequence[dict[str, Any]], pks: Sequence[Any]
    ) -> None:
        """Make the rows ``pks`` what the source holds (``rows``; absent ones are deleted).

        Versions replay applied are kept, so a newer event still wins and an older one is
        still skipped; rows without one get version 0, deleted ones a tombstone.
        """
        label = model._meta.label_lower
        pk = model._meta.pk
        keys = [pk_text(value) for value in pks]
        live = {pk_text(row[pk.attname]) for row in rows}
        with self._transaction():
            held = versions.read(self.alias, label, keys, lock=True)
            statements.delete_rows(self.alias, model, list(pks))
            spec = self._spec(model)
            statements.insert_rows(self.alias, model, [spec.params(model, row) for row in rows])
            versions.store(
                self.alias,
                label,
                [(key, held.get(key, (0, False))[0], key not in live) for key in keys],
                replace=keys,
            )
