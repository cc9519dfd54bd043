"""Running one shadow read on each store, and judging the two answers.

An answer the data does not fix (``determinism``: a slice without a total ordering,
``order_by("?")``, ``distinct(*fields)``) is not compared as a whole: the rows either
store returned are read by key from both stores and compared, so a row that differs
is still caught, and an answer that differs only in the rows each database chose
counts as ``read.not_comparable``, never as a mismatch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from django.db import models

from django_mirror.config import conf
from django_mirror.core import scoped
from django_mirror.core.events import pk_text
from django_mirror.shadow import compare, determinism
from django_mirror.shadow.determinism import AGGREGATE, COUNT, EXISTS, ROWS
from django_mirror.targets import get_target

#: An answer the data does not fix is compared by key on at most this many rows.
MAX_KEYED = 500


@dataclass
class Judgement:
    """Two stores' answers to one read, compared."""

    source: compare.Result
    target: compare.Result
    mismatch: compare.Mismatch | None
    #: False: the answers differ only in rows each database was free to choose.
    comparable: bool = True
    #: The rows (pk text -> key) compared by key, for an answer the data does not fix.
    keys: dict[str, Any] | None = None
    #: Why the data does not fix the answer ("" when it does).
    reason: str = ""


class Judging:
    """``ShadowRead``'s reads of the stores and its comparison of their answers."""

    # The fields of ``ShadowRead`` this half reads (and ``loaded``, which it sets).
    config: conf.ModelConfig
    kind: str
    queryset: models.QuerySet
    primary: str
    secondary: str | None
    aggregate: tuple[tuple[Any, ...], dict[str, Any]]
    pks: list[Any]
    loaded: tuple[str, ...] | None
    limited: bool

    def run_on(self, alias: str | None) -> Any:
        """The same query on ``alias``, its result in the shape the user got; on a
        target that is not a database, the same rows fetched by key."""
        if alias is None:
            model = self.queryset.model
            rows = get_target(self.config).fetch(model, self.pks)
            return [model(**row) for row in rows.values()]
        qs = self.queryset.using(alias)
        if self.kind == COUNT:
            return qs.count()
        if self.kind == EXISTS:
            return qs.exists()
        if self.kind == AGGREGATE:
            args, kwargs = self.aggregate
            return qs.aggregate(*args, **kwargs)
        return list(qs)

    def _run_limited(self) -> Any:
        """``run_on`` the other store, which cancels the query at the timeout where it
        can; the connection keeps no limit afterwards."""
        return self._limited(lambda: self.run_on(self.secondary))

    def _limited(self, run: Callable[[], Any]) -> Any:
        if self.secondary is None or not self.limited:
            return run()
        with scoped.statement_time_limited(self.secondary, self._timeout()):
            return run()

    def _timeout(self) -> float:
        return conf.get_settings().shadow.timeout

    def judge(self, source_raw: Any, target_raw: Any) -> Judgement:
        """Compare two answers to this read as far as the data fixes them.

        A determined answer is compared whole. One the data does not fix, that differs,
        is compared on the rows either store returned, each read by key from both
        stores: rows that differ there are a real difference; if none do, the answers
        differ only in the rows each database chose, and cannot be compared.
        """
        config = self.config
        # Only a list of values() rows of an ordered query is compared in order: the
        # query is looked at first for those, and for the others only if they differ.
        ordered_values = self.kind == ROWS and not self._instances() and self.queryset.ordered
        fixed = self.determinism(source_raw) if ordered_values else None
        source = compare.normalise(config, source_raw, fixed is not None and fixed.order)
        target = compare.normalise(config, target_raw, fixed is not None and fixed.order)
        mismatch = compare.compare(config, source, target)
        if mismatch is None:
            return Judgement(source, target, None)
        fixed = fixed or self.determinism(source_raw)
        if fixed.rows:
            return Judgement(source, target, mismatch)
        keys = self._keys_of(source_raw, target_raw, source, target)
        if keys is None:
            return Judgement(source, target, None, comparable=False, reason=fixed.reason)
        if len(keys) > MAX_KEYED:
            reason = f"{fixed.reason}; more than {MAX_KEYED} rows to compare by key"
            return Judgement(source, target, None, comparable=False, reason=reason)
        return self.judge_keys(keys, fixed.reason)

    def judge_keys(self, keys: dict[str, Any], reason: str) -> Judgement:
        """The rows ``keys`` as both stores hold them now, compared."""
        pks = list(keys.values())
        if self._instances():
            source_raw: Any = self._rows_by_key(self.primary, pks)
            target_raw: Any = self._limited(lambda: self._rows_by_key(self.secondary, pks))
        else:
            source_raw = self._values_by_key(self.primary, pks)
            target_raw = self._limited(lambda: self._values_by_key(self.secondary, pks))
        # Compared as sets of rows: the order is what the stores were free to choose.
        source = compare.normalise(self.config, source_raw, False)
        target = compare.normalise(self.config, target_raw, False)
        mismatch = compare.compare(self.config, source, target)
        if mismatch is not None and mismatch.summary is None:
            # Shown and reported: the rows that differ, not every row compared.
            differing = set(mismatch.pks)
            source, target = source.only(differing), target.only(differing)
        elif mismatch is not None:
            found = self._differing_keys(source_raw, target_raw)
            if found and not self.config.compare:
                source = compare.normalise(self.config, found[1], False)
                target = compare.normalise(self.config, found[2], False)
                mismatch = compare.compare(self.config, source, target) or mismatch
                mismatch.keys = found[0]
            else:
                mismatch.keys = sorted(keys)
        return Judgement(
            source, target, mismatch, comparable=mismatch is not None, keys=keys, reason=reason
        )

    def _differing_keys(
        self, source_raw: Any, target_raw: Any
    ) -> tuple[list[str], list[Any], list[Any]] | None:
        """For ``values()`` rows: the keys whose rows differ, and those rows of each side."""
        key_of = _value_key(self.queryset)
        if key_of is None or not isinstance(source_raw, list) or not isinstance(target_raw, list):
            return None
        sides: list[dict[str, list[Any]]] = [{}, {}]
        for side, items in zip(sides, (source_raw, target_raw), strict=True):
            for item in items:
                side.setdefault(pk_text(key_of(item)), []).append(item)

        def same(key: str) -> bool:
            encoded = [
                sorted((compare.encoded_value(i) for i in side.get(key, [])), key=repr)
                for side in sides
            ]
            return encoded[0] == encoded[1]

        differing = sorted(key for key in sides[0].keys() | sides[1].keys() if not same(key))
        if not differing:
            return None
        return (
            differing,
            [item for key in differing for item in sides[0].get(key, [])],
            [item for key in differing for item in sides[1].get(key, [])],
        )

    def determinism(self, source_raw: Any) -> determinism.Determinism:
        if self.secondary is None:
            # A non-database target answers lookups by key only: fixed by the keys.
            return determinism.Determinism(True, False)
        returned = _row_count(source_raw) if self.kind == ROWS else None
        return determinism.of(self.queryset, self.kind, returned)

    def _instances(self) -> bool:
        return self.kind == ROWS and self.queryset._iterable_class is models.query.ModelIterable

    def _keys_of(
        self, source_raw: Any, target_raw: Any, source: compare.Result, target: compare.Result
    ) -> dict[str, Any] | None:
        """The rows (pk text -> key) either answer holds, if they can be read by key."""
        if self.kind != ROWS:
            return None  # a count or an aggregate of rows the database chose
        if self._instances():
            self.loaded = _loaded(source_raw) or _loaded(target_raw) or self.loaded
            return {**source.keys, **target.keys}
        key_of = _value_key(self.queryset)
        if key_of is None or not _keyed_rerun_possible(self.queryset):
            return None
        keys: dict[str, Any] = {}
        for item in [*(source_raw or []), *(target_raw or [])]:
            key = key_of(item)
            keys[pk_text(key)] = key
        return keys

    def _rows_by_key(self, alias: str | None, pks: list[Any]) -> compare.Instances:
        """The rows ``pks`` of ``alias`` by key alone, the fields the query loaded."""
        model = self.queryset.model
        assert alias is not None
        names = self.loaded or tuple(f.attname for f in model._meta.concrete_fields)
        pk_name = model._meta.pk.attname
        if pk_name not in names:
            names = (pk_name, *names)
        rows = models.QuerySet(model=model, using=alias).filter(pk__in=pks).values(*names)
        return compare.Instances(model, [(row[pk_name], row) for row in rows])

    def _values_by_key(self, alias: str | None, pks: list[Any]) -> list[Any]:
        """The query's ``values()`` rows of ``pks`` on ``alias``: the whole query, not its
        slice, nor the choice of one row per group of ``distinct(*fields)``, in no
        particular order."""
        qs = self.queryset.using(alias)._chain()
        query = qs.query
        query.clear_limits()
        query.clear_ordering(force=True)
        if query.distinct_fields:
            query.distinct, query.distinct_fields = False, ()
        return list(qs.filter(pk__in=pks))


def _row_count(raw: Any) -> int | None:
    if isinstance(raw, compare.Instances):
        return len(raw.rows)
    return len(raw) if isinstance(raw, list) else None


def _loaded(raw: Any) -> tuple[str, ...] | None:
    """The attnames of the concrete fields an instance result loaded (a field the query
    deferred is absent from the instance's ``__dict__``)."""
    if isinstance(raw, compare.Instances) and raw.rows:
        model, values = raw.model, raw.rows[0][1]
    elif isinstance(raw, list) and raw and isinstance(raw[0], models.Model):
        model, values = type(raw[0]), raw[0].__dict__
    else:
        return None
    return tuple(f.attname for f in model._meta.concrete_fields if f.attname in values)


def _value_key(queryset: models.QuerySet) -> Callable[[Any], Any] | None:
    """How to read the primary key out of a ``values()`` / ``values_list()`` row, when
    the query selects it; else None."""
    opts = queryset.model._meta
    names = {"pk", opts.pk.name, opts.pk.attname}
    iterable = queryset._iterable_class
    fields = tuple(queryset._fields or ())
    query = queryset.query
    if iterable is models.query.ValuesIterable:
        if not fields:
            return lambda item: item[opts.pk.attname]
        for name in fields:
            if name in names:
                return itemgetter(name)
        return None
    if not fields:
        if query.extra_select or query.annotation_select:
            return None  # their columns come first: positions are the query's business
        columns = [f.attname for f in opts.concrete_fields]
        index = columns.index(opts.pk.attname)
    else:
        matching = [i for i, name in enumerate(fields) if name in names]
        if not matching:
            return None
        index = matching[0]
    if iterable is models.query.FlatValuesListIterable:
        return lambda item: item
    return itemgetter(index)


def _keyed_rerun_possible(queryset: models.QuerySet) -> bool:
    """Whether the query, narrowed to some keys, still gives those keys' rows their
    values: not a union (which takes no filter) nor a window function (which sees only
    the narrowed rows)."""
    query = queryset.query
    if query.combinator:
        return False
    return not any(
        getattr(annotation, "contains_over_clause", False)
        for annotation in query.annotations.values()
    )
