"""Ship outbox batches to the stream, deleting each only once the stream accepted it all.

Several relays may run at once: on databases with ``SKIP LOCKED`` each claims its own
batches; elsewhere they may ship a batch twice, which replay's versions make harmless.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field

from django.db import DatabaseError, close_old_connections, connections, transaction
from django.db.models import F, Sum

from django_mirror import conf, reporting
from django_mirror.events import decode_value, encode_json, partition_key, pk_text
from django_mirror.locking import write_lock_first
from django_mirror.models import DeadLetter, OutboxBatch
from django_mirror.streams import Record, Stream, get_stream

logger = logging.getLogger("django_mirror.relay")


@dataclass
class RelayResult:
    batches: int = 0
    events: int = 0
    failed_batches: int = 0
    dead_letters: int = 0
    kept: list[int] = field(default_factory=list)

    def add(self, other: RelayResult) -> None:
        self.batches += other.batches
        self.events += other.events
        self.failed_batches += other.failed_batches
        self.dead_letters += other.dead_letters
        self.kept.extend(other.kept)


def _records(batch: OutboxBatch, stream: Stream, using: str) -> tuple[list[Record], int]:
    """The batch's events as stream records, versioned; oversized ones are dead-lettered."""
    records = []
    dead = 0
    for event in batch.events():
        data = encode_json(event).encode()
        pk = decode_value(event["pk"])
        key = partition_key(event["model"], pk)
        if len(data) + len(key.encode()) > stream.max_record_bytes:
            DeadLetter.objects.using(using).create(
                stage="relay",
                model=event["model"],
                pk_value=pk_text(pk),
                stream=stream.name,
                reason=f"event of {len(data)} bytes exceeds the stream's record limit "
                f"of {stream.max_record_bytes} bytes",
                payload=data,
            )
            dead += 1
            reporting.incr("dead_letters", 1, event["model"])
            continue
        records.append(Record(key, data))
    return records, dead


def ship_once(using: str | None = None, limit: int | None = None) -> RelayResult:
    """Claim up to ``limit`` outbox batches, put their events, delete what was accepted."""
    using = using or conf.source_alias()
    limit = limit or conf.get_settings().relay["BATCH_SIZE"]
    stream = get_stream()
    result = RelayResult()
    with transaction.atomic(using=using):
        write_lock_first(using, OutboxBatch._meta.db_table)
        claim = OutboxBatch.objects.using(using).order_by("id")
        if connections[using].features.has_select_for_update_skip_locked:
            claim = claim.select_for_update(skip_locked=True)
        batches = list(claim[:limit])
        if not batches:
            return result
        records: list[Record] = []
        owners: list[int] = []
        for batch in batches:
            batch_records, dead = _records(batch, stream, using)
            result.dead_letters += dead
            records.extend(batch_records)
            owners.extend([batch.id] * len(batch_records))
        failed = {owners[i] for i in stream.put(records)}
        shipped = [b.id for b in batches if b.id not in failed]
        OutboxBatch.objects.using(using).filter(id__in=shipped).delete()
        if failed:
            OutboxBatch.objects.using(using).filter(id__in=failed).update(
                attempts=F("attempts") + 1
            )
        result.batches = len(shipped)
        result.events = sum(b.count for b in batches if b.id not in failed)
        result.failed_batches = len(failed)
        result.kept = sorted(failed)
    relayed: dict[str, int] = {}
    for batch in batches:
        if batch.id not in failed:
            relayed[batch.model] = relayed.get(batch.model, 0) + batch.count
    for label, count in relayed.items():
        reporting.incr("relayed", count, label)
    reporting.incr("relay.failed_batches", len(failed))
    return result


def outbox_aliases(using: str | None = None) -> list[str]:
    """``[using]``, or every alias that may hold an outbox: the source, and each database
    target, where a promoted model's writes are captured."""
    if using is not None:
        return [using]
    source = conf.source_alias()
    return [source, *sorted(a for a in conf.database_aliases() - {source} if _has_outbox(a))]


@functools.cache
def _has_outbox(alias: str) -> bool:
    """A target migrated without django-mirror's tables never captures, so holds none."""
    try:
        with connections[alias].cursor() as cursor:
            tables = connections[alias].introspection.table_names(cursor)
    except DatabaseError:
        return False
    return OutboxBatch._meta.db_table in tables


def drain(using: str | None = None, max_rounds: int | None = None) -> RelayResult:
    """Ship until the outbox (of ``using``, else of every alias) is empty or a round
    delivers nothing."""
    total = RelayResult()
    for alias in outbox_aliases(using):
        rounds = 0
        while max_rounds is None or rounds < max_rounds:
            rounds += 1
            result = ship_once(alias)
            total.add(result)
            if result.batches == 0:
                break
    return total


def backlog_by_model(using: str | None = None) -> dict[str, int]:
    """Events waiting per model (lower-cased label), in the outbox of ``using``, else in
    every outbox: a promoted model's writes are captured on its target."""
    waiting: dict[str, int] = {}
    for alias in outbox_aliases(using):
        per_model = (
            OutboxBatch.objects.using(alias)
            .order_by()
            .values("model")
            .annotate(events=Sum("count"))
        )
        for entry in per_model:
            key = entry["model"].lower()
            waiting[key] = waiting.get(key, 0) + (entry["events"] or 0)
    return waiting


def backlog(using: str | None = None) -> int:
    """Events waiting in the outbox (of ``using``, else of every alias); also reported as
    the ``relay.backlog`` gauge."""
    waiting = 0
    for alias in outbox_aliases(using):
        waiting += sum(OutboxBatch.objects.using(alias).values_list("count", flat=True))
    reporting.gauge("relay.backlog", waiting)
    return waiting


class _Shipper(threading.Thread):
    """One per process: ships right after commits without holding up the request."""

    def __init__(self) -> None:
        super().__init__(name="django-mirror-relay", daemon=True)
        self.wake = threading.Event()
        self.aliases: set[str] = set()
        self.lock = threading.Lock()

    def kick(self, using: str) -> None:
        with self.lock:
            self.aliases.add(using)
        self.wake.set()

    def run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            with self.lock:
                aliases, self.aliases = self.aliases, set()
            for using in aliases:
                _ship_quietly(using)
            close_old_connections()


_shipper: _Shipper | None = None
_shipper_lock = threading.Lock()


def _ship_quietly(using: str) -> None:
    """A best-effort ship: failures are logged and left to ``mirror_relay``."""
    try:
        drain(using, max_rounds=5)
    except Exception:
        logger.warning(
            "django-mirror: shipping after commit failed; the outbox keeps the events",
            exc_info=True,
        )


def after_commit(using: str) -> None:
    """Start shipping the just-committed events, as ``RELAY["ON_COMMIT"]`` says."""
    global _shipper
    mode = conf.get_settings().relay["ON_COMMIT"]
    if mode == "sync":
        _ship_quietly(using)
    elif mode == "thread":
        with _shipper_lock:
            if _shipper is None or not _shipper.is_alive():
                _shipper = _Shipper()
                _shipper.start()
        _shipper.kick(using)
