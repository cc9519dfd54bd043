"""One sampled read: timed on the request thread, run again on the other store by the
pool, compared, re-checked after a delay, and reported only if the difference stays
and is not explained by rows the target has yet to catch up with."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import models

from django_mirror import capture, conf, lag, reporting, scoped
from django_mirror.diff import REDACTED
from django_mirror.shadow import compare, scope
from django_mirror.shadow.pool import get_pool
from django_mirror.targets import get_target

logger = logging.getLogger("django_mirror.shadow")

ROWS, COUNT, EXISTS, AGGREGATE = "rows", "count", "exists", "aggregate"
#: Re-checks of one difference before it is given up as a row too busy to compare.
MAX_RECHECKS = 4


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
    ordered: bool = False
    queued: float = 0.0
    #: The source's answer as the request got it (``compare.snapshot``) and its time.
    source_raw: Any = None
    source_ms: float = 0.0
    rechecks: int = 0
    last_seen: str | None = None

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
        if self.secondary is None:
            return self.run_on(None)
        with scoped.statement_time_limited(self.secondary, self._timeout()):
            return self.run_on(self.secondary)

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
            reporting.incr(self.metric("compared"), 1, self.label)
            source = compare.normalise(self.config, self.source_raw, self.ordered)
            target = compare.normalise(self.config, result, self.ordered)
            if compare.compare(self.config, source, target) is None:
                reporting.incr(self.metric("match"), 1, self.label)
                return
            reporting.incr(self.metric("suspected"), 1, self.label)
            self._recheck_later()

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
                source = compare.normalise(self.config, self.run_on(self.primary), self.ordered)
                target = compare.normalise(self.config, self._run_limited(), self.ordered)
            except Exception as exc:
                reporting.incr(self.metric("target_errors"), 1, self.label)
                logger.info(
                    "django-mirror: shadow re-check of %s failed: %s",
                    self.label,
                    type(exc).__name__,
                )
                return
            mismatch = compare.compare(self.config, source, target)
            if mismatch is None:
                reporting.incr(self.metric("transient"), 1, self.label)
                return
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
        lagging = lag.unapplied(config)
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
        diff: dict[str, Any] = {
            "differences": [d.as_dict() for d in mismatch.differences[:100]],
            "summary": mismatch.summary,
            "stores": [self.primary, self.secondary],
        }
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
        if capture.uncommitted_events(primary):
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
            ordered=queryset.ordered,
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
