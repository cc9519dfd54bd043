"""Read every shard of the stream and apply its events to each model's target.

A shard's checkpoint moves only after the batch it covers was applied (or
dead-lettered) and committed on the target, so a crash at any point replays a little
again — harmless, since targets skip versions they already hold. Checkpoints carry a
lease so several replay processes can share the shards of one stream
(``checkpoints``); what cannot be applied becomes a dead letter (``dead_letters``).

Each held shard has a reader thread (``ShardReader``) that reads its next batch while
this one is decoded and applied, so a shard is replayed at the pace of the slower of
the two, not of their sum, and the reads of all held shards proceed at once. Readers
only talk to the stream; every database query (apply, dead letters, checkpoints,
leases) stays in the thread that runs ``Replayer.run``.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django_mirror.capture.record import paused
from django_mirror.config import conf
from django_mirror.core.events import CALL, Event, EventDecodeError
from django_mirror.core.locking import retrying
from django_mirror.core.outages import infrastructure_error
from django_mirror.live import apply as live
from django_mirror.models import ShardCheckpoint
from django_mirror.observability import reporting
from django_mirror.pipeline.checkpoints import ShardLeases, ShardProgress, consumer_name
from django_mirror.pipeline.dead_letters import dead_letter
from django_mirror.streams import Batch, PositionExpired, Shard, Stream, StreamError, get_stream
from django_mirror.targets import Target, target_for

#: Replays a repository call event on its targets, ``(event, include_live)``: ``apps.py``
#: subscribes ``django_mirror.repositories.calls.dispatch``, a layer above replay.
call_dispatchers: list[Callable[[Event, bool], object]] = []

#: Tries of a batch that loses a deadlock or lock timeout on a database target.
APPLY_ATTEMPTS = 5


#: Without a terminal, a replay whose progress line says nothing new prints it this often.
QUIET_PROGRESS_SECONDS = 60.0

#: While batches flow, the shard list and the leases are looked at this often (and at
#: most every third of the lease); the checkpoint UPDATE of each batch renews its lease.
CLAIM_SECONDS = 1.0

#: Seconds a stopped reader thread is waited for (it may be inside a GetRecords call).
READER_JOIN_SECONDS = 10.0


class ShardReader:
    """Reads one shard one batch ahead of replay, in a thread of its own.

    The next batch is read as soon as the last one was taken, while it is applied; after
    a read that found the shard's end of data (no records, no lag) the next read waits
    until it is asked for, so an idle shard is read as often as before, not in a loop.
    What the thread raises is handed over in order and raised by ``take``. No database
    work happens here (Django's connections are per thread).
    """

    def __init__(self, stream: Stream, shard_id: str, start: Callable[[], str], limit: int) -> None:
        """``start`` gives the first read position (stream calls only, in the thread)."""
        self.stream = stream
        self.shard_id = shard_id
        self.limit = limit
        self._start = start
        self._cond = threading.Condition()
        self._item: Batch | BaseException | None = None
        self._wanted = True
        self._stopped = False
        self.thread = threading.Thread(
            target=self._run, name=f"django-mirror-replay-{shard_id}", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        try:
            position = self._start()
            while True:
                with self._cond:
                    while not self._stopped and (self._item is not None or not self._wanted):
                        self._cond.wait()
                    if self._stopped:
                        return
                    self._wanted = False
                batch = self.stream.read(self.shard_id, position, self.limit)
                # Records, or lag (Kinesis skips empty stretches a read at a time): more
                # is there to read at once.
                self._hand_over(batch, bool(batch.sequences) or batch.millis_behind > 0)
                if batch.next_position is None:
                    return  # a closed shard read to its end
                position = batch.next_position
        except BaseException as exc:  # raised again in the applying thread, in order
            self._hand_over(exc, False)

    def _hand_over(self, item: Batch | BaseException, read_on: bool) -> None:
        with self._cond:
            self._item = item
            self._wanted = read_on
            self._cond.notify_all()

    def take(self, stopping: Callable[[], bool]) -> Batch | None:
        """The next batch, waiting for its read; None once ``stopping()`` says so."""
        with self._cond:
            if self._item is None:
                self._wanted = True
                self._cond.notify_all()
            while self._item is None:
                if stopping():
                    return None
                if not self.thread.is_alive():
                    raise StreamError(f"the reader of shard {self.shard_id} ended unexpectedly")
                self._cond.wait(0.1)
            item, self._item = self._item, None
            self._cond.notify_all()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """Read no more; a batch read but not taken is dropped, never applied."""
        with self._cond:
            self._stopped = True
            self._item = None
            self._cond.notify_all()

    def join(self, timeout: float = READER_JOIN_SECONDS) -> None:
        self.thread.join(timeout)


@dataclass
class ReplayStats:
    read: int = 0
    applied: int = 0
    stale: int = 0
    skipped: int = 0
    dead_letters: int = 0
    started: float = field(default_factory=time.monotonic)
    shards: dict[str, ShardProgress] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.read / max(time.monotonic() - self.started, 1e-9)

    def line(self) -> str:
        lags = ", ".join(f"{s.shard_id}: {s.describe()}" for s in self.shards.values())
        return (
            f"replay: {self.read} events read, {self.applied} applied, {self.stale} stale, "
            f"{self.dead_letters} dead-lettered, {self.rate:,.0f} events/s; {lags}"
        )

    def state(self) -> tuple[object, ...]:
        """What the progress line says, less what moves by itself (rate, lease renewals)."""
        return (
            self.read,
            self.applied,
            self.stale,
            self.dead_letters,
            tuple(
                (s.shard_id, s.finished, s.millis_behind, s.holder) for s in self.shards.values()
            ),
        )


class Replayer:
    """Apply the stream to the targets; ``stop`` may be set from a signal handler."""

    def __init__(
        self,
        models: Iterable[str] | None = None,
        batch_size: int | None = None,
        stream: Stream | None = None,
        progress: Callable[[ReplayStats], None] | None = None,
        progress_every: float = 1.0,
        quiet_every: float | None = None,
    ) -> None:
        """``quiet_every``: when set, a progress line that says nothing new waits this long."""
        self.requested = sorted(models or ())
        self.labels = {label.lower() for label in self.requested}
        # A model's auto-created many-to-many tables are mirrored, so replayed, with it.
        self.labels |= {
            c.label.lower()
            for c in conf.mirrored_models().values()
            if c.owner is not None and c.owner.lower() in self.labels
        }
        self.consumer = consumer_name(self.labels)
        self.batch_size = batch_size or conf.get_settings().replay.batch_size
        lease = dt.timedelta(seconds=conf.get_settings().replay.lease_seconds)
        self.idle_sleep = conf.get_settings().replay.idle_sleep
        self.heal_interval = conf.get_settings().replay.heal_interval
        self._heal_due = 0.0
        self.stream = stream or get_stream()
        self.progress = progress
        self.progress_every = progress_every
        self.quiet_every = quiet_every
        self.leases = ShardLeases(self.stream, self.consumer, self.requested, lease)
        self.stop = False
        #: Replay repository calls also on the targets that ran them live (from start).
        self.include_live_calls = False
        self.stats = ReplayStats()
        self._targets: dict[str, Target] = {}
        #: The reader thread of each shard this process holds.
        self._readers: dict[str, ShardReader] = {}
        self._stopped_readers: list[ShardReader] = []
        self._reported_at: float | None = None
        self._reported_state: tuple[object, ...] = ()

    def reset(self) -> None:
        """Forget this consumer's checkpoints: the next run reads every shard from its
        start, into rebuilt targets (so repository calls made live are replayed too)."""
        self.leases.checkpoints().delete()
        self.include_live_calls = True

    def run(self, until_caught_up: bool = False) -> ReplayStats:
        """Replay until stopped, or with ``until_caught_up`` until every shard is caught up
        (by this process, or by the one holding its lease)."""
        lease = self.leases.lease.total_seconds()
        claim_every = min(CLAIM_SECONDS, lease / 3)
        shards: list[Shard] = []
        held: list[ShardCheckpoint] = []
        claim_due = 0.0
        try:
            self.leases.verify_stream()
            verified = True
            while not self.stop:
                claimed = time.monotonic() >= claim_due
                if claimed:
                    claim_due = time.monotonic() + claim_every
                    shards = self.stream.shards()
                    held = self.leases.claim(shards, self.stats.shards, share=not until_caught_up)
                    mine = {cp.shard_id for cp in held}
                    for shard_id in set(self._readers) - mine:
                        self._drop_reader(shard_id)  # another process may move it on now
                    fresh = [cp for cp in held if cp.shard_id not in self._readers]
                    if fresh and not verified:
                        self.leases.verify_stream()  # read positions come from checkpoints again
                    verified = False
                    for cp in fresh:
                        self._start_reader(cp)
                records_seen = 0
                for cp in list(held):
                    if self.stop:
                        break
                    seen, keep = self._step(cp)
                    records_seen += seen
                    if not keep:  # lost, or read to its end: children may be readable
                        held.remove(cp)
                        claim_due = 0.0
                self._report()
                if until_caught_up and self.caught_up(shards):
                    if claimed:
                        self._heal(now=True)
                        break
                    claim_due = 0.0  # confirmed on a fresh listing of the shards
                    continue
                self._heal()
                if not records_seen and not self.stop:
                    claim_due = 0.0
                    time.sleep(self.idle_sleep)
        finally:
            for shard_id in list(self._readers):
                self._drop_reader(shard_id, wait=False)
            self._join_readers()
            self.leases.release()
        self._report(final=True)
        return self.stats

    def _start_reader(self, cp: ShardCheckpoint) -> ShardReader:
        """A reader of ``cp``'s shard from just after its checkpoint."""
        shard_id, sequence = cp.shard_id, cp.sequence_number

        def start() -> str:
            return self.leases.position(shard_id, sequence)

        reader = ShardReader(self.stream, shard_id, start, self.batch_size)
        self._readers[shard_id] = reader
        return reader

    def _drop_reader(self, shard_id: str, wait: bool = False) -> None:
        reader = self._readers.pop(shard_id, None)
        if reader is None:
            return
        reader.stop()
        self._stopped_readers.append(reader)
        if wait:
            reader.join()

    def _join_readers(self) -> None:
        """Wait for the stopped readers' last reads, so none outlives ``run``."""
        deadline = time.monotonic() + READER_JOIN_SECONDS
        for reader in self._stopped_readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        self._stopped_readers = [r for r in self._stopped_readers if r.thread.is_alive()]

    def _heal(self, now: bool = False) -> None:
        """Every ``REPLAY["HEAL_INTERVAL"]`` seconds (and once caught up), resolve the
        write mismatches whose rows replay has since applied: healed, they stop counting."""
        if not now and time.monotonic() < self._heal_due:
            return
        self._heal_due = time.monotonic() + self.heal_interval
        with reporting.guarded("healed write mismatches could not be resolved"):
            live.resolve_healed()

    def _report(self, final: bool = False) -> None:
        """Call ``progress`` at most every ``progress_every`` seconds (and at the end);
        with ``quiet_every``, a line that says nothing new only that often."""
        if not self.progress:
            return
        now = time.monotonic()
        state = self.stats.state()
        if not final and self._reported_at is not None:
            since = now - self._reported_at
            if since < self.progress_every:
                return
            if self.quiet_every is not None and state == self._reported_state:
                if since < self.quiet_every:
                    return
        self.progress(self.stats)
        self._reported_at = now
        self._reported_state = state

    def caught_up(self, shards: list[Shard]) -> bool:
        return all(
            (p := self.stats.shards.get(s.shard_id)) is not None and (p.finished or p.caught_up)
            for s in shards
        )

    def _step(self, cp: ShardCheckpoint) -> tuple[int, bool]:
        """Apply the batch the shard's reader read (its next one is read meanwhile); how
        many records it held (any stream record read counts, also one that held nothing
        to apply), and whether this process reads the shard on."""
        progress = self.stats.shards[cp.shard_id]
        reader = self._readers.get(cp.shard_id) or self._start_reader(cp)
        stopping = self._stopping
        try:
            batch = reader.take(stopping)
        except PositionExpired:
            # Every batch read before the expired one was applied and checkpointed: read
            # again from the checkpoint.
            self._drop_reader(cp.shard_id)
            self.leases.verify_stream()
            batch = self._start_reader(cp).take(stopping)
        if batch is None:
            return 0, True
        self.reject_records(batch.rejected, cp.shard_id)
        self.apply_records(batch.records, cp.shard_id)
        last_sequence = batch.last_sequence or cp.sequence_number
        finished = batch.next_position is None
        seen = len(batch.records) or len(batch.sequences)
        if not self.leases.advance(cp, last_sequence, finished, batch.millis_behind):
            self._drop_reader(cp.shard_id)  # what it read ahead is not applied
            return seen, False
        progress.millis_behind = batch.millis_behind
        reporting.gauge("replay.lag_ms", batch.millis_behind, cp.shard_id)
        progress.finished = finished
        progress.caught_up = not (batch.sequences or batch.records) and not batch.millis_behind
        if finished:
            self._drop_reader(cp.shard_id)
            return seen, False
        return seen, True

    def _stopping(self) -> bool:
        return self.stop

    def reject_records(self, rejected: list[tuple[str, bytes, str]], shard_id: str) -> None:
        """Stream records the stream could not read (a corrupt aggregate): dead letters."""
        for sequence, data, reason in rejected:
            self.stats.read += 1
            where = {"stream": self.stream.name, "shard_id": shard_id, "sequence_number": sequence}
            dead_letter(reason, data, **where)
            self.stats.dead_letters += 1

    def apply_records(self, records: list[tuple[str, bytes]], shard_id: str = "") -> None:
        """Decode, filter and apply one batch; what cannot be applied is dead-lettered."""
        by_target: dict[Target, list[Event]] = defaultdict(list)
        #: Each event's record, so a refused one is kept as it was read.
        origins: dict[int, tuple[str, bytes]] = {}
        for sequence, data in records:
            self.stats.read += 1
            where = {"stream": self.stream.name, "shard_id": shard_id, "sequence_number": sequence}
            try:
                event = Event.from_json(data)
            except EventDecodeError as exc:
                dead_letter(f"undecodable record: {exc}", data, **where)
                self.stats.dead_letters += 1
                continue
            if self.labels and event.model.lower() not in self.labels:
                self.stats.skipped += 1
                continue
            if event.op == CALL:
                self._dispatch_call(event, data, where)
                continue
            config = conf.config_for_label(event.model)
            if config is None:
                dead_letter(
                    f"{event.model} is not a mirrored model here",
                    data,
                    model=event.model,
                    pk_value=event.key[1],
                    **where,
                )
                self.stats.dead_letters += 1
                continue
            by_target[self._target(config, event.source)].append(event)
            origins[id(event)] = (sequence, data)
        with paused():
            for target, events in by_target.items():
                # Copy, live applies and the service may hold the same rows: a batch that
                # loses a deadlock is rolled back whole and applied again.
                result = retrying(functools.partial(target.apply, events), APPLY_ATTEMPTS)
                self.stats.applied += result.applied
                self.stats.stale += result.stale
                for label, count in result.applied_by_model.items():
                    reporting.incr("replayed", count, label)
                reporting.incr("replay.stale", result.stale)
                for event, reason in result.failed:
                    sequence, data = origins[id(event)]
                    dead_letter(
                        f"{target.describe()} refused the event: {reason}",
                        data,
                        model=event.model,
                        pk_value=event.key[1],
                        stream=self.stream.name,
                        shard_id=shard_id,
                        sequence_number=sequence,
                    )
                    self.stats.dead_letters += 1

    def _dispatch_call(self, event: Event, data: bytes, where: dict[str, str]) -> None:
        """A repository call: replayed at once, in stream order, on its targets."""
        try:
            if not call_dispatchers:
                raise LookupError("no repository dispatcher is registered")
            with paused():
                for dispatch in call_dispatchers:
                    dispatch(event, self.include_live_calls)
        except Exception as exc:  # unknown interface or method, bad arguments, ...
            if infrastructure_error(exc):
                raise  # a store is away: replay stops without checkpointing
            reason = f"{type(exc).__name__}: {exc}"
            dead_letter(reason, data, model=event.model, pk_value=event.key[1], **where)
            self.stats.dead_letters += 1
            return
        self.stats.applied += 1
        reporting.incr("replayed", 1, event.model)

    def _target(self, config: conf.ModelConfig, origin: str) -> Target:
        key = f"{config.target!r}<-{origin}"
        if key not in self._targets:
            self._targets[key] = target_for(config, origin)
        return self._targets[key]
