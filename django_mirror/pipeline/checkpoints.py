"""Shard checkpoints and their leases: where one replay consumer has read each shard to,
which process reads it now, and when reading on from a checkpoint would skip events.
Apart from replay's loop, which reads and applies; this decides what it may read."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from django.db.models import Q, QuerySet
from django.utils import timezone

from django_mirror.config import conf
from django_mirror.models import ShardCheckpoint
from django_mirror.streams import Shard, Stream

logger = logging.getLogger("django_mirror.replay")


#: Looks at the checkpoints one claim may take when other processes claim at once.
CLAIM_PASSES = 3


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


class ShardLeases:
    """One replay process's leases on the checkpoints of ``consumer``, and where it reads
    each shard it holds."""

    def __init__(
        self, stream: Stream, consumer: str, requested: list[str], lease: dt.timedelta
    ) -> None:
        """``requested``: the models asked for, named in the recovery a refusal advises."""
        self.stream = stream
        self.consumer = consumer
        self.requested = requested
        self.lease = lease
        self.owner = make_owner()
        self.alias = conf.source_alias()
        #: The stream incarnation checkpoints are written for ("" when it cannot tell).
        self.identity = ""
        #: Per shard another process holds: the last checkpoint time seen, and how many
        #: different ones were seen since this process started watching it.
        self._watched: dict[str, tuple[dt.datetime | None, int]] = {}

    def checkpoints(self) -> QuerySet[ShardCheckpoint]:
        return ShardCheckpoint.objects.using(self.alias).filter(
            consumer=self.consumer, stream=self.stream.name
        )

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

    def verify_stream(self) -> None:
        """Refuse a stream other than the incarnation this consumer's checkpoints were
        taken on; checkpoints from before identities were kept adopt the current one."""
        self.identity = self.stream.identity()
        if not self.identity:
            return
        self.checkpoints().filter(stream_identity="").update(stream_identity=self.identity)
        other = (
            self.checkpoints()
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

    def position(self, shard_id: str, sequence_number: str) -> str:
        """A read position just after a checkpoint at ``sequence_number``, once the shard
        is known to still hold that record (else records after it may be gone unread).
        Stream calls only, no database: replay's read-ahead threads call it."""
        if sequence_number and not self.stream.holds(shard_id, sequence_number):
            raise ReplayRefused(
                f"shard {shard_id} of stream {self.stream.name!r} no longer holds record "
                f"{sequence_number}, where consumer {self.consumer!r} checkpointed: the "
                "stream's retention dropped it, and maybe records after it that were never "
                f"replayed (or the stream was created again). {self._recovery()}"
            )
        return self.stream.position(shard_id, sequence_number or None)

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
            self.checkpoints()
            .filter(condition, pk=cp.pk)
            .update(lease_owner=self.owner, lease_expires=now + self.lease)
        )

    def claim(
        self, shards: list[Shard], progress: dict[str, ShardProgress], share: bool = True
    ) -> list[ShardCheckpoint]:
        """Renew this process's leases and take free ones, up to its share of the readable
        shards among the processes holding leases. With ``share``, a process below its
        share also takes leases over from one above it, so processes started together
        split the shards evenly. ``progress`` (per shard) is kept up to date.

        A lease another process took between reading the checkpoints and taking it means
        the decision was made on a stale view: it is made again (processes started
        together would otherwise leave one of them idle until its next round)."""
        for _ in range(CLAIM_PASSES - 1):
            held, raced = self._claim_once(shards, progress, share)
            if not raced:
                return held
        return self._claim_once(shards, progress, share)[0]

    def _claim_once(
        self, shards: list[Shard], progress: dict[str, ShardProgress], share: bool
    ) -> tuple[list[ShardCheckpoint], bool]:
        """One look at the checkpoints and the leases taken on it; whether a lease was
        found taken by another process meanwhile."""
        raced = False
        checkpoints = {cp.shard_id: cp for cp in self.checkpoints()}
        missing = [shard for shard in shards if shard.shard_id not in checkpoints]
        for shard in missing:  # a query per new shard only, not per shard and claim
            ShardCheckpoint.objects.using(self.alias).get_or_create(
                consumer=self.consumer,
                stream=self.stream.name,
                shard_id=shard.shard_id,
                defaults={"stream_identity": self.identity},
            )
        if missing:
            checkpoints = {cp.shard_id: cp for cp in self.checkpoints()}
        listed = {shard.shard_id for shard in shards}
        now = timezone.now()
        readable = []
        for shard in shards:
            cp = checkpoints[shard.shard_id]
            shard_progress = progress.setdefault(shard.shard_id, ShardProgress(shard.shard_id))
            # Read to its end, now or by an earlier run: counts as done for --until-caught-up.
            shard_progress.finished = cp.finished
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
            else:
                raced = True
        for victim, count in holders.most_common():
            for cp in readable:
                if not share or len(held) >= fair or count <= most:
                    break
                if cp.lease_owner != victim:
                    continue
                if self._lease(cp, now, Q(lease_owner=victim)):
                    logger.info("replay: took %s over from %s", cp.shard_id, victim)
                    held.append(cp)
                    count -= 1
                else:
                    raced = True
        mine = {cp.shard_id for cp in held}
        for cp in readable:
            if cp.shard_id not in mine:
                self._watch(cp, progress[cp.shard_id], now)
        for cp in held:
            self._watched.pop(cp.shard_id, None)
            progress[cp.shard_id].holder = ""
        return held, raced

    def _watch(self, cp: ShardCheckpoint, progress: ShardProgress, now: dt.datetime) -> None:
        """Progress of a shard this process does not hold, from its checkpoint. It counts
        as caught up once its holder wrote two checkpoints since this process started
        watching (so the second one's read began after that), the last without lag."""
        elsewhere = self._held_elsewhere(cp, now)
        progress.holder = owner_process(cp.lease_owner) if elsewhere else ""
        progress.holder_until = cp.lease_expires if elsewhere else None
        progress.millis_behind = cp.millis_behind
        seen, changes = self._watched.get(cp.shard_id, (cp.updated_at, -1))
        changes += seen != cp.updated_at or changes < 0
        self._watched[cp.shard_id] = (cp.updated_at, changes)
        progress.caught_up = elsewhere and changes >= 2 and cp.millis_behind == 0

    def advance(
        self, cp: ShardCheckpoint, sequence_number: str, finished: bool, millis_behind: int
    ) -> bool:
        """Move the shard's checkpoint past a batch the target committed; the same UPDATE
        renews the lease, so a batch costs one query here. False when the lease was lost."""
        now = timezone.now()
        kept = (
            ShardCheckpoint.objects.using(self.alias)
            .filter(pk=cp.pk, lease_owner=self.owner)
            .update(
                sequence_number=sequence_number,
                finished=finished,
                millis_behind=millis_behind,
                lease_expires=now + self.lease,
                updated_at=now,
            )
        )
        if not kept:
            logger.info("replay: %s was handed over to another process", cp.shard_id)
            return False
        cp.sequence_number = sequence_number
        cp.finished = finished
        return True

    def release(self) -> None:
        self.checkpoints().filter(lease_owner=self.owner).update(lease_owner="", lease_expires=None)
