"""The migration dashboard page: ``MetricWindow``'s changelist, showing the figures of
``admin.figures`` formatted for its template."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode

from django_mirror.admin.figures import DASH, KINDS, ModelRow, compute
from django_mirror.capture.wal import slot
from django_mirror.config import conf, graph
from django_mirror.models import DeadLetter, MetricWindow, MismatchRecord

# --- formatting ---------------------------------------------------------------------------


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
        max_lag = options.max_replay_lag
        within = options.verify_within
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
            "slot_lags": [_slot_lag(lag, i == 0) for i, lag in enumerate(board.slot_lags)],
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


def _slot_lag(lag: slot.SlotLag, source: bool) -> dict[str, Any]:
    """One slot's card: its retained WAL and seconds behind ("unknown" when they could
    not be read), the source's first and a target's named by its alias."""
    if lag.slot is None:
        text, behind = "unknown", None
    elif not lag.slot:
        text, behind = "no slot", None
    else:
        text = f"{number(lag.retained or 0)} bytes"
        behind = "not captured yet" if lag.seconds is None else f"{duration(lag.seconds)} behind"
    return {
        "id": "mirror-slot-lag" if source else f"mirror-slot-lag-{lag.alias}",
        "title": "Slot lag" if source else f"Slot lag, {lag.alias}",
        "text": text,
        "behind": behind,
        "over_limit": lag.over_limit,
        "limit": f"{number(lag.limit)} bytes",
    }


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
