"""Normalise a read's result so two stores' answers compare, and describe how they differ.

Model instances are compared row by row, by primary key, on their concrete fields
(``exclude_fields`` dropped: they never reach the target); other results
(``values()``, ``values_list()``, counts, aggregates) as a whole, in order only when
the query's ordering is total (``determinism``). A model's ``compare`` callable
replaces all of this.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from django.db import models
from django.utils.module_loading import import_string

from django_mirror.config import conf
from django_mirror.core.diff import REDACTED, Difference, compare_rows
from django_mirror.core.events import encode_column, encode_value, pk_text

#: A mismatch record shows at most this many rows or items of each side.
MAX_SHOWN = 20


@dataclass
class Result:
    """One store's answer, ready to compare."""

    #: Instance results: ``{pk text: values in ``names`` order}``.
    rows: dict[str, tuple[Any, ...]] | None = None
    names: tuple[str, ...] = ()
    #: Anything else: a list (ordered or sorted) or a scalar.
    value: Any = None
    #: What the ``compare`` callable gets.
    plain: Any = None
    #: Instance results: each row's primary key as the store returned it, by its text.
    keys: dict[str, Any] = field(default_factory=dict)

    def only(self, keys: set[str]) -> Result:
        """An instance result narrowed to the rows ``keys`` (others unchanged)."""
        if self.rows is None:
            return self
        rows = {k: v for k, v in self.rows.items() if k in keys}
        return Result(
            rows=rows,
            names=self.names,
            value=self.value,
            plain=self.plain,
            keys={k: v for k, v in self.keys.items() if k in keys},
        )


@dataclass
class Mismatch:
    """How two results differ: per row where rows are known, else as a whole."""

    differences: list[Difference] = field(default_factory=list)
    summary: Any = None
    #: The rows (pk text) a whole-result difference is about, when known: an answer the
    #: data does not fix is compared on the rows either store returned (``reads``).
    keys: list[str] = field(default_factory=list)

    @property
    def pks(self) -> list[str]:
        if not self.differences and self.keys:
            return list(self.keys)
        return [pk_text(d.pk) for d in self.differences]

    @property
    def fields(self) -> list[str]:
        return sorted({name for d in self.differences for name in d.fields})

    def signature(self) -> str:
        """What two re-checks compare to tell a standing difference from a moving one."""
        return json.dumps(
            [[d.as_dict() for d in self.differences], self.summary], sort_keys=True, default=repr
        )

    def without(self, pks: set[str]) -> Mismatch | None:
        """This mismatch minus the rows in ``pks``; None when nothing is left."""
        kept = [d for d in self.differences if pk_text(d.pk) not in pks]
        if not kept and self.summary is None:
            return None
        return Mismatch(kept, self.summary, self.keys)


@cache
def _fields(model: type[models.Model], exclude: tuple[str, ...]) -> tuple[models.Field, ...]:
    return tuple(
        f for f in model._meta.concrete_fields if f.name not in exclude and f.attname not in exclude
    )


def _sort_key(item: Any) -> str:
    return repr(item)


@dataclass(frozen=True)
class Instances:
    """Model instances as a read returned them: each one's primary key and attributes."""

    model: type[models.Model]
    rows: list[tuple[Any, dict[str, Any]]]


def snapshot(result: Any) -> Any:
    """A copy of a read's result for ``normalise`` to take later on a pool thread.

    Only copies, so the request thread pays little: the objects' attributes, not their
    encoding. What the user changes in place inside a value afterwards can still show
    as a difference, which the re-check of both stores then finds transient.
    """
    if isinstance(result, list) and result and isinstance(result[0], models.Model):
        return Instances(type(result[0]), [(obj.pk, obj.__dict__.copy()) for obj in result])
    if isinstance(result, list | dict):
        return result.copy()
    return result


def normalise(config: conf.ModelConfig, result: Any, ordered: bool) -> Result:
    """The comparable form of what a query returned (or of its ``snapshot``)."""
    if isinstance(result, list) and result and isinstance(result[0], models.Model):
        result = Instances(type(result[0]), [(obj.pk, obj.__dict__) for obj in result])
    if isinstance(result, Instances):
        model = config.model or result.model
        fields = _fields(model._meta.concrete_model, config.exclude_fields)
        names = tuple(f.name for f in fields)
        rows: dict[str, tuple[Any, ...]] = {}
        keys: dict[str, Any] = {}
        # Only a ``compare`` callable reads the plain values: not built for the others.
        plain: list[dict[str, Any]] | None = [] if config.compare else None
        for pk, values in result.rows:
            raw = [values.get(f.attname) for f in fields]
            # Compared and stored in the events' encoding: exact (a Decimal's scale, a
            # datetime's zone) and JSON all the way, for the mismatch records.
            key = pk_text(pk)
            rows[key] = tuple(encode_column(f, v) for f, v in zip(fields, raw, strict=True))
            keys[key] = pk
            if plain is not None:
                plain.append(dict(zip(names, raw, strict=True)))
        return Result(rows=rows, names=names, plain=plain, keys=keys)
    if isinstance(result, list):
        items = [_drop_excluded(config, item) for item in result]
        encoded = [encoded_value(item) for item in items]
        value = encoded if ordered else sorted(encoded, key=_sort_key)
        return Result(value=value, plain=items)
    if isinstance(result, dict):
        value = _drop_excluded(config, result)
        return Result(value=encoded_value(value), plain=value)
    return Result(value=encoded_value(result), plain=result)


def encoded_value(value: Any) -> Any:
    """A ``values()`` row, ``values_list()`` tuple, count or aggregate in the events'
    encoding, nested containers kept as JSON objects and lists."""
    if isinstance(value, dict):
        return {str(k): encoded_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encoded_value(v) for v in value]
    try:
        return encode_value(value)
    except TypeError:
        return repr(value)


def _drop_excluded(config: conf.ModelConfig, item: Any) -> Any:
    if isinstance(item, dict) and config.exclude_fields:
        return {k: v for k, v in item.items() if k not in config.exclude_fields}
    return item


@cache
def _compare_callable(path: str) -> Callable[[Any, Any], Any]:
    return import_string(path)


def compare(config: conf.ModelConfig, source: Result, target: Result) -> Mismatch | None:
    """None when the two results agree, else how they differ (values redacted)."""
    if config.compare:
        diff = _compare_callable(config.compare)(source.plain, target.plain)
        return None if diff is None else Mismatch(summary=redact(config, encoded_value(diff)))
    if source.rows is not None or target.rows is not None:
        if source.rows == target.rows:
            return None
        names = source.names or target.names
        differences = compare_rows(
            config.label, names, source.rows or {}, target.rows or {}, config.redact_fields
        )
        return Mismatch(differences) if differences else None
    if source.value == target.value:
        return None
    return Mismatch(summary={"source": shown(config, source), "target": shown(config, target)})


def shown(config: conf.ModelConfig, result: Result) -> Any:
    """One side for a mismatch record: at most ``MAX_SHOWN`` items, redacted."""
    if result.rows is not None:
        return {pk: shown_row(config, result, pk) for pk in list(result.rows)[:MAX_SHOWN]}
    value = result.value[:MAX_SHOWN] if isinstance(result.value, list) else result.value
    return redact(config, value)


def shown_row(config: conf.ModelConfig, result: Result, key: str) -> dict[str, Any] | None:
    """One row of an instance result for a mismatch record, redacted; None if absent."""
    values = (result.rows or {}).get(key)
    if values is None:
        return None
    return dict(zip(result.names, redact_values(config, result.names, values), strict=True))


def redact_values(
    config: conf.ModelConfig, names: Sequence[str], values: Sequence[Any]
) -> list[Any]:
    hidden = config.redact_fields
    return [REDACTED if n in hidden else v for n, v in zip(names, values, strict=True)]


def redact(config: conf.ModelConfig, value: Any) -> Any:
    """``value`` with every ``redact_fields`` key (or an aggregate named after one) hidden.

    Values that carry no names (a ``values_list()`` tuple, a count) cannot be told
    apart and are shown whole unless the query named a redacted field.
    """
    hidden = config.redact_fields
    if not hidden:
        return value
    if isinstance(value, dict):
        return {
            k: REDACTED
            if any(k == h or k.startswith(f"{h}__") for h in hidden)
            else redact(config, v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(config, v) for v in value]
    return value
