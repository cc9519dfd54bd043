"""The migration dashboard: per mirrored model, where it stands and how it behaves now.

Every figure comes from django-mirror's own tables (the outbox, replay checkpoints,
mismatch records and the per-minute ``MetricWindow`` rows of ``django_mirror.observability.stats``),
read with one aggregate query each, so the page costs the same for two models or fifty.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.contrib import admin
from django.db import DatabaseError
from django.db.models import Count, Max, Q
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from django_mirror.config import conf, graph
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
    return "—"


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
    return {
        label: (run.finished_at, run.differences)  # type: ignore[misc]
        for label, run in last_runs().items()
    }


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
    )


# --- formatting ---------------------------------------------------------------------------

DASH = "—"


def number(value: int) -> str:
    return f"{value:,}"


def rate(value: float) -> str:
    """Events per second, to about two significant digits."""
    if value == 0:
        return "0"
    if value < 0.01:
        return "< 0.01"
    if value < 10:
        return f"{value:.2f}"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def milliseconds(value: float | None) -> str:
    if value is None:
        return DASH
    if value < 1:
        return f"{value:.2f} ms"
    if value < 10:
        return f"{value:.1f} ms"
    if value < 1000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.1f} s"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def ago(seconds: float) -> str:
    """A coarse age, for what happened minutes to days ago."""
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600:.0f} h ago"
    return f"{seconds // 86400:.0f} d ago"


def percent(share: float | None) -> str:
    if share is None:
        return DASH
    if 0.999 <= share < 1:
        return "> 99.9%"
    return f"{share * 100:.1f}%".replace(".0%", "%")


# --- the admin page -------------------------------------------------------------------------


class DashboardAdmin(admin.ModelAdmin):
    """``MetricWindow``'s changelist is the dashboard: the admin index links to it and no
    URL of the project changes. Any staff member may look; nothing on it changes data."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        board = compute()
        mismatch_admin = self.admin_site.get_model_admin(MismatchRecord)
        mismatches_url = (
            reverse(
                "admin:django_mirror_mismatchrecord_changelist", current_app=self.admin_site.name
            )
            if mismatch_admin.has_view_permission(request)
            else None
        )
        letters_admin = self.admin_site.get_model_admin(DeadLetter)
        letters_url = (
            reverse("admin:django_mirror_deadletter_changelist", current_app=self.admin_site.name)
            + "?resolved_at__isempty=1"
            if letters_admin.has_view_permission(request)
            else None
        )
        options = conf.get_settings().phases
        max_lag = float(options["MAX_REPLAY_LAG"])
        within = float(options["VERIFY_WITHIN"])
        lag = board.replay_lag_seconds
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Migration dashboard",
            "board": board,
            "rows": [_shown(row, mismatches_url, board.now, within) for row in board.rows],
            "verify_within": duration(within),
            "replay_lag": duration(lag) if lag is not None else "replay has not run",
            "replay_lag_high": lag is not None and lag > max_lag,
            "max_lag": duration(max_lag),
            "checkpoint_age": (
                duration((board.now - board.last_checkpoint).total_seconds())
                if board.last_checkpoint
                else None
            ),
            "backlog": number(board.backlog),
            "mismatches_day": number(board.mismatches_day),
            "dead_letters": number(board.dead_letters),
            "dead_letters_url": letters_url,
            "mismatches_url": mismatches_url,
            "rate_seconds": round(board.rate_seconds),
            "refresh_seconds": 30,
            "groups": [
                {
                    "members": group.members,
                    "phases": sorted(group.phases().items()),
                    "split": group.split,
                    "ties": [str(tie) for tie in group.ties],
                }
                for group in graph.groups()
            ],
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/django_mirror/dashboard.html", context)


def _verify_cell(row: ModelRow, now: dt.datetime, within: float) -> dict[str, Any]:
    """ "clean" or "N differences", how long ago, and whether it is too old to let the
    model move to ``mirror`` (``PHASES["VERIFY_WITHIN"]``)."""
    if row.verified_at is None or row.verify_differences is None:
        return {"text": "never", "age": "", "state": "none"}
    age = (now - row.verified_at).total_seconds()
    found = row.verify_differences
    return {
        "text": "clean" if found == 0 else f"{number(found)} difference{'s' if found != 1 else ''}",
        "age": ago(max(age, 0)),
        "state": "stale" if age > within else ("clean" if found == 0 else "bad"),
    }


def _shown(
    row: ModelRow, mismatches_url: str | None, now: dt.datetime, within: float
) -> dict[str, Any]:
    """One table row's cells, formatted, with links to the model's mismatch records."""

    def link(**params: str) -> str | None:
        return (
            f"{mismatches_url}?{urlencode({'model': row.label, **params})}"
            if mismatches_url
            else None
        )

    def cells(counts: dict[str, int]) -> list[dict[str, Any]]:
        return [
            {
                "kind": kind,
                "count": number(counts[kind]),
                "bad": counts[kind] > 0,
                "url": link(kind=kind, **({} if kind == "write" else {"status": "confirmed"}))
                if counts[kind]
                else None,
            }
            for kind in KINDS
        ]

    return {
        "label": row.label,
        "owner": row.owner,
        "phase": row.phase,
        "target": row.target,
        "url": link(),
        "backlog": number(row.backlog),
        "backlog_waiting": row.backlog > 0,
        "captured": rate(row.captured_per_s),
        "replayed": rate(row.replayed_per_s),
        "compared": number(row.compared),
        "matched": percent(row.match_share),
        "match_low": row.match_share is not None and row.match_share < 1,
        "hour": cells(row.mismatches_hour),
        "day": cells(row.mismatches_day),
        "source_p50": milliseconds(row.source_latency.p50),
        "source_p95": milliseconds(row.source_latency.p95),
        "target_p50": milliseconds(row.target_latency.p50),
        "target_p95": milliseconds(row.target_latency.p95),
        "reads": number(row.source_latency.reads + row.target_latency.reads),
        "verify": _verify_cell(row, now, within),
    }


# The migration dashboard is MetricWindow's changelist.
admin.site.register(MetricWindow, DashboardAdmin)
