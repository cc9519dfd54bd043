"""One sampled read: timed on the request thread, run again on the other store by the
pool, compared, re-checked after a delay, and reported only if the difference stays
and is not explained by rows the target has yet to catch up with.

``ShadowRead`` is this life cycle; how the stores are read and their answers judged
is ``shadow.judging``, and how a difference that stays is recorded, ``shadow.confirming``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, models

from django_mirror.capture import record
from django_mirror.config import conf
from django_mirror.live import lag
from django_mirror.observability import reporting
from django_mirror.shadow import compare, determinism, scope
from django_mirror.shadow.compare import Mismatch
from django_mirror.shadow.confirming import Confirming
from django_mirror.shadow.judging import Judging
from django_mirror.shadow.pool import get_pool

logger = logging.getLogger("django_mirror.shadow")

ROWS, COUNT, EXISTS, AGGREGATE = (
    determinism.ROWS,
    determinism.COUNT,
    determinism.EXISTS,
    determinism.AGGREGATE,
)
#: Re-checks of one difference before it is given up as a row too busy to compare.
MAX_RECHECKS = 4
#: Seconds between two log lines about the same not comparable query shape.
NOT_COMPARABLE_LOG_INTERVAL = 60.0


@dataclass
class ShadowRead(Judging, Confirming):
    """One sampled read, from the request thread's copy of its answer to a confirmed
    mismatch or a count."""

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
                self._target_error("django-mirror: shadow read of %s by key failed: %s", exc)
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

    def _target_error(self, message: str, exc: Exception) -> None:
        """Count a failed read as a target error and log ``message`` with the label and
        the exception's type."""
        reporting.incr(self.metric("target_errors"), 1, self.label)
        logger.info(message, self.label, type(exc).__name__)

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
        get_pool().later(conf.get_settings().shadow.recheck_delay, self.recheck)

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
                self._target_error("django-mirror: shadow re-check of %s failed: %s", exc)
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
                kept = self._without_lagging_rows(mismatch)
                if kept is None:
                    reporting.incr(self.metric("lagging"), 1, self.label)
                    return
                mismatch = kept
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

    def _without_lagging_rows(self, mismatch: Mismatch) -> Mismatch | None:
        """Rows whose source version is newer than the target's do not count; a result
        not made of rows (a count, an aggregate) does not count while any row lags."""
        config = self.config
        if mismatch.summary is None:
            lagging = lag.unapplied(config, set(mismatch.pks))
            return None if lagging is None else mismatch.without(lagging)
        # A whole result compared on known rows lags when one of those rows does.
        lagging = lag.unapplied(config, set(mismatch.keys) if mismatch.keys else None)
        return None if lagging is None or lagging else mismatch


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
        clone = queryset._chain()
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
        or queryset._iterable_class is not models.query.ModelIterable
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
    return conf.get_settings().shadow.control_rate


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
