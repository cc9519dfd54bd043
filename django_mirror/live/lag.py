"""Which rows the target has not caught up with yet.

A row lags when a version of it was captured that the other store has not applied:
its events still wait in the outbox, or a live apply of them failed (a write mismatch
not yet healed by replay). Before promotion the other store is the target; after,
the old store, which replay keeps current the same way. Shadow reads leave such rows out of a mismatch, since the
difference is expected and replay will close it.
"""

from __future__ import annotations

import json
from collections.abc import Collection

from django_mirror.capture.record import capture_alias
from django_mirror.config import conf
from django_mirror.core.events import decode_value, event_dicts, pk_text
from django_mirror.models import MismatchRecord, OutboxBatch
from django_mirror.targets import target_for

#: Outbox batches of one model looked through; past this, every row counts as lagging.
OUTBOX_SCAN_LIMIT = 2000


def _pending_versions(
    config: conf.ModelConfig, keys: Collection[str] | None
) -> dict[str, int] | None:
    """Newest captured, not yet applied version per row; None when too much is pending
    to tell."""
    newest: dict[str, int] = {}
    batches = list(
        OutboxBatch.objects.using(capture_alias(config))
        .filter(model=config.label)
        .order_by("id")
        .values_list("id", "payload")[: OUTBOX_SCAN_LIMIT + 1]
    )
    if len(batches) > OUTBOX_SCAN_LIMIT:
        return None
    for batch_id, payload in batches:
        for event in event_dicts(batch_id, config.label, json.loads(payload)):
            key = pk_text(decode_value(event["pk"]))
            newest[key] = max(newest.get(key, 0), event["version"])
    failed = MismatchRecord.objects.using(conf.source_alias()).filter(
        kind=MismatchRecord.Kind.WRITE,
        status=MismatchRecord.Status.SUSPECTED,
        model=config.label,
    )
    if keys is not None:
        failed = failed.filter(pk_value__in=list(keys))
    for key, diff in failed.values_list("pk_value", "diff"):
        version = (diff or {}).get("version", 0)
        newest[key] = max(newest.get(key, 0), version)
    return newest


def unapplied(config: conf.ModelConfig, pks: Collection[str] | None = None) -> set[str] | None:
    """Rows (pk text) among ``pks`` (None: any) with a captured version the target lacks.

    None means "cannot tell, assume all". Write mismatches the target has since caught
    up with are marked resolved on the way.
    """
    newest = _pending_versions(config, pks)
    if newest is None:
        return None
    if pks is not None:
        newest = {k: v for k, v in newest.items() if k in pks}
    if not newest:
        return set()
    other_store = target_for(config, capture_alias(config))
    applied = other_store.versions(config.label, list(newest))
    lagging = {k for k, v in newest.items() if applied.get(k, (-1, False))[0] < v}
    healed = [k for k in newest if k not in lagging]
    if healed:
        MismatchRecord.objects.using(conf.source_alias()).filter(
            kind=MismatchRecord.Kind.WRITE,
            status=MismatchRecord.Status.SUSPECTED,
            model=config.label,
            pk_value__in=healed,
        ).update(status=MismatchRecord.Status.RESOLVED)
    return lagging
