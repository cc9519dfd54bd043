"""Ship outbox batches to the stream, deleting each only once the stream accepted it all.

A round claims batches, puts them, and settles them, each in its own short
transaction: no lock of the source database (on SQLite: its one write lock, which the
app's writes need too) is ever held while the stream is called. A claim is a lease
(``RELAY["LEASE_SECONDS"]``), so several relays take different batches; a relay that
dies leaves its batches to the next after the lease, which may ship some twice —
replay's versions make that harmless.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from django.db import DatabaseError, close_old_connections, connections, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from django_mirror.config import conf
from django_mirror.core import failures
from django_mirror.core.background import ServiceThread
from django_mirror.core.events import wire_events
from django_mirror.core.locking import shared_in_memory, write_lock_first
from django_mirror.models import DeadLetter, OutboxBatch
from django_mirror.observability import reporting
from django_mirror.streams import Record, Stream, get_stream


@dataclass
class RelayResult:
    batches: int = 0
    events: int = 0
    failed_batches: int = 0
    dead_letters: int = 0
    kept: list[int] = field(default_factory=list)
    #: Batches another relay's live claim held when nothing was left to claim.
    held_elsewhere: int = 0

    def add(self, other: RelayResult) -> None:
        self.batches += other.batches
        self.events += other.events
        self.failed_batches += other.failed_batches
        self.dead_letters += other.dead_letters
        self.kept.extend(other.kept)
        self.held_elsewhere += other.held_elsewhere


def _records(batch: OutboxBatch, stream: Stream) -> tuple[list[Record], list[DeadLetter]]:
    """The batch's events as stream records, versioned, and dead letters (unsaved) for
    the events too large for any record."""
    records = []
    dead = []
    limit = stream.max_record_bytes
    for key, data in wire_events(batch.id, batch.model, batch.payload):
        if len(data) + len(key.encode()) > limit:
            dead.append(
                DeadLetter(
                    stage="relay",
                    model=batch.model,
                    pk_value=key.partition(":")[2],
                    stream=stream.name,
                    reason=f"event of {len(data)} bytes exceeds the stream's record limit "
                    f"of {limit} bytes",
                    payload=data,
                )
            )
            continue
        records.append(Record(key, data))
    return records, dead


def _claim(using: str, limit: int) -> list[OutboxBatch]:
    """Lease the oldest batches no live claim holds, in one short transaction, and load
    them after it."""
    now = timezone.now()
    lease = dt.timedelta(seconds=conf.get_settings().relay.lease_seconds)
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    with transaction.atomic(using=using):
        write_lock_first(using, OutboxBatch._meta.db_table)
        claim = OutboxBatch.objects.using(using).filter(free).order_by("id")
        if connections[using].features.has_select_for_update_skip_locked:
            claim = claim.select_for_update(skip_locked=True)
        ids = list(claim.values_list("id", flat=True)[:limit])
        if not ids:
            return []
        OutboxBatch.objects.using(using).filter(id__in=ids).update(claimed_until=now + lease)
    return list(OutboxBatch.objects.using(using).filter(id__in=ids).order_by("id"))


def _settle(using: str, shipped: list[int], failed: set[int], dead: list[DeadLetter]) -> None:
    """One short transaction: the shipped batches go (their oversized events to the
    dead letters), the failed ones are released for the next round."""
    with transaction.atomic(using=using):
        write_lock_first(using, OutboxBatch._meta.db_table)
        if dead:
            DeadLetter.objects.using(using).bulk_create(dead)
        if shipped:
            OutboxBatch.objects.using(using).filter(id__in=shipped).delete()
        if failed:
            OutboxBatch.objects.using(using).filter(id__in=failed).update(
                attempts=F("attempts") + 1, claimed_until=None
            )


#: Events of a round encoded together: while one part is put, the next is encoded.
PART_EVENTS = 10_000


def _parts(batches: list[OutboxBatch]) -> Iterator[list[OutboxBatch]]:
    """The batches in order, in runs of about ``PART_EVENTS`` events."""
    part: list[OutboxBatch] = []
    events = 0
    for batch in batches:
        part.append(batch)
        events += batch.count
        if events >= PART_EVENTS:
            yield part
            part, events = [], 0
    if part:
        yield part


def _put(batches: list[OutboxBatch], stream: Stream, dead: dict[int, list[DeadLetter]]) -> set[int]:
    """Put the batches' events, a part at a time, and return the ids of the batches not
    all delivered; ``dead`` gets each batch's oversized events.

    A round of more than one part puts each on one worker thread, in order, while this
    thread encodes the next: the put waits on the network, encoding on the interpreter.
    """
    parts = list(_parts(batches))
    putter = ThreadPoolExecutor(max_workers=1) if len(parts) > 1 else None
    pending: list[tuple[Future[list[int]] | list[int], list[int]]] = []
    try:
        for part in parts:
            records: list[Record] = []
            owners: list[int] = []
            for batch in part:
                batch_records, dead[batch.id] = _records(batch, stream)
                records.extend(batch_records)
                owners.extend([batch.id] * len(batch_records))
            if not records:
                continue
            put = stream.put(records) if putter is None else putter.submit(stream.put, records)
            pending.append((put, owners))
        failed: set[int] = set()
        for put, owners in pending:
            failed.update(owners[i] for i in (put.result() if isinstance(put, Future) else put))
        return failed
    finally:
        if putter is not None:  # after a failure, the parts not yet put stay unput
            putter.shutdown(wait=True, cancel_futures=True)


def ship_once(using: str | None = None, limit: int | None = None) -> RelayResult:
    """Claim up to ``limit`` outbox batches, put their events, delete what was accepted."""
    using = using or conf.source_alias()
    limit = limit or conf.get_settings().relay.batch_size
    stream = get_stream()
    result = RelayResult()
    batches = _claim(using, limit)
    if not batches:
        result.held_elsewhere = OutboxBatch.objects.using(using).count()
        return result
    dead: dict[int, list[DeadLetter]] = {}
    try:
        failed = _put(batches, stream, dead)
    except BaseException:
        with contextlib.suppress(DatabaseError):  # else the lease runs out
            _settle(using, [], {b.id for b in batches}, [])
        raise
    shipped = [b for b in batches if b.id not in failed]
    letters = [letter for b in shipped for letter in dead[b.id]]
    _settle(using, [b.id for b in shipped], failed, letters)
    result.batches = len(shipped)
    result.events = sum(b.count for b in shipped)
    result.failed_batches = len(failed)
    result.dead_letters = len(letters)
    result.kept = sorted(failed)
    relayed: dict[str, int] = {}
    for batch in shipped:
        relayed[batch.model] = relayed.get(batch.model, 0) + batch.count
    for label, count in relayed.items():
        reporting.incr("relayed", count, label)
    for letter in letters:
        reporting.incr("dead_letters", 1, letter.model)
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


#: Seconds between looks at batches another relay is shipping, while draining.
HELD_POLL = 0.05


def drain(
    using: str | None = None,
    max_rounds: int | None = None,
    wait_for_others: bool = True,
    until_short: bool = False,
) -> RelayResult:
    """Ship until the outbox (of ``using``, else of every alias) is empty or a round
    delivers nothing.

    Batches another relay claimed are waited for (``wait_for_others``): it ships and
    deletes them, or its lease runs out and they are claimed here. ``until_short`` stops
    after a round that claimed less than a full batch: the after-commit thread, which
    every later commit wakes again, so it spares the empty claim that would end it.
    """
    total = RelayResult()
    limit = conf.get_settings().relay.batch_size
    for alias in outbox_aliases(using):
        rounds = 0
        while max_rounds is None or rounds < max_rounds:
            rounds += 1
            result = ship_once(alias, limit)
            total.add(result)
            if until_short and 0 < result.batches + result.failed_batches < limit:
                break
            if result.batches:
                continue
            if not (result.held_elsewhere and wait_for_others):
                break
            time.sleep(HELD_POLL)
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


class Shipper(ServiceThread):
    """The thread that ships right after commits (``RELAY["ON_COMMIT"] = "thread"``)
    without holding up the request; ``runtime`` starts it."""

    name = "relay shipper"
    thread_name = "django-mirror-relay"

    def __init__(self) -> None:
        super().__init__()
        self.aliases: set[str] = set()
        self.idle = threading.Event()
        self.idle.set()
        #: Set by whoever waits for the shipping, which then lingers no longer.
        self.hurry = threading.Event()

    def kick(self, using: str) -> None:
        with self.lock:
            self.aliases.add(using)
            self.idle.clear()
        self.wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every commit kicked so far has been shipped (or given up on), so
        whatever comes next (a test's teardown, a graceful shutdown) sees it done."""
        if self.idle.is_set():
            return True
        self.hurry.set()
        return self.idle.wait(timeout)

    def stop(self, timeout: float) -> None:
        self.hurry.set()
        super().stop(timeout)

    def after_fork(self) -> None:
        """Commits of the parent are the parent's to ship."""
        self.__init__()  # type: ignore[misc]

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.stopping:
                break
            # The commits of the next moment join this round: under a steady stream of
            # small commits, one claim, put and delete serve many, at that much latency.
            if self.hurry.wait(conf.get_settings().relay.linger):
                self.hurry.clear()
            with self.lock:
                aliases, self.aliases = self.aliases, set()
            for using in aliases:
                _ship_quietly(using)
            try:
                close_old_connections()
            except Exception:  # the thread outlives any one failure
                _shipping.failed()
            with self.lock:
                if not self.aliases:
                    self.idle.set()
        connections.close_all()  # this thread's own


shipper = Shipper()
_shipping = failures.RepeatedFailures(
    "relay", "shipping after commit failed; the outbox keeps the events"
)


def _ship_quietly(using: str) -> None:
    """A best-effort ship: failures are counted and logged, and left to ``mirror_relay``
    or the next commit."""
    try:
        result = drain(using, max_rounds=5, wait_for_others=False, until_short=True)
    except Exception:
        _shipping.failed()
        return
    if result.failed_batches:
        _shipping.failed(f"the stream did not accept {result.failed_batches} batches")
    else:
        _shipping.succeeded()


def after_commit(using: str) -> None:
    """Start shipping the just-committed events, as ``RELAY["ON_COMMIT"]`` says."""
    mode = conf.get_settings().relay.on_commit
    if mode == "thread" and shared_in_memory(using):
        # Shipping in the app's thread instead would add statements to its connection,
        # and no other process can read such a database: its outbox is shipped by
        # relay.drain() when asked.
        return
    if mode == "sync":
        _ship_quietly(using)
    elif mode == "thread":
        shipper.kick(using)
