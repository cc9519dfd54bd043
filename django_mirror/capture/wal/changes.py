"""A committed source transaction's decoded changes as outbox payloads: the same ops,
columns and value encoding ORM capture stores, so relay, replay and every target take
them unchanged.

Values arrive as PostgreSQL's text output; each is read with its Django field (as the
ORM would read the column) and encoded with ``events.encode_column``.
"""

from __future__ import annotations

import binascii
import datetime as dt
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from django_mirror.capture import outbox
from django_mirror.capture.wal.decoder import UNCHANGED, Change, Relation
from django_mirror.config import conf
from django_mirror.core.events import encode_column, quote_value

#: PostgreSQL's epoch, from which the log counts commit times in microseconds.
PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


class SchemaMismatch(RuntimeError):
    """The table in the log lacks a column the model has: capture stops rather than
    send a wrong row (a migration ran ahead of, or behind, the code)."""


@dataclass(frozen=True)
class Shape:
    """A mirrored model's image: its concrete fields less ``exclude_fields``, in column
    order, as ORM capture images it."""

    label: str
    model: type[models.Model]
    fields: tuple[models.Field, ...]
    pk: models.Field
    generation: int
    #: Phase mirror: each stored batch is also applied to the target once it commits.
    live: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.fields)


def shapes(alias: str | None = None, capturing_only: bool = True) -> dict[str, Shape]:
    """Each mirrored table ``alias`` (default: the source) holds, by name: on the source
    every mirrored model's, on a database target its own models'. With
    ``capturing_only``, those whose writes there are captured now (as ORM capture
    decides: a phase that captures, and ``alias`` the model's primary store, so rows
    mirrored into the other store are not captured again with versions of the wrong
    outbox)."""
    alias = alias or conf.source_alias()
    holds_all = alias == conf.source_alias()
    result: dict[str, Shape] = {}
    for model, config in conf.mirrored_models().items():
        if model._meta.proxy or not model._meta.managed:
            continue
        if not holds_all and config.target_alias != alias:
            continue
        current = conf.model_config(model) or config
        if capturing_only and (not current.capturing or current.primary_alias != alias):
            continue
        exclude = config.exclude_fields
        result[model._meta.db_table] = Shape(
            label=model._meta.label,
            model=model,
            fields=tuple(
                f
                for f in model._meta.concrete_fields
                if f.name not in exclude and f.attname not in exclude
            ),
            pk=model._meta.pk,
            generation=current.generation,
            live=current.live,
        )
    return result


def python_value(field: models.Field, text: str | None) -> Any:
    """A column's text output as the ORM reads the column: bytea's hex form and JSON
    documents by hand, everything else through the field's ``to_python()``; a text the
    field cannot read stops capture (``SchemaMismatch``), never a guessed value."""
    try:
        return _python_value(field, text)
    except (ValidationError, ValueError, TypeError, ArithmeticError) as exc:
        raise SchemaMismatch(
            f"{field.model._meta.label}.{field.name}: its field cannot read the log's "
            f"text {quote_value(text)} ({exc})"
        ) from exc


def _python_value(field: models.Field, text: str | None) -> Any:
    if text is None:
        return None
    if isinstance(field, models.BinaryField):
        return binascii.unhexlify(text[2:]) if text.startswith("\\x") else text.encode()
    if isinstance(field, models.JSONField):
        return json.loads(text, cls=field.decoder)
    return field.to_python(text)


#: Fills in values the log left out ('u', TOASTed and unchanged): (shape, pk, columns)
#: -> {column: python value}, or None when the row no longer exists.
Refill = Callable[[Shape, Any, Iterable[str]], dict[str, Any] | None]


class TransactionImages:
    """Ops of one source transaction, per model, in the order the log gave them."""

    def __init__(
        self,
        shapes_: dict[str, Shape],
        refill: Refill,
        published: frozenset[str] = frozenset(),
        source: str = "",
    ) -> None:
        self.shapes = shapes_
        #: The alias whose log this is: the events' ``source``, as ORM capture names it.
        self.source = source or conf.source_alias()
        self.refill = refill
        #: Tables of mirrored models whose writes are not captured now (phase off, or
        #: promoted): their changes are passed over. Any other table is an error.
        self.published = published
        self.ops: dict[str, list[list[Any]]] = {}
        self._shape_of: dict[str, Shape] = {}

    def add(self, relation: Relation, change: Change) -> None:
        shape = self.shapes.get(relation.name)
        if shape is None:
            if relation.name in self.published:
                return
            raise SchemaMismatch(
                f"the log holds a change of table {relation.name!r}, which no mirrored "
                "model has (a partition, or a publication out of date): run mirror_setup"
            )
        names = [c.name for c in relation.columns]
        missing = [f.column for f in shape.fields if f.column not in names]
        if missing:
            raise SchemaMismatch(
                f"table {relation.name!r} in the log has no column {', '.join(missing)} "
                f"of {shape.label}: capture stops instead of sending incomplete rows"
            )
        ops = self.ops.setdefault(shape.label, [])
        self._shape_of[shape.label] = shape
        pk = shape.pk
        if change.kind == "delete":
            old = dict(zip(names, change.old or (), strict=True))
            ops.append(["d", encode_column(pk, python_value(pk, _text(old[pk.column])))])
            return
        new = dict(zip(names, change.new or (), strict=True))
        if change.old is not None:
            old = dict(zip(names, change.old, strict=True))
            old_pk = old.get(pk.column)
            if old_pk not in (None, UNCHANGED) and old_pk != new[pk.column]:
                ops.append(["d", encode_column(pk, python_value(pk, _text(old_pk)))])
            if not change.old_is_key:  # REPLICA IDENTITY FULL: the whole old row
                for column, value in new.items():
                    if value is UNCHANGED:
                        new[column] = old[column]
        key = python_value(pk, _text(new[pk.column]))
        values = {f.column: new[f.column] for f in shape.fields}
        unchanged = [column for column, value in values.items() if value is UNCHANGED]
        decoded = {f.column: f for f in shape.fields}
        image: dict[str, Any] = {
            column: python_value(decoded[column], _text(value))
            for column, value in values.items()
            if value is not UNCHANGED
        }
        if unchanged:
            current = self.refill(shape, key, unchanged)
            if current is None:  # deleted since: its delete comes later in the log
                return
            image.update(current)
        ops.append(
            [
                "u",
                encode_column(pk, key),
                [encode_column(f, image[f.column]) for f in shape.fields],
            ]
        )

    def payloads(self, tx: str, commit_time: int) -> list[tuple[Shape, outbox.Payload]]:
        """One payload per model that the transaction wrote, with its model's shape."""
        now = commit_datetime(commit_time)
        return [
            (
                self._shape_of[label],
                outbox.Payload(
                    tx=tx,
                    now=now,
                    source=self.source,
                    columns=self._shape_of[label].columns,
                    gen=self._shape_of[label].generation,
                    ops=list(ops),
                ),
            )
            for label, ops in self.ops.items()
            if ops
        ]


def _text(value: str | None | object) -> str | None:
    """A value the log did send: text or NULL."""
    if value is UNCHANGED:
        raise ValueError("an unchanged TOASTed value was not filled in")
    return value  # type: ignore[return-value]


def commit_datetime(commit_time: int) -> dt.datetime:
    """The commit time the log gives, as ``timezone.now()`` would have said it."""
    return field_time(PG_EPOCH + dt.timedelta(microseconds=commit_time))


def field_time(moment: dt.datetime) -> dt.datetime:
    """An aware time of the database's clock as ``timezone.now()`` would say it (naive
    without ``USE_TZ``), so a ``DateTimeField`` stores it."""
    return moment if settings.USE_TZ else timezone.make_naive(moment)


def transaction_id(commit_lsn: int, xid: int) -> str:
    """The event's ``tx``: 32 hex digits, the same for every capture of one commit."""
    return f"{commit_lsn:016x}{xid:016x}"
