"""Live mirroring (phase ``mirror``): a committed transaction's events are applied to the
target at once, through the same apply path and version rules as replay.

Relay and replay keep running behind it: whatever a live apply misses (the target is
down, the process dies after commit) reaches the target from the stream, and an event
applied twice is a stale version the second time. So a failure here is counted and
recorded as a write mismatch, never raised into the request.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence

from django.core.signals import setting_changed
from django.db.backends.base.base import BaseDatabaseWrapper

from django_mirror.capture.outbox import StoredBatch
from django_mirror.config import conf
from django_mirror.core.events import Event, event_dicts, pk_text
from django_mirror.core.locking import retrying
from django_mirror.observability import reporting
from django_mirror.targets import (
    ApplyResult,
    DatabaseTarget,
    Target,
    database_target,
    get_target,
    target_for,
)

logger = logging.getLogger("django_mirror.live")

#: A failed apply records at most this many write mismatches (one per row).
MAX_RECORDS_PER_FAILURE = 100


class _Committing:
    """A connection's live batches of its open transaction, applied together once it
    commits: one target transaction per source transaction, so the target's foreign
    keys see the rows of all its statements at once, in an order they accept."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.batches: list[StoredBatch] = []

    def flush(self) -> None:
        batches, self.batches = self.batches, []
        if batches:
            apply_committed(self.alias, batches)


def apply_after_commit(connection: BaseDatabaseWrapper, batch: StoredBatch) -> None:
    """Have ``batch`` applied live once the connection's transaction commits.

    Each batch joins through a commit hook of its own, which Django drops with a savepoint
    that is rolled back (the outbox row goes with it); one flush hook of ours, kept last
    among ours and outside every savepoint, then applies what joined.
    """
    committing = connection.__dict__.get("_django_mirror_live")
    if committing is None:
        committing = connection.__dict__["_django_mirror_live"] = _Committing(connection.alias)
    if not connection.in_atomic_block:  # autocommit: the hook runs at once
        connection.on_commit(functools.partial(apply_committed, connection.alias, [batch]))
        return
    connection.on_commit(functools.partial(committing.batches.append, batch), robust=True)
    hooks = connection.run_on_commit
    for index, (_, hook, _) in enumerate(hooks):
        if hook == committing.flush:
            del hooks[index]
            break
    hooks.append((set(), committing.flush, True))


def apply_committed(origin: str, batches: Sequence[StoredBatch]) -> None:
    """Apply the events of batches committed on ``origin`` to the other store."""
    with reporting.guarded("live mirroring failed; replay will apply the events"):
        groups: dict[int, tuple[conf.ModelConfig, Target, list[Event]]] = {}
        for batch_id, label, payload in batches:
            config = conf.config_for_label(label)
            if config is None or not config.live:
                continue
            target = target_for(config, origin, live=True)
            events = [Event.from_dict(e) for e in event_dicts(batch_id, label, payload)]
            groups.setdefault(id(target), (config, target, []))[2].extend(events)
        for config, target, events in groups.values():
            _apply(config, target, events)


#: Attempts at a live apply that hit a deadlock or lock timeout (writers racing on the
#: same rows take the target's row locks in different orders).
ATTEMPTS = 3
#: After a target cannot be reached at all, live applies to it are left to replay for
#: this many seconds, so requests do not each wait on a dead target.
PAUSE_AFTER_FAILURE = 5.0

_paused_until: dict[str, float] = {}


def _apply_retrying(target: Target, events: list[Event]) -> ApplyResult:
    return retrying(lambda: target.apply_live(events), ATTEMPTS)


def _apply(config: conf.ModelConfig, target: Target, events: list[Event]) -> None:
    key = target.describe()
    if time.monotonic() < _paused_until.get(key, 0.0):
        reporting.incr("write.deferred", len(events), config.label)
        record_write_mismatches(config, events, f"{key} failed recently; left to replay", target)
        return
    started = time.perf_counter()
    try:
        result = _apply_retrying(target, events)
    except Exception as exc:
        unreachable = not target.connected()
        if unreachable:
            _paused_until[key] = time.monotonic() + PAUSE_AFTER_FAILURE
        logger.warning(
            "django-mirror: live write of %d %s events to %s failed (%s); replay will apply them%s",
            len(events),
            config.label,
            key,
            type(exc).__name__,
            f", and live writes to it wait {PAUSE_AFTER_FAILURE:.0f} s" if unreachable else "",
        )
        record_write_mismatches(config, events, f"{type(exc).__name__}: {exc}", target)
        reporting.sentry_mismatch(
            "write",
            config.label,
            type(exc).__name__,
            [],
            [pk_text(e.pk) for e in events],
            f"django-mirror: live write to {key} failed ({type(exc).__name__})",
        )
        return
    _paused_until.pop(key, None)
    reporting.timing("write.latency", (time.perf_counter() - started) * 1000, config.label)
    for label, count in result.applied_by_model.items():
        reporting.incr("write.applied", count, label)
    reporting.incr("write.stale", result.stale, config.label)
    for event, reason in result.failed:
        record_write_mismatches(config, [event], reason, target)


def record_write_mismatches(
    config: conf.ModelConfig, events: list[Event], reason: str, target: Target
) -> None:
    """Count and record events ``target`` did not take, one ``MismatchRecord`` a row.

    The reason is the error's text with ``redact_fields`` values removed by the target
    (database errors quote the failing row); the row's values are not stored at all. The
    record names the store (a database alias) so ``resolve_healed`` can look there.
    """
    store = target.alias if isinstance(target, DatabaseTarget) else None
    from django_mirror.core.request import current_path
    from django_mirror.models import MismatchRecord

    by_model: dict[str, int] = {}
    for event in events:
        by_model[event.model] = by_model.get(event.model, 0) + 1
    for label, count in by_model.items():
        reporting.incr("write.mismatch", count, label)
    path = current_path()
    with reporting.guarded("a write mismatch could not be recorded"):
        MismatchRecord.objects.using(conf.source_alias()).bulk_create(
            [
                MismatchRecord(
                    kind=MismatchRecord.Kind.WRITE,
                    status=MismatchRecord.Status.SUSPECTED,
                    model=event.model,
                    pk_value=pk_text(event.pk)[:255],
                    request_path=path[:500],
                    diff={
                        "op": event.op,
                        "version": event.version,
                        "error": reason[:2000],
                        "store": store,
                    },
                )
                for event in events[:MAX_RECORDS_PER_FAILURE]
            ]
        )


#: Suspected write mismatches looked at per ``resolve_healed`` call, oldest first.
HEAL_BATCH = 500


def resolve_healed(limit: int = HEAL_BATCH) -> int:
    """Resolve suspected write mismatches whose row the store now holds at the failed
    event's version or a newer one (replay applied it, or a later write superseded it):
    what replay heals stops counting as a problem. Returns how many were resolved."""
    from django_mirror.models import MismatchRecord

    using = conf.source_alias()
    suspected = MismatchRecord.objects.using(using).filter(
        kind=MismatchRecord.Kind.WRITE, status=MismatchRecord.Status.SUSPECTED
    )
    by_store: dict[tuple[str, str | None], list[MismatchRecord]] = {}
    for record in suspected.order_by("id")[:limit]:
        store = (record.diff or {}).get("store")
        by_store.setdefault((record.model, store), []).append(record)
    healed: list[int] = []
    for (label, store), records in by_store.items():
        config = conf.config_for_label(label)
        if config is None:
            continue
        target = database_target(store, live=True) if store else get_target(config)
        held = target.versions(label, [r.pk_value for r in records])
        for record in records:
            version = (record.diff or {}).get("version")
            current = held.get(record.pk_value)
            if isinstance(version, int) and current is not None and current[0] >= version:
                healed.append(record.pk)
    if healed:
        MismatchRecord.objects.using(using).filter(pk__in=healed).update(
            status=MismatchRecord.Status.RESOLVED
        )
        reporting.incr("write.healed", len(healed))
    return len(healed)


def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
    if setting in conf.RECONFIGURING:
        _paused_until.clear()


setting_changed.connect(_on_setting_changed, dispatch_uid="django_mirror.live")
