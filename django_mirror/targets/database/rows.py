"""A model's rows as driver parameters: from events' row images, or from rows read.

Writes go through the database driver in batches (``executemany``) rather than model
instances, so each model's columns are worked out once (its ``RowSpec``) and every
batch's rows are turned into parameter tuples in field order from it.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import models

from django_mirror.config import conf
from django_mirror.core.events import Event, EventDecodeError
from django_mirror.targets.database.columns import MISSING, Column, column


class UnknownModel(LookupError):
    """An event names a model that is not mirrored here."""


def mirrored_model(label: str) -> type[models.Model]:
    """The mirrored model an event's label names; ``UnknownModel`` if there is none."""
    config = conf.config_for_label(label)
    if config is None or config.model is None:
        raise UnknownModel(f"{label} is not a mirrored model")
    return config.model


@dataclass(frozen=True)
class RowSpec:
    """How to turn a model's rows into driver parameters; built once per model, since
    replay needs it for every row."""

    columns: list[Column]
    names: frozenset[str]
    #: The primary key's column, and how an event's pk becomes its Python value.
    pk: Column
    pk_to_python: Callable[[Any], Any]
    #: Keys of this Python type are their own parameters (int keys).
    pk_plain: type | None
    #: Every column's value of a whole row image, in field order (two or more columns).
    whole: Callable[[dict[str, Any]], tuple[Any, ...]] | None

    @classmethod
    def of(cls, model: type[models.Model], connection: Any) -> RowSpec:
        """The spec of ``model``'s rows on ``connection``."""
        pk = model._meta.pk
        columns = [column(f, connection) for f in model._meta.concrete_fields]
        pk_column = next(c for c in columns if c.name == pk.column)
        names = [c.name for c in columns]
        return cls(
            columns=columns,
            names=frozenset(names),
            pk=pk_column,
            pk_to_python=pk.to_python,
            # An int key, the common case, is its own parameter: no call for it.
            pk_plain=(
                int
                if pk_column.prepare is None and type(pk).to_python is models.IntegerField.to_python
                else None
            ),
            whole=operator.itemgetter(*names) if len(names) > 1 else None,
        )

    def event_rows(
        self, model: type[models.Model], upserts: Sequence[Event]
    ) -> list[tuple[Any, ...]]:
        """Driver parameters of the upsert events' rows, decoded and converted.

        A column at a time: replay does this for every event, and a step per value costs
        more than the database's insert of it. A column the image leaves out gets the
        field's default; the key is the event's own.
        """
        if not upserts:
            return []
        images = [e.row or {} for e in upserts]
        raw: list[Sequence[Any]] | None
        try:
            # Whole images, the rule, are taken apart in C, and hold no other column.
            raw = list(zip(*map(self.whole, images), strict=True)) if self.whole else None
        except KeyError:
            raw = None
        if raw is None or set(map(len, images)) - {len(self.names)}:
            if not self.names.issuperset(itertools.chain.from_iterable(images)):
                unknown = sorted(set(itertools.chain.from_iterable(images)) - self.names)
                raise EventDecodeError(f"{model._meta.label} has no column {unknown[0]!r}")
            raw = [[image.get(c.name, MISSING) for image in images] for c in self.columns]
        columns: list[Sequence[Any]] = []
        for col, values in zip(self.columns, raw, strict=True):
            if col is self.pk:
                pks = [e.pk for e in upserts]
                if self.pk_plain is None or set(map(type, pks)) - {self.pk_plain}:
                    pks = [col.prepared(self.pk_to_python(pk)) for pk in pks]
                if col.accepts is not None:
                    col.accepts.check(col.name, pks, None)
                columns.append(pks)
            else:
                columns.append(col.convert(values))
        return list(zip(*columns, strict=True))

    def params(self, model: type[models.Model], values: dict[str, Any]) -> list[Any]:
        """Driver parameters of a row read as ``{attname: value}``."""
        return [
            col.prepared(values[f.attname]) if f.attname in values else col.fill()
            for col, f in zip(self.columns, model._meta.concrete_fields, strict=True)
        ]
