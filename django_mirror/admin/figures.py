"""The migration dashboard's figures: per mirrored model, where it stands and how it
behaves now, computed apart from the page that shows them (``admin.dashboard``).

Every figure comes from django-mirror's own tables (the outbox, replay checkpoints,
mismatch records and the per-minute ``MetricWindow`` rows of ``django_mirror.observability.stats``),
read with one aggregate query each, so the page costs the same for two models or fifty.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError
from django.db.models import Count, Max, Q
from django.utils import timezone

from django_mirror.capture.wal import slot
from django_mirror.config import conf
from django_mirror.models import (
    DeadLetter,
    MetricWindow,
    MismatchRecord,
    ShardCheckpoint,
)
from django_mirror.observability import stats
from django_mirror.pipeline import relay
from django_mirror.pipeline.verify import last_runs
from django_mirror.repositories import registry as repositories

KINDS = ("read", "write", "verify")
#: Events/s are averaged over the windows of the last this many minutes (the current,
#: partial one included) ...
RATE_MINUTES = 5
#: ... shadow reads and latency percentiles over the last hour.
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
#: Shown where there is no figure (and as the target of a repository without any).
DASH = "—"


@dataclass
class Latency:
    """Read latency percentiles on one store: upper bounds (ms) of histogram buckets."""

    reads: int = 0
    p50: float | None = None
    p95: float | None = None

    @classmethod
    def of(cls, histograms: list[dict[str, int]]) -> Latency:
        merged = stats.merge_histograms(histograms)
        return cls(
            reads=sum(merged.values()),
            p50=stats.percentile(merged, 0.5),
            p95=stats.percentile(merged, 0.95),
        )


@dataclass
class ModelRow:
    label: str
    phase: str
    target: str
    #: The model an auto-created M2M table belongs to (shown indented under it).
    owner: str | None = None
    backlog: int = 0
    captured_per_s: float = 0.0
    replayed_per_s: float = 0.0
    compared: int = 0
    matched: int = 0
    mismatches_hour: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    mismatches_day: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    source_latency: Latency = field(default_factory=Latency)
    target_latency: Latency = field(default_factory=Latency)
    #: When the last finished ``mirror_verify`` of the model ended, and what it found.
    verified_at: dt.datetime | None = None
    verify_differences: int | None = None

    @property
    def match_share(self) -> float | None:
        """Share of shadow reads in the last hour whose results agreed; None without any."""
        return self.matched / self.compared if self.compared else None


@dataclass
class Dashboard:
    now: dt.datetime
    rows: list[ModelRow]
    #: Largest ``millis_behind`` over the open shards; None before replay ever ran.
    replay_lag_ms: int | None
    shards: int
    open_shards: int
    last_checkpoint: dt.datetime | None
    dead_letters: int
    #: Seconds the events/s figures are averaged over.
    rate_seconds: float
    #: What could not be read (a target's outbox, say), for a note on the page.
    problems: list[str] = field(default_factory=list)
    #: Each replication slot's lag with ``CAPTURE = "wal"`` (the source's first); none
    #: with ORM capture.
    slot_lags: list[slot.SlotLag] = field(default_factory=list)

    @property
    def backlog(self) -> int:
        return sum(row.backlog for row in self.rows)

    @property
    def mismatches_day(self) -> int:
        return sum(sum(row.mismatches_day.values()) for row in self.rows)

    @property
    def replay_lag_seconds(self) -> float | None:
        return None if self.replay_lag_ms is None else self.replay_lag_ms / 1000


def _target_name(config: conf.ModelConfig) -> str:
    """The alias, or the backend's class name: instantiating a backend could reach out."""
    if config.target_alias is not None:
        return config.target_alias
    if isinstance(config.target, dict):
        return str(config.target.get("BACKEND", "?")).rsplit(".", 1)[-1]
    return DASH


def _ordered_configs() -> list[conf.ModelConfig]:
    """Models by label, each auto-created M2M table right after the model that owns it."""
    configs = sorted(conf.configs(), key=lambda c: c.label.lower())
    owned: dict[str, list[conf.ModelConfig]] = defaultdict(list)
    for config in configs:
        if config.owner is not None:
            owned[config.owner.lower()].append(config)
    ordered: list[conf.ModelConfig] = []
    for config in configs:
        if config.owner is None:
            ordered.append(config)
            ordered.extend(owned.pop(config.label.lower(), []))
    for orphans in owned.values():  # an owner not mirrored itself: cannot happen, but show
        ordered.extend(orphans)
    return ordered


def _backlogs(problems: list[str]) -> dict[str, int]:
    try:
        return relay.backlog_by_model()
    except DatabaseError as exc:
        problems.append(f"An outbox could not be read: {exc}")
        return {}


def _mismatches(now: dt.datetime) -> dict[str, dict[str, dict[str, int]]]:
    """``{label: {"hour"|"day": {kind: n}}}``: confirmed read and verify records, and
    write records whatever their status (each is a live apply that failed); dismissed
    records left out, as the promotion gate leaves them."""
    found: dict[str, dict[str, dict[str, int]]] = defaultdict(
        lambda: {"hour": dict.fromkeys(KINDS, 0), "day": dict.fromkeys(KINDS, 0)}
    )
    per_kind = (
        MismatchRecord.objects.using(conf.source_alias())
        .filter(created_at__gte=now - DAY, dismissed_at__isnull=True)
        .filter(Q(kind=MismatchRecord.Kind.WRITE) | Q(status=MismatchRecord.Status.CONFIRMED))
        .order_by()
        .values("model", "kind")
        .annotate(day=Count("id"), hour=Count("id", filter=Q(created_at__gte=now - HOUR)))
    )
    for entry in per_kind:
        if entry["kind"] in KINDS:
            figures = found[entry["model"].lower()]
            figures["day"][entry["kind"]] += entry["day"]
            figures["hour"][entry["kind"]] += entry["hour"]
    return found


def _windows(
    now: dt.datetime,
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]], dict[str, Any], float]:
    """Counter totals of the recent minutes and of the hour, latency histograms of the
    hour (per lower-cased label), and the seconds the recent minutes span."""
    minute = now.replace(second=0, microsecond=0)
    recent_from = minute - dt.timedelta(minutes=RATE_MINUTES - 1)
    hour_from = minute - dt.timedelta(minutes=59)
    recent: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    hourly: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    latency: dict[str, dict[str, list[dict[str, int]]]] = defaultdict(lambda: defaultdict(list))
    windows = (
        MetricWindow.objects.using(conf.source_alias())
        .filter(minute__gte=hour_from)
        .values_list("model", "minute", "counts", "latency")
    )
    for label, start, counts, histograms in windows:
        key = label.lower()
        for name, count in (counts or {}).items():
            hourly[key][name] += count
            if start >= recent_from:
                recent[key][name] += count
        for store, histogram in (histograms or {}).items():
            latency[key][store].append(histogram)
    return recent, hourly, latency, max((now - recent_from).total_seconds(), 1.0)


def _verifies() -> dict[str, tuple[dt.datetime, int]]:
    """The last finished ``mirror_verify`` per model: when, and how many differences."""
    return {label: (run.finished_at, run.differences) for label, run in last_runs().items()}


def compute(now: dt.datetime | None = None) -> Dashboard:
    """Every mirrored model's row, and the stream-wide replay figures."""
    now = now or timezone.now()
    source = conf.source_alias()
    problems: list[str] = []
    backlogs = _backlogs(problems)
    mismatches = _mismatches(now)
    recent, hourly, latency, rate_seconds = _windows(now)
    verifies = _verifies()
    replay = ShardCheckpoint.objects.using(source).aggregate(
        lag=Max("millis_behind", filter=Q(finished=False)),
        shards=Count("id"),
        open=Count("id", filter=Q(finished=False)),
        updated=Max("updated_at"),
    )
    dead_letters = DeadLetter.objects.using(source).filter(resolved_at__isnull=True).count()
    rows = []
    entries = [(c.label, c.phase, _target_name(c), c.owner) for c in _ordered_configs()]
    # Repository interfaces mirrored call by call: their figures carry the interface's name.
    entries += [
        (r.name, r.phase, ", ".join(r.target_paths) or DASH, None)
        for r in sorted(repositories.configs().values(), key=lambda r: r.name)
    ]
    for label, phase, target, owner in entries:
        key = label.lower()
        figures = mismatches.get(key) or {"hour": {}, "day": {}}
        verified_at, verify_differences = verifies.get(key, (None, None))
        rows.append(
            ModelRow(
                label=label,
                phase=phase,
                target=target,
                owner=owner,
                backlog=backlogs.get(key, 0),
                captured_per_s=recent[key]["captured"] / rate_seconds,
                replayed_per_s=recent[key]["replayed"] / rate_seconds,
                compared=hourly[key]["read.compared"],
                matched=hourly[key]["read.match"],
                mismatches_hour={kind: figures["hour"].get(kind, 0) for kind in KINDS},
                mismatches_day={kind: figures["day"].get(kind, 0) for kind in KINDS},
                source_latency=Latency.of(latency[key]["source"]),
                target_latency=Latency.of(latency[key]["target"]),
                verified_at=verified_at,
                verify_differences=verify_differences,
            )
        )
    shards = replay["shards"] or 0
    return Dashboard(
        now=now,
        rows=rows,
        replay_lag_ms=(replay["lag"] or 0) if shards else None,
        shards=shards,
        open_shards=replay["open"] or 0,
        last_checkpoint=replay["updated"],
        dead_letters=dead_letters,
        rate_seconds=rate_seconds,
        problems=problems,
        # one query a slot, only when the log is read; a failed read shows "unknown"
        slot_lags=slot.lags(),
    )
