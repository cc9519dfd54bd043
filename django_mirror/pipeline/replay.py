"""Read every shard of the stream and apply its events to each model's target.

A shard's checkpoint moves only after the batch it covers was applied (or
dead-lettered) and committed on the target, so a crash at any point replays a little
again — harmless, since targets skip versions they already hold. Checkpoints carry a
lease so several replay processes can share the shards of one stream
(``checkpoints``); what cannot be applied becomes a dead letter (``dead_letters``).
"""

from __future__ import annotations

import datetime as dt
import functools
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
from django_mirror.streams import PositionExpired, Shard, Stream, get_stream
from django_mirror.targets import Target, target_for

#: Replays a repository call event on its targets, ``(event, include_live)``: ``apps.py``
#: subscribes ``django_mirror.repositories.calls.dispatch``, a layer above replay.
call_dispatchers: list[Callable[[Event, bool], object]] = []

#: Tries of a batch that loses a deadlock or lock timeout on a database target.
APPLY_ATTEMPTS = 5


#: Without a terminal, a replay whose progress line says nothing new prints it this often.
QUIET_PROGRESS_SECONDS = 60.0


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
        try:
            self.leases.verify_stream()
            verified = True
            while not self.stop:
                shards = self.stream.shards()
                held = self.leases.claim(shards, self.stats.shards, share=not until_caught_up)
                if not verified and any(cp.shard_id not in self.leases.positions for cp in held):
                    self.leases.verify_stream()  # read positions come from checkpoints again
                verified = False
                records_seen = 0
                for cp in held:
                    if self.stop:
                        break
                    records_seen += self._step(cp)
                self._report()
                if until_caught_up and self.caught_up(shards):
                    self._heal(now=True)
                    break
                self._heal()
                if not records_seen and not self.stop:
                    time.sleep(self.idle_sleep)
        finally:
            self.leases.release()
        self._report(final=True)
        return self.stats

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

    def _step(self, cp: ShardCheckpoint) -> int:
        """Read and apply one batch of one shard; returns how many records it held (any
        stream record read counts, also one that held nothing to apply)."""
        progress = self.stats.shards[cp.shard_id]
        position = self.leases.positions.get(cp.shard_id)
        if position is None:
            position = self.leases.position(cp)
        try:
            batch = self.stream.read(cp.shard_id, position, self.batch_size)
        except PositionExpired:
            self.leases.verify_stream()
            batch = self.stream.read(cp.shard_id, self.leases.position(cp), self.batch_size)
        self.reject_records(batch.rejected, cp.shard_id)
        self.apply_records(batch.records, cp.shard_id)
        last_sequence = batch.last_sequence or cp.sequence_number
        finished = batch.next_position is None
        if not self.leases.advance(
            cp, last_sequence, finished, batch.millis_behind, batch.next_position
        ):
            return len(batch.records) or len(batch.sequences)
        progress.millis_behind = batch.millis_behind
        reporting.gauge("replay.lag_ms", batch.millis_behind, cp.shard_id)
        progress.finished = finished
        progress.caught_up = not (batch.sequences or batch.records) and not batch.millis_behind
        return len(batch.records) or len(batch.sequences)

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
