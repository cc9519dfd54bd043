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
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.db.models import Q, QuerySet
from django.utils import timezone

from django_mirror.capture.record import paused
from django_mirror.config import conf
from django_mirror.core.events import CALL, Event, EventDecodeError
from django_mirror.core.locking import retrying
from django_mirror.core.outages import infrastructure_error
from django_mirror.live import apply as live
from django_mirror.models import DeadLetter, ShardCheckpoint
from django_mirror.observability import reporting
from django_mirror.streams import PositionExpired, Shard, Stream, get_stream
from django_mirror.targets import Target, target_for

logger = logging.getLogger("django_mirror.replay")

#: Replays a repository call event on its targets, ``(event, include_live)``: ``apps.py``
#: subscribes ``django_mirror.repositories.calls.dispatch``, a layer above replay.
call_dispatchers: list[Callable[[Event, bool], object]] = []

#: Tries of a batch that loses a deadlock or lock timeout on a database target.
APPLY_ATTEMPTS = 5


#: Without a terminal, a replay whose progress line says nothing new prints it this often.
QUIET_PROGRESS_SECONDS = 60.0


class ReplayRefused(Exception):
    """The checkpoints cannot be trusted on this stream: reading on would skip events."""


@dataclass
class ShardProgress:
    shard_id: str
    millis_behind: int | None = None
    caught_up: bool = False
    finished: bool = False
    #: The other process ("host:pid") holding the shard's lease, and until when.
    holder: str = ""
    holder_until: dt.datetime | None = None

    def describe(self) -> str:
        if self.finished:
            return "done"
        lag = f"{self.millis_behind or 0} ms behind"
        if not self.holder:
            return lag
        until = f"{self.holder_until:%H:%M:%S} UTC" if self.holder_until else "?"
        return f"{lag}, replayed by {self.holder} (lease until {until})"


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


def consumer_name(labels: Iterable[str] | None) -> str:
    """Checkpoints are kept per set of replayed models, so ``--model`` runs skip nothing."""
    labels = sorted({label.lower() for label in labels or ()})
    return ",".join(labels) if labels else "*"


def make_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_process(owner: str) -> str:
    """``host:pid`` of a lease owner, as an operator looks for the process."""
    return ":".join(owner.split(":")[:2])


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
        self.lease = dt.timedelta(seconds=conf.get_settings().replay.lease_seconds)
        self.idle_sleep = conf.get_settings().replay.idle_sleep
        self.heal_interval = conf.get_settings().replay.heal_interval
        self._heal_due = 0.0
        self.stream = stream or get_stream()
        self.progress = progress
        self.progress_every = progress_every
        self.quiet_every = quiet_every
        self.owner = make_owner()
        self.alias = conf.source_alias()
        self.stop = False
        #: Replay repository calls also on the targets that ran them live (from start).
        self.include_live_calls = False
        self.stats = ReplayStats()
        #: The stream incarnation checkpoints are written for ("" when it cannot tell).
        self.identity = ""
        self._positions: dict[str, str | None] = {}
        self._targets: dict[str, Target] = {}
        #: Per shard another process holds: the last checkpoint time seen, and how many
        #: different ones were seen since this process started watching it.
        self._watched: dict[str, tuple[dt.datetime | None, int]] = {}
        self._reported_at: float | None = None
        self._reported_state: tuple[object, ...] = ()

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

    def _recovery(self) -> str:
        """The commands that bring the target back whole, for this consumer's models."""
        labels = "".join(f" {label}" for label in self.requested)
        flags = "".join(f" --model {label}" for label in self.requested)
        return (
            f"Recover with `manage.py mirror_copy{labels}` (rows created meanwhile), then "
            f"`manage.py mirror_replay --from-start --until-caught-up{flags}` (forgets these "
            f"checkpoints), then `manage.py mirror_verify{labels} --repair` (rows changed or "
            "deleted meanwhile); see docs/runbook.md, 'Replay refused'."
        )

    def _verify_stream(self) -> None:
        """Refuse a stream other than the incarnation this consumer's checkpoints were
        taken on; checkpoints from before identities were kept adopt the current one."""
        self.identity = self.stream.identity()
        if not self.identity:
            return
        self._checkpoints().filter(stream_identity="").update(stream_identity=self.identity)
        other = (
            self._checkpoints()
            .exclude(stream_identity=self.identity)
            .values_list("stream_identity", flat=True)
            .first()
        )
        if other is not None:
            raise ReplayRefused(
                f"stream {self.stream.name!r} is not the stream the checkpoints of consumer "
                f"{self.consumer!r} were taken on ({other}; it is now {self.identity}): it was "
                "deleted and created again, and the events the old one held that were not "
                f"replayed yet are lost to replay. {self._recovery()}"
            )

    def _position(self, cp: ShardCheckpoint) -> str:
        """A read position just after the checkpoint, once the shard is known to still
        hold the checkpoint's record (else records after it may be gone unread)."""
        if cp.sequence_number and not self.stream.holds(cp.shard_id, cp.sequence_number):
            raise ReplayRefused(
                f"shard {cp.shard_id} of stream {self.stream.name!r} no longer holds record "
                f"{cp.sequence_number}, where consumer {self.consumer!r} checkpointed: the "
                "stream's retention dropped it, and maybe records after it that were never "
                f"replayed (or the stream was created again). {self._recovery()}"
            )
        return self.stream.position(cp.shard_id, cp.sequence_number or None)

    def _held_elsewhere(self, cp: ShardCheckpoint, now: dt.datetime) -> bool:
        """Another process that is alive holds the shard's lease."""
        return (
            cp.lease_owner not in ("", self.owner)
            and cp.lease_expires is not None
            and cp.lease_expires >= now
            and not _owner_is_dead(cp.lease_owner)
        )

    def _lease(self, cp: ShardCheckpoint, now: dt.datetime, condition: Q) -> bool:
        """Take (or renew) the shard's lease if its row still meets ``condition``."""
        return bool(
            self._checkpoints()
            .filter(condition, pk=cp.pk)
            .update(lease_owner=self.owner, lease_expires=now + self.lease)
        )

    def _claim(self, shards: list[Shard], share: bool = True) -> list[ShardCheckpoint]:
        """Renew this process's leases and take free ones, up to its share of the readable
        shards among the processes holding leases. With ``share``, a process below its
        share also takes leases over from one above it, so processes started together
        split the shards evenly."""
        for shard in shards:
            ShardCheckpoint.objects.using(self.alias).get_or_create(
                consumer=self.consumer,
                stream=self.stream.name,
                shard_id=shard.shard_id,
                defaults={"stream_identity": self.identity},
            )
        checkpoints = {cp.shard_id: cp for cp in self._checkpoints()}
        listed = {shard.shard_id for shard in shards}
        now = timezone.now()
        readable = []
        for shard in shards:
            cp = checkpoints[shard.shard_id]
            progress = self.stats.shards.setdefault(shard.shard_id, ShardProgress(shard.shard_id))
            # Read to its end, now or by an earlier run: counts as done for --until-caught-up.
            progress.finished = cp.finished
            if not cp.finished and all(
                p not in listed or checkpoints[p].finished for p in shard.parents
            ):
                readable.append(cp)
        holders = Counter(cp.lease_owner for cp in readable if self._held_elsewhere(cp, now))
        most = -(-len(readable) // (len(holders) + 1))
        fair = len(readable) // (len(holders) + 1)
        held = [
            cp
            for cp in readable
            if cp.lease_owner == self.owner and self._lease(cp, now, Q(lease_owner=self.owner))
        ]
        for cp in readable:
            if len(held) >= most:
                break
            if cp.lease_owner == self.owner or self._held_elsewhere(cp, now):
                continue
            condition = Q(lease_owner=cp.lease_owner)
            if cp.lease_owner and not _owner_is_dead(cp.lease_owner):
                condition &= Q(lease_expires__lt=now)
            if self._lease(cp, now, condition):
                held.append(cp)
        for victim, count in holders.most_common():
            for cp in readable:
                if not share or len(held) >= fair or count <= most:
                    break
                if cp.lease_owner == victim and self._lease(cp, now, Q(lease_owner=victim)):
                    logger.info("replay: took %s over from %s", cp.shard_id, victim)
                    held.append(cp)
                    count -= 1
        mine = {cp.shard_id for cp in held}
        for cp in readable:
            if cp.shard_id not in mine:
                self._watch(cp, now)
        for shard_id in set(self._positions) - mine:
            del self._positions[shard_id]  # another process may move its checkpoint now
        return held

    def _watch(self, cp: ShardCheckpoint, now: dt.datetime) -> None:
        """Progress of a shard this process does not hold, from its checkpoint. It counts
        as caught up once its holder wrote two checkpoints since this process started
        watching (so the second one's read began after that), the last without lag."""
        progress = self.stats.shards[cp.shard_id]
        elsewhere = self._held_elsewhere(cp, now)
        progress.holder = owner_process(cp.lease_owner) if elsewhere else ""
        progress.holder_until = cp.lease_expires if elsewhere else None
        progress.millis_behind = cp.millis_behind
        seen, changes = self._watched.get(cp.shard_id, (cp.updated_at, -1))
        changes += seen != cp.updated_at or changes < 0
        self._watched[cp.shard_id] = (cp.updated_at, changes)
        progress.caught_up = elsewhere and changes >= 2 and cp.millis_behind == 0

    def release(self) -> None:
        self._checkpoints().filter(lease_owner=self.owner).update(
            lease_owner="", lease_expires=None
        )

    # --- the loop -----------------------------------------------------------------------

    def run(self, until_caught_up: bool = False) -> ReplayStats:
        """Replay until stopped, or with ``until_caught_up`` until every shard is caught up
        (by this process, or by the one holding its lease)."""
        try:
            self._verify_stream()
            verified = True
            while not self.stop:
                shards = self.stream.shards()
                held = self._claim(shards, share=not until_caught_up)
                for cp in held:
                    self._watched.pop(cp.shard_id, None)
                    self.stats.shards[cp.shard_id].holder = ""
                if not verified and any(cp.shard_id not in self._positions for cp in held):
                    self._verify_stream()  # read positions come from checkpoints again
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
            self.release()
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
        """Read and apply one batch of one shard; returns how many records it held."""
        progress = self.stats.shards[cp.shard_id]
        position = self._positions.get(cp.shard_id)
        if position is None:
            position = self._position(cp)
        try:
            batch = self.stream.read(cp.shard_id, position, self.batch_size)
        except PositionExpired:
            self._verify_stream()
            batch = self.stream.read(cp.shard_id, self._position(cp), self.batch_size)
        self.apply_records(batch.records, cp.shard_id)
        last_sequence = (
            max((sequence for sequence, _ in batch.records), key=int)
            if batch.records
            else cp.sequence_number
        )
        finished = batch.next_position is None
        now = timezone.now()
        kept = (
            self._checkpoints()
            .filter(pk=cp.pk, lease_owner=self.owner)
            .update(
                sequence_number=last_sequence,
                finished=finished,
                millis_behind=batch.millis_behind,
                lease_expires=now + self.lease,
                updated_at=now,
            )
        )
        if not kept:
            logger.info("replay: %s was handed over to another process", cp.shard_id)
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
