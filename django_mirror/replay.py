"""Read every shard of the stream and apply its events to each model's target.

A shard's checkpoint moves only after the batch it covers was applied (or
dead-lettered) and committed on the target, so a crash at any point replays a little
again — harmless, since targets skip versions they already hold. Checkpoints carry a
lease so several replay processes can share the shards of one stream.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db.models import Q, QuerySet
from django.utils import timezone

from django_mirror import conf, reporting
from django_mirror.capture import paused
from django_mirror.events import CALL, Event, EventDecodeError
from django_mirror.locking import retrying
from django_mirror.models import DeadLetter, ShardCheckpoint
from django_mirror.streams import PositionExpired, Shard, Stream, get_stream
from django_mirror.targets import Target, target_for

logger = logging.getLogger("django_mirror.replay")

#: Tries of a batch that loses a deadlock or lock timeout on a database target.
APPLY_ATTEMPTS = 5


@dataclass
class ShardProgress:
    shard_id: str
    millis_behind: int | None = None
    caught_up: bool = False
    finished: bool = False


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
        lags = ", ".join(
            f"{s.shard_id}: {'done' if s.finished else f'{s.millis_behind or 0} ms behind'}"
            for s in self.shards.values()
        )
        return (
            f"replay: {self.read} events read, {self.applied} applied, {self.stale} stale, "
            f"{self.dead_letters} dead-lettered, {self.rate:,.0f} events/s; {lags}"
        )


def consumer_name(labels: Iterable[str] | None) -> str:
    """Checkpoints are kept per set of replayed models, so ``--model`` runs skip nothing."""
    labels = sorted({label.lower() for label in labels or ()})
    return ",".join(labels) if labels else "*"


def make_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_dead(owner: str) -> bool:
    """A lease held by a process on this host that no longer runs can be taken at once."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def storable(text: str) -> str:
    """``text`` as any database's text column takes it: NUL (PostgreSQL refuses it) and
    lone surrogates (not UTF-8) escaped."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter(
    reason: str, payload: bytes, *, model: str = "", pk_value: str = "", **where: str
) -> None:
    """Keep a record that cannot be applied. Whatever the record holds, the letter can be
    stored: each text is made storable and cut to its column (no field may make the
    insert fail and stop replay); the payload keeps the record whole."""
    fields = {"reason": reason, "model": model, "pk_value": pk_value, **where}
    for name, text in fields.items():
        limit = DeadLetter._meta.get_field(name).max_length
        fields[name] = storable(text)[:limit]
    reporting.incr("dead_letters", 1, fields["model"] or "unknown")
    DeadLetter.objects.using(conf.source_alias()).create(payload=payload, **fields)


class Replayer:
    """Apply the stream to the targets; ``stop`` may be set from a signal handler."""

    def __init__(
        self,
        models: Iterable[str] | None = None,
        batch_size: int | None = None,
        stream: Stream | None = None,
        progress: Callable[[ReplayStats], None] | None = None,
        progress_every: float = 1.0,
    ) -> None:
        self.labels = {label.lower() for label in models or ()}
        # A model's auto-created many-to-many tables are mirrored, so replayed, with it.
        self.labels |= {
            c.label.lower()
            for c in conf.mirrored_models().values()
            if c.owner is not None and c.owner.lower() in self.labels
        }
        self.consumer = consumer_name(self.labels)
        self.batch_size = batch_size or conf.get_settings().replay["BATCH_SIZE"]
        self.lease = dt.timedelta(seconds=conf.get_settings().replay["LEASE_SECONDS"])
        self.idle_sleep = conf.get_settings().replay["IDLE_SLEEP"]
        self.stream = stream or get_stream()
        self.progress = progress
        self.progress_every = progress_every
        self.owner = make_owner()
        self.alias = conf.source_alias()
        self.stop = False
        #: Replay repository calls also on the targets that ran them live (from start).
        self.include_live_calls = False
        self.stats = ReplayStats()
        self._positions: dict[str, str | None] = {}
        self._targets: dict[str, Target] = {}

    # --- checkpoints and leases ---------------------------------------------------------

    def _checkpoints(self) -> QuerySet[ShardCheckpoint]:
        return ShardCheckpoint.objects.using(self.alias).filter(
            consumer=self.consumer, stream=self.stream.name
        )

    def reset(self) -> None:
        """Forget this consumer's checkpoints: the next run reads every shard from its
        start, into rebuilt targets (so repository calls made live are replayed too)."""
        self._checkpoints().delete()
        self.include_live_calls = True

    def _claim(self, shards: list[Shard]) -> list[ShardCheckpoint]:
        """Checkpoints of the readable shards this process holds or could take the lease of."""
        for shard in shards:
            ShardCheckpoint.objects.using(self.alias).get_or_create(
                consumer=self.consumer, stream=self.stream.name, shard_id=shard.shard_id
            )
        checkpoints = {cp.shard_id: cp for cp in self._checkpoints()}
        listed = {shard.shard_id for shard in shards}
        now = timezone.now()
        held = []
        for shard in shards:
            cp = checkpoints[shard.shard_id]
            parents_done = all(p not in listed or checkpoints[p].finished for p in shard.parents)
            if cp.finished:
                # Read to its end by an earlier run: counts as done for --until-caught-up.
                self.stats.shards.setdefault(shard.shard_id, ShardProgress(shard.shard_id))
                self.stats.shards[shard.shard_id].finished = True
                continue
            if not parents_done:
                continue
            free = Q(lease_owner="") | Q(lease_owner=self.owner) | Q(lease_expires__lt=now)
            if cp.lease_owner and _owner_is_dead(cp.lease_owner):
                free |= Q(lease_owner=cp.lease_owner)
            taken = (
                self._checkpoints()
                .filter(free, pk=cp.pk)
                .update(lease_owner=self.owner, lease_expires=now + self.lease)
            )
            if taken:
                held.append(cp)
        return held

    def release(self) -> None:
        self._checkpoints().filter(lease_owner=self.owner).update(
            lease_owner="", lease_expires=None
        )

    # --- the loop -----------------------------------------------------------------------

    def run(self, until_caught_up: bool = False) -> ReplayStats:
        last_progress = 0.0
        try:
            while not self.stop:
                shards = self.stream.shards()
                held = self._claim(shards)
                for shard in shards:
                    self.stats.shards.setdefault(shard.shard_id, ShardProgress(shard.shard_id))
                records_seen = 0
                for cp in held:
                    if self.stop:
                        break
                    records_seen += self._step(cp)
                if self.progress and time.monotonic() - last_progress >= self.progress_every:
                    self.progress(self.stats)
                    last_progress = time.monotonic()
                if until_caught_up and self.caught_up(shards):
                    break
                if not records_seen and not self.stop:
                    time.sleep(self.idle_sleep)
        finally:
            self.release()
        if self.progress:
            self.progress(self.stats)
        return self.stats

    def caught_up(self, shards: list[Shard]) -> bool:
        return all(
            (p := self.stats.shards.get(s.shard_id)) is not None and (p.finished or p.caught_up)
            for s in shards
        )

    def _step(self, cp: ShardCheckpoint) -> int:
        """Read and apply one batch of one shard; returns how many records it held."""
        progress = self.stats.shards[cp.shard_id]
        position = self._positions.get(cp.shard_id)
        if position is None:
            position = self.stream.position(cp.shard_id, cp.sequence_number or None)
        try:
            batch = self.stream.read(cp.shard_id, position, self.batch_size)
        except PositionExpired:
            position = self.stream.position(cp.shard_id, cp.sequence_number or None)
            batch = self.stream.read(cp.shard_id, position, self.batch_size)
        self.apply_records(batch.records, cp.shard_id)
        last_sequence = (
            max((sequence for sequence, _ in batch.records), key=int)
            if batch.records
            else cp.sequence_number
        )
        finished = batch.next_position is None
        kept = (
            self._checkpoints()
            .filter(pk=cp.pk, lease_owner=self.owner)
            .update(
                sequence_number=last_sequence,
                finished=finished,
                millis_behind=batch.millis_behind,
                lease_expires=timezone.now() + self.lease,
            )
        )
        if not kept:
            logger.warning("replay: lost the lease on %s; another process has it", cp.shard_id)
            self._positions.pop(cp.shard_id, None)
            return len(batch.records)
        cp.sequence_number = last_sequence
        self._positions[cp.shard_id] = batch.next_position
        progress.millis_behind = batch.millis_behind
        reporting.gauge("replay.lag_ms", batch.millis_behind, cp.shard_id)
        progress.finished = finished
        progress.caught_up = not batch.records and batch.millis_behind == 0
        return len(batch.records)

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
        from django_mirror.repositories.calls import dispatch, infrastructure_error

        try:
            with paused():
                dispatch(event, include_live=self.include_live_calls)
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


def retry_dead_letter(letter: DeadLetter) -> str | None:
    """Apply a dead-lettered event again; None on success, else the reason it failed."""
    try:
        event = Event.from_json(bytes(letter.payload))
    except EventDecodeError as exc:
        return f"undecodable record: {exc}"
    config = conf.config_for_label(event.model)
    if config is None:
        return f"{event.model} is not a mirrored model here"
    with paused():
        result = target_for(config, event.source).apply([event])
    if result.failed:
        return result.failed[0][1]
    return None
