"""Bulk-copy a model's existing rows into its target while the service keeps writing.

Rows are read in primary-key order (keyset pagination) and inserted only where the
target has neither the row nor a version or tombstone for it, so copy and replay can
run at the same time in any order. Progress is checkpointed after every chunk.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import models
from django.utils import timezone

from django_mirror.capture.record import paused
from django_mirror.config import conf
from django_mirror.core.events import UPSERT, Event, encode_column, pk_text
from django_mirror.core.locking import retrying
from django_mirror.models import CopyProgress
from django_mirror.pipeline.dead_letters import dead_letter
from django_mirror.targets import Target, get_target
from django_mirror.targets.base import CopyResult

#: Chunks are sized towards this many seconds each, unless fixed.
CHUNK_SECONDS = 0.5
MIN_CHUNK, MAX_CHUNK, FIRST_CHUNK = 100, 50_000, 1_000
#: Tries of a chunk that lost a deadlock to replay or the service's writers: each try
#: is one target transaction, rolled back whole when it loses.
CHUNK_ATTEMPTS = 5


class CopyRefused(RuntimeError):
    """Copying now could lose writes; the message says why."""


@dataclass
class CopyStats:
    model: str
    total: int = 0
    read: int = 0
    copied: int = 0
    skipped: int = 0
    clashed: int = 0
    dead_letters: int = 0
    resumed_from: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: bool = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.read / max(self.elapsed, 1e-9)

    @property
    def eta(self) -> float | None:
        remaining = max(self.total - self.read, 0)
        return remaining / self.rate if self.rate > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "total": self.total,
            "read": self.read,
            "copied": self.copied,
            "skipped": self.skipped,
            "clashed": self.clashed,
            "dead_letters": self.dead_letters,
            "resumed_from": self.resumed_from,
            "seconds": round(self.elapsed, 3),
            "rows_per_second": round(self.rate, 1),
            "finished": self.finished,
        }


def check_capturing(config: conf.ModelConfig) -> None:
    """Copy is only safe once every write to the model is captured."""
    if not config.capturing:
        raise CopyRefused(
            f"{config.label} is in phase {config.phase!r}: writes made while the copy runs "
            "would never reach the target. Set its phase to 'capture' in every process "
            "first (or pass --force if you know no one writes to it)."
        )


def _target_name(config: conf.ModelConfig) -> str:
    return config.target if isinstance(config.target, str) else repr(config.target)[:200]


class Copier:
    """Copy one model; ``stop`` may be set from a signal handler to end after a chunk."""

    def __init__(
        self,
        config: conf.ModelConfig,
        chunk_size: int | None = None,
        throttle: float | None = None,
        target: Target | None = None,
        progress: Callable[[CopyStats], None] | None = None,
    ) -> None:
        if config.model is None:
            raise CopyRefused(f"{config.label} is not an installed model")
        self.config = config
        self.model: type[models.Model] = config.model
        self.fixed_chunk = chunk_size
        self.chunk = chunk_size or FIRST_CHUNK
        self.throttle = throttle
        self.target = target or get_target(config)
        self.progress = progress
        self.alias = conf.source_alias()
        self.stop = False
        self.stats = CopyStats(config.label)

    def _progress_row(self, restart: bool) -> CopyProgress:
        state, _ = CopyProgress.objects.using(self.alias).get_or_create(
            model=self.config.label.lower(), target=_target_name(self.config)
        )
        if restart or state.finished_at is not None:
            state.last_pk, state.rows_read, state.rows_copied = "", 0, 0
            state.started_at, state.finished_at = timezone.now(), None
            state.save(using=self.alias)
        return state

    def run(self, restart: bool = False) -> CopyStats:
        state = self._progress_row(restart)
        pk = self.model._meta.pk
        exclude = self.config.exclude_fields
        attnames = [  # excluded fields never leave the source: the target gets defaults
            f.attname
            for f in self.model._meta.concrete_fields
            if f.name not in exclude and f.attname not in exclude
        ]
        source = models.QuerySet(model=self.model, using=self.alias).order_by("pk")
        last = pk.to_python(state.last_pk) if state.last_pk else None
        self.stats.resumed_from = state.last_pk
        self.stats.total = source.count()
        if last is not None:
            self.stats.total -= source.filter(pk__lte=last).count()
        while not self.stop:
            began = time.monotonic()
            with paused():
                result, last, count = retrying(
                    functools.partial(self._chunk, source, attnames, last), CHUNK_ATTEMPTS
                )
            if not count:
                break
            self.stats.read += count
            self.stats.copied += result.copied
            self.stats.skipped += result.skipped
            self.stats.clashed += result.clashed
            for row, reason in result.failed:  # kept before the checkpoint moves past them
                self._dead_letter(row, reason)
            CopyProgress.objects.using(self.alias).filter(pk=state.pk).update(
                last_pk=pk_text(last),
                rows_read=state.rows_read + self.stats.read,
                rows_copied=state.rows_copied + self.stats.copied,
                updated_at=timezone.now(),  # update() skips auto_now
            )
            self._pace(count, time.monotonic() - began)
            if self.progress:
                self.progress(self.stats)
        else:
            return self.stats
        CopyProgress.objects.using(self.alias).filter(pk=state.pk).update(
            finished_at=timezone.now()
        )
        self.stats.finished = True
        if self.progress:
            self.progress(self.stats)
        return self.stats

    def _dead_letter(self, row: dict[str, Any], reason: str) -> None:
        """A row the target refused, kept as the upsert a retry applies (version 0, as a
        copied row has: any captured write is newer); copy goes on."""
        fields = {f.attname: f for f in self.model._meta.concrete_fields}
        pk = row[self.model._meta.pk.attname]
        event = Event(
            model=self.model._meta.label,
            op=UPSERT,
            pk=pk,
            version=0,
            row={fields[name].column: encode_column(fields[name], v) for name, v in row.items()},
            source=self.alias,
        )
        dead_letter(
            f"{self.target.describe()} refused the row: {reason}",
            event.to_json(),
            model=event.model,
            pk_value=pk_text(pk),
            stage="copy",
        )
        self.stats.dead_letters += 1

    def _chunk(
        self, source: models.QuerySet, attnames: list[str], last: Any
    ) -> tuple[CopyResult, Any, int]:
        """Copy the next chunk after key ``last``: (result, new last key, rows read)."""
        fast = getattr(self.target, "copy_from_postgres", None)
        if fast is not None:
            done = fast(self.model, self.alias, last, self.chunk)
            if done is not None:
                return done
        page = source.filter(pk__gt=last) if last is not None else source
        rows = list(page.values(*attnames)[: self.chunk])
        if not rows:
            return CopyResult(), last, 0
        return self.target.copy(self.model, rows), rows[-1][self.model._meta.pk.attname], len(rows)

    def _pace(self, rows: int, seconds: float) -> None:
        """Size the next chunk towards CHUNK_SECONDS, and hold to ``throttle`` rows/s."""
        if self.fixed_chunk is None and seconds > 0:
            wanted = int(rows * CHUNK_SECONDS / seconds)
            self.chunk = max(MIN_CHUNK, min(MAX_CHUNK, wanted, self.chunk * 4))
        if self.throttle:
            pause = rows / self.throttle - seconds
            if pause > 0:
                time.sleep(pause)
