"""The mismatch records' admin: side-by-side diffs, and the Re-check, Repair and
Dismiss actions, for staff allowed the rows each record describes."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from django_mirror.admin import settling
from django_mirror.admin.permissions import may
from django_mirror.config import conf
from django_mirror.core.diff import EXTRA, MISSING, REDACTED
from django_mirror.models import MismatchRecord


def _redact(value: Any, hidden: set[str]) -> Any:
    """``value`` with every key named in ``redact_fields`` hidden, at any depth.

    Verify stores records already redacted; this also covers records written otherwise.
    """
    if isinstance(value, dict):
        return {k: REDACTED if k in hidden else _redact(v, hidden) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, hidden) for v in value]
    return value


def _shown(value: Any) -> str:
    """One value as a table cell: JSON, so NULL, "" and 0 look different."""
    if value == REDACTED:
        return REDACTED
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


class DismissedFilter(admin.SimpleListFilter):
    """Records dismissed by someone (they no longer count against promotion) or not."""

    title = "dismissed"
    parameter_name = "dismissed"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "Not dismissed"), ("yes", "Dismissed")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[MismatchRecord]
    ) -> QuerySet[MismatchRecord]:
        if self.value() == "yes":
            return queryset.filter(dismissed_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(dismissed_at__isnull=True)
        return queryset


class DismissForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
        help_text="Why these differences are not a problem (kept with your name and the time).",
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise ValidationError("Say why.")
        return reason


@admin.register(MismatchRecord)
class MismatchRecordAdmin(admin.ModelAdmin):
    """Mismatch records, seen as side-by-side diffs, re-checked, repaired or dismissed in
    place.

    Staff see only the records of models they may view, and act only on models they
    may change: the records describe those models' rows.
    """

    list_display = ("created_at", "kind", "status", "model", "pk_value", "difference", "dismissed")
    list_filter = ("model", "kind", "status", DismissedFilter)
    search_fields = ("=pk_value",)
    fields = (
        "created_at",
        "kind",
        "status",
        "model",
        "pk_value",
        "request_path",
        "query",
        "dismissed_at",
        "dismissed_by",
        "dismissed_reason",
    )
    readonly_fields = fields
    actions = ["recheck", "repair", "dismiss"]

    # --- access ---------------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[MismatchRecord]:
        queryset = super().get_queryset(request)
        user = request.user
        if user.is_active and user.is_superuser:
            return queryset
        labels = queryset.order_by().values_list("model", flat=True).distinct()
        return queryset.filter(model__in=[label for label in labels if may(user, label, "view")])

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_view_permission(request, obj)
        return allowed and (obj is None or may(request.user, obj.model, "view"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # read-only: records change only through the actions

    def has_recheck_permission(self, request: HttpRequest) -> bool:
        """Change permission on mismatch records; each model's rows are checked per record."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")

    has_repair_permission = has_recheck_permission
    has_dismiss_permission = has_recheck_permission

    # --- list and change view -------------------------------------------------------------

    @admin.display(description="difference")
    def difference(self, obj: MismatchRecord) -> str:
        diff = obj.diff if isinstance(obj.diff, dict) else {}
        kind = str(diff.get("kind", ""))
        if kind in (MISSING, EXTRA):
            return f"{kind} in target"
        names = diff.get("fields") if isinstance(diff.get("fields"), dict) else {}
        if names:
            return f"{kind}: {', '.join(names)}"
        rows = diff.get("differences")
        if not kind and isinstance(rows, list) and rows:
            return f"{len(rows)} row(s) differ"
        if not kind and diff.get("summary") is not None:
            return "result differs"
        return kind

    @admin.display(description="dismissed", boolean=True, ordering="dismissed_at")
    def dismissed(self, obj: MismatchRecord) -> bool:
        return obj.dismissed_at is not None

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: MismatchRecord | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(self._diff_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _diff_context(self, request: HttpRequest, obj: MismatchRecord) -> dict[str, Any]:
        """The side-by-side table: one row per field, differing ones flagged."""
        config = conf.config_for_label(obj.model)
        hidden = set(config.redact_fields) if config is not None else set()
        source, target = _redact(obj.source_value, hidden), _redact(obj.target_value, hidden)
        diff = _redact(obj.diff, hidden) if isinstance(obj.diff, dict) else {}
        fields = diff.get("fields")
        pairs = fields if isinstance(fields, dict) else {}
        rows: list[dict[str, Any]] = []
        if all(isinstance(side, dict | None) for side in (source, target)):
            names = list(source or {})
            names += [n for n in (target or {}) if n not in names]
            names += [n for n in pairs if n not in names]
            for name in names:
                pair = pairs.get(name) if isinstance(pairs.get(name), list) else None
                cells = []
                for side, index in ((source, 0), (target, 1)):
                    if isinstance(side, dict) and name in side:
                        cells.append((True, side[name]))
                    elif side is not None and pair is not None and len(pair) == 2:
                        cells.append((True, pair[index]))
                    else:
                        cells.append((side is not None, None))
                (s_has, s_value), (t_has, t_value) = cells
                rows.append(
                    {
                        "name": name,
                        "source": _shown(s_value) if s_has else None,
                        "target": _shown(t_value) if t_has else None,
                        "differs": name in pairs or s_has != t_has or s_value != t_value,
                    }
                )
        else:  # not one row per side (a shadow read's result set, say): the whole value
            rows.append(
                {
                    "name": "value",
                    "source": _shown(source),
                    "target": _shown(target),
                    "differs": source != target,
                }
            )
        kind = str(diff.get("kind", ""))
        opts = self.opts
        return {
            "mismatch_rows": rows,
            "mismatch_kind": f"{kind} in target" if kind in (MISSING, EXTRA) else kind,
            "mismatch_source_alias": conf.source_alias(),
            "mismatch_target_alias": config.target_alias if config is not None else "",
            "mismatch_can_act": self.has_recheck_permission(request)
            and may(request.user, obj.model, "change"),
            "mismatch_actions": [("recheck", "Re-check"), ("repair", "Repair")]
            + ([("dismiss", "Dismiss")] if obj.dismissed_at is None else []),
            "mismatch_changelist_url": reverse(
                f"admin:{opts.app_label}_{opts.model_name}_changelist",
                current_app=self.admin_site.name,
            ),
        }

    # --- actions --------------------------------------------------------------------------

    @admin.action(
        description="Re-check the selected records in source and target", permissions=["recheck"]
    )
    def recheck(
        self, request: HttpRequest, queryset: QuerySet[MismatchRecord]
    ) -> HttpResponse | None:
        return self._settle(request, queryset, repair=False)

    @admin.action(
        description="Repair the selected rows in the target from the source", permissions=["repair"]
    )
    def repair(
        self, request: HttpRequest, queryset: QuerySet[MismatchRecord]
    ) -> HttpResponse | None:
        return self._settle(request, queryset, repair=True)

    @admin.action(description="Dismiss the selected records (asks why)", permissions=["dismiss"])
    def dismiss(
        self, request: HttpRequest, queryset: QuerySet[MismatchRecord]
    ) -> HttpResponse | None:
        """Ask why, then mark the records dismissed with who and when: they stay listed,
        and no longer count against promotion."""
        records = list(queryset)
        allowed = [r for r in records if may(request.user, r.model, "change")]
        for label in sorted({r.model for r in records} - {r.model for r in allowed}):
            self.message_user(
                request, f"Skipped {label}: you may not change its rows.", messages.ERROR
            )
        if not allowed:
            return self._back(request, records)
        form = DismissForm(request.POST if request.POST.get("apply") else None)
        if form.is_valid():
            pending = [r.pk for r in allowed if r.dismissed_at is None]
            done = (
                MismatchRecord.objects.filter(pk__in=pending, dismissed_at__isnull=True).update(
                    dismissed_at=timezone.now(),
                    dismissed_by=request.user.get_username()[:150],
                    dismissed_reason=form.cleaned_data["reason"],
                )
                if pending
                else 0
            )
            self.message_user(request, f"{done} record(s) dismissed.", messages.SUCCESS)
            already = len(allowed) - len(pending)
            if already:
                self.message_user(
                    request,
                    f"{already} record(s) were dismissed already; their reason is kept.",
                    messages.WARNING,
                )
            return self._back(request, records)
        opts = self.opts
        context = {
            **self.admin_site.each_context(request),
            "title": "Why dismiss these mismatch records?",
            "subtitle": None,
            "opts": opts,
            "app_label": opts.app_label,
            "records": allowed,
            "form": form,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "from_change": bool(request.POST.get("_from_change")),
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/django_mirror/mismatchrecord/dismiss.html", context)

    def _back(self, request: HttpRequest, records: list[MismatchRecord]) -> HttpResponse | None:
        """Back to the record's page when the action was started there, else the list."""
        if request.POST.get("_from_change") and len(records) == 1:
            opts = self.opts
            return HttpResponseRedirect(
                reverse(
                    f"admin:{opts.app_label}_{opts.model_name}_change",
                    args=[records[0].pk],
                    current_app=self.admin_site.name,
                )
            )
        return None

    def _settle(
        self, request: HttpRequest, queryset: QuerySet[MismatchRecord], repair: bool
    ) -> HttpResponse | None:
        """Re-check the records (after rewriting their rows, for repair) and say what came
        of it (``admin.settling``)."""
        records = list(queryset)
        counts, skipped = settling.settle(request.user, records, repair)
        resolved, remaining = counts["resolved"], counts["remaining"]
        done = resolved + remaining
        if repair and done:
            self.message_user(
                request, f"{counts['repaired']} row(s) rewritten in the target.", messages.SUCCESS
            )
        if done:
            level = messages.SUCCESS if not remaining else messages.WARNING
            self.message_user(
                request,
                f"{done} record(s) re-checked: {resolved} resolved, {remaining} still differ.",
                level,
            )
        for reason in skipped:
            self.message_user(request, f"Skipped {reason}.", messages.ERROR)
        return self._back(request, records)
