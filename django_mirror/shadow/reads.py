"""One sampled read: timed on the request thread, run again on the other store by the
pool, compared, re-checked after a delay, and reported only if the difference stays
and is not explained by rows the target has yet to catch up with.

An answer the data does not fix (``determinism``: a slice without a total ordering,
``order_by("?")``, ``distinct(*fields)``) is not compared as a whole: the rows either
store returned are read by key from both stores and compared, so a row that differs
is still caught, and an answer that differs only in the rows each database chose
counts as ``read.not_comparable``, never as a mismatch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import DatabaseError, models

from django_mirror.capture import record
from django_mirror.config import conf
from django_mirror.core import scoped
from django_mirror.core.diff import REDACTED
from django_mirror.core.events import pk_text
from django_mirror.live import lag
from django_mirror.observability import reporting
from django_mirror.shadow import compare, determinism, rerun, scope
from django_mirror.shadow.pool import get_pool
from django_mirror.targets import get_target

logger = logging.getLogger("django_mirror.shadow")

ROWS, COUNT, EXISTS, AGGREGATE = (
    determinism.ROWS,
    determinism.COUNT,
    determinism.EXISTS,
    determinism.AGGREGATE,
)
#: Re-checks of one difference before it is given up as a row too busy to compare.
MAX_RECHECKS = 4
#: An answer the data does not fix is compared by key on at most this many rows.
MAX_KEYED = 500
#: Seconds between two log lines about the same not comparable query shape.
NOT_COMPARABLE_LOG_INTERVAL = 60.0


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


@dataclass
class ShadowRead:
    config: conf.ModelConfig
    kind: str
    #: The query, unevaluated, without prefetches; bound to a store when run.
    queryset: models.QuerySet
    primary: str
    #: The alias shadowed on; None for a target that is not a database, read by key.
    secondary: str | None
    control: bool
    scope: scope.Scope
    aggregate: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})
    #: The keys a lookup by primary key asks for (reads of a non-database target).
    pks: list[Any] = field(default_factory=list)
    queued: float = 0.0
    #: The source's answer as the request got it (``compare.snapshot``) and its time.
    source_raw: Any = None
    source_ms: float = 0.0
    rechecks: int = 0
    last_seen: str | None = None
    #: Set once a difference was found by key: re-checks read these rows by key.
    keys: dict[str, Any] | None = None
    reason: str = ""
    #: Instance results: the attnames the query loaded (``only()``/``defer()``).
    loaded: tuple[str, ...] | None = None
    #: False for the admin's Re-check: no statement time limit on its connections.
    limited: bool = True

    @property
    def label(self) -> str:
        return self.config.label

    def metric(self, name: str) -> str:
        return f"read.control.{name}" if self.control else f"read.{name}"

    # --- request thread -------------------------------------------------------------

    def submit(self, result: Any, source_ms: float) -> None:
        """Keep a copy of the source's answer and queue the comparison; never raises.

        Encoding that answer and reporting its time are left to the pool thread, so the
        request pays for a copy only.
        """
        with reporting.guarded("a shadow read could not be queued"):
            self.source_raw = compare.snapshot(result)
            self.source_ms = source_ms
            self.scope.queue(self._queue)

    def _queue(self) -> None:
        """Hand the comparison to the pool; counted as skipped when its queue is full."""
        with reporting.guarded("a shadow read could not be queued"):
            self.queued = time.monotonic()
            if not get_pool().submit(self.compare):
                reporting.read_latency("source", self.source_ms, self.label)
                reporting.incr(self.metric("skipped"), 1, self.label)

    # --- pool threads ---------------------------------------------------------------

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
        return float(conf.get_settings().shadow["TIMEOUT"])

    def compare(self) -> None:
        with reporting.guarded("a shadow read failed"):
            reporting.read_latency("source", self.source_ms, self.label)
            if time.monotonic() - self.queued > self._timeout():
                reporting.incr(self.metric("timeouts"), 1, self.label)  # waited too long
                return
            started = time.perf_counter()
            try:
                result = self._run_limited()
            except Exception as exc:
                # A statement the database cancelled at the timeout is a timeout.
                late = time.perf_counter() - started >= self._timeout()
                reporting.incr(self.metric("timeouts" if late else "target_errors"), 1, self.label)
                logger.info(
                    "django-mirror: shadow read of %s on %r failed: %s",
                    self.label,
                    self.secondary,
                    type(exc).__name__,
                )
                return
            elapsed = (time.perf_counter() - started) * 1000
            if elapsed > self._timeout() * 1000:
                reporting.incr(self.metric("timeouts"), 1, self.label)
                return
            if not self.control:
                reporting.read_latency("target", elapsed, self.label)
            try:
                judged = self.judge(self.source_raw, result)
            except DatabaseError as exc:  # reading the rows by key failed
                reporting.incr(self.metric("target_errors"), 1, self.label)
                logger.info(
                    "django-mirror: shadow read of %s by key failed: %s",
                    self.label,
                    type(exc).__name__,
                )
                return
            if not judged.comparable:
                self.not_comparable(judged.reason)
                return
            reporting.incr(self.metric("compared"), 1, self.label)
            if judged.mismatch is None:
                reporting.incr(self.metric("match"), 1, self.label)
                return
            reporting.incr(self.metric("suspected"), 1, self.label)
            self.keys, self.reason = judged.keys, judged.reason
            self._recheck_later()

    # --- judging ----------------------------------------------------------------------

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
        return self.kind == ROWS and (
            self.queryset._iterable_class is models.query.ModelIterable  # type: ignore[attr-defined]
        )

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
        qs = self.queryset.using(alias)._chain()  # type: ignore[attr-defined]
        query = qs.query
        query.clear_limits()
        query.clear_ordering(force=True)
        if query.distinct_fields:
            query.distinct, query.distinct_fields = False, ()
        return list(qs.filter(pk__in=pks))

    def not_comparable(self, reason: str) -> None:
        """Count an answer the data does not fix, and log its shape now and then."""
        reporting.incr(self.metric("not_comparable"), 1, self.label)
        shape = self.shape()
        count = _shapes.seen(self.label, shape)
        if count:
            logger.info(
                "django-mirror: %d shadow read(s) of %s not comparable (%s): %s",
                count,
                self.label,
                reason or "the database chooses the rows",
                shape,
            )

    def _recheck_later(self) -> None:
        get_pool().later(float(conf.get_settings().shadow["RECHECK_DELAY"]), self.recheck)

    def recheck(self) -> None:
        """Both stores again: a difference that went away was a race with a write.

        The two stores are read one after the other, so a write landing in between can
        still show as a difference; it is confirmed only when two re-checks in a row see
        the very same one, as a real divergence does and a busy row does not.
        """
        with reporting.guarded("a shadow read re-check failed"):
            try:
                if self.keys is not None:
                    # The rows found differing, by key: the query itself may pick
                    # other rows this time.
                    judged = self.judge_keys(self.keys, self.reason)
                else:
                    judged = self.judge(self.run_on(self.primary), self._run_limited())
            except Exception as exc:
                reporting.incr(self.metric("target_errors"), 1, self.label)
                logger.info(
                    "django-mirror: shadow re-check of %s failed: %s",
                    self.label,
                    type(exc).__name__,
                )
                return
            if judged.mismatch is None:
                if judged.comparable or self.keys is not None:
                    reporting.incr(self.metric("transient"), 1, self.label)
                else:
                    self.not_comparable(judged.reason)
                return
            self.keys, self.reason = judged.keys, judged.reason or self.reason
            mismatch, source, target = judged.mismatch, judged.source, judged.target
            if not self.control:
                mismatch = self._without_lagging_rows(mismatch)
                if mismatch is None:
                    reporting.incr(self.metric("lagging"), 1, self.label)
                    return
            seen = mismatch.signature()
            if seen != self.last_seen:
                self.last_seen = seen
                self.rechecks += 1
                if self.rechecks < MAX_RECHECKS:
                    self._recheck_later()
                else:
                    reporting.incr(self.metric("unsettled"), 1, self.label)
                return
            reporting.incr(self.metric("mismatch"), 1, self.label)
            if not self.control:
                self.confirm(mismatch, source, target)

    def _without_lagging_rows(self, mismatch: compare.Mismatch) -> compare.Mismatch | None:
        """Rows whose source version is newer than the target's do not count; a result
        not made of rows (a count, an aggregate) does not count while any row lags."""
        config = self.config
        if mismatch.summary is None:
            lagging = lag.unapplied(config, set(mismatch.pks))
            return None if lagging is None else mismatch.without(lagging)
        # A whole result compared on known rows lags when one of those rows does.
        lagging = lag.unapplied(config, set(mismatch.keys) if mismatch.keys else None)
        return None if lagging is None or lagging else mismatch

    def shape(self) -> str:
        """The query's SQL without parameter values: what groups mismatches in Sentry
        (and never carries a filtered-on value)."""
        try:
            sql, _ = self.queryset.query.get_compiler(using=self.primary).as_sql()
        except EmptyResultSet:
            sql = "<empty result>"
        except Exception:
            sql = f"<{self.queryset.query.__class__.__name__}>"
        return f"{self.kind}: {sql}"

    def confirm(
        self, mismatch: compare.Mismatch, source: compare.Result, target: compare.Result
    ) -> None:
        from django_mirror.models import MismatchRecord

        shape = self.shape()
        pks = mismatch.pks
        diff = self.record_diff(mismatch, source, target)
        source_shown, target_shown = diff.pop("source_value"), diff.pop("target_value")
        kept = rerun.dumps(self.queryset, self.kind, self.aggregate)
        if kept is not None:
            diff["rerun"] = kept
        with reporting.guarded("a read mismatch could not be recorded"):
            MismatchRecord.objects.using(conf.source_alias()).create(
                kind=MismatchRecord.Kind.READ,
                status=MismatchRecord.Status.CONFIRMED,
                model=self.label,
                pk_value=",".join(pks[:10])[:255],
                request_path=self.scope.path[:500],
                query=shape,
                source_value=source_shown,
                target_value=target_shown,
                diff=diff,
            )
        reporting.sentry_mismatch(
            "read",
            self.label,
            shape,
            mismatch.fields,
            pks,
            f"django-mirror: read mismatch on {self.label}",
        )

    def record_diff(
        self, mismatch: compare.Mismatch, source: compare.Result, target: compare.Result
    ) -> dict[str, Any]:
        """A read mismatch record's diff, with its ``source_value`` and ``target_value``
        (redacted), as ``confirm`` writes them and the admin's Re-check rewrites them."""
        pks = mismatch.pks
        diff: dict[str, Any] = {
            "differences": [d.as_dict() for d in mismatch.differences[:100]],
            "summary": mismatch.summary,
            "stores": [self.primary, self.secondary],
        }
        if self.keys is not None:
            # Compared on these rows, read by key: the answer as a whole was the
            # database's choice. Re-check reads them again.
            diff["keys"] = sorted(self.keys)[:MAX_KEYED]
            diff["not_determined"] = self.reason
        if self._names_redacted_field():
            source_shown: Any = REDACTED
            target_shown: Any = REDACTED
            if mismatch.summary is not None:
                diff["summary"] = REDACTED
        elif len(pks) == 1 and mismatch.summary is None:
            # One row: shown like verify's records, field by field, side by side.
            diff.update(mismatch.differences[0].as_dict())
            source_shown = compare.shown_row(self.config, source, pks[0])
            target_shown = compare.shown_row(self.config, target, pks[0])
        else:
            source_shown = compare.shown(self.config, source)
            target_shown = compare.shown(self.config, target)
        diff["source_value"], diff["target_value"] = source_shown, target_shown
        return diff

    def _names_redacted_field(self) -> bool:
        """Results whose values cannot be told apart by field name, on a model with
        ``redact_fields``: aggregates and annotations (an alias need not name the field
        it reads, as in ``values(code=F("isbn"))``), and ``values_list()`` tuples that
        hold a redacted field. They are hidden whole."""
        hidden = set(self.config.redact_fields)
        if not hidden:
            return False
        if self.kind == AGGREGATE or self.queryset.query.annotations:
            return True
        fields = getattr(self.queryset, "_fields", None) or ()
        if not fields and self.queryset._iterable_class not in (  # type: ignore[attr-defined]
            models.query.ModelIterable,
            models.query.ValuesIterable,
        ):
            return True  # values_list() of every field
        return any(name.split("__")[0] in hidden for name in fields)


def begin(queryset: models.QuerySet, kind: str) -> ShadowRead | None:
    """A ``ShadowRead`` when this evaluation is sampled, else None (at the cost of one
    context variable lookup outside a sampled scope)."""
    current = scope.current()
    if current is None:
        return None
    with reporting.guarded("a shadow read could not start"):
        config = conf.model_config(queryset.model)
        if config is None or not current.samples(config):
            return None
        primary, secondary = config.primary_alias, config.other_alias
        if queryset.db != primary:
            return None
        pks: list[Any] = []
        if secondary is None:
            found = pk_lookup(queryset) if kind == ROWS else None
            if found is None:  # other shapes cannot be asked of a key-value store
                reporting.incr("read.not_comparable", 1, config.label)
                return None
            pks = found
        if record.uncommitted_events(primary):
            reporting.incr("read.uncommitted", 1, config.label)
            return None  # the target cannot have what this transaction has not committed
        control = current.draw < current_control_rate() * (
            config.shadow_read_rate if current.rate is None else current.rate
        )
        clone = queryset._chain()  # type: ignore[attr-defined]
        clone._prefetch_related_lookups = ()
        # Re-run in autocommit on the pool: a row lock there would be refused, and is
        # not what the comparison needs.
        clone.query.select_for_update = False
        return ShadowRead(
            config=config,
            kind=kind,
            queryset=clone,
            primary=primary,
            secondary=primary if control else secondary,
            control=control,
            scope=current,
            pks=pks,
        )
    return None


def pk_lookup(queryset: models.QuerySet) -> list[Any] | None:
    """The keys of a plain lookup by primary key (``get(pk=...)``, ``filter(pk=...)``,
    ``filter(pk__in=...)``, with ``first()`` or a slice), else None."""
    query = queryset.query
    if (
        query.combinator
        or query.annotations
        or query.distinct
        or query.group_by
        or query.low_mark
        or queryset._iterable_class is not models.query.ModelIterable  # type: ignore[attr-defined]
    ):
        return None
    where = query.where
    if where.negated or len(where.children) != 1:
        return None
    lookup = where.children[0]
    target = getattr(getattr(lookup, "lhs", None), "target", None)
    if target is None or target != queryset.model._meta.pk:
        return None
    if lookup.lookup_name == "exact":
        return [lookup.rhs]
    if lookup.lookup_name == "in" and isinstance(lookup.rhs, list | tuple | set):
        keys = list(lookup.rhs)
        # A slice or first() of several keys picks by an order the store cannot apply.
        return keys if query.high_mark is None or len(keys) <= 1 else None
    return None


def current_control_rate() -> float:
    return float(conf.get_settings().shadow["CONTROL_RATE"])


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
    iterable = queryset._iterable_class  # type: ignore[attr-defined]
    fields = tuple(queryset._fields or ())  # type: ignore[attr-defined]
    query = queryset.query
    if iterable is models.query.ValuesIterable:
        if not fields:
            return lambda item: item[opts.pk.attname]
        for name in fields:
            if name in names:
                return lambda item, name=name: item[name]
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
    return lambda item, index=index: item[index]


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


class _ShapeLog:
    """When to log the shape of a not comparable read: the first time, then at most once
    per ``NOT_COMPARABLE_LOG_INTERVAL`` per shape, with how many there were meanwhile."""

    MAX_SHAPES = 1000

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shapes: dict[tuple[str, str], tuple[float, int]] = {}

    def seen(self, label: str, shape: str) -> int:
        """How many reads of this shape to log now (0: not yet)."""
        now = time.monotonic()
        key = (label, shape)
        with self.lock:
            last, count = self.shapes.get(key, (None, 0))
            count += 1
            if last is not None and now - last < NOT_COMPARABLE_LOG_INTERVAL:
                self.shapes[key] = (last, count)
                return 0
            if len(self.shapes) >= self.MAX_SHAPES:
                self.shapes.clear()
            self.shapes[key] = (now, 0)
            return count


_shapes = _ShapeLog()
